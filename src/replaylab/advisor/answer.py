"""The answer: which replay fraction, what it is worth in target data (with an interval), what it saves of the
general domain, and one plain verdict. Read from the advice sweep's run table (`sweep.results.load_results`).

Method (docs/advisor.md): each cell's LR is the one with the lowest mean select-half loss over seeds
(`sweep.results.select_lr`, the `selected` column); losses are reported on the report half. The no-replay
cells at budgets N/8..N are this model's data-efficiency curve; a law fitted to them is inverted to read a
replay cell's effective data (analysis.law, analysis.efficiency), and the seed bootstrap of the analysis
(`ReferenceBootstrap`: resample each cell's seeds, refit, re-read) gives the 95% interval. The analysis'
invariants hold here too: a curve that does not fall is never inverted (`ReferenceLaw.refusal`), and a
multiplier points the way its losses do (`points_the_way_of`). Every flag ends in the sentence the user reads.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from replaylab.advisor.forgetting import Change, TaskResult, task_sentence
from replaylab.analysis.bootstrap import ReferenceBootstrap
from replaylab.analysis.efficiency import data_efficiency
from replaylab.analysis.law import AnalysisError, fit_reference_law

N_BOOT = 1000
LEVEL = 0.95


@dataclass
class CellResult:
    budget: int
    rho: float
    lr: float  # chosen on the select half
    lr_edge: str  # "" or "low"/"high": the chosen LR sits at the edge of the grid
    seeds: int
    select_loss: float  # mean over seeds
    target_loss: float  # report half, mean over seeds
    target_sd: float
    general_loss: float  # the replay/general domain, report half
    target_losses: list[float] = field(default_factory=list)
    select_losses: list[float] = field(default_factory=list)


@dataclass
class ReplayResult:
    rho: float
    multiplier: float | None  # x_eff(replay) / x_eff(no replay), both at the sub-budget
    low: float | None
    high: float | None
    bound: str  # "" | "at least" | "at most": a loss lies beyond the measured curve (extrapolated)
    bound_value: float | None  # then: the multiplier with both effective data held inside the measured budgets
    effective_data: float | None
    wins: float  # share of bootstrap draws in which this R has the lowest select loss
    loss_diff: float  # target report loss: replay - none (negative = replay better)
    diff_low: float
    diff_high: float
    note: str


@dataclass
class Advice:
    """The advisor's answer (advice.json), with every number the sentence rests on."""

    verdict: str
    recommended_rho: float
    recommended_lr: float
    budget: int
    sub_budget: int
    curve: list[CellResult]
    replay: list[ReplayResult]
    wins: dict[str, float]  # R -> share of bootstrap draws it wins (R = 0 included)
    law: str  # the law fitted to the no-replay curve, or why it is not inverted
    law_refused: bool
    flags: list[str]
    forgetting: dict[str, float | None]  # general-domain loss: base model, no replay, recommended R
    cells: list[CellResult]
    missing: list[str]  # cells without finished runs
    command: str = ""  # the ready-to-run command with the recommended fraction and LR (advisor.report)
    replay_mixture: str = ""  # the same as ReplayMixture arguments
    tasks: list[TaskResult] = field(default_factory=list)  # forgetting on the user's tasks (advisor/forgetting.py)

    def to_dict(self) -> dict:
        return asdict(self)


def _edge(lr: float, lrs: list[float]) -> str:
    if len(lrs) < 2:
        return ""
    return "low" if lr == min(lrs) else "high" if lr == max(lrs) else ""


