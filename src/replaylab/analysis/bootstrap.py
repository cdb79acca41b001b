"""Seed-bootstrap confidence intervals on a data-efficiency multiplier.

Each resample draws seeds with replacement inside every cell (each reference budget, the method, the
baseline), averages them, refits the reference law and reads the multiplier again. The interval is
the percentile interval of those multipliers. So the CI carries both sources of noise: the
reference points the law rests on, and the two runs being compared.

Direction: every resampled multiplier points the way its resampled losses do (each resample's law is
read only when it falls, `ReferenceLaw.refusal`). An interval may reach past 1 when the seeds leave
the order of the two cells in doubt, but it never lies wholly on the other side of 1 from the cells'
mean losses: such an interval (possible only with very skewed seeds) is refused, not reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from replaylab.analysis.law import AnalysisError, _fit, fit_reference_law, points_the_way_of

DEFAULT_BOOT = 1000
DEFAULT_LEVEL = 0.95


@dataclass
class BootstrapCI:
    """A percentile interval. Resamples whose method loss falls at or below the law's asymptote count
    as an infinite multiplier (the method beats any amount of reference data), those whose baseline
    does as zero; both at once, a fit that fails, or a resampled law that does not fall
    (`n_not_decreasing`, also counted in `n_dropped`) are dropped."""

    low: float
    high: float
    level: float
    n_boot: int
    n_dropped: int
    n_not_invertible: int
    n_not_decreasing: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return f"[{_fmt(self.low)}, {_fmt(self.high)}]"


def _fmt(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.2f}"


def _clean(values: Sequence[float], what: str) -> np.ndarray:
    """A cell's seeds, spread about their mean by sqrt(n / (n - 1)): a plain resample of n seeds has
    variance (n - 1) / n of the mean's, which makes percentile intervals too narrow for the 2-5 seeds
    sweeps afford. The inflation makes the resampled mean's variance unbiased."""
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0 or not np.isfinite(arr).all():
        raise AnalysisError(f"{what} needs at least one finite loss per cell, got {list(arr)}")
    if arr.size > 1:
        mean = arr.mean()
        arr = mean + math.sqrt(arr.size / (arr.size - 1)) * (arr - mean)
    return arr


def _multiplier(law, loss: float, baseline: float) -> float:
    """x_eff(loss) / x_eff(baseline) in [0, inf]; NaN when the law is not inverted, when both losses lie
    beyond its range on one side, or when it cannot order the two losses (a nearly flat stretch)."""
    eff, base = (float(law._reading(np.asarray(v, dtype=float))) for v in (loss, baseline))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        m = float(np.float64(eff) / np.float64(base))  # inf / inf and 0 / 0 are NaN: dropped
    if math.isnan(m) or not points_the_way_of(m, loss, baseline):
        return math.nan
    return m


