"""LR schedules: warmup, cosine, WSD, linear, constant; spans that continue across stages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from replaylab.config import from_dict
from replaylab.errors import ConfigError
from replaylab.runconfig import RunConfig
from replaylab.train.lr import lr_at, lr_schedule, lr_span_stages, lr_spans


def make_config(*stages) -> RunConfig:
    """stages: (steps, lr dict) pairs."""
    return from_dict(
        RunConfig,
        {
            "data": {"domains": {"g": {"source": "generic"}}},
            "stages": [
                {"name": f"s{i}", "steps": n, "mixture": {"g": 1.0}, "lr": lr} for i, (n, lr) in enumerate(stages)
            ],
            "train": {"total_steps": sum(n for n, _ in stages)},
        },
    )


def test_cosine_boundaries():
    lrs = lr_schedule(make_config((1000, {"schedule": "cosine", "peak": 3e-3, "final": 0.0, "warmup": 0.01})))
    assert lrs.shape == (1000,) and lrs.dtype == np.float64
    assert lrs[0] == pytest.approx(3e-4)  # warmup: 10 steps, the first one already at peak/10
    assert lrs[9] == 3e-3 and lrs[10] == 3e-3  # end of warmup = peak = start of the cosine
    assert (np.diff(lrs[:10]) > 0).all() and (np.diff(lrs[10:]) < 0).all()
    assert lrs[10 + 495] == pytest.approx(1.5e-3)  # half way through the cosine
    assert 0 < lrs[-1] < 1e-8  # one step short of final: the last update is not wasted


def test_cosine_to_nonzero_final_and_linear():
    lrs = lr_schedule(make_config((100, {"schedule": "cosine", "peak": 1.0, "final": 0.1, "warmup": 0.0})))
    assert lrs[0] == 1.0 and lrs[-1] == pytest.approx(0.1, abs=3e-4) and lrs.min() > 0.1
    lin = lr_schedule(make_config((100, {"schedule": "linear", "peak": 1.0, "final": 0.0, "warmup": 0.1})))
    assert lin[9] == 1.0 and lin[10] == 1.0 and lin[-1] == pytest.approx(1 / 90)
    assert np.allclose(np.diff(lin[10:]), -1 / 90)


def test_wsd_boundaries():
    lrs = lr_schedule(make_config((200, {"schedule": "wsd", "peak": 3e-3, "final": 0.0, "warmup": 0.01, "decay": 0.1})))
    assert lrs[0] == pytest.approx(1.5e-3) and lrs[1] == 3e-3  # 2 warmup steps
    assert (lrs[1:180] == 3e-3).all()  # stable until the last 10% (20 steps)
    assert lrs[180] == 3e-3 and lrs[181] == pytest.approx(3e-3 * 19 / 20)
    assert lrs[-1] == pytest.approx(3e-3 / 20)
    assert np.allclose(np.diff(lrs[180:]), -3e-3 / 20)


def test_constant_and_warmup_rounding():
    lrs = lr_schedule(make_config((10, {"schedule": "constant", "peak": 0.5, "warmup": 0.01})))
    assert lrs[0] == 0.5 and (lrs == 0.5).all()  # 1% of 10 steps rounds to 0, but warmup > 0 gives 1 step
    no_warm = lr_schedule(make_config((10, {"schedule": "constant", "peak": 0.5, "warmup": 0.0})))
    assert (no_warm == 0.5).all()
    short = lr_schedule(make_config((4, {"schedule": "constant", "peak": 1.0, "warmup": 0.5})))
    assert short.tolist() == [0.5, 1.0, 1.0, 1.0]


def test_continue_makes_one_curve_across_stages():
    one = lr_schedule(make_config((300, {"schedule": "wsd", "peak": 3e-3, "decay": 0.1})))
    two = lr_schedule(
        make_config((240, {"schedule": "wsd", "peak": 3e-3, "decay": 0.1}), (60, {"schedule": "continue", "peak": 9.0}))
    )  # its own params are ignored
    assert np.array_equal(one, two)
    cfg = make_config(
        (100, {"schedule": "cosine"}),
        (50, {"schedule": "continue"}),
        (50, {"schedule": "continue"}),
        (20, {"schedule": "wsd"}),
    )
    assert [(a, b) for a, b, _ in lr_spans(cfg)] == [(0, 200), (200, 220)]
    assert lr_span_stages([s.lr.schedule for s in cfg.stages]) == [[0, 1, 2], [3]]
    assert lr_span_stages(["continue", "continue", None, "wsd"]) == [[0, 1], [2], [3]]  # raw stages (fingerprint)


def test_each_non_continue_stage_restarts():
    cfg = make_config(
        (100, {"schedule": "cosine", "peak": 1e-3, "warmup": 0.01}),
        (50, {"schedule": "cosine", "peak": 3e-4, "warmup": 0.1}),
    )
    lrs = lr_schedule(cfg)
    assert lrs[99] < 1e-6 and lrs[100] == pytest.approx(3e-4 / 5)  # new warmup (5 steps) from 0
    assert lrs[104] == 3e-4 and lrs[105] == 3e-4
    first = lr_schedule(make_config((50, {"schedule": "cosine", "peak": 3e-4, "warmup": 0.1})))
    assert np.array_equal(lrs[100:], first)


def test_lr_at_matches_schedule_bit_for_bit():
    cfg = make_config(
        (123, {"schedule": "cosine", "peak": 3e-3, "final": 1e-5}),
        (77, {"schedule": "continue"}),
        (50, {"schedule": "wsd", "peak": 1e-3, "decay": 0.3}),
    )
    lrs = lr_schedule(cfg)
    assert all(lr_at(cfg, s) == lrs[s] for s in range(250))
    assert math.isfinite(lr_at(cfg, 249))
    with pytest.raises(ConfigError, match="outside the run"):
        lr_at(cfg, 250)
