"""Learning-rate schedules as pure functions of (step, span length): resuming needs no hidden state.

A *span* is a stage plus every following stage whose schedule is `continue`: one curve runs across
all of them (mid-training: one WSD schedule over two mixtures), with the parameters of the span's
first stage. A stage with any other schedule starts a new span (fine-tuning: a fresh cosine).

Within a span of L steps (t = 0..L-1):
- warmup: W = round(warmup * L) steps (Python's round, half to even; at least 1 when warmup > 0),
  lr = peak * (t + 1) / W: the first step already moves (a step at LR 0 would be wasted) and step
  W - 1 is at peak.
- after warmup, progress p = (t - W) / (L - W) runs over [0, 1): the first post-warmup step is at
  peak and the last step is one step short of `final` (the last update is not wasted either).
  constant: peak;  linear: peak -> final;  cosine: final + (peak - final) (1 + cos(pi p)) / 2.
- wsd: stable at peak, then over the last D = round(decay * L) steps (at least 1 when decay > 0)
  linear from peak towards final, q = (t - (L - D)) / D, same convention. The decay never eats the
  warmup: it starts no earlier than step W.
Every value is computed with Python's `math` one step at a time, so `lr_at` and `lr_schedule` agree
bit for bit (vectorized numpy cos may differ in the last bit between SIMD and scalar paths).
"""

from __future__ import annotations

import math

import numpy as np

from replaylab.errors import ConfigError
from replaylab.runconfig import LRConfig, RunConfig, lr_span_stages


def lr_spans(config: RunConfig) -> list[tuple[int, int, LRConfig]]:
    """(first global step, end step exclusive, parameters) of each LR span of the run."""
    first = config.stages[0]
    if first.lr.schedule == "continue":  # RunConfig.validate forbids this; keep the message for hand-built configs
        raise ConfigError(f"stage {first.name!r}: the first stage cannot continue a previous LR schedule")
    starts = config.stage_starts()
    return [
        (starts[span[0]], starts[span[-1] + 1], config.stages[span[0]].lr)
        for span in lr_span_stages([s.lr.schedule for s in config.stages])
    ]


def _warmup_steps(lr: LRConfig, length: int) -> int:
    if lr.warmup <= 0:
        return 0
    return min(max(1, round(lr.warmup * length)), length)


def _decay_steps(lr: LRConfig, length: int) -> int:
    if lr.decay <= 0:
        return 0
    return min(max(1, round(lr.decay * length)), length)


def lr_in_span(lr: LRConfig, t: int, length: int) -> float:
    """LR at step t (0-based) of a span of `length` steps with parameters `lr`."""
    if not 0 <= t < length:
        raise ConfigError(f"step {t} is outside an LR span of {length} steps")
    warm = _warmup_steps(lr, length)
    if t < warm:
        return lr.peak * (t + 1) / warm
    if lr.schedule == "constant":
        return lr.peak
    if lr.schedule == "wsd":
        start = max(length - _decay_steps(lr, length), warm)
        if t < start:
            return lr.peak
        q = (t - start) / (length - start)
        return lr.peak + (lr.final - lr.peak) * q
    p = (t - warm) / (length - warm)
    if lr.schedule == "linear":
        return lr.peak + (lr.final - lr.peak) * p
    if lr.schedule == "cosine":
        return lr.final + (lr.peak - lr.final) * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ConfigError(f"lr.schedule {lr.schedule!r} is unknown; choose constant, cosine, wsd, linear or continue")


def lr_schedule(config: RunConfig) -> np.ndarray:
    """LR used at every global step of the run: float64 (total_steps,)."""
    out = np.empty(sum(config.stage_steps()), dtype=np.float64)
    for start, end, lr in lr_spans(config):
        length = end - start
        out[start:end] = [lr_in_span(lr, t, length) for t in range(length)]
    return out


def lr_at(config: RunConfig, step: int) -> float:
    """LR at global `step` (0-based); equal bit for bit to `lr_schedule(config)[step]`."""
    for start, end, lr in lr_spans(config):
        if start <= step < end:
            return lr_in_span(lr, step - start, end - start)
    raise ConfigError(f"step {step} is outside the run (0..{sum(config.stage_steps()) - 1})")
