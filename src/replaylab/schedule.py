"""The strategy builders: a point of the paper's data-schedule space (replaylab.schedule_space) turned into a run.

The builders (`reference`, `finetune`, `midtrain`) turn a base config (model, data domains, optimizer,
train length and batch: everything but the stages) into a validated `RunConfig` whose stages realize the
strategy and whose `meta` records it (the keys analysis reads, see docs/design.md). Target budgets are
given in units of the base budget `target_fraction` x all sequences of the run (paper: 1/1024, one global
batch), so the same recipe works at any scale.

`finetune_hf`, replay fine-tuning of a pretrained Hugging Face model with fixed target exposure, is planned at
launch; it and its plan (`plan_mix`, `MixPlan`, `finetune_stage`) live in finetune_plan.py and are named here too.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

from replaylab.config import from_dict, to_dict
from replaylab.errors import ConfigError
from replaylab.finetune_plan import REPLAY, TARGET, MixPlan, finetune_hf, finetune_stage, plan_mix
from replaylab.fingerprint import lr_group
from replaylab.runconfig import RunConfig, TrainConfig
from replaylab.schedule_space import TwoStage, replay_fraction, solve_two_stage

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
        raise ConfigError(
            f"generic domain {generic!r} is not in data.domains ({', '.join(domains) or 'none'}); "
            "add it or pass generic=NAME"
        )
    if target is None:
        others = [d for d in domains if d != generic]
        if len(others) != 1:
            raise ConfigError(f"cannot tell the target domain among {others}; pass target=NAME")
        target = others[0]
    if target not in domains:
        raise ConfigError(
            f"target domain {target!r} is not in data.domains ({', '.join(domains)}); add it or fix target"
        )
    if target == generic:
        raise ConfigError(f"target and generic are both {target!r}; they must be two different domains")
    return target, generic


def _run_shape(raw: dict) -> tuple[int, int]:
    """The base's train.total_steps and train.batch_size, read and checked as the run config will read them
    ("abc", nan, 2.5 or 0 is a ConfigError naming the field)."""
    train = from_dict(TrainConfig, raw["train"], "train")
    if train.total_steps > 2**53:  # the solver places stage boundaries as float fractions of the run
        raise ConfigError(
            f"train.total_steps={train.total_steps} is beyond 2**53, where a fraction of the run no "
            "longer resolves single steps; give a realistic number of steps"
        )
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


def _finish(
    raw: dict,
    stages: list[dict],
    *,
    strategy: str,
    target: str,
    generic: str,
    point: TwoStage | None,
    gamma: float,
    budget: int,
    budget_multiple: float,
    epochs: float,
    lr: float,
    name: str,
    seed: int | None,
    **extra: Any,
) -> RunConfig:
    """The run: the target's budget and epochs, the stages, and `meta`, the strategy as analysis reads it
    (docs/design.md; `point` None: no two-stage point, rho, alpha and delta are None). The meta keys keep this
    order: it is part of the content hash, so of every run id."""
    raw["data"]["domains"][target] = {**raw["data"]["domains"][target], "budget": budget, "epochs": epochs}
    raw["stages"] = stages
    raw["name"] = name
    if seed is not None:
        raw["seed"] = seed
    raw["meta"] = {
        "strategy": strategy,
        "target_domain": target,
        "generic_domain": generic,
        "rho": point.rho if point else None,
        "alpha": point.alpha if point else None,
        "delta": point.delta if point else None,
        "gamma": gamma,
        "budget": budget,
        "budget_multiple": budget_multiple,
        "target_epochs": epochs,
        "lr": lr,
        **extra,
    }
    # meta.lr names the tuned stage's peak; lr_group hashes the run with it blanked (replaylab.fingerprint).
    raw["meta"]["lr_group"] = lr_group(raw)
    return from_dict(RunConfig, raw)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def reference(
    base: RunConfig | dict,
    *,
    target: str | None = None,
    generic: str = "generic",
    budget_multiple: float = 1.0,
    target_fraction: float = PAPER_TARGET_FRACTION,
    epochs: float = 32,
    lr: float = 3e-3,
    warmup: float = 0.01,
    schedule: str = "cosine",
    init: str = "scratch",
    seed: int | None = None,
) -> RunConfig:
    """One stage, the target mixed uniformly through all of training (the scaling-law reference points)."""
    raw = _raw(base)
    target, generic = _domains(raw, target, generic)
    total, batch = _run_shape(raw)
    budget = target_budget(total, batch, target_fraction, budget_multiple)
    gamma = _gamma(budget, epochs, total, batch)
    stages = [
        {
            "name": "main",
            "steps": total,
            "mixture": _mix({target: gamma, generic: 1 - gamma}),
            "lr": _lr(schedule, lr, warmup),
            "init": init,
        }
    ]
    return _finish(
        raw,
        stages,
        strategy="reference",
        target=target,
        generic=generic,
        point=None,
        gamma=gamma,
        budget=budget,
        budget_multiple=budget_multiple,
        epochs=epochs,
        lr=lr,
        seed=seed,
        name=f"reference-{target}-x{_fmt(budget_multiple)}-lr{_fmt(lr)}",
    )


def finetune(
    base: RunConfig | dict,
    *,
    target: str | None = None,
    generic: str = "generic",
    rho: float | None = None,
    multiplier: float | None = None,
    budget_multiple: float = 1.0,
    target_fraction: float = PAPER_TARGET_FRACTION,
    epochs: float = 64,
    pretrain_lr: float = 1e-3,
    lr: float = 3e-4,
    warmup: float = 0.01,
    init: str = "scratch",
    seed: int | None = None,
) -> RunConfig:
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
        {
            "name": "pretrain",
            "steps": point.stage1_steps,
            "mixture": {generic: 1.0},
            "lr": _lr("cosine", pretrain_lr, warmup),
            "init": init,
        },
        {
            "name": "finetune",
            "steps": point.stage2_steps,
            "mixture": _mix({target: point.w2, generic: 1 - point.w2}),
            "lr": _lr("cosine", lr, warmup),
            "optimizer": "reset",
        },
    ]
    return _finish(
        raw,
        stages,
        strategy="finetune",
        target=target,
        generic=generic,
        point=point,
        gamma=gamma,
        budget=budget,
        budget_multiple=budget_multiple,
        epochs=epochs,
        lr=lr,
        multiplier=1 / (1 - point.rho),
        pretrain_lr=pretrain_lr,
        seed=seed,
        name=f"finetune-{target}-rho{_fmt(rho)}-x{_fmt(budget_multiple)}-lr{_fmt(lr)}",
    )


def midtrain(
    base: RunConfig | dict,
    *,
    target: str | None = None,
    generic: str = "generic",
    rho: float = 0.0,
    alpha: float = 1.0,
    budget_multiple: float = 1.0,
    target_fraction: float = PAPER_TARGET_FRACTION,
    epochs: float = 32,
    lr: float = 3e-3,
    warmup: float = 0.01,
    decay: float = 0.1,
    init: str = "scratch",
    seed: int | None = None,
) -> RunConfig:
    """One WSD run (no optimizer reset) over two mixtures: alpha of the target tokens in a final stage with
    replay fraction rho, the rest spread through stage 1."""
    raw = _raw(base)
    target, generic = _domains(raw, target, generic)
    total, batch = _run_shape(raw)
    budget = target_budget(total, batch, target_fraction, budget_multiple)
    gamma = _gamma(budget, epochs, total, batch)
    point = solve_two_stage(gamma, rho=rho, alpha=alpha, total_steps=total)
    stages = [
        {
            "name": "stage1",
            "steps": point.stage1_steps,
            "mixture": _mix({target: point.w1, generic: 1 - point.w1}),
            "lr": _lr("wsd", lr, warmup, decay=decay),
            "init": init,
        },
        {
            "name": "stage2",
            "steps": point.stage2_steps,
            "mixture": _mix({target: point.w2, generic: 1 - point.w2}),
            "lr": {"schedule": "continue", "peak": lr},
            "optimizer": "carry",
        },
    ]
    return _finish(
        raw,
        stages,
        strategy="midtrain",
        target=target,
        generic=generic,
        point=point,
        gamma=gamma,
        budget=budget,
        budget_multiple=budget_multiple,
        epochs=epochs,
        lr=lr,
        seed=seed,
        name=f"midtrain-{target}-rho{_fmt(rho)}-a{_fmt(alpha)}-x{_fmt(budget_multiple)}-lr{_fmt(lr)}",
    )


STRATEGIES: dict[str, Callable[..., RunConfig]] = {
    "reference": reference,
    "finetune": finetune,
    "midtrain": midtrain,
    "finetune_hf": finetune_hf,
}

__all__ = [
    "TwoStage",
    "solve_two_stage",
    "replay_fraction",
    "reference",
    "finetune",
    "midtrain",
    "finetune_hf",
    "plan_mix",
    "MixPlan",
    "finetune_stage",
    "TARGET",
    "REPLAY",
    "STRATEGIES",
]
