"""The paper's two-stage data-schedule space, and the strategy builders that turn a point of it into a run.

Two pools (generic, target), two stages. With gamma = target fraction x epochs (the share of all
tokens that are target tokens):
  alpha = share of the target tokens placed in stage 2
  rho   = replay fraction = generic share of stage 2; stage-2 target weight w2 = 1 - rho
  delta = stage-2 length as a fraction of the run = gamma * alpha / (1 - rho)
  w1    = stage-1 target weight = gamma * (1 - alpha) / (1 - delta)
so that w1 (1 - delta) + w2 delta = gamma. Any two of (rho, alpha, delta) fix the third.

`solve_two_stage` solves and checks a point; given `total_steps` it also rounds the stage boundary to a
whole step and returns the *realized* point (alpha and gamma kept exact, rho and delta re-derived), so
the target exposure the engine checks is exactly what was asked for.

The strategy builders (`reference`, `finetune`, `midtrain`) turn a base config (model, data domains,
optimizer, train length and batch: everything but the stages) into a validated `RunConfig` whose stages
realize the strategy and whose `meta` records it (the keys analysis reads, see docs/design.md). Target
budgets are given in units of the base budget `target_fraction` x all sequences of the run (paper:
1/1024, one global batch), so the same recipe works at any scale.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

from replaylab.config import from_dict, to_dict
from replaylab.errors import ConfigError
from replaylab.fingerprint import lr_group
from replaylab.runconfig import RunConfig, TrainConfig

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
    (name, value), = given.items()
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
            f"gamma={gamma:.6g} (target fraction x epochs) must lie in (0, 1]; use fewer epochs or a smaller target budget"
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


# ---------------------------------------------------------------------------------------------------
# The strategy builders.

PAPER_TARGET_FRACTION = 1 / 1024


def _raw(base: RunConfig | dict) -> dict:
    raw = copy.deepcopy(to_dict(base) if not isinstance(base, dict) else base)
    raw.setdefault("data", {}).setdefault("domains", {})
    raw.setdefault("train", {})
    raw.pop("stages", None)
    return raw


def _domains(raw: dict, target: str | None, generic: str) -> tuple[str, str]:
    domains = raw["data"]["domains"]
    if generic not in domains:
        raise ConfigError(f"generic domain {generic!r} is not in data.domains ({', '.join(domains) or 'none'}); "
                          "add it or pass generic=NAME")
    if target is None:
        others = [d for d in domains if d != generic]
        if len(others) != 1:
            raise ConfigError(f"cannot tell the target domain among {others}; pass target=NAME")
        target = others[0]
    if target not in domains:
        raise ConfigError(f"target domain {target!r} is not in data.domains ({', '.join(domains)}); add it or fix target")
    if target == generic:
        raise ConfigError(f"target and generic are both {target!r}; they must be two different domains")
    return target, generic


def _run_shape(raw: dict) -> tuple[int, int]:
    """The base's train.total_steps and train.batch_size, read and checked as the run config will read them
    ("abc", nan, 2.5 or 0 is a ConfigError naming the field)."""
    train = from_dict(TrainConfig, raw["train"], "train")
    if train.total_steps > 2**53:  # the solver places stage boundaries as float fractions of the run
        raise ConfigError(f"train.total_steps={train.total_steps} is beyond 2**53, where a fraction of the run no "
                          "longer resolves single steps; give a realistic number of steps")
    return train.total_steps, train.batch_size


def target_budget(total_steps: int, batch_size: int, target_fraction: float, budget_multiple: float = 1.0) -> int:
    """Unique target sequences: multiple x fraction x all sequences of the run, rounded half up."""
    if not 0 < target_fraction <= 1:
        raise ConfigError(f"target_fraction={target_fraction} must lie in (0, 1] (paper: 1/1024 of all tokens)")
    if not budget_multiple > 0:  # nan too
        raise ConfigError(f"budget_multiple={budget_multiple} must be a number > 0 (1 = the base budget)")
    exact = budget_multiple * target_fraction * total_steps * batch_size
    if not exact < 2**63:  # inf too: a budget is a 64-bit count of sequences (DomainConfig.budget)
        raise ConfigError(
            f"budget_multiple={budget_multiple:g} gives a target budget of {exact:.6g} sequences "
            f"({target_fraction:.6g} x {total_steps} steps x {batch_size} sequences x {budget_multiple:g}), beyond "
            "a 64-bit count; give a smaller budget_multiple"
        )
    seqs = math.floor(exact + 0.5)
    if seqs < 1:
        raise ConfigError(
            f"target budget = {budget_multiple} x {target_fraction:.6g} x {total_steps} steps x {batch_size} sequences "
            "rounds to 0 sequences; raise target_fraction, budget_multiple, total_steps or batch_size"
        )
    return seqs


def _gamma(budget: int, epochs: float, total: int, batch: int) -> float:
    if not 0 < epochs < math.inf:  # nan too
        raise ConfigError(f"epochs={epochs} must be a finite number > 0 (passes over the target budget)")
    if budget * epochs < 1:
        raise ConfigError(
            f"epochs={epochs:g} over a budget of {budget} target sequences draws {budget * epochs:.3g} sequences, "
            "less than one; give more epochs or a larger budget_multiple"
        )
    gamma = budget * epochs / (total * batch)
    if gamma > 1:
        raise ConfigError(
            f"{epochs} epochs of {budget} target sequences need {budget * epochs:g} sequences, more than the run's "
            f"{total * batch}; use fewer epochs or a smaller budget"
        )
    return gamma


def _lr(schedule: str, peak: float, warmup: float, **extra: Any) -> dict:
    return {"schedule": schedule, "peak": peak, "warmup": warmup, **extra}


def _mix(weights: dict[str, float]) -> dict[str, float]:
    # Zero-weight domains are left out: the stage simply does not draw from them.
    return {d: w for d, w in weights.items() if w > 0}


def _finish(raw: dict, stages: list[dict], *, target: str, budget: int, epochs: float, name: str,
            seed: int | None, meta: dict) -> RunConfig:
    raw["data"]["domains"][target] = {**raw["data"]["domains"][target], "budget": budget, "epochs": epochs}
    raw["stages"] = stages
    raw["name"] = name
    if seed is not None:
        raw["seed"] = seed
    # meta.lr names the tuned stage's peak; lr_group hashes the run with it blanked (replaylab.fingerprint).
    raw["meta"] = dict(meta)
    raw["meta"]["lr_group"] = lr_group(raw)
    return from_dict(RunConfig, raw)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def reference(base: RunConfig | dict, *, target: str | None = None, generic: str = "generic",
              budget_multiple: float = 1.0, target_fraction: float = PAPER_TARGET_FRACTION,
              epochs: float = 32, lr: float = 3e-3, warmup: float = 0.01, schedule: str = "cosine",
              init: str = "scratch", seed: int | None = None) -> RunConfig:
    """One stage, the target mixed uniformly through all of training (the scaling-law reference points)."""
    raw = _raw(base)
    target, generic = _domains(raw, target, generic)
    total, batch = _run_shape(raw)
    budget = target_budget(total, batch, target_fraction, budget_multiple)
    gamma = _gamma(budget, epochs, total, batch)
    stages = [{"name": "main", "steps": total, "mixture": _mix({target: gamma, generic: 1 - gamma}),
               "lr": _lr(schedule, lr, warmup), "init": init}]
    meta = {"strategy": "reference", "target_domain": target, "generic_domain": generic, "rho": None,
            "alpha": None, "delta": None, "gamma": gamma, "budget": budget, "budget_multiple": budget_multiple,
            "target_epochs": epochs, "lr": lr}
    return _finish(raw, stages, target=target, budget=budget, epochs=epochs, seed=seed, meta=meta,
                   name=f"reference-{target}-x{_fmt(budget_multiple)}-lr{_fmt(lr)}")


def finetune(base: RunConfig | dict, *, target: str | None = None, generic: str = "generic",
             rho: float | None = None, multiplier: float | None = None, budget_multiple: float = 1.0,
             target_fraction: float = PAPER_TARGET_FRACTION, epochs: float = 64, pretrain_lr: float = 1e-3,
             lr: float = 3e-4, warmup: float = 0.01, init: str = "scratch", seed: int | None = None) -> RunConfig:
    """Generic-only pre-training, then a fresh optimizer and a new cosine over the fine-tuning stage.

    Replay fraction rho (or the stretch multiplier m, rho = 1 - 1/m) fills fine-tuning with generic data
    and stretches it by 1/(1 - rho); pre-training is shortened so total steps stay fixed.
    """
    if (rho is None) == (multiplier is None):
        raise ConfigError("finetune: give exactly one of rho (replay fraction) or multiplier (rho = 1 - 1/m)")
    if multiplier is not None:
        rho = replay_fraction(multiplier)
    raw = _raw(base)
    target, generic = _domains(raw, target, generic)
    total, batch = _run_shape(raw)
    budget = target_budget(total, batch, target_fraction, budget_multiple)
    gamma = _gamma(budget, epochs, total, batch)
    point = solve_two_stage(gamma, rho=rho, alpha=1.0, total_steps=total)
    if point.rho >= 1:  # stage 2 is at least one step: its target share is below float resolution (huge batch)
        raise ConfigError(
            f"finetune: {budget * epochs:g} target sequences in a fine-tuning stage of {point.stage2_steps} steps x "
            f"{batch} sequences is a target share that rounds to 0 (realized rho = 1); give more epochs, a larger "
            "budget_multiple or a smaller train.batch_size"
        )
    stages = [
        {"name": "pretrain", "steps": point.stage1_steps, "mixture": {generic: 1.0},
         "lr": _lr("cosine", pretrain_lr, warmup), "init": init},
        {"name": "finetune", "steps": point.stage2_steps, "mixture": _mix({target: point.w2, generic: 1 - point.w2}),
         "lr": _lr("cosine", lr, warmup), "optimizer": "reset"},
    ]
    meta = {"strategy": "finetune", "target_domain": target, "generic_domain": generic, "rho": point.rho,
            "alpha": point.alpha, "delta": point.delta, "gamma": gamma, "budget": budget,
            "budget_multiple": budget_multiple, "target_epochs": epochs, "lr": lr,
            "multiplier": 1 / (1 - point.rho), "pretrain_lr": pretrain_lr}
    return _finish(raw, stages, target=target, budget=budget, epochs=epochs, seed=seed, meta=meta,
                   name=f"finetune-{target}-rho{_fmt(rho)}-x{_fmt(budget_multiple)}-lr{_fmt(lr)}")


def midtrain(base: RunConfig | dict, *, target: str | None = None, generic: str = "generic",
             rho: float = 0.0, alpha: float = 1.0, budget_multiple: float = 1.0,
             target_fraction: float = PAPER_TARGET_FRACTION, epochs: float = 32, lr: float = 3e-3,
             warmup: float = 0.01, decay: float = 0.1, init: str = "scratch", seed: int | None = None) -> RunConfig:
    """One WSD run (no optimizer reset) over two mixtures: alpha of the target tokens in a final stage with
    replay fraction rho, the rest spread through stage 1."""
    raw = _raw(base)
    target, generic = _domains(raw, target, generic)
    total, batch = _run_shape(raw)
    budget = target_budget(total, batch, target_fraction, budget_multiple)
    gamma = _gamma(budget, epochs, total, batch)
    point = solve_two_stage(gamma, rho=rho, alpha=alpha, total_steps=total)
    stages = [
        {"name": "stage1", "steps": point.stage1_steps, "mixture": _mix({target: point.w1, generic: 1 - point.w1}),
         "lr": _lr("wsd", lr, warmup, decay=decay), "init": init},
        {"name": "stage2", "steps": point.stage2_steps, "mixture": _mix({target: point.w2, generic: 1 - point.w2}),
         "lr": {"schedule": "continue", "peak": lr}, "optimizer": "carry"},
    ]
    meta = {"strategy": "midtrain", "target_domain": target, "generic_domain": generic, "rho": point.rho,
            "alpha": point.alpha, "delta": point.delta, "gamma": gamma, "budget": budget,
            "budget_multiple": budget_multiple, "target_epochs": epochs, "lr": lr}
    return _finish(raw, stages, target=target, budget=budget, epochs=epochs, seed=seed, meta=meta,
                   name=f"midtrain-{target}-rho{_fmt(rho)}-a{_fmt(alpha)}-x{_fmt(budget_multiple)}-lr{_fmt(lr)}")


STRATEGIES: dict[str, Callable[..., RunConfig]] = {"reference": reference, "finetune": finetune, "midtrain": midtrain}

__all__ = ["TwoStage", "solve_two_stage", "replay_fraction", "reference", "finetune", "midtrain", "STRATEGIES"]
