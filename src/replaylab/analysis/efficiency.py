"""Effective data and the data-efficiency multiplier (paper, Sec. "Data efficiency").

A method that reaches loss L has effective data x_eff = law^-1(L): the unique target budget a
reference run would need for the same loss. Its multiplier over a baseline is
x_eff(method) / x_eff(baseline).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from replaylab.analysis.bootstrap import BootstrapCI
from replaylab.analysis.law import NotInvertibleError, ReferenceLaw, points_the_way_of


@dataclass
class DataEfficiency:
    """One method read against one baseline through one law.

    `multiplier` is None when either loss is not invertible (at or below the law's asymptote), when the
    law does not fall over its budgets (`law_flag` "not inverted"), or when the law is too flat to order
    the two losses: that is reported explicitly rather than as a NaN. A multiplier, when given, points
    the way the losses do: above 1 only for a lower loss than the baseline's, below 1 only for a higher
    one. `extrapolated` is True when a loss lies outside the losses the law was fitted on, so its
    effective data rests on the law's shape beyond the data. `law_flag` is "" for a sound fit,
    "degenerate" or "not inverted" otherwise, and `note` says why (the fit's reasons included), so the
    flag travels with every row read through that law.
    """

    loss: float
    baseline_loss: float
    effective_data: float | None
    baseline_effective_data: float | None
    multiplier: float | None
    invertible: bool
    extrapolated: bool
    note: str
    law_flag: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.multiplier is None:
            return "law not inverted" if self.law_flag == LAW_NOT_INVERTED else "not invertible"
        text = f"{self.multiplier:.3f}x"
        return text + " (extrapolated)" if self.extrapolated else text


LAW_NOT_INVERTED, LAW_DEGENERATE = "not inverted", "degenerate"


def law_flag(law: ReferenceLaw) -> tuple[str, str]:
    """(flag, note) of a law for every row read through it: "not inverted" when it does not fall over its
    budgets, "degenerate" when its diagnostics say so, "" otherwise."""
    if law.refusal is not None:
        return LAW_NOT_INVERTED, f"no effective data: {law.refusal}"
    if law.diagnostics is not None and law.diagnostics.degenerate:
        return LAW_DEGENERATE, f"read through a degenerate {law.form} fit ({'; '.join(law.diagnostics.reasons)})"
    return "", ""


def _read(law: ReferenceLaw, loss: float, what: str) -> tuple[float | None, str]:
    try:
        return float(law.effective_data(float(loss))), ""
    except NotInvertibleError:
        return None, f"{what} loss {loss:.4g} is not invertible ({law._inverse_domain()})"


def data_efficiency(law: ReferenceLaw, loss: float, baseline_loss: float) -> DataEfficiency:
    """Effective data of a method's loss and of a baseline's loss, and their ratio (the multiplier)."""
    flag, flag_note = law_flag(law)
    if flag == LAW_NOT_INVERTED:  # one note for the law, not one per loss
        return DataEfficiency(
            loss=float(loss),
            baseline_loss=float(baseline_loss),
            effective_data=None,
            baseline_effective_data=None,
            multiplier=None,
            invertible=False,
            extrapolated=False,
            note=flag_note,
            law_flag=flag,
        )
    eff, note_m = _read(law, loss, "method")
    base, note_b = _read(law, baseline_loss, "baseline")
    notes = [n for n in (flag_note, note_m, note_b) if n]
    outside = [name for name, value in (("method", loss), ("baseline", baseline_loss)) if not law.in_range(value)]
    if outside:
        lo, hi = law.diagnostics.loss_range if law.diagnostics else (float("nan"), float("nan"))
        notes.append(f"{' and '.join(outside)} loss outside the fitted range [{lo:.4g}, {hi:.4g}]: extrapolated")
    multiplier = None
    if eff is not None and base is not None:
        multiplier = eff / base
        # A falling law keeps the order of losses; only rounding on a nearly flat stretch can break it.
        if not (math.isfinite(multiplier) and multiplier > 0 and points_the_way_of(multiplier, loss, baseline_loss)):
            notes.append(
                f"the law is too flat between losses {loss:.6g} and {baseline_loss:.6g} to order their "
                f"effective data ({eff:.6g} vs {base:.6g}); no multiplier"
            )
            multiplier = None
    return DataEfficiency(
        loss=float(loss),
        baseline_loss=float(baseline_loss),
        effective_data=eff,
        baseline_effective_data=base,
        multiplier=multiplier,
        invertible=multiplier is not None,
        extrapolated=bool(outside),
        note="; ".join(notes),
        law_flag=flag,
    )


# ---------------------------------------------------------------------------------------------------
# From a run table: every comparison the paper reports, per target domain.

COMPARISONS = {
    "finetune": "fine-tuning: replay vs none",
    "midtrain_replay": "mid-training: replay-only vs baseline",
    "midtrain_best": "mid-training: best schedule vs baseline",
}


@dataclass
class Comparison:
    """One headline multiplier: a candidate cell against its baseline cell under the domain's law."""

    domain: str
    kind: str  # a key of COMPARISONS
    baseline: dict
    candidate: dict
    efficiency: DataEfficiency | None  # None when the domain has no usable law
    ci: BootstrapCI | None
    selection: str  # how the candidate was chosen (select half, or a warning)
    ci_note: str = ""  # why there is no interval, when both cells have seeds for one

    @property
    def title(self) -> str:
        return COMPARISONS[self.kind]


@dataclass
class DomainResult:
    domain: str
    law: ReferenceLaw | None
    reference: pd.DataFrame  # reference cells (one per budget)
    cells: pd.DataFrame  # fine-tuning and mid-training cells with effective data and multipliers
    comparisons: list[Comparison]
    notes: list[str]


@dataclass
class Analysis:
    form: str
    level: float
    n_boot: int
    domains: dict[str, DomainResult]
    notes: list[str]
    runs: pd.DataFrame | None = None  # the chosen run of every cell and seed (for per-run figures)

    def summary_frame(self) -> pd.DataFrame:
        """The headline table: one row per comparison (losses on the report half)."""
        rows = []
        for dom in self.domains.values():
            for c in dom.comparisons:
                e = c.efficiency
                rows.append(
                    {
                        "domain": dom.domain,
                        "comparison": c.title,
                        "budget": c.candidate.get("budget"),
                        "baseline": c.baseline["label"],
                        "baseline_lr": c.baseline["lr"],
                        "baseline_loss": c.baseline["test_loss"],
                        "candidate": c.candidate["label"],
                        "rho": c.candidate.get("rho"),
                        "alpha": c.candidate.get("alpha"),
                        "candidate_lr": c.candidate["lr"],
                        "candidate_loss": c.candidate["test_loss"],
                        "seeds": min(c.baseline["n_seeds"], c.candidate["n_seeds"]),
                        "baseline_eff_data": e.baseline_effective_data if e else None,
                        "candidate_eff_data": e.effective_data if e else None,
                        "multiplier": e.multiplier if e else None,
                        "ci_low": c.ci.low if c.ci else None,
                        "ci_high": c.ci.high if c.ci else None,
                        "law_flag": e.law_flag if e else "no reference law",
                        "flags": "; ".join(
                            x for x in ((e.note if e else "no reference law"), c.ci_note, c.selection) if x
                        ),
                    }
                )
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        out = {"form": self.form, "level": self.level, "n_boot": self.n_boot, "notes": self.notes, "domains": {}}
        for name, dom in self.domains.items():
            out["domains"][name] = {
                "law": dom.law.diagnostics.__dict__ if dom.law is not None and dom.law.diagnostics else None,
                "reference": _records(dom.reference),
                "cells": _records(dom.cells),
                "notes": dom.notes,
                "comparisons": [
                    {
                        "kind": c.kind,
                        "title": c.title,
                        "baseline": c.baseline["label"],
                        "candidate": c.candidate["label"],
                        "selection": c.selection,
                        "ci_note": c.ci_note,
                        "efficiency": c.efficiency.to_dict() if c.efficiency else None,
                        "ci": c.ci.to_dict() if c.ci else None,
                    }
                    for c in dom.comparisons
                ],
            }
        out["summary"] = _records(self.summary_frame())
        return out


def _records(df) -> list[dict]:
    import json

    return json.loads(df.to_json(orient="records")) if len(df) else []


def _is_baseline(row) -> bool:
    return float(row["rho"]) == 0.0 and float(row["alpha"]) == 1.0


def _token_fraction_unit(ref: pd.DataFrame) -> float:
    """Fraction of a run's tokens per budget unit (sequence), from the reference runs' records
    (gamma = budget x epochs / all sequences). The law is fitted with x in that unit, as the paper
    does (its curve_fit p0 assumes it); budgets and effective data stay in sequences. 1 when the
    records do not say (CSV input without gamma / target_epochs)."""
    if not {"gamma", "target_epochs", "budget"} <= set(ref.columns) or ref.empty:
        return 1.0
    unit = pd.to_numeric(ref["gamma"], errors="coerce") / (
        pd.to_numeric(ref["target_epochs"], errors="coerce") * pd.to_numeric(ref["budget"], errors="coerce")
    )
    unit = unit[np.isfinite(unit) & (unit > 0)]
    return float(unit.median()) if len(unit) else 1.0


def analyze_runs(table, *, form: str = "paper", n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Analysis:
    """Group runs by target domain, fit each domain's reference law, and read every fine-tuning and
    mid-training cell against its baseline (same domain, strategy, budget and epochs; the baseline is
    rho = 0, alpha = 1). Intervals come from a seed bootstrap where both cells have >= 2 seeds."""
    from replaylab.analysis.bootstrap import ReferenceBootstrap
    from replaylab.analysis.law import AnalysisError, fit_reference_law
    from replaylab.analysis.tables import select_cells

    cells, runs, notes = select_cells(table)
    domains: dict[str, DomainResult] = {}
    for domain, dc in cells.groupby("target_domain", sort=True):
        dnotes: list[str] = []
        ref = dc[dc["strategy"] == "reference"].sort_values("budget").reset_index(drop=True)
        law, boot = None, None
        x_unit = _token_fraction_unit(table[(table["target_domain"] == domain) & (table["strategy"] == "reference")])
        if len(ref) >= 3:
            try:
                law = fit_reference_law(ref["budget"], ref["test_loss"], form=form, x_unit=x_unit)
            except AnalysisError as e:
                dnotes.append(f"reference law: {e}")
        else:
            dnotes.append(f"{len(ref)} reference budgets; the law needs >= 3, so no effective data for {domain!r}")
        if law is not None and law.diagnostics.degenerate:
            dnotes.append(f"the {form} fit is degenerate: {'; '.join(law.diagnostics.reasons)}")
        others = dc[dc["strategy"] != "reference"].reset_index(drop=True).copy()
        for col in ("effective_data", "multiplier", "ci_low", "ci_high"):
            others[col] = np.nan
        others["flags"] = "" if law is not None else "no reference law"
        comparisons: list[Comparison] = []
        cis: dict[int, BootstrapCI] = {}
        ci_notes: dict[int, str] = {}
        group_keys = ["strategy", "budget", "target_epochs"]
        for gkey, g in others.groupby(group_keys, dropna=False, sort=True):
            base_rows = g[[_is_baseline(r) for _, r in g.iterrows()]]
            if base_rows.empty:
                dnotes.append(
                    f"{gkey[0]} budget={gkey[1]}: no baseline cell (rho=0, alpha=1); multipliers not computed"
                )
                continue
            base = base_rows.iloc[0]
            for idx, row in g.iterrows():
                if law is None:
                    continue
                eff = data_efficiency(law, row["test_loss"], base["test_loss"])
                if idx == base.name:
                    others.at[idx, "effective_data"] = (
                        eff.baseline_effective_data if eff.baseline_effective_data else np.nan
                    )
                else:
                    others.at[idx, "effective_data"] = eff.effective_data if eff.effective_data else np.nan
                others.at[idx, "multiplier"] = eff.multiplier if eff.multiplier is not None else np.nan
                others.at[idx, "flags"] = eff.note
                # A law that is not inverted gives no number, so no interval around one either.
                if row["n_seeds"] >= 2 and base["n_seeds"] >= 2 and idx != base.name and law.refusal is None:
                    if boot is None:
                        boot = ReferenceBootstrap(
                            {b: v for b, v in zip(ref["budget"], ref["test_losses"])},
                            form=form,
                            n_boot=n_boot,
                            seed=seed,
                            x_unit=x_unit,
                        )
                    try:
                        ci = boot.multiplier_ci(
                            row["test_losses"], base["test_losses"], level=level, stream=1 + int(idx)
                        )
                    except AnalysisError as e:  # e.g. every resample below the law's floor: say so, go on
                        ci_notes[idx] = f"no confidence interval: {e}"
                        dnotes.append(f"{row['label']}: {ci_notes[idx]}")
                        others.at[idx, "flags"] = "; ".join(x for x in (eff.note, ci_notes[idx]) if x)
                        continue
                    others.at[idx, "ci_low"], others.at[idx, "ci_high"] = ci.low, ci.high
                    cis[idx] = ci
            comparisons += _headline(str(domain), gkey[0], g, base, law, cis, ci_notes)
        if not others.empty and law is not None and law.refusal is None and boot is None:
            dnotes.append("one seed per cell: no confidence intervals (run >= 2 seeds per cell)")
        domains[str(domain)] = DomainResult(str(domain), law, ref, others, comparisons, dnotes)
    return Analysis(form=form, level=level, n_boot=n_boot, domains=domains, notes=notes, runs=runs)


def _headline(
    domain: str,
    strategy: str,
    g: pd.DataFrame,
    base: pd.Series,
    law: ReferenceLaw | None,
    cis: dict[int, BootstrapCI],
    ci_notes: dict[int, str],
) -> list[Comparison]:
    """The paper's headline comparisons within one (strategy, budget, epochs) group; the best rho / alpha
    is chosen on the select half, its multiplier read on the report half."""
    from replaylab.analysis.tables import pick_best

    picks = []
    if strategy == "finetune":
        replay = g[g["rho"] > 0]
        if not replay.empty:
            picks.append(("finetune", *pick_best(replay)))
    elif strategy == "midtrain":
        replay = g[(g["rho"] > 0) & (g["alpha"] == 1.0)]
        if not replay.empty:
            picks.append(("midtrain_replay", *pick_best(replay)))
        picks.append(("midtrain_best", *pick_best(g)))
    out = []
    for kind, cand, how in picks:
        eff = data_efficiency(law, cand["test_loss"], base["test_loss"]) if law is not None else None
        out.append(
            Comparison(
                domain=domain,
                kind=kind,
                baseline=base.to_dict(),
                candidate=cand.to_dict(),
                efficiency=eff,
                ci=cis.get(cand.name),
                selection=how,
                ci_note=ci_notes.get(cand.name, ""),
            )
        )
    return out
