"""The paper's two-stage data-schedule space: which points exist and how one is realized in whole steps.

Two pools (generic, target), two stages. With gamma = target fraction x epochs (the share of all
tokens that are target tokens):
  alpha = share of the target tokens placed in stage 2
  rho   = replay fraction = generic share of stage 2; stage-2 target weight w2 = 1 - rho
  delta = stage-2 length as a fraction of the run = gamma * alpha / (1 - rho)
  w1    = stage-1 target weight = gamma * (1 - alpha) / (1 - delta)
so that w1 (1 - delta) + w2 delta = gamma. Any two of (rho, alpha, delta) fix the third.

`solve_two_stage` solves and checks a point; given `total_steps` it also rounds the stage boundary to a
whole step and returns the *realized* point (alpha and gamma kept exact, rho and delta re-derived), so
the target exposure the engine checks is exactly what was asked for. The strategy builders that turn a
point into a run are in replaylab.schedule.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from replaylab.errors import ConfigError

_EPS = 1e-9


@dataclass(frozen=True)
class TwoStage:
    """A point of the schedule space. `stage1_steps`/`stage2_steps` are set when a run length was given."""

    gamma: float
    rho: float
    alpha: float
    delta: float
    w1: float  # stage-1 target weight
    w2: float  # stage-2 target weight = 1 - rho
    stage1_steps: int | None = None
    stage2_steps: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _derive(gamma: float, rho: float | None, alpha: float | None, delta: float | None) -> tuple[float, float, float]:
    """The missing one of (rho, alpha, delta), from delta = gamma * alpha / (1 - rho)."""
    if delta is None:
        if rho >= 1 - _EPS:
            raise ConfigError(
                f"rho={rho} leaves no target data in stage 2, so delta is undetermined; use rho < 1 or give delta"
            )
        delta = gamma * alpha / (1 - rho)
    elif alpha is None:
        alpha = delta * (1 - rho) / gamma
    else:
        if delta <= 0:
            raise ConfigError(f"delta={delta}: stage 2 needs a length > 0; give delta in (0, 1)")
        rho = 1 - gamma * alpha / delta
    return rho, alpha, delta


def _problem(gamma: float, rho: float, alpha: float, delta: float) -> str | None:
    """What makes a point infeasible, in words, or None."""
    if not -_EPS <= alpha <= 1 + _EPS:
        return f"alpha = {alpha:.6g} (the share of target tokens in stage 2) is outside [0, 1]"
    if not -_EPS <= rho <= 1 + _EPS:
        return f"rho = {rho:.6g} (the replay fraction) is outside [0, 1]"
    if delta > 1 + _EPS:
        return f"delta = {delta:.6g} > 1: stage 2 would be longer than the run"
    if delta < -_EPS:
        return f"delta = {delta:.6g} < 0"
    w1 = gamma * (1 - alpha) / (1 - delta) if delta < 1 - _EPS else (0.0 if alpha > 1 - _EPS else math.inf)
    if w1 > 1 + _EPS:
        return f"stage-1 target weight w1 = {w1:.6g} > 1: stage 1 is too short for its target tokens"
    return None


def _feasible_range(gamma: float, given: dict[str, float], free: str) -> str:
    """The interval of `free` that is feasible with the other given value (scanned; the set is an interval)."""
    lo = hi = None
    n = 2000
    for i in range(n + 1):
        v = i / n
        kw = {**given, free: v}
        try:
            rho, alpha, delta = _derive(gamma, kw.get("rho"), kw.get("alpha"), kw.get("delta"))
        except (ConfigError, ZeroDivisionError):
            continue
        if _problem(gamma, rho, alpha, delta) is None:
            lo = v if lo is None else lo
            hi = v
    ((name, value),) = given.items()
    if lo is None:
        return f"no {free} is feasible with gamma={gamma:.6g} and {name}={value:.6g}"
    return f"with gamma={gamma:.6g} and {name}={value:.6g}, feasible {free} lies in [{lo:.4g}, {hi:.4g}]"


def _check_fraction(name: str, value: float | None) -> None:
    if value is not None and not 0 <= value <= 1:
        raise ConfigError(f"{name}={value} must lie in [0, 1]")


def solve_two_stage(
    gamma: float,
    rho: float | None = None,
    alpha: float | None = None,
    delta: float | None = None,
    *,
    total_steps: int | None = None,
) -> TwoStage:
    """Solve the third of (rho, alpha, delta) from two, check feasibility, optionally round to whole steps.

    Rounding (when `total_steps` is given): stage-2 steps = delta * T rounded half up, then nudged the
    least needed so that both target weights stay <= 1. alpha and gamma are kept; delta = steps / T and
    rho = 1 - gamma * alpha / delta are the realized values.
    """
    given = {k: v for k, v in (("rho", rho), ("alpha", alpha), ("delta", delta)) if v is not None}
    if len(given) != 2:
        raise ConfigError(
            f"give exactly two of rho, alpha, delta (got {', '.join(given) or 'none'}); the third follows "
            "from delta = gamma * alpha / (1 - rho)"
        )
    if not 0 < gamma <= 1:
        raise ConfigError(
            f"gamma={gamma:.6g} (target fraction x epochs) must lie in (0, 1]; "
            "use fewer epochs or a smaller target budget"
        )
    for name, value in given.items():
        _check_fraction(name, value)
    rho_, alpha_, delta_ = _derive(gamma, rho, alpha, delta)
    problem = _problem(gamma, rho_, alpha_, delta_)
    if problem is not None:
        first = next(iter(given))
        free = [k for k in given if k != first][0]
        raise ConfigError(f"infeasible schedule ({problem}); {_feasible_range(gamma, {first: given[first]}, free)}")
    rho_, alpha_, delta_ = min(max(rho_, 0.0), 1.0), min(max(alpha_, 0.0), 1.0), min(max(delta_, 0.0), 1.0)
    if total_steps is None:
        w1 = gamma * (1 - alpha_) / (1 - delta_) if delta_ < 1 else 0.0
        return TwoStage(gamma, rho_, alpha_, delta_, w1, 1 - rho_)
    return _round_to_steps(gamma, alpha_, delta_, total_steps)


def _round_to_steps(gamma: float, alpha: float, delta: float, total: int) -> TwoStage:
    if total < 2:
        raise ConfigError(f"train.total_steps={total}: a two-stage run needs at least 2 steps")
    target_steps = gamma * total  # target tokens, in units of whole steps
    s2 = math.floor(delta * total + 0.5)
    s2_min = max(1, math.ceil(alpha * target_steps - 1e-6))  # w2 <= 1
    s2_max = min(total - 1, total - math.ceil((1 - alpha) * target_steps - 1e-6))  # w1 <= 1
    if s2_min > s2_max:
        raise ConfigError(
            f"infeasible schedule at {total} steps: stage 2 needs between {s2_min} and {s2_max} steps "
            f"(gamma={gamma:.6g}, alpha={alpha:.6g}); use more total steps or a smaller gamma"
        )
    s2 = min(max(s2, s2_min), s2_max)
    d = s2 / total
    w2 = gamma * alpha / d
    w1 = gamma * (1 - alpha) / (1 - d)
    return TwoStage(gamma, 1 - w2, alpha, d, w1, w2, total - s2, s2)


def replay_fraction(multiplier: float) -> float:
    """The paper's fine-tuning replay: stretching fine-tuning by m fills it with rho = 1 - 1/m generic data."""
    if not multiplier >= 1:  # nan too
        raise ConfigError(f"multiplier={multiplier}: the fine-tuning stretch must be >= 1 (1 = no replay)")
    return 1 - 1 / multiplier
