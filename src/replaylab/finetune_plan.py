"""The replay fine-tuning plan: replay fine-tuning of a pretrained Hugging Face model (model.kind: hf) with
fixed target exposure, the strategy builder `finetune_hf` beside schedule.py's `reference`, `finetune` and
`midtrain`.

The plan (`plan_mix`) is known only at launch, once the target budget is (the store may be read for it):
steps and exact token shares from the target budget, its epochs and the replay fraction R. `finetune_stage`
then lays it out as the run's one stage. `finetune_hf` builds such a run from the fine-tuning form
(`replaylab finetune --config`, finetune_form.py) for a sweep, with the strategy in its `meta`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any

from replaylab.errors import ConfigError
from replaylab.finetune_form import read_finetune
from replaylab.fingerprint import finetune_view, lr_group
from replaylab.runconfig import MAX_STEPS, RunConfig, StageConfig

TARGET, REPLAY = "target", "replay"  # its domains


@dataclass(frozen=True)
class MixPlan:
    """How many steps a fine-tuning run takes and how its tokens split between target and replay."""

    budget: int  # unique target sequences
    target_draws: int  # target sequences drawn over the planned run (target_epochs x budget)
    target_steps: int  # steps the target alone fills (the run length at R = 0)
    planned_steps: int  # target_steps stretched by 1 / (1 - R)
    total_steps: int  # planned_steps, or max_steps when that caps the run
    target_weight: float  # exact token share of the target in every block
    replay_fraction: float

    @property
    def capped(self) -> bool:
        return self.total_steps < self.planned_steps

    @property
    def target_epochs(self) -> float:
        """Passes over the budget the planned run makes (exact; R = 0 rounds up to whole batches)."""
        return self.target_draws / self.budget


def plan_mix(
    *, budget: int, target_epochs: float, replay_fraction: float, batch_size: int, max_steps: int | None = None
) -> MixPlan:
    if budget < 1:
        raise ConfigError(f"the target budget is {budget} sequences; it needs at least 1")
    wanted = target_epochs * budget
    if not wanted < 2**63:  # inf and nan too: the sampler counts sequences in int64
        raise ConfigError(
            f"target_epochs={target_epochs:g} over {budget} target sequences draws {wanted:.6g} "
            "sequences, beyond a 64-bit count; give a realistic target_epochs (passes over the budget)"
        )
    draws = max(1, round(wanted))
    target_steps = math.ceil(draws / batch_size)
    if replay_fraction == 0:
        # Pure target: fill the last batch with the next target sequences rather than leave it short.
        planned, draws, weight = target_steps, target_steps * batch_size, 1.0
    else:
        planned = _stretched(draws, batch_size, replay_fraction)
        weight = draws / (planned * batch_size)
    if planned > MAX_STEPS and target_steps <= MAX_STEPS:
        # A replay fraction near 1 stretches the plan without bound. max_steps is no fix: it caps the run, not the
        # plan, and the capped run's target share of each batch would be ~0. The one refusal for every entry
        # point (ReplayMixture, `replaylab finetune`, a sweep's planning), at plan time.
        bound, digits = _largest_fraction(draws, batch_size)
        raise ConfigError(
            f"replay_fraction {replay_fraction!r} stretches the run's {target_steps:,} target steps (budget "
            f"{budget} x target_epochs {target_epochs:g} / batch_size {batch_size}) to {planned:,} steps, "
            f"above the {MAX_STEPS:,} steps replaylab plans a run for (max_steps is no fix: the target would be "
            f"{weight:.2g} of each batch); give replay_fraction <= {bound:.{digits}f} for this budget, "
            "target_epochs and batch_size"
        )
    total = planned if max_steps is None else min(planned, max_steps)
    if total > MAX_STEPS:  # the target alone fills more steps than a run is planned for
        raise ConfigError(
            f"the run would take {total:,} steps ({target_steps:,} target steps stretched by 1 / (1 - "
            f"replay_fraction={replay_fraction!r}), target_epochs={target_epochs:g}), above the "
            f"{MAX_STEPS:,} steps replaylab plans a run for; lower target_epochs, or set max_steps "
            f"(at most {MAX_STEPS:,})"
        )
    if total * batch_size >= 2**63:  # sequences are counted in int64
        raise ConfigError(
            f"the run would take {total} steps of {batch_size} sequences, beyond a 64-bit count; give a "
            "realistic batch_size"
        )
    return MixPlan(
        budget=budget,
        target_draws=draws,
        target_steps=target_steps,
        planned_steps=planned,
        total_steps=total,
        target_weight=weight,
        replay_fraction=replay_fraction,
    )


def given_plan(cfg: RunConfig) -> MixPlan | None:
    """A fine-tuning run's plan when its target budget is given (None = every train sequence: that needs the
    tokenized store, known only at launch). Raises plan_mix's refusals."""
    budget, p = cfg.data.domains[TARGET].budget, cfg.finetune
    if budget is None:
        return None
    return plan_mix(
        budget=budget,
        target_epochs=p.target_epochs,
        replay_fraction=p.replay_fraction,
        batch_size=cfg.train.batch_size,
        max_steps=p.max_steps,
    )


