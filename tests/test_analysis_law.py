"""The reference law: recovery of known parameters, inversion, the paper's degenerate fit on the
pilot's real numbers, non-invertible losses and extrapolation."""

from __future__ import annotations

import numpy as np
import pytest

from replaylab.analysis import (
    AnalysisError,
    NotInvertibleError,
    data_efficiency,
    fit_reference_law,
)
from replaylab.errors import ReplaylabError

# /work/shared/PILOT.md: reference runs at budgets 16..1024 sequences (seed 0), and FT losses at U = 64.
PILOT_BUDGETS = [16, 32, 64, 128, 256, 512, 1024]
PILOT_LOSSES = [6.379, 5.902, 5.432, 4.944, 4.479, 4.052, 3.698]
PILOT_NO_REPLAY, PILOT_RHO_HALF = 5.498, 5.319


@pytest.mark.parametrize("form", ["paper", "robust"])
@pytest.mark.parametrize("A,B,C", [(3.0, 0.5, 2.0), (4.0, 0.35, 1.2), (0.8, 0.7, 3.1)])
def test_power_law_parameters_are_recovered(form, A, B, C):
    x = np.array([1, 2, 4, 8, 16, 32], dtype=float) / 1024  # the paper's unit: fraction of tokens
    law = fit_reference_law(x * 1024, C + A / (x * 1024) ** B, form=form)
    assert law.params["A"] == pytest.approx(A, rel=1e-4)
    assert law.params["B"] == pytest.approx(B, rel=1e-4)
    assert law.params["C"] == pytest.approx(C, rel=1e-4)
    assert law.diagnostics.r2 > 0.999999 and not law.diagnostics.degenerate
    assert law.diagnostics.budget_range == (1.0, 32.0)


def test_noisy_power_law_is_recovered_within_noise():
    rng = np.random.default_rng(0)
    x = np.geomspace(16, 1024, 7)
    y = 2.0 + 3.0 / x**0.5 + rng.normal(0, 0.002, x.size)
    for form in ("paper", "robust"):
        law = fit_reference_law(x, y, form=form)
        assert law.params["B"] == pytest.approx(0.5, abs=0.1)
        assert law.params["C"] == pytest.approx(2.0, abs=0.05)


def test_loglinear_parameters_are_recovered():
    x = np.geomspace(1, 64, 7)
    law = fit_reference_law(x, 5.0 - 0.4 * np.log(x), form="loglinear")
    assert law.params == pytest.approx({"a": 5.0, "b": 0.4})
    assert law.asymptote == -np.inf


@pytest.mark.parametrize("form", ["paper", "robust", "loglinear"])
def test_effective_data_inverts_predict(form):
    law = fit_reference_law(PILOT_BUDGETS, PILOT_LOSSES, form=form)
    x = np.geomspace(8, 2048, 25)
    np.testing.assert_allclose(law.effective_data(law.predict(x)), x, rtol=1e-9)
    assert law.effective_data(law.predict(100.0)) == pytest.approx(100.0, rel=1e-9)


def test_multiplier_does_not_depend_on_the_budget_unit():
    y = 2.0 + 3.0 / np.geomspace(16, 256, 5) ** 0.5
    reads = []
    for scale in (1.0, 256.0, 1 / 16384):  # sequences, tokens, fraction of a run's tokens
        law = fit_reference_law(np.geomspace(16, 256, 5) * scale, y, form="robust")
        reads.append(data_efficiency(law, 2.3, 2.4).multiplier)
    assert reads == pytest.approx([reads[0]] * 3, rel=1e-6)


def test_pilot_paper_fit_degenerates_and_is_reported():
    law = fit_reference_law(PILOT_BUDGETS, PILOT_LOSSES, form="paper")
    d = law.diagnostics
    assert d.params["B"] == pytest.approx(0.0647, abs=0.002)
    assert d.params["C"] < 0
    assert d.degenerate
    assert any("near 0" in r for r in d.reasons) and any("negative" in r for r in d.reasons)
    assert "DEGENERATE" in d.summary()
    # The pilot's reported reading: rho = 0.5 vs no replay at U = 64, seed 0 -> 1.30x; no replay worth ~56 seqs.
    eff = data_efficiency(law, PILOT_RHO_HALF, PILOT_NO_REPLAY)
    assert eff.multiplier == pytest.approx(1.30, abs=0.005)
    assert eff.baseline_effective_data == pytest.approx(56, abs=1)


