"""The two-stage solver against hand-computed points, infeasible points, and the strategy builders."""

import pytest

from replaylab.errors import ConfigError, ReplaylabError
from replaylab.schedule import finetune, midtrain, reference, replay_fraction, solve_two_stage

BASE = {
    "data": {"domains": {"generic": {"source": "generic"}, "code": {"source": "code"}}},
    "train": {"total_steps": 1024, "batch_size": 1024},
}


@pytest.mark.parametrize("rho, lengths", [(0.0, [32, 16, 8, 4]), (0.875, [256, 128, 64, 32])])
def test_paper_midtraining_grid_stage2_lengths(rho, lengths):
    # gamma = 1/32, T = 1024: stage 2 = gamma * alpha / (1 - rho) * T steps.
    got = [solve_two_stage(1 / 32, rho=rho, alpha=a, total_steps=1024).stage2_steps for a in (1, 0.5, 0.25, 0.125)]
    assert got == lengths


def test_any_two_fix_the_third_and_weights_balance():
    p = solve_two_stage(0.1, rho=0.5, alpha=0.5)
    assert p.delta == pytest.approx(0.1)
    assert p.w2 == pytest.approx(0.5)
    assert p.w1 == pytest.approx(0.1 * 0.5 / 0.9)
    assert p.w1 * (1 - p.delta) + p.w2 * p.delta == pytest.approx(p.gamma)
    q = solve_two_stage(0.1, rho=0.5, delta=0.1)
    assert q.alpha == pytest.approx(0.5)
    r = solve_two_stage(0.1, alpha=0.5, delta=0.1)
    assert r.rho == pytest.approx(0.5)


def test_rounding_is_deterministic_and_realized_values_recorded():
    # gamma = 1/32, rho = 0.25 -> delta = 1/24, 42.67 steps of 1024 -> 43; alpha kept, rho re-derived.
    p = solve_two_stage(1 / 32, rho=0.25, alpha=1.0, total_steps=1024)
    assert (p.stage1_steps, p.stage2_steps) == (981, 43)
    assert p.alpha == 1.0 and p.delta == 43 / 1024
    assert p.rho == pytest.approx(1 - 32 / 43)
    assert p.w2 * p.stage2_steps == pytest.approx(32)  # target steps' worth of tokens preserved exactly
    # rounding down would need w2 > 1: the boundary moves the other way instead
    p = solve_two_stage(0.0105, rho=0.0, alpha=1.0, total_steps=100)
    assert p.stage2_steps == 2 and p.w2 <= 1


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(gamma=0.5, rho=0.75, alpha=1.0), "delta = 2 > 1"),
        (dict(gamma=0.5, rho=0.0, alpha=0.0), "w1 = 0.5"),  # feasible: check it does not raise below
        (dict(gamma=0.9, rho=0.9, alpha=0.1), "w1"),
        (dict(gamma=1.5, rho=0.0, alpha=1.0), "gamma=1.5"),
        (dict(gamma=0.1, rho=0.5), "exactly two"),
        (dict(gamma=0.1, rho=1.2, alpha=0.5), "rho=1.2"),
    ],
)
def test_infeasible_points_name_the_problem_and_the_feasible_range(kwargs, words):
    if words == "w1 = 0.5":
        solve_two_stage(**kwargs)
        return
    with pytest.raises(ConfigError) as e:
        solve_two_stage(**kwargs)
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_infeasible_message_gives_feasible_interval():
    with pytest.raises(ReplaylabError, match=r"feasible alpha lies in \[0, 0\.333\]"):
        solve_two_stage(0.5, rho=0.75, alpha=1.0)


def test_too_few_steps_for_two_stages():
    with pytest.raises(ConfigError, match="stage 2 needs"):
        # 9.5 target steps' worth split 2.2 / 7.3: whole stages need 3 + 8 > 10 steps
        solve_two_stage(0.95, rho=0.0, alpha=2.2 / 9.5, total_steps=10)
    with pytest.raises(ConfigError, match="at least 2 steps"):
        solve_two_stage(0.5, rho=0.0, alpha=0.5, total_steps=1)


def test_reference_builder_paper_defaults():
    cfg = reference(BASE, budget_multiple=4)
    assert cfg.meta["strategy"] == "reference"
    assert cfg.meta["budget"] == 4096 and cfg.data.domains["code"].budget == 4096
    assert cfg.data.domains["code"].epochs == 32
    assert cfg.meta["gamma"] == pytest.approx(4 / 1024 * 32)
    assert cfg.stage_steps() == [1024]
    assert cfg.stages[0].mixture["code"] == pytest.approx(0.125)
    assert cfg.stages[0].lr.peak == pytest.approx(3e-3)


