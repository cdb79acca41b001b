"""Property tests (hypothesis) of the analysis invariants over random reference curves, for every law
form: falling, rising, flat, noisy and kinked curves, losses on either side of the fitted range.

- a candidate with a higher loss than its baseline never gets a multiplier above 1, a lower one never
  below 1, an equal one exactly 1; effective data never rises with the loss;
- reference points that do not fall over the budgets (least-squares trend >= 0) are never inverted,
  and the row says why;
- a degenerate fit's flag is on every reading made through it;
- bootstrap intervals never lie wholly on the other side of 1, and a refused law gives no interval;
- through `analyze_runs`, the same holds for every row of the summary and cell tables.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replaylab.analysis import (
    FORMS,
    AnalysisError,
    analyze_runs,
    bootstrap_multiplier,
    data_efficiency,
    fit_reference_law,
)

BUDGET_GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

loss = st.floats(1.0, 9.0, allow_nan=False, allow_infinity=False)
# The bootstrap refits the law per resample; the robust fit's multi-start costs ~1 s per example.
BOOT_FORMS = ["paper", "loglinear", pytest.param("robust", marks=pytest.mark.slow)]


@st.composite
def reference_curves(draw):
    """(budgets, losses): a power law, a log-linear line, or free points, with optional noise."""
    budgets = sorted(draw(st.lists(st.sampled_from(BUDGET_GRID), min_size=3, max_size=6, unique=True)))
    x = np.asarray(budgets, dtype=float)
    shape = draw(st.sampled_from(["power", "loglinear", "flat", "free"]))
    if shape == "power":
        A, B, C = draw(st.floats(-3, 5)), draw(st.floats(-0.5, 1.5)), draw(st.floats(0.5, 5))
        y = C + A / x**B
    elif shape == "loglinear":
        y = draw(loss) - draw(st.floats(-0.5, 0.5)) * np.log(x)
    elif shape == "flat":
        y = np.full(x.size, draw(loss))
    else:
        y = np.asarray([draw(loss) for _ in budgets])
    noise = draw(st.sampled_from([0.0, 0.0, 1e-3, 0.05]))
    y = y + noise * np.asarray([draw(st.floats(-1, 1)) for _ in budgets])
    return budgets, [float(v) for v in y]


def _falls(budgets, losses) -> bool:
    """The points' own least-squares trend over ln(budget), computed independently of replaylab."""
    return float(np.polyfit(np.log(budgets), losses, 1)[0]) < 0


def _fit(budgets, losses, form):
    try:
        return fit_reference_law(budgets, losses, form=form)
    except AnalysisError:
        return None  # e.g. the paper's curve_fit not converging: a clear error, nothing to invert


def _points_the_way(multiplier: float, cand: float, base: float) -> bool:
    if cand > base:
        return multiplier <= 1.0
    if cand < base:
        return multiplier >= 1.0
    return multiplier == 1.0


@pytest.mark.parametrize("form", FORMS)
@SETTINGS
@given(curve=reference_curves(), cand=loss, base=loss, equal=st.booleans())
def test_multipliers_point_the_way_the_losses_do(form, curve, cand, base, equal):
    budgets, losses = curve
    law = _fit(budgets, losses, form)
    if law is None:
        return
    base = cand if equal else base
    eff = data_efficiency(law, cand, base)
    if eff.multiplier is not None:
        assert math.isfinite(eff.multiplier) and eff.multiplier > 0
        assert _points_the_way(eff.multiplier, cand, base), (law.params, cand, base, eff.multiplier)
        assert eff.effective_data / eff.baseline_effective_data == eff.multiplier
    else:
        assert eff.note and eff.describe() in ("not invertible", "law not inverted")
    if not _falls(budgets, losses):
        assert law.refusal is not None and eff.multiplier is None and eff.effective_data is None
        assert eff.law_flag == "not inverted" and "do not fall" in eff.note
    if law.diagnostics.degenerate:
        assert eff.law_flag in ("degenerate", "not inverted") and eff.note
    else:
        assert eff.law_flag == ""
    # Effective data never rises with the loss, wherever it is defined.
    grid = np.linspace(min(losses) - 1, max(losses) + 1, 9)
    ok = np.asarray(law.invertible(grid))
    if ok.sum() >= 2:
        xs = law.effective_data(grid[ok])
        assert (np.diff(xs) <= 0).all()


@pytest.mark.parametrize("form", BOOT_FORMS)
@settings(SETTINGS, max_examples=15)
@given(
    curve=reference_curves(),
    cand=st.lists(loss, min_size=2, max_size=3),
    base=st.lists(loss, min_size=2, max_size=3),
    spread=st.floats(0.0, 0.1),
    seed=st.integers(0, 3),
)
def test_intervals_never_lie_on_the_wrong_side_of_one(form, curve, cand, base, spread, seed):
    budgets, losses = curve
    ref = {b: [v - spread, v + spread] for b, v in zip(budgets, losses)}
    point = _fit(budgets, losses, form)
    try:
        ci = bootstrap_multiplier(ref, cand, base, form=form, n_boot=20, seed=seed)
    except AnalysisError:
        return  # refused: a law that does not fall, a skewed resample, a fit that fails
    assert point is not None and point.refusal is None  # a refused law never gets an interval
    assert ci.low <= ci.high
    lm, lb = float(np.mean(cand)), float(np.mean(base))
    if lm > lb:
        assert ci.low <= 1.0
    if lm < lb:
        assert ci.high >= 1.0


@pytest.mark.parametrize("form", BOOT_FORMS)
@settings(SETTINGS, max_examples=12)
@given(curve=reference_curves(), cells=st.lists(loss, min_size=2, max_size=4))
def test_every_row_of_an_analysis_points_the_right_way(form, curve, cells):
    budgets, losses = curve
    rows = [
        dict(strategy="reference", target_domain="t", seed=s, budget=b, target_test_loss=v + 0.01 * s)
        for s in (0, 1)
        for b, v in zip(budgets, losses)
    ]
    rows += [
        dict(
            strategy="finetune",
            target_domain="t",
            seed=s,
            budget=8,
            rho=i / 10,
            alpha=1.0,
            target_val_loss=v + 0.01 * s,
            target_test_loss=v + 0.01 * s,
        )
        for s in (0, 1)
        for i, v in enumerate(cells)
    ]
    a = analyze_runs(pd.DataFrame(rows), form=form, n_boot=20)
    dom = a.domains["t"]
    refused = dom.law is None or dom.law.refusal is not None
    for _, r in a.summary_frame().iterrows():
        if not pd.isna(r["multiplier"]):
            assert not refused and _points_the_way(r["multiplier"], r["candidate_loss"], r["baseline_loss"])
        if not pd.isna(r["ci_low"]):
            assert not refused
            assert not (r["candidate_loss"] > r["baseline_loss"] and r["ci_low"] > 1)
            assert not (r["candidate_loss"] < r["baseline_loss"] and r["ci_high"] < 1)
        if dom.law is not None and dom.law.diagnostics.degenerate:
            assert r["law_flag"] in ("degenerate", "not inverted") and r["flags"]
    base = dom.cells[dom.cells["rho"] == 0.0].iloc[0]
    for _, c in dom.cells.iterrows():
        if not pd.isna(c["multiplier"]):
            assert _points_the_way(c["multiplier"], c["test_loss"], base["test_loss"])
        if dom.law is not None and dom.law.diagnostics.degenerate:
            assert c["flags"]