def _stretched(draws: int, batch_size: int, replay_fraction: float) -> int:
    """Steps that hold `draws` target sequences when they are 1 - R of each batch of `batch_size`."""
    # (the epsilon keeps 128 / (8 x 0.1) = 160.00000000000003 from rounding up to 161)
    return math.ceil(draws / (batch_size * (1 - replay_fraction)) - 1e-9)


def _largest_fraction(draws: int, batch_size: int) -> tuple[float, int]:
    """The largest replay fraction whose plan fits MAX_STEPS, rounded down to two significant digits of 1 - R (so
    that it fits as shown), and the decimals to show it with."""
    # ceil(draws / (B (1 - R))) <= MAX_STEPS  <=>  R <= 1 - draws / (B x MAX_STEPS)
    gap = draws / (batch_size * MAX_STEPS)
    digits = max(1 - math.floor(math.log10(gap)), 1)
    bound = math.floor((1 - gap) * 10**digits) / 10**digits
    while bound > 0 and _stretched(draws, batch_size, bound) > MAX_STEPS:
        bound = round(bound - 10**-digits, digits)  # float rounding put the shown bound a hair over
    return bound, digits


def finetune_stage(cfg: RunConfig, plan: MixPlan, tokenizer: str, micro_batch_size: int | None = None) -> RunConfig:
    """The planned fine-tuning run `cfg` laid out as the engine runs it: its one stage (`finetune.lr`, the plan's
    steps and exact token shares), train.total_steps, the target's budget and epochs. tokenizer: the tokenizer's
    folder. micro_batch_size: the launcher's (per rank; None = the config's). A replay pool that is not
    trained on (R = 0) is still a domain: it is evaluated (forgetting)."""
    target = cfg.data.domains[TARGET]
    replay = cfg.data.domains.get(REPLAY)
    domains = {
        TARGET: replace(
            target,
            budget=plan.budget,
            # a capped run stops early: the epoch check would (rightly) fail
            epochs=None if plan.capped else plan.target_epochs,
            options=dict(target.options),
        )
    }
    mixture = {TARGET: 1.0}
    if plan.target_weight < 1:
        assert replay is not None
        domains[REPLAY] = replace(replay, options=dict(replay.options))
        mixture = {TARGET: plan.target_weight, REPLAY: 1.0 - plan.target_weight}
    elif replay is not None:  # evaluated (forgetting), never trained on
        domains[REPLAY] = replace(replay, budget=None, options=dict(replay.options))
    train = replace(
        cfg.train, total_steps=plan.total_steps, micro_batch_size=micro_batch_size or cfg.train.micro_batch_size
    )
    return replace(
        cfg,
        finetune=None,
        data=replace(cfg.data, tokenizer=tokenizer, domains=domains),
        train=train,
        stages=[StageConfig(name="finetune", steps=plan.total_steps, mixture=mixture, lr=replace(cfg.finetune.lr))],
    )


def _set(raw: dict, key: str, value: Any) -> None:
    node = raw
    *parents, last = key.split(".")
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}  # e.g. replay: null in the base, swept replay.budget
        node = node[p]
    node[last] = value


def finetune_hf(
    base: RunConfig | dict, *, seed: int | None = None, lr: float | None = None, **fields: Any
) -> RunConfig:
    """Replay fine-tuning of a pretrained Hugging Face model with fixed target exposure (`plan_mix`). `base`: the
    fine-tuning form (`replaylab finetune --config`; a RunConfig is read back into it); `fields`: dotted keys of
    that form set on it (replay_fraction, target.budget, lora.r, ...); lr: its peak (optim.lr). meta: the
    strategy, domains, rho, lr and lr_group (`fingerprint.lr_group`: this config with its LR blanked)."""
    raw = copy.deepcopy(finetune_view(base) if isinstance(base, RunConfig) else base)
    base_meta = raw.pop("meta", None) or {}
    for key, value in fields.items():
        _set(raw, key, value)
    if lr is not None:
        _set(raw, "optim.lr", lr)
    if seed is not None:
        raw["seed"] = seed
    cfg = read_finetune(raw)
    given_plan(cfg)  # a replay fraction that explodes the plan is refused here, when the sweep is planned
    cfg.meta = {
        **base_meta,
        "strategy": "finetune_hf",
        "target_domain": TARGET,
        "generic_domain": REPLAY,
        "rho": cfg.finetune.replay_fraction,
        "lr": cfg.finetune.lr.peak,
        "lr_group": lr_group(cfg),
    }
    return cfg


def _resolved_axes(cfg: RunConfig, cell: dict[str, Any]) -> dict[str, Any]:
    """A finetune_hf run's axis values as its config holds them (replay_fraction 0 -> 0.0)."""
    view = finetune_view(cfg)
    out = {}
    for key in cell:
        node: Any = view
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[key] = list(node) if isinstance(node, tuple) else node
    return out


finetune_hf.axis_values = _resolved_axes  # the sweep records these as the run's coordinates