@pytest.mark.parametrize("form", ["robust", "loglinear"])
def test_pilot_well_posed_forms_behave(form):
    law = fit_reference_law(PILOT_BUDGETS, PILOT_LOSSES, form=form)
    assert not law.diagnostics.degenerate, law.diagnostics.reasons
    assert law.diagnostics.r2 > 0.99
    if form == "robust":
        assert law.params["B"] > 0.1 and 0 <= law.params["C"] < min(PILOT_LOSSES)
    mult = data_efficiency(law, PILOT_RHO_HALF, PILOT_NO_REPLAY).multiplier
    assert 1.2 < mult < 1.4


def test_degenerate_blowup_is_detected():
    # Exactly log-linear points: the power law can only follow them with B -> 0 and huge |A|, |C|.
    x = np.geomspace(1, 16, 5)
    law = fit_reference_law(x, 4.0 - 0.3 * np.log(x), form="paper")
    assert law.diagnostics.degenerate
    assert law.params["B"] < 0.1


def test_loss_at_or_below_the_asymptote_is_not_invertible():
    law = fit_reference_law([1, 2, 4, 8, 16], [2.0 + 3.0 / x**0.5 for x in (1, 2, 4, 8, 16)], form="paper")
    for loss in (law.params["C"], 1.5):
        assert not law.invertible(loss)
        with pytest.raises(NotInvertibleError, match="asymptote"):
            law.effective_data(loss)
        eff = data_efficiency(law, loss, 3.0)
        assert not eff.invertible and eff.multiplier is None and eff.effective_data is None
        assert "not invertible" in eff.describe() and "asymptote" in eff.note
    with pytest.raises(NotInvertibleError):
        law.effective_data(np.array([3.0, 1.0]))
    flipped = data_efficiency(law, 3.0, 1.5)  # baseline below the floor: no ratio either
    assert flipped.multiplier is None and flipped.effective_data is not None


def test_extrapolation_is_flagged():
    x = [16, 32, 64, 128]
    law = fit_reference_law(x, [2.0 + 3.0 / v**0.5 for v in x], form="paper")
    inside = data_efficiency(law, law.predict(100.0), law.predict(20.0))
    assert not inside.extrapolated and inside.multiplier == pytest.approx(5.0)
    outside = data_efficiency(law, law.predict(1000.0), law.predict(20.0))
    assert outside.extrapolated and "extrapolated" in outside.note
    assert outside.multiplier == pytest.approx(50.0)


@pytest.mark.parametrize(
    "budgets,losses,match",
    [
        ([1, 2], [3.0, 2.9], "at least 3 distinct budgets"),
        ([1, 1, 1, 2], [3.0, 3.1, 3.0, 2.9], "at least 3 distinct budgets"),
        ([0, 1, 2], [3.0, 2.9, 2.8], "not positive"),
        ([1, 2, 4], [3.0, float("nan"), 2.8], "finite"),
        ([1, 2, 4], [3.0, 2.9], "differ in length"),
    ],
)
def test_bad_inputs_raise_one_clear_error(budgets, losses, match):
    with pytest.raises(AnalysisError, match=match) as e:
        fit_reference_law(budgets, losses)
    assert isinstance(e.value, ReplaylabError) and "\n" not in str(e.value)


def test_unknown_form_names_the_choices():
    with pytest.raises(ReplaylabError, match="paper, loglinear, robust"):
        fit_reference_law([1, 2, 4], [3, 2.5, 2.2], form="chinchilla")


def test_x_unit_fits_in_the_papers_unit_and_reports_in_the_callers():
    """The paper's curve_fit starts from a p0 made for budgets as fractions of all tokens: fitting
    sequence counts with x_unit = fraction per sequence must give the law fitted on fractions,
    with effective data read back in sequences."""
    seqs = np.array([48.0, 96, 192, 384, 768])
    losses = np.array([6.902, 6.214, 5.779, 5.521, 5.063])  # a real demo sweep's reference points
    unit = 1 / 6144  # 6144 sequences per run
    on_fractions = fit_reference_law(seqs * unit, losses, form="paper")
    scaled = fit_reference_law(seqs, losses, form="paper", x_unit=unit)
    assert scaled.params == on_fractions.params and not scaled.diagnostics.degenerate
    assert scaled.predict(192.0) == pytest.approx(on_fractions.predict(192.0 * unit))
    assert scaled.effective_data(scaled.predict(100.0)) == pytest.approx(100.0)
    naive = fit_reference_law(seqs, losses, form="paper")  # raw sequence counts from the paper's p0
    assert naive.diagnostics.degenerate  # why analysis passes the unit