@pytest.mark.parametrize("m, ft_steps", [(1, 64), (1.125, 72), (1.5, 96), (2, 128), (4, 256)])
def test_finetune_replay_stretches_finetuning_and_keeps_total(m, ft_steps):
    cfg = finetune(BASE, multiplier=m)
    assert cfg.stage_steps() == [1024 - ft_steps, ft_steps]
    assert sum(cfg.stage_steps()) == 1024
    pre, ft = cfg.stages
    assert pre.mixture == {"generic": 1.0} and pre.lr.peak == pytest.approx(1e-3)
    assert ft.optimizer == "reset" and ft.lr.schedule == "cosine" and ft.lr.peak == pytest.approx(3e-4)
    assert ft.mixture["code"] == pytest.approx(1 / m)
    assert cfg.meta["rho"] == pytest.approx(replay_fraction(m))
    assert cfg.meta["lr"] == pytest.approx(3e-4) and cfg.data.domains["code"].epochs == 64


def test_midtrain_one_wsd_two_mixtures_no_reset():
    cfg = midtrain(BASE, rho=0.5, alpha=0.5)
    assert cfg.stage_steps() == [1024 - 32, 32]
    s1, s2 = cfg.stages
    assert s1.lr.schedule == "wsd" and s1.lr.decay == pytest.approx(0.1) and s2.lr.schedule == "continue"
    assert s2.optimizer == "carry"
    assert s1.mixture["code"] * 992 + s2.mixture["code"] * 32 == pytest.approx(32)  # gamma * T target steps
    assert cfg.meta["alpha"] == 0.5 and cfg.meta["rho"] == pytest.approx(0.5)


def test_lr_group_ties_runs_that_differ_only_in_lr():
    a, b = finetune(BASE, multiplier=2, lr=1e-4), finetune(BASE, multiplier=2, lr=3e-4)
    c = finetune(BASE, multiplier=3, lr=1e-4)
    assert a.meta["lr_group"] == b.meta["lr_group"] != c.meta["lr_group"]


def test_builder_errors_are_actionable():
    with pytest.raises(ConfigError, match="fewer epochs"):
        reference(BASE, budget_multiple=64)  # 64/1024 x 32 epochs > all tokens
    with pytest.raises(ConfigError, match="target domain 'math'"):
        reference(BASE, target="math")
    with pytest.raises(ConfigError, match="rounds to 0"):
        reference({**BASE, "train": {"total_steps": 10, "batch_size": 2}})


@pytest.mark.parametrize(
    "build, words",
    [
        # an overflowing budget: budget_multiple x fraction x steps x batch is inf (it reached math.floor before)
        (lambda: reference(BASE, budget_multiple=1.7976931348623157e308), "budget_multiple=1.79769e+308"),
        (lambda: reference(BASE, budget_multiple=1e300, epochs=1e-300), "beyond a 64-bit count"),
        (lambda: reference(BASE, budget_multiple=float("nan")), "budget_multiple=nan"),
        # realized rho = 1: no target sequence drawn (it divided by 1 - rho = 0 before)
        (lambda: finetune(BASE, rho=0.5, epochs=1e-300), "epochs=1e-300 over a budget of 1024"),
        (lambda: midtrain(BASE, epochs=float("nan")), "epochs=nan"),
        (lambda: finetune(BASE, multiplier=float("nan")), "multiplier=nan"),
        # one target sequence in a stage of 2**60 sequences: a share below float resolution
        (
            lambda: finetune(
                {**BASE, "train": {"total_steps": 1024, "batch_size": 2**60}}, rho=0.5, epochs=1, target_fraction=2**-70
            ),
            "realized rho = 1",
        ),
        # the base's run shape is read as the run config reads it (int() took "abc" and nan before)
        (
            lambda: reference({**BASE, "train": {"total_steps": "abc", "batch_size": 8}}),
            "train.total_steps: expected a whole",
        ),
        (lambda: finetune({**BASE, "train": {"total_steps": float("nan")}}, rho=0.5), "train.total_steps: nan"),
        (
            lambda: midtrain({**BASE, "train": {"total_steps": 1024, "batch_size": 2.5}}),
            "train.batch_size: expected a whole",
        ),
        (lambda: reference({**BASE, "train": {"total_steps": 0}}), "train.total_steps must be >= 1, got 0"),
        (
            lambda: finetune(
                {**BASE, "train": {"total_steps": 2**62, "batch_size": 1}}, rho=0.5, target_fraction=0.5, epochs=1
            ),
            "above the 1,000,000 steps",
        ),
    ],
)
def test_builders_refuse_extreme_arguments_with_a_config_error(build, words):
    with pytest.raises(ConfigError) as e:
        build()
    assert words in str(e.value)
    assert "\n" not in str(e.value)