def cell_results(table: pd.DataFrame) -> tuple[list[CellResult], list[str]]:
    """One row per (budget, R) at its selected LR; a cell whose runs did not finish is named in `missing`."""
    out, missing = [], []
    table = table.copy()
    table["rho"] = table["rho"].astype(float).round(9)
    for (budget, rho), runs in table.groupby(["budget", "rho"], sort=True):
        done = runs[(runs["status"] == "done") & runs["selected"].astype(bool)]
        done = done.dropna(subset=["target_val_loss", "target_test_loss"])
        if done.empty:
            missing.append(f"R={rho:g} @ {int(budget)}")
            continue
        lrs = sorted({float(v) for v in runs["lr"].dropna()})
        lr = float(done["lr"].iloc[0])
        out.append(
            CellResult(
                budget=int(budget),
                rho=float(rho),
                lr=lr,
                lr_edge=_edge(lr, lrs),
                seeds=len(done),
                select_loss=float(done["target_val_loss"].mean()),
                target_loss=float(done["target_test_loss"].mean()),
                target_sd=float(done["target_test_loss"].std(ddof=1)) if len(done) > 1 else math.nan,
                general_loss=float(done["generic_test_loss"].mean()),
                target_losses=[float(v) for v in done.sort_values("seed")["target_test_loss"]],
                select_losses=[float(v) for v in done.sort_values("seed")["target_val_loss"]],
            )
        )
    return out, missing


def _win_shares(cells: list[CellResult], n_boot: int, seed: int) -> dict[float, float]:
    """How often each R has the lowest mean select loss when every cell's seeds are resampled."""
    rng = np.random.default_rng([seed, 99])
    losses = [np.asarray(c.select_losses) for c in cells]
    means = np.column_stack([v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1) for v in losses])
    counts = np.bincount(means.argmin(axis=1), minlength=len(cells))
    return {c.rho: float(n) / n_boot for c, n in zip(cells, counts)}


def _diff_ci(a: list[float], b: list[float], n_boot: int, seed: int, stream: int) -> tuple[float, float, float]:
    """Mean(a) - mean(b) with a seed-bootstrap percentile interval."""
    rng = np.random.default_rng([seed, stream])
    x, y = np.asarray(a), np.asarray(b)
    d = x[rng.integers(0, x.size, (n_boot, x.size))].mean(1) - y[rng.integers(0, y.size, (n_boot, y.size))].mean(1)
    tail = (1 - LEVEL) / 2
    lo, hi = np.quantile(d, [tail, 1 - tail])
    return float(x.mean() - y.mean()), float(lo), float(hi)


def _fmt_ci(m: float | None, lo: float | None, hi: float | None) -> str:
    if m is None:
        return "n/a"
    ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else ""
    return f"{m:.2f}x{ci}"


