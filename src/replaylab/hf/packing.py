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

from replaylab.errors import ConfigError
from replaylab.finetune_plan import REPLAY, TARGET, MixPlan, finetune_stage, plan_mix  # noqa: F401 - named here too
from replaylab.runconfig import RunConfig
from replaylab.train.mixture import MixtureSampler

sampler_config = finetune_stage  # its old name


def replay_sampler(
    cfg: RunConfig, stores: dict, tokenizer: str, micro_batch_size: int | None = None
) -> tuple[MixPlan, RunConfig, MixtureSampler]:
    """The one way a target + replay run becomes batches: the plan (fixed target exposure), the one-stage
    RunConfig and the engine's MixtureSampler over `stores` ({"target": ..., "replay": ...}). `replaylab finetune`
    trains on it and `replaylab.ReplayMixture` (HF Trainer, TRL, Accelerate, plain PyTorch) yields it. `cfg`: a
    planned fine-tuning RunConfig (its `finetune` plan). tokenizer: the tokenizer's folder."""
    p = cfg.finetune
    plan = plan_mix(
        budget=resolve_budget(cfg, stores[TARGET]),
        target_epochs=p.target_epochs,
        replay_fraction=p.replay_fraction,
        batch_size=cfg.train.batch_size,
        max_steps=p.max_steps,
    )
    scfg = finetune_stage(cfg, plan, tokenizer, micro_batch_size=micro_batch_size)
    return plan, scfg, MixtureSampler(scfg, stores)


def open_stores(cfg: RunConfig, tokenizer) -> dict:
    """Token stores of the target and replay pools, tokenized with `tokenizer` (a data-layer Tokenizer)."""
    from replaylab.data.rows import read_as_rows
    from replaylab.data.store import get_store

    # Instruction stores (a loss mask) train as whole examples per row (data/rows.py).
    stores = {name: get_store(dom.source, tokenizer, dom.options) for name, dom in cfg.data.domains.items()}
    return read_as_rows(stores, cfg.data.packing)


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
