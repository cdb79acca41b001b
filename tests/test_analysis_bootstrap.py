"""Seed-bootstrap intervals: nominal coverage in a simulation with a known multiplier, determinism,
and resamples that fall below the law's asymptote."""

from __future__ import annotations

import math

import numpy as np
import pytest

from replaylab.analysis import AnalysisError, ReferenceBootstrap, bootstrap_multiplier

BUDGETS = (1, 2, 4, 8, 16)


def _draw(rng, truth, n_seeds, sigma, x_method, x_base):
    ref = {b: truth(b) + rng.normal(0, sigma, n_seeds) for b in BUDGETS}
    return ref, truth(x_method) + rng.normal(0, sigma, n_seeds), truth(x_base) + rng.normal(0, sigma, n_seeds)


def test_ci_covers_the_true_multiplier_at_its_nominal_rate():
    """A log-linear truth (fast closed-form fits), 5 seeds per cell, true multiplier 2: a 90% interval
    must contain 2 in about 90% of simulated sweeps (binomial sd ~3% over 150 sweeps)."""
    rng = np.random.default_rng(123)
    truth = lambda x: 5.0 - 0.5 * np.log(x)  # noqa: E731
    n_sims, hits, widths = 150, 0, []
    for s in range(n_sims):
        ref, m, b = _draw(rng, truth, 5, 0.05, 6.0, 3.0)
        ci = bootstrap_multiplier(ref, m, b, form="loglinear", n_boot=200, level=0.9, seed=s)
        hits += ci.low <= 2.0 <= ci.high
        widths.append(ci.high - ci.low)
    coverage = hits / n_sims
    assert 0.82 <= coverage <= 0.97, coverage
    assert np.median(widths) < 1.0  # informative, not trivially wide


def test_ci_is_deterministic_for_a_seed():
    rng = np.random.default_rng(5)
    ref, m, b = _draw(rng, lambda x: 2.0 + 3.0 / x**0.5, 3, 0.01, 6.0, 3.0)
    one = bootstrap_multiplier(ref, m, b, form="paper", n_boot=200, seed=7)
    two = bootstrap_multiplier(ref, m, b, form="paper", n_boot=200, seed=7)
    other = bootstrap_multiplier(ref, m, b, form="paper", n_boot=200, seed=8)
    assert one == two
    assert (one.low, one.high) != (other.low, other.high)
    assert one.low < 2.0 < one.high


def test_shared_reference_bootstrap_gives_the_same_interval():
    rng = np.random.default_rng(9)
    ref, m, b = _draw(rng, lambda x: 2.0 + 3.0 / x**0.5, 3, 0.01, 6.0, 3.0)
    boot = ReferenceBootstrap(ref, form="paper", n_boot=200, seed=3)
    assert boot.multiplier_ci(m, b, level=0.95) == bootstrap_multiplier(ref, m, b, n_boot=200, seed=3)


def test_resamples_below_the_asymptote_count_as_infinite_not_nan():
    truth = lambda x: 2.0 + 3.0 / x**0.5  # noqa: E731
    ref = {b: [truth(b) - 0.001, truth(b) + 0.001] for b in BUDGETS}
    # The method sits right at the floor: some resamples fall below C, giving an infinite multiplier.
    ci = bootstrap_multiplier(ref, [1.95, 2.05, 2.02], [truth(2.0)] * 2, form="paper", n_boot=300, seed=0)
    assert ci.n_not_invertible > 0
    assert math.isinf(ci.high) and not math.isnan(ci.low)
    assert "inf" in ci.describe()


def test_bad_arguments_raise():
    ref = {b: [2.0 + 3.0 / b**0.5] for b in BUDGETS}
    with pytest.raises(AnalysisError, match="level"):
        bootstrap_multiplier(ref, [2.5, 2.6], [2.7, 2.8], level=95)
    with pytest.raises(AnalysisError, match="n_boot"):
        bootstrap_multiplier(ref, [2.5, 2.6], [2.7, 2.8], n_boot=3)
    with pytest.raises(AnalysisError, match="finite"):
        bootstrap_multiplier(ref, [float("nan")], [2.7, 2.8])