def answer(
    table: pd.DataFrame,
    *,
    budget: int,
    sub_budget: int,
    form: str,
    base_general: float | None,
    task_scores: dict | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Advice:
    """The answer from the advice sweep's run table; `task_scores`: advisor.tasks.collect_scores' (none: no tasks)."""
    cells, missing = cell_results(table)
    flags: list[str] = []
    if missing:
        flags.append(f"cells without a finished run are left out: {', '.join(missing)}")
    curve = [c for c in cells if c.rho == 0]
    at_sub = {c.rho: c for c in cells if c.budget == sub_budget}
    none = at_sub.get(0.0)
    replays = [c for r, c in sorted(at_sub.items()) if r > 0]
    if none is None or not replays:
        raise AnalysisError(
            f"no finished no-replay and replay cells at the sub-budget {sub_budget}; run `replaylab advise` again "
            "to finish the runs (done ones are skipped)"
        )
    for c in cells:
        if c.lr_edge:
            flags.append(
                f"{_cell(c)}: the chosen LR {c.lr:.3g} is at the {c.lr_edge} edge of its grid "
                "(widen --lr-factors or raise --lr-extend)"
            )
        if c.seeds < 2:
            flags.append(f"{_cell(c)}: {c.seeds} finished seed (no interval from one seed)")

    # The no-replay curve and its law.
    law_text, refused, boot, law = "", False, None, None
    if len({c.budget for c in curve}) < 3:
        refused, law_text = True, f"only {len(curve)} no-replay budgets finished; the curve needs >= 3"
    else:
        law = fit_reference_law([c.budget for c in curve], [c.target_loss for c in curve], form=form)
        d = law.diagnostics
        law_text = d.summary() if d else form
        if law.refusal is not None:  # the analysis calls the curve it inverts the reference: here it is no replay
            refused, law_text = True, "no-replay curve: " + law.refusal.replace("reference runs", "no-replay runs")
        else:
            if d and d.degenerate:
                flags.append(f"the {form} fit of the no-replay curve is degenerate ({'; '.join(d.reasons)})")
            if len(curve) < 4:
                flags.append(f"the no-replay curve has only {len(curve)} budgets (few points for a law)")
            try:
                boot = ReferenceBootstrap(
                    {c.budget: c.target_losses for c in curve}, form=form, n_boot=n_boot, seed=seed
                )
            except AnalysisError as e:
                flags.append(f"no interval: {e}")

    results = []
    for i, c in enumerate(replays):
        diff, dlo, dhi = _diff_ci(c.target_losses, none.target_losses, n_boot, seed, 100 + i)
        mult = lo = hi = eff = None
        bound, note, bound_value = "", "", None
        if law is not None and not refused:
            de = data_efficiency(law, c.target_loss, none.target_loss)
            mult, eff, note = de.multiplier, de.effective_data, de.note
            if de.extrapolated and mult is not None and eff and de.baseline_effective_data:
                # Beyond the measured curve the law's tail decides the number. Held inside the measured budgets,
                # each effective data moves toward the other, so the ratio becomes a bound on the true one.
                lo_x, hi_x = float(min(law.budgets)), float(max(law.budgets))
                inside = min(max(eff, lo_x), hi_x) / min(max(de.baseline_effective_data, lo_x), hi_x)
                bound, bound_value = ("at least" if c.target_loss < none.target_loss else "at most"), inside
            if boot is not None:
                try:
                    ci = boot.multiplier_ci(c.target_losses, none.target_losses, level=LEVEL, stream=i + 1)
                    lo, hi = ci.low, ci.high
                except AnalysisError as e:
                    note = "; ".join(filter(None, [note, f"no interval: {e}"]))
        results.append(ReplayResult(c.rho, mult, lo, hi, bound, bound_value, eff, 0.0, diff, dlo, dhi, note))

    contenders = [none, *replays]
    wins = _win_shares(contenders, n_boot, seed)
    for r in results:
        r.wins = wins[r.rho]
    best = min(contenders, key=lambda c: c.select_loss)
    best_replay = min(replays, key=lambda c: c.select_loss)
    rr = next(r for r in results if r.rho == best_replay.rho)
    for r in results:
        if r.bound:
            flags.append(
                f"R={r.rho:g}: a loss lies beyond the measured no-replay curve, so the multiplier is {r.bound} "
                f"{r.bound_value:.2f}x (within the measured budgets); the law's extrapolation gives {r.multiplier:.2f}x"
            )
        if r.note and "no interval" in r.note:
            flags.append(f"R={r.rho:g}: {r.note}")

    verdict = _verdict(best, best_replay, rr, none, refused, law_text, wins)
    # replay's second benefit, often the larger one for users: what it keeps of the general domain
    before = f"base model {base_general:.3f}, " if base_general is not None else ""
    verdict += (
        f" Forgetting (general loss, report half): {before}no replay {none.general_loss:.3f}, "
        f"R={best_replay.rho:g} {best_replay.general_loss:.3f}."
    )
    tasks = _task_results(table, task_scores, sub_budget, best_replay.rho, n_boot, seed) if task_scores else []
    if task_scores and not tasks:
        flags.append("no task scores for the no-replay and replay cells at the sub-budget (their runs did not finish)")
    if tasks:
        verdict += " " + task_sentence(tasks)
    if flags:
        verdict += " Flags: " + "; ".join(flags) + "."
    general_none = none.general_loss
    rec = best if best.rho > 0 else none
    return Advice(
        verdict=verdict,
        recommended_rho=best.rho,
        recommended_lr=best.lr,
        budget=budget,
        sub_budget=sub_budget,
        curve=curve,
        replay=results,
        wins={f"{k:g}": v for k, v in wins.items()},
        law=law_text,
        law_refused=refused,
        flags=flags,
        forgetting={
            "base": base_general,
            "no_replay": general_none,
            f"replay_{best_replay.rho:g}": best_replay.general_loss,
            "recommended": rec.general_loss,
        },
        cells=cells,
        missing=missing,
        tasks=tasks,
    )


def _task_results(table, scores: dict, sub_budget: int, rho: float, n_boot: int, seed: int) -> list[TaskResult]:
    """Per task and metric: base, no replay and R (means over seeds) and their changes with the seed bootstrap
    of the target-loss differences. An interval needs >= 2 seeds on each side that varies by seed (an HF
    model's one base does not)."""
    from replaylab.advisor import forgetting as fg
    from replaylab.advisor.tasks import ONE_BASE

    one_base = ONE_BASE in scores.get("base", {})
    base = fg.base_values(scores, sorted(int(s) for s in table["seed"].dropna().unique()))
    none = fg.seed_values(table, scores, sub_budget, 0.0)
    rep = fg.seed_values(table, scores, sub_budget, rho)
    out = []
    for i, key in enumerate(sorted(set(none) & set(rep))):
        b, n, r = base.get(key, []), none[key], rep[key]

        def change(a: list[float], c: list[float], c_fixed: bool, stream: int) -> Change:
            d, lo, hi = _diff_ci(a, c, n_boot, seed, stream)
            if len(a) < 2 or (len(c) < 2 and not c_fixed):
                lo = hi = None
            return Change(d, lo, hi)

        out.append(
            TaskResult(
                task=key[0],
                metric=key[1],
                rho=rho,
                items=fg.items_of(scores, key[0]),
                base=float(np.mean(b)) if b else None,
                no_replay=float(np.mean(n)),
                replay=float(np.mean(r)),
                none_vs_base=change(n, b, one_base, 200 + 3 * i) if b else None,
                replay_vs_base=change(r, b, one_base, 201 + 3 * i) if b else None,
                replay_vs_none=change(r, n, False, 202 + 3 * i),
                base_seeds=b,
                none_seeds=n,
                replay_seeds=r,
            )
        )
    return out


def _cell(c: CellResult) -> str:
    return f"R={c.rho:g} @ {c.budget}"


def _verdict(best, best_replay, rr: ReplayResult, none, refused: bool, law_text: str, wins: dict) -> str:
    where = f"(at {best_replay.budget} target sequences, {wins[best.rho]:.0%} of bootstrap draws pick it)"
    diff = (
        f"target loss {none.target_loss:.3f} -> {best_replay.target_loss:.3f} with R={best_replay.rho:g} "
        f"(difference {rr.loss_diff:+.3f} [{rr.diff_low:+.3f}, {rr.diff_high:+.3f}])"
    )
    if refused:
        return (
            f"More target data does not help this model here ({law_text}); replay cannot be valued by effective "
            f"data. Plain losses instead: {diff}. Recommended R={best.rho:g} {where}."
        )
    value = f"R={best_replay.rho:g} vs none: {_fmt_ci(rr.multiplier, rr.low, rr.high)}"
    if rr.bound:
        value = (
            f"R={best_replay.rho:g} vs none: {rr.bound} {rr.bound_value:.2f}x (extrapolated beyond the measured "
            f"budgets; the law's tail gives {_fmt_ci(rr.multiplier, rr.low, rr.high)})"
        )
    if rr.low is not None and rr.low > 1:
        return f"Replay helps: {value} the target data; {diff}. Recommended R={best.rho:g} {where}."
    why = (
        "its interval includes 1"
        if rr.low is not None and rr.high is not None and rr.high >= 1
        else ("its interval lies below 1" if rr.high is not None else "no interval")
    )
    return f"Replay does not help here: {value} ({why}); {diff}. Recommended R={best.rho:g} {where}."
