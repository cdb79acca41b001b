"""Where the replay fraction becomes batches of a pretrained model's fine-tuning.

Target and replay text are tokenized with the model's own tokenizer into the data layer's token
stores (documents joined by EOS, held-out documents carved off first) and packed into fixed-length
sequences, so every sequence carries exactly `seq_len` training tokens and sequence shares ARE token
shares. Mixing example-level probabilities instead would skew the token shares whenever target and
replay documents differ in length.

The mixing itself is the engine's `MixtureSampler` (cumulative per-block apportionment, seeded
in-block shuffles, per-epoch permutations of the target budget): we describe the fine-tuning run to it
as a one-stage `RunConfig` with domains `target` and `replay`.

Fixed target exposure, as in the paper: the run draws `target_epochs x budget` target sequences
whatever R is; those take `target_steps = ceil(draws / batch)` steps alone, and the replay run is
stretched to `ceil(draws / (batch x (1 - R)))` steps. The target's token share is set to exactly
draws / (steps x batch) (within one batch of 1 - R; the realized share is logged), so the target is
drawn exactly `draws` times.

`replay_sampler` puts the three together (plan, RunConfig, sampler): `replaylab finetune` and
`replaylab.ReplayMixture` (the data component for HF Trainer, TRL, Accelerate and plain PyTorch) both
build their batches through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from replaylab.errors import ConfigError
from replaylab.runconfig import RunConfig, StageConfig
from replaylab.train.mixture import MixtureSampler

TARGET, REPLAY = "target", "replay"


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


def plan_mix(*, budget: int, target_epochs: float, replay_fraction: float, batch_size: int,
             max_steps: int | None = None) -> MixPlan:
    if budget < 1:
        raise ConfigError(f"the target budget is {budget} sequences; it needs at least 1")
    wanted = target_epochs * budget
    if not wanted < 2**63:  # inf and nan too: the sampler counts sequences in int64
        raise ConfigError(f"target_epochs={target_epochs:g} over {budget} target sequences draws {wanted:.6g} "
                          "sequences, beyond a 64-bit count; give a realistic target_epochs (passes over the budget)")
    draws = max(1, round(wanted))
    target_steps = math.ceil(draws / batch_size)
    if replay_fraction == 0:
        # Pure target: fill the last batch with the next target sequences rather than leave it short.
        planned, draws, weight = target_steps, target_steps * batch_size, 1.0
    else:
        # (the epsilon keeps 128 / (8 x 0.1) = 160.00000000000003 from rounding up to 161)
        planned = math.ceil(draws / (batch_size * (1 - replay_fraction)) - 1e-9)
        weight = draws / (planned * batch_size)
    total = planned if max_steps is None else min(planned, max_steps)
    if total * batch_size >= 2**63:  # a replay fraction near 1 stretches the run without bound
        raise ConfigError(f"the run would take {total} steps of {batch_size} sequences (target_epochs="
                          f"{target_epochs:g}, replay_fraction={replay_fraction:g}), beyond a 64-bit count; lower "
                          "target_epochs or replay_fraction, or set max_steps")
    return MixPlan(budget=budget, target_draws=draws, target_steps=target_steps, planned_steps=planned,
                   total_steps=total, target_weight=weight, replay_fraction=replay_fraction)


def sampler_config(cfg: RunConfig, plan: MixPlan, tokenizer: str, micro_batch_size: int | None = None) -> RunConfig:
    """The planned fine-tuning run `cfg` laid out as the engine runs it: its one stage (`finetune.lr`, the plan's
    steps and exact token shares), train.total_steps, the target's budget and epochs. tokenizer: the tokenizer's
    folder. micro_batch_size: the launcher's (per rank; None = the config's). A replay pool that is not
    trained on (R = 0) is still a domain: it is evaluated (forgetting)."""
    target = cfg.data.domains[TARGET]
    replay = cfg.data.domains.get(REPLAY)
    domains = {TARGET: replace(target, budget=plan.budget,
                               # a capped run stops early: the epoch check would (rightly) fail
                               epochs=None if plan.capped else plan.target_epochs, options=dict(target.options))}
    mixture = {TARGET: 1.0}
    if plan.target_weight < 1:
        assert replay is not None
        domains[REPLAY] = replace(replay, options=dict(replay.options))
        mixture = {TARGET: plan.target_weight, REPLAY: 1.0 - plan.target_weight}
    elif replay is not None:  # evaluated (forgetting), never trained on
        domains[REPLAY] = replace(replay, budget=None, options=dict(replay.options))
    train = replace(cfg.train, total_steps=plan.total_steps,
                    micro_batch_size=micro_batch_size or cfg.train.micro_batch_size)
    return replace(cfg, finetune=None, data=replace(cfg.data, tokenizer=tokenizer, domains=domains), train=train,
                   stages=[StageConfig(name="finetune", steps=plan.total_steps, mixture=mixture,
                                       lr=replace(cfg.finetune.lr))])


def replay_sampler(cfg: RunConfig, stores: dict, tokenizer: str,
                   micro_batch_size: int | None = None) -> tuple[MixPlan, RunConfig, MixtureSampler]:
    """The one way a target + replay run becomes batches: the plan (fixed target exposure), the one-stage
    RunConfig and the engine's MixtureSampler over `stores` ({"target": ..., "replay": ...}). `replaylab finetune`
    trains on it and `replaylab.ReplayMixture` (HF Trainer, TRL, Accelerate, plain PyTorch) yields it. `cfg`: a
    planned fine-tuning RunConfig (its `finetune` plan). tokenizer: the tokenizer's folder."""
    p = cfg.finetune
    plan = plan_mix(budget=resolve_budget(cfg, stores[TARGET]), target_epochs=p.target_epochs,
                    replay_fraction=p.replay_fraction, batch_size=cfg.train.batch_size, max_steps=p.max_steps)
    scfg = sampler_config(cfg, plan, tokenizer, micro_batch_size=micro_batch_size)
    return plan, scfg, MixtureSampler(scfg, stores)


def open_stores(cfg: RunConfig, tokenizer) -> dict:
    """Token stores of the target and replay pools, tokenized with `tokenizer` (a data-layer Tokenizer)."""
    from replaylab.data.store import get_store

    return {name: get_store(dom.source, tokenizer, dom.options) for name, dom in cfg.data.domains.items()}


def resolve_budget(cfg: RunConfig, store) -> int:
    """The target budget in sequences: the configured one, or every train sequence of the store (not
    `schedule.target_budget`, which derives a budget from a run's length and target fraction)."""
    seq_len, target = cfg.data.seq_len, cfg.data.domains[TARGET]
    available = store.num_sequences("train", seq_len)
    budget = target.budget or available
    if budget > available:
        raise ConfigError(
            f"target budget {budget} sequences exceeds the {available} train sequences of {seq_len} tokens in "
            f"{target.source!r}; lower target.budget to at most {available} or use a shorter seq_len"
        )
    return budget