class ReferenceBootstrap:
    """The reference side of the bootstrap, drawn once and shared by every multiplier of a domain:
    `n_boot` resampled reference curves, each refitted. Method and baseline seeds are then resampled
    per comparison (`multiplier_ci`), each from its own stream, so the intervals do not depend on
    which other comparisons were asked for."""

    def __init__(
        self,
        reference: Mapping[float, Sequence[float]],
        *,
        form: str = "paper",
        n_boot: int = DEFAULT_BOOT,
        seed: int = 0,
        x_unit: float = 1.0,
    ):
        if n_boot < 10:
            raise AnalysisError(f"n_boot={n_boot} is too few resamples for an interval; use at least 100")
        self.form, self.n_boot, self.seed = form, n_boot, seed
        budgets = sorted(float(b) for b in reference)
        ref = [_clean(reference[b], f"reference budget {b:g}") for b in sorted(reference)]
        point = fit_reference_law(budgets, [c.mean() for c in ref], form=form, x_unit=x_unit)  # checks the points once
        if point.refusal is not None:
            raise AnalysisError(
                f"the {form} law of the mean reference losses is not inverted, so it has no "
                f"multiplier to put an interval on: {point.refusal}"
            )
        x = np.asarray(budgets)
        rng = np.random.default_rng([seed, 0])
        if all(c.size == 1 for c in ref):  # one seed per budget: the law has no resampling noise
            law, _ = _fit(x, np.array([c[0] for c in ref]), form, x_unit)
            self.laws: list = [law] * n_boot
            return
        means = np.column_stack([c[rng.integers(0, c.size, (n_boot, c.size))].mean(axis=1) for c in ref])
        self.laws = []
        for row in means:
            try:
                self.laws.append(_fit(x, row, form, x_unit)[0])
            except AnalysisError:
                self.laws.append(None)  # a resample the fit cannot handle: dropped, and counted

    def multiplier_ci(
        self, method: Sequence[float], baseline: Sequence[float], *, level: float = DEFAULT_LEVEL, stream: int = 1
    ) -> BootstrapCI:
        if not 0 < level < 1:
            raise AnalysisError(f"confidence level must be in (0, 1), got {level}; e.g. 0.95")
        m, b = _clean(method, "method"), _clean(baseline, "baseline")
        rng = np.random.default_rng([self.seed, stream])
        m_means = m[rng.integers(0, m.size, (self.n_boot, m.size))].mean(axis=1)
        b_means = b[rng.integers(0, b.size, (self.n_boot, b.size))].mean(axis=1)
        usable = [law is not None and law.refusal is None for law in self.laws]
        out = np.array(
            [
                _multiplier(law, float(lm), float(lb)) if ok else math.nan
                for law, ok, lm, lb in zip(self.laws, usable, m_means, b_means)
            ]
        )
        n_not_inv = int(sum(1 for v, ok in zip(out, usable) if ok and not (v > 0 and math.isfinite(v))))
        n_flat = int(sum(1 for law, ok in zip(self.laws, usable) if law is not None and not ok))
        if n_flat > (1 - level) * self.n_boot:
            raise AnalysisError(
                f"the reference law does not fall in {n_flat} of {self.n_boot} resamples of its seeds, so its "
                f"fall is not established at the {level:.0%} level; run more seeds or reference budgets"
            )
        valid = out[~np.isnan(out)]
        if valid.size == 0:
            raise AnalysisError("no bootstrap resample gave a usable multiplier; the law does not fit these seeds")
        tail = (1 - level) / 2
        # inverted_cdf picks observed values, so infinite multipliers never become NaN by interpolation.
        low, high = (float(v) for v in np.quantile(valid, [tail, 1 - tail], method="inverted_cdf"))
        lm, lb = float(np.mean(method)), float(np.mean(baseline))
        if (lm >= lb and low > 1.0) or (lm <= lb and high < 1.0):
            raise AnalysisError(
                f"the bootstrap interval [{_fmt(low)}, {_fmt(high)}] lies wholly on the other side of 1 from the "
                f"mean losses (method {lm:.6g}, baseline {lb:.6g}): the seeds are too skewed for a percentile "
                f"interval; run more seeds"
            )
        return BootstrapCI(
            low=low,
            high=high,
            level=level,
            n_boot=self.n_boot,
            n_dropped=int(self.n_boot - valid.size),
            n_not_invertible=n_not_inv,
            n_not_decreasing=n_flat,
        )


def bootstrap_multiplier(
    reference: Mapping[float, Sequence[float]],
    method: Sequence[float],
    baseline: Sequence[float],
    *,
    form: str = "paper",
    n_boot: int = DEFAULT_BOOT,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> BootstrapCI:
    """CI on x_eff(mean method loss) / x_eff(mean baseline loss) under a law fitted to the mean
    reference loss per budget. `reference` maps each budget to its seeds' losses; `method` and
    `baseline` are lists of seeds' losses. Deterministic for a given `seed`."""
    if not 0 < level < 1:
        raise AnalysisError(f"confidence level must be in (0, 1), got {level}; e.g. 0.95")
    return ReferenceBootstrap(reference, form=form, n_boot=n_boot, seed=seed).multiplier_ci(
        method, baseline, level=level
    )
