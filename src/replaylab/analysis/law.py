"""The reference scaling law: final target loss as a function of the unique target budget x.

Three forms (`FORMS`):
  paper      L(x) = A / x^B + C, fitted exactly as Kotha & Liang do (scipy `curve_fit`, p0 = [0.1, 0.2, 2.0]),
             so their published multipliers are reproduced, degenerate fits included.
  loglinear  L(x) = a - b ln x: what a degenerate power law collapses to (B -> 0, A and C huge).
  robust     the same power law, fitted with bounds (B > 0, 0 <= C < the smallest loss), several
             starts and a log-space loss, for a well-posed asymptote.

The law is inverted to read *effective data*: the budget a reference run would need to reach a loss.
Budgets may be in any unit (fraction of tokens, tokens, sequences); a multiplier (ratio of two
effective data) does not depend on it.

Reading a loss back along the law only means something when the law *falls* with more data: then a
lower loss reads as more data, whatever the form. A law that does not fall over the measured budgets
(or reference points that do not) is never inverted; `ReferenceLaw.refusal` says why.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit, least_squares

from replaylab.errors import ReplaylabError

FORMS = ("paper", "loglinear", "robust")
PAPER_P0 = (0.1, 0.2, 2.0)
PAPER_MAXFEV = 200_000  # the paper's fit wanders far on near-log-linear data; give it room to converge

# Degeneracy thresholds. Below B_NEAR_ZERO the power law is hard to tell from a - b ln x; with A or C
# this many times the largest loss, the "asymptote" is an artefact of the fit, not a floor of the data.
B_NEAR_ZERO = 0.1
HUGE_FACTOR = 5.0
# A fall in loss over the measured budgets this small relative to the losses is rounding, not a trend:
# such a law (every loss equal, say) would turn the last bits of two losses into any multiplier.
FLAT_RTOL = 1e-9


class AnalysisError(ReplaylabError):
    """Analysis inputs or fits the user can fix (too few points, unknown form, bad table)."""


class NotInvertibleError(AnalysisError):
    """A loss the law never reaches (at or below its asymptote), so it has no effective data."""


@dataclass
class LawDiagnostics:
    """What a fit found and how far to trust it."""

    form: str
    params: dict[str, float]
    residuals: list[float]  # observed - predicted, in budget order
    r2: float
    rmse: float
    degenerate: bool
    reasons: list[str]  # why it is degenerate (or other warnings), human-readable
    budget_range: tuple[float, float]  # fitted range of x
    loss_range: tuple[float, float]  # predicted loss over that range (low, high)
    n_points: int
    stderr: dict[str, float] = field(default_factory=dict)  # parameter standard errors, when available

    def summary(self) -> str:
        p = ", ".join(f"{k}={v:.4g}" for k, v in self.params.items())
        flag = " DEGENERATE: " + "; ".join(self.reasons) if self.degenerate else ""
        return f"{self.form}: {p} (R^2={self.r2:.4f}, rmse={self.rmse:.3g}, n={self.n_points}){flag}"


@dataclass
class ReferenceLaw:
    """A fitted reference law. `predict(x)` gives the loss; `effective_data(loss)` inverts it."""

    form: str
    params: dict[str, float]
    budgets: np.ndarray
    losses: np.ndarray
    diagnostics: LawDiagnostics | None = None
    # Budgets are given and returned in the caller's unit; the fit sees x = budget * x_unit. The
    # paper's curve_fit starts from a fixed p0 tuned for x = fraction of all tokens, so the unit of x
    # changes where that fit lands: analysis passes x_unit = (fraction of tokens per budget unit).
    x_unit: float = 1.0

    @property
    def asymptote(self) -> float:
        """The loss reached with infinite data (-inf for the log-linear form)."""
        return self.params["C"] if self.form != "loglinear" else -math.inf

    def predict(self, x: Any) -> Any:
        x = np.asarray(x, dtype=float) * self.x_unit
        if self.form == "loglinear":
            out = self.params["a"] - self.params["b"] * np.log(x)
        else:
            out = self.params["A"] / np.power(x, self.params["B"]) + self.params["C"]
        return float(out) if out.ndim == 0 else out

    @cached_property
    def refusal(self) -> str | None:
        """Why this law gives no effective data at all, or None: the reference points or the fitted law
        do not fall over the measured budgets. Inverting such a law reads a worse loss as more data."""
        x, y = self.budgets, self.losses
        tol = FLAT_RTOL * max(1.0, float(np.abs(y).max()))
        lx = np.log(x)
        dx = lx - lx.mean()
        slope = float((dx * (y - y.mean())).sum() / (dx**2).sum())  # loss per e-fold of budget, least squares
        span = f"budgets {x.min():g}..{x.max():g}"
        fix = "check the reference runs: loss should fall with more target data"
        if not -slope * float(lx.max() - lx.min()) > tol:
            return (
                f"the reference losses do not fall over the measured {span} (trend {slope * math.log(2):+.4g} "
                f"per doubling of the budget); {fix}"
            )
        if self.form == "loglinear":
            falls = self.params["b"] > 0
        else:
            falls = self.params["A"] * self.params["B"] > 0  # A / x^B is decreasing exactly when A and B agree
        hi, lo = self.predict(x.min()), self.predict(x.max())
        if not (falls and hi - lo > tol):
            params = ", ".join(f"{k}={v:.4g}" for k, v in self.params.items())
            return (
                f"the fitted {self.form} law ({params}) does not fall over the measured {span} "
                f"({hi:.6g} to {lo:.6g}); {fix}, or try another form"
            )
        return None

    def _reading(self, loss: np.ndarray) -> np.ndarray:
        """Effective data of each loss in [0, inf] (NaN for a refused law or a NaN loss): inf for a loss
        below everything the law reaches (better than any amount of reference data), 0 for one above it
        (worse than none). Over- and underflow land on the same sides, so the order of losses is kept."""
        if self.refusal is not None:
            return np.full(loss.shape, np.nan)
        with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
            if self.form == "loglinear":
                out = np.exp((self.params["a"] - loss) / self.params["b"]) / self.x_unit
            else:
                A, B, C = self.params["A"], self.params["B"], self.params["C"]
                ratio = A / (loss - C)
                out = np.power(ratio, 1.0 / B) / self.x_unit
                # Outside the law's range, on the side of its asymptote C: below the floor when the law
                # falls toward C (A > 0), above the ceiling when it falls away from C (A < 0, B < 0).
                out = np.where(ratio > 0, out, math.inf if A > 0 else 0.0)
        return np.where(np.isnan(loss), np.nan, out)

    def invertible(self, loss: Any) -> Any:
        """True where `loss` maps to a finite positive effective data under this law."""
        loss = np.asarray(loss, dtype=float)
        x = self._reading(loss)
        ok = np.isfinite(x) & (x > 0)
        return bool(ok) if ok.ndim == 0 else ok

    def effective_data(self, loss: Any) -> Any:
        """The budget x with predict(x) == loss. Raises NotInvertibleError for a loss the law never
        reaches (at or below the asymptote C), and for every loss under a law that does not fall
        (`refusal`), so no NaN, zero or infinity flows on silently."""
        arr = np.asarray(loss, dtype=float)
        if self.refusal is not None:
            raise NotInvertibleError(f"the {self.form} law is not inverted: {self.refusal}")
        out = self._reading(arr)
        ok = np.isfinite(out) & (out > 0)
        if not ok.all():
            bad = arr[~ok] if arr.ndim else arr
            raise NotInvertibleError(
                f"loss {float(np.ravel(bad)[0]):.6g} is not reachable under the {self.form} law "
                f"({self._inverse_domain()}); it has no effective data. Use a law whose asymptote lies below "
                f"every loss (form='robust' or 'loglinear') or read this loss as 'better than any reference'"
            )
        return float(out) if out.ndim == 0 else out

    def _inverse_domain(self) -> str:
        if self.refusal is not None:
            return self.refusal
        if self.form == "loglinear":
            return f"slope b={self.params['b']:.4g} must be > 0"
        return f"at or below the asymptote C={self.params['C']:.6g}, or exponent B={self.params['B']:.4g} <= 0"

    def in_range(self, loss: float) -> bool:
        """Whether `loss` lies within the losses the law predicts over the fitted budgets."""
        lo, hi = sorted((self.predict(self.budgets.min()), self.predict(self.budgets.max())))
        tol = 1e-9 * max(1.0, abs(hi))
        return lo - tol <= loss <= hi + tol


def _power(x: np.ndarray, A: float, B: float, C: float) -> np.ndarray:
    return A / np.power(x, B) + C


def _check_inputs(budgets: Any, losses: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(budgets, dtype=float).ravel()
    y = np.asarray(losses, dtype=float).ravel()
    if x.size != y.size:
        raise AnalysisError(
            f"budgets ({x.size} values) and losses ({y.size} values) differ in length; give one loss per budget"
        )
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise AnalysisError("budgets and losses must be finite numbers; drop failed or diverged reference runs first")
    if (x <= 0).any():
        raise AnalysisError(f"budget {x[x <= 0][0]:g} is not positive; budgets are unique target data sizes (> 0)")
    if np.unique(x).size < 3:
        raise AnalysisError(
            f"the reference law needs at least 3 distinct budgets, got {np.unique(x).size} "
            f"({', '.join(f'{v:g}' for v in np.unique(x))}); add reference runs at more budgets"
        )
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def _fit_paper(x: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)  # infinite covariance is reported via stderr
            p, cov = curve_fit(_power, x, y, p0=list(PAPER_P0), maxfev=PAPER_MAXFEV)
    except RuntimeError as e:
        raise AnalysisError(
            f"the paper's fit (curve_fit from p0={list(PAPER_P0)}) did not converge on these points ({e}); "
            f"use form='robust' or form='loglinear'"
        ) from None
    with np.errstate(invalid="ignore"):
        se = np.sqrt(np.diag(cov))
    names = ("A", "B", "C")
    return dict(zip(names, map(float, p))), dict(zip(names, map(float, se)))


def _fit_loglinear(x: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    X = np.column_stack([np.ones_like(x), -np.log(x)])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    return {"a": float(coef[0]), "b": float(coef[1])}, {}


def _fit_robust(x: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    # Parameters (log A, B, C): A > 0 by construction; B > 0 and 0 <= C < min(y) by bounds, so the law
    # always decreases toward a floor below every observed loss. A log-space loss weighs each point by
    # its relative error, which keeps the largest losses (smallest budgets) from dominating.
    if y.min() <= 0:  # log-space residuals and a floor 0 <= C < min loss need positive losses
        raise AnalysisError(
            f"loss {y.min():g} is not positive; the robust form fits log losses (cross-entropy is "
            "> 0): check the table, or use form='paper' or 'loglinear'"
        )
    c_hi = float(y.min()) * (1 - 1e-6)
    lx, ly = np.log(x), np.log(y)

    def resid(p: np.ndarray) -> np.ndarray:
        return np.log(np.exp(p[0] - p[1] * lx) + p[2]) - ly

    def jac(p: np.ndarray) -> np.ndarray:  # analytic: finite differences cost 4x the evaluations
        power = np.exp(p[0] - p[1] * lx)
        pred = power + p[2]
        return np.column_stack([power / pred, -lx * power / pred, 1.0 / pred])

    # Starts: for each C on a grid below the smallest loss, log(y - C) is linear in log x, which gives
    # A and B in closed form. The best few starts are refined under the bounds; the best result wins.
    cs = c_hi * np.concatenate([np.linspace(0.0, 0.95, 20), [0.99, 0.999]])
    starts = []
    for c in cs:
        slope, intercept = np.polyfit(lx, np.log(y - c), 1)
        p = np.array([np.clip(intercept, -49.0, 49.0), float(np.clip(-slope, 1e-5, 9.9)), c])
        starts.append((float((resid(p) ** 2).sum()), p))
    starts.sort(key=lambda t: t[0])
    best = None
    for _, p0 in starts[:2]:
        p0[2] = min(p0[2], c_hi * (1 - 1e-9))
        r = least_squares(
            resid,
            x0=p0,
            jac=jac,
            bounds=([-50.0, 1e-6, 0.0], [50.0, 10.0, c_hi]),
            method="trf",
            x_scale="jac",
            max_nfev=500,
        )
        if best is None or r.cost < best.cost - 1e-15:
            best = r
    assert best is not None
    return {"A": float(math.exp(best.x[0])), "B": float(best.x[1]), "C": float(best.x[2])}, {}


def _diagnose(
    form: str, params: dict[str, float], stderr: dict[str, float], x: np.ndarray, y: np.ndarray, law: ReferenceLaw
) -> LawDiagnostics:
    pred = np.asarray(law.predict(x), dtype=float)
    res = y - pred
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((res**2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    reasons: list[str] = []
    ymax = float(np.abs(y).max())
    if form == "loglinear":
        if params["b"] <= 0:
            reasons.append(f"slope b={params['b']:.4g} <= 0: loss does not fall with more data")
    else:
        A, B, C = params["A"], params["B"], params["C"]
        if B <= 0:
            reasons.append(f"exponent B={B:.4g} <= 0: loss does not fall as a power of the budget")
        elif B < B_NEAR_ZERO:
            reasons.append(f"exponent B={B:.4g} near 0: the law is effectively a - b ln x")
        if C < 0:
            reasons.append(f"asymptote C={C:.4g} is negative, below any possible loss")
        if max(abs(A), abs(C)) > HUGE_FACTOR * ymax:
            reasons.append(f"|A|={abs(A):.4g} or |C|={abs(C):.4g} is over {HUGE_FACTOR:g}x the largest loss")
        if form == "robust" and C >= float(y.min()) * (1 - 1e-5):
            reasons.append(f"asymptote C={C:.4g} sits at its bound, the smallest loss: no floor is visible in the data")
        se_b = stderr.get("B", 0.0)
        if not math.isfinite(se_b) or (B > 0 and se_b > B):
            reasons.append(f"B is not identified by these points (stderr {se_b:.3g} vs B={B:.3g})")
    if law.refusal is not None:
        reasons.insert(0, f"not inverted: {law.refusal}")
    lo, hi = sorted((float(pred[0]), float(pred[-1])))
    return LawDiagnostics(
        form=form,
        params=dict(params),
        residuals=[float(r) for r in res],
        r2=r2,
        rmse=float(np.sqrt((res**2).mean())),
        degenerate=bool(reasons),
        reasons=reasons,
        budget_range=(float(x.min()), float(x.max())),
        loss_range=(lo, hi),
        n_points=int(x.size),
        stderr=dict(stderr),
    )


def fit_reference_law(budgets: Any, losses: Any, form: str = "paper", *, x_unit: float = 1.0) -> ReferenceLaw:
    """Fit the reference law to reference runs' unique target budgets and final held-out target losses.

    Several seeds per budget may be given as repeated budgets (each point is one run). The result's
    `diagnostics` holds parameters, residuals, R^2, the fitted range and whether the fit is degenerate.
    """
    if form not in FORMS:
        raise AnalysisError(f"law form {form!r} is unknown; choose one of {', '.join(FORMS)}")
    if not (math.isfinite(x_unit) and x_unit > 0):
        raise AnalysisError(f"x_unit={x_unit} must be a positive number (the fitted x is budget * x_unit)")
    x, y = _check_inputs(budgets, losses)
    law, stderr = _fit(x, y, form, x_unit)
    law.diagnostics = _diagnose(form, law.params, stderr, x, y, law)
    return law


def _fit(x: np.ndarray, y: np.ndarray, form: str, x_unit: float = 1.0) -> tuple[ReferenceLaw, dict[str, float]]:
    """The bare fit on checked, sorted points (no diagnostics): the bootstrap's inner loop."""
    fit = {"paper": _fit_paper, "loglinear": _fit_loglinear, "robust": _fit_robust}[form]
    params, stderr = fit(x * x_unit, y)
    return ReferenceLaw(form=form, params=params, budgets=x, losses=y, x_unit=x_unit), stderr


def points_the_way_of(multiplier: float, loss: float, baseline_loss: float) -> bool:
    """Whether a multiplier agrees with the losses: above 1 only for a lower loss, below 1 only for a
    higher one, exactly 1 for equal losses."""
    if loss > baseline_loss:
        return multiplier <= 1.0
    if loss < baseline_loss:
        return multiplier >= 1.0
    return multiplier == 1.0
