"""Replay where people already train: `ReplayMixture`, the engine's token-exact replay mixture as a PyTorch
`IterableDataset` for HF Trainer, TRL, Accelerate and plain PyTorch loops (docs/integrations.md).

It is not a second sampler. The target and replay token stores, the replay fraction, the target budget and epochs,
the sequence length, the global batch and the seed go through `hf.packing.replay_sampler`, the function
`replaylab finetune` builds its batches with, and every example is a row of the engine's `MixtureSampler` (a pure
function of seed and step). So the component keeps the engine's guarantees: the run's replay rows (steps x batch -
budget x epochs) are spread so that each global batch holds the floor or the ceiling of their per-step quota (exactly
R x batch when that is whole and the target draws fill whole steps; a rounded-up step count makes it a little more),
the target is drawn exactly budget x epochs times over the run, and data-parallel ranks get disjoint rows of the same
global batch, which together make up the whole batch.

What one example is. A store sequence has seq_len + 1 tokens, and the engine feeds seq[:-1] and scores seq[1:].
An example is {"input_ids": seq, "labels": seq, "attention_mask": ones}, each seq_len + 1 long. A Hugging Face causal
LM shifts the labels itself, so it scores positions 0..seq_len-1 against seq[1:]: the same seq_len targets as the
engine. Causal attention makes those logits the same as a forward pass over seq[:-1] alone. The last position's
logits are computed and thrown away (1 position in seq_len + 1). Passing seq[:-1] as both input_ids and labels would
lose one target per sequence. The model needs max_position_embeddings >= seq_len + 1 (a Trainer's model is checked:
`hf.guards`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict
from typing import Any, Literal

import torch

from replaylab import replay_trainer
from replaylab.config import from_dict
from replaylab.data.rows import read_as_rows
from replaylab.errors import ConfigError, DataError
from replaylab.fingerprint import mixture_id
from replaylab.hf import guards
from replaylab.hf.packing import REPLAY, TARGET, replay_sampler
from replaylab.replay_data import store_of, tokenizer_of
from replaylab.replay_rows import (
    check_formats,
    exposure,
    held_out_examples,
    masked_examples,
    step_shares,
    with_format,
)
from replaylab.runconfig import RunConfig

__all__ = ["ReplayMixture"]


class ReplayMixture(torch.utils.data.IterableDataset):
    """Packed target + replay examples for a causal LM, in the engine's exact order (see the module docstring).

    target, replay: a built token store (a `TokenStore`, its folder, or its name under $REPLAYLAB_HOME/stores), or,
      with `tokenizer`, data to tokenize through the data layer (cached as a store, like `replaylab data build`):
      a source (recipe name, .jsonl/.txt/.parquet file or folder, hf:org/name), a list of texts or of records, or a
      Hugging Face `datasets` dataset. Records hold their text in `text_field`. replay may be None when
      replay_fraction is 0.
    replay_fraction: the replay share R of the tokens, in [0, 1), and small enough that the run fits MAX_STEPS.
    seq_len: training tokens per sequence (each example holds seq_len + 1 ids). batch_size: the global batch, in
      sequences per optimizer step, across every process and accumulation step.
    budget: unique target sequences (None = every train sequence of the target store). epochs: passes over the
      budget. The run has ceil(budget x epochs / (batch_size x (1 - R))) steps: replay stretches the run and the
      target exposure stays fixed. max_steps: a cap on those steps (the last target epoch is then cut short).
    seed: the order of the mixture. tokenizer: a `replaylab.data.tokenizer` spec ("default", a tokenizer.json or a
      folder holding one, e.g. the model's folder, or a hub id), a loaded data-layer Tokenizer, or a fast Hugging Face
      tokenizer object. options / replay_options: data-layer options of the target / replay source (e.g.
      {"val_docs": 0}, {"glob": "*.py"}); by default the stores hold out a validation split, as `replaylab
      finetune`'s do.
    rows: "rank" (default) yields this process's rows of every global batch: rank and world size come from
      `rank` / `world_size`, else from torch.distributed when it is initialized, else (0, 1); rank r of W gets the
      contiguous rows [r*B/W, (r+1)*B/W). "global" yields every row of every global batch in order: for HF Trainer,
      TRL and Accelerate's `prepare`, which split the stream over the processes themselves, by micro-batch (with
      per-device batch b, process i gets rows [j*b*W + i*b, j*b*W + (i+1)*b) of a global batch as its micro-batch j).
      Either way each optimizer step trains on exactly one global batch, with no row twice and none missing.

    format / replay_format: "text" (default), "prompt_completion" or "messages" (a built store keeps its own); packing:
      "documents" (whole examples per row, default) or "padded"; loss_weights: add per-token weights that give replay
      exactly weight R per step. Instruction examples train completions only (replay_rows.py, docs/integrations.md).

    len(): examples (rows) per full pass from step 0, as this process yields them: num_steps x batch_size
    ("global") or num_steps x batch_size / world_size ("rank"). A DataLoader with batch size b therefore has
    num_steps x batch_size / (world_size x b) batches, and HF Trainer with per_device_train_batch_size b,
    gradient_accumulation_steps g and b x g x world_size = batch_size plans exactly num_steps optimizer steps.

    Resume: every iteration starts at the resume point, step 0 unless `load_state_dict` moved it; `state_dict()`
    is the position after the last example the latest iteration yielded in this process (use `load_state_dict(
    {"step": s})` when a DataLoader worker iterates a copy). DataLoader workers: any number; worker 0 reads the stream.
    HF Trainer and TRL: checked and placed when they first read the stream (`hf.guards`; `trainer_callback` is
    optional)."""

    def __init__(
        self,
        target: Any,
        replay: Any = None,
        *,
        replay_fraction: float,
        seq_len: int,
        batch_size: int,
        budget: int | None = None,
        epochs: float = 1.0,
        max_steps: int | None = None,
        seed: int = 0,
        tokenizer: Any = None,
        text_field: str = "text",
        options: dict | None = None,
        replay_options: dict | None = None,
        rows: Literal["rank", "global"] = "rank",
        rank: int | None = None,
        world_size: int | None = None,
        format: str | None = None,
        replay_format: str | None = None,
        packing: Literal["documents", "padded"] = "documents",
        loss_weights: bool = False,
    ):
        super().__init__()
        rho = _fraction(replay_fraction)
        _integer("seq_len", seq_len, 8)
        _integer("batch_size", batch_size, 1)
        _integer("budget", budget, 1, optional=True)
        _integer("max_steps", max_steps, 1, optional=True)
        _integer("seed", seed, None)
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not 0 < epochs < math.inf:
            raise ConfigError(f"epochs is {epochs!r}; give the passes over the target budget as a number > 0, e.g. 2")
        if rho > 0 and replay is None:
            raise ConfigError(
                f"replay_fraction is {rho:g} but replay is None; pass the replay data as the second "
                "argument, or set replay_fraction=0"
            )
        if target is None:
            raise ConfigError("target is None; pass the target data: a token store, a source, texts or a dataset")
        if rows not in ("rank", "global"):
            raise ConfigError(
                f"rows is {rows!r}; choose 'rank' (this process's rows of each global batch) or "
                "'global' (every row: for HF Trainer, TRL and Accelerate's prepare)"
            )
        if (rank is None) != (world_size is None):
            raise ConfigError(
                f"rank={rank!r} and world_size={world_size!r}: give both or neither (neither = from torch.distributed)"
            )
        if world_size is not None:
            if rows == "global":
                raise ConfigError(
                    "rank and world_size are set but rows='global' yields every row; drop them or use rows='rank'"
                )
            _integer("world_size", world_size, 1)
            _integer("rank", rank, 0)
            if rank >= world_size:
                raise ConfigError(
                    f"rank {rank} is out of range for world_size {world_size}; ranks are 0..{world_size - 1}"
                )
            _check_split(batch_size, world_size)

        tok = tokenizer_of(tokenizer)
        options, replay_options = with_format(options, format), with_format(replay_options, replay_format)
        stores = {TARGET: store_of(target, "target", tok, options, text_field)}
        if replay is not None:
            stores[REPLAY] = store_of(replay, "replay", tok, replay_options, text_field)
            if stores[REPLAY].tokenizer_hash != stores[TARGET].tokenizer_hash:
                raise DataError(
                    f"the target store ({stores[TARGET].path}) and the replay store "
                    f"({stores[REPLAY].path}) were built with different tokenizers; build both with the "
                    "model's tokenizer"
                )
        check_formats(stores, {TARGET: format, REPLAY: replay_format})
        # Instruction stores are read as per-document rows (loss mask, positions per example); text stores as today.
        stores = read_as_rows(stores, packing)
        self.masked = any(hasattr(s, "rows") for s in stores.values())
        self.packing, self.with_loss_weights = packing, loss_weights
        available = stores[TARGET].num_sequences("train", seq_len)
        if budget is not None and budget > available:
            raise DataError(
                f"budget {budget} sequences exceeds the {available} train sequences of {seq_len} tokens in "
                f"the target store {stores[TARGET].path}; give budget <= {available} or a shorter seq_len"
            )

        check = dict(target_epochs=float(epochs), replay_fraction=rho, batch_size=batch_size)
        guards.check_replay_stretch(budget=budget or available, **check)
        # The run this stream is, as `replaylab finetune` plans it (a RunConfig of the fine-tuning plan; no model
        # is loaded: the stores are tokenized already).
        domains = {name: {"source": str(store.path)} for name, store in stores.items()}
        domains[TARGET]["budget"] = budget
        cfg = from_dict(
            RunConfig,
            {
                "name": "replay_mixture",
                "seed": seed,
                "model": {"kind": "hf"},
                "data": {"seq_len": seq_len, "domains": domains},
                "train": {"batch_size": batch_size, "progress": "off"},
                "finetune": {"replay_fraction": rho, "target_epochs": float(epochs), "max_steps": max_steps},
            },
        )
        self.stores = stores
        self.plan, self.run_config, self.sampler = replay_sampler(cfg, stores, str(stores[TARGET].path))
        self.replay_fraction, self.seq_len, self.batch_size, self.seed = rho, seq_len, batch_size, seed
        self.num_steps = self.plan.total_steps
        self.rows, self._rank, self._world = rows, rank, world_size
        self.fingerprint = mixture_id(
            # packing is part of what a row is, so it joins the identity of a store read as rows (text stores: as
            # before, so saved states of text mixtures keep loading)
            store_identities={k: s.identity + (f"/{packing}" if hasattr(s, "rows") else "") for k, s in stores.items()},
            plan=asdict(self.plan),
            seed=seed,
            seq_len=seq_len,
            batch_size=batch_size,
        )
        self._resume = (0, 0)  # (step, row) where every iteration starts
        self._position = (0, 0)  # (step, row) of the next example of the latest iteration

    def __repr__(self) -> str:
        return (
            f"ReplayMixture(replay_fraction={self.replay_fraction:g}, budget={self.plan.budget}, "
            f"epochs={self.plan.target_epochs:g}, seq_len={self.seq_len}, batch_size={self.batch_size}, "
            f"num_steps={self.num_steps}, rows={self.rows!r})"
        )

    # ---- what the run holds --------------------------------------------------------------------------
    def realized_shares(self) -> dict[str, float]:
        """Token (= sequence) share of target and replay over the whole run."""
        return self.sampler.realized_shares(0)

    def step_shares(self, step: int) -> dict[str, dict[str, float]]:
        """Each source's realized share of global batch `step` (0-based): rows, tokens, loss tokens and loss weight
        (see replay_rows.step_shares). For text data all four are the row share."""
        return step_shares(self, step)

    def eval_examples(self, role: str = "target", max_rows: int | None = None) -> list[dict[str, torch.Tensor]]:
        """Held-out examples of `role` ("target" or "replay"), in the format of the training examples (instruction
        data: loss on completions only): e.g. HF Trainer's eval_dataset={"target": mix.eval_examples("target"),
        "replay": mix.eval_examples("replay")} logs the held-out target loss and the replay (forgetting) loss
        during training. max_rows: at most this many rows."""
        return held_out_examples(self, role, max_rows)

    def domain_counts(self, step: int) -> dict[str, int]:
        """Sequences of each domain in global batch `step` (0-based)."""
        order = self.sampler.order(step)
        return {name: int((order == d).sum()) for d, name in enumerate(self.sampler.names)}

    def target_exposure(self) -> dict[str, float]:
        """The target budget, the target sequences the whole run draws, and the passes that makes."""
        if self.masked:  # also in examples and completion tokens
            return exposure(self)
        draws = self.sampler.counts_before(self.num_steps)[TARGET]
        return {"budget": self.plan.budget, "draws": draws, "epochs": draws / self.plan.budget}

    def rank_rows(self) -> tuple[int, int]:
        """Rows [lo, hi) of every global batch that this process yields (resolved now: torch.distributed may
        have been initialized after the dataset was made)."""
        if self.rows == "global":
            return 0, self.batch_size
        rank, world = self._rank, self._world
        if world is None:
            dist = torch.distributed
            rank, world = (
                (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
            )
            if world > 1 and _accelerate_processes() > 1:
                raise ConfigError(
                    "rows='rank' under Accelerate (HF Trainer, TRL, accelerator.prepare) would split "
                    "each global batch twice; use rows='global', or pass rank= and world_size= if your "
                    "own loop feeds each process its rows"
                )
            _check_split(self.batch_size, world)
        per = self.batch_size // world
        return rank * per, (rank + 1) * per

    def __len__(self) -> int:
        lo, hi = self.rank_rows()
        return self.num_steps * (hi - lo)

    # ---- the stream ----------------------------------------------------------------------------------
    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        if worker is None:
            self._join_reading_trainer()
        elif worker.id > 0:
            # One ordered stream: worker 0 reads all of it and the others stop at once, so a DataLoader with
            # several workers returns worker 0's batches in order, the batches of num_workers=0.
            return
        lo, hi = self.rank_rows()
        per = hi - lo
        step, row = self._resume
        if row >= per:
            raise ConfigError(
                f"the resume point is row {row} of step {step}, but this process yields {per} rows "
                "per step; resume by step (load_state_dict({'step': s})) when the number of processes "
                "changed"
            )
        self._position = (step, row)
        for s in range(step, self.num_steps):
            if self.masked:  # instruction rows: labels off the loss, positions per example (replay_rows.py)
                batch = masked_examples(self, s, (lo + row, hi))
            else:
                tokens = torch.from_numpy(self.sampler.batch(s, rows=(lo + row, hi))[0])  # (rows, seq_len + 1)
                batch = (
                    {"input_ids": seq, "labels": seq.clone(), "attention_mask": torch.ones_like(seq)} for seq in tokens
                )
            for i, example in enumerate(batch):
                r = row + i + 1
                self._position = (s + 1, 0) if r == per else (s, r)
                yield example
            row = 0

    def state_dict(self) -> dict[str, Any]:
        """{"step", "row", "mixture"}: the next example of the latest iteration in this process (row of this
        process's rows of global batch `step`) and this mixture's fingerprint."""
        step, row = self._position
        return {"step": step, "row": row, "mixture": self.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make every later iteration start at `state` ({"step": s} resumes at global batch s; a `state_dict()`
        also restores the row inside it, and its mixture must be this one)."""
        if not isinstance(state, dict) or "step" not in state:
            raise ConfigError(f"load_state_dict takes {{'step': s}} or a state_dict(), got {state!r}")
        if state.get("mixture", self.fingerprint) != self.fingerprint:
            raise ConfigError(
                f"this state belongs to another mixture ({state['mixture']}, this one is "
                f"{self.fingerprint}): the data, fraction, budget, epochs, seq_len, batch_size and seed "
                "must match"
            )
        step, row = state["step"], state.get("row", 0)
        _integer("state step", step, 0)
        _integer("state row", row, 0)
        if step > self.num_steps:
            raise ConfigError(f"state step {step} is past the end of the run ({self.num_steps} steps)")
        self._resume = self._position = (step, row)

    def set_epoch(self, epoch: int) -> None:
        """Called by Accelerate's DataLoader (HF Trainer, TRL, `accelerator.prepare`) before each pass, in the main
        process. The stream does not depend on `epoch` (the passes over the target are the mixture's epochs); a
        Trainer reading it is checked and the stream placed here, before any DataLoader worker copies it."""
        self._join_reading_trainer()

    def trainer_callback(self):
        """A transformers TrainerCallback that does, when training begins, what the stream does by itself when a
        Trainer first reads it (`hf.guards`): checks the Trainer against this mixture (its global batch
        per_device_train_batch_size x gradient_accumulation_steps x world_size must equal batch_size, its processes
        must form one job, it must plan at most num_steps steps, the model must hold seq_len + 1 positions) and
        positions the stream: at the checkpoint's global step when `ignore_data_skip=True` (no batch is read twice),
        at step 0 otherwise (the Trainer then reads and drops the batches it already trained on). Either way a
        resumed Trainer sees the batches of an uninterrupted one. Optional: it only refuses earlier."""
        return replay_trainer.trainer_callback(self)

    def _join_reading_trainer(self) -> None:
        replay_trainer.join_reading_trainer(self)

    def as_hf_dataset(self):
        """This stream as a `datasets.IterableDataset` of int lists, for stacks that take only `datasets` datasets
        (TRL's SFTTrainer). It iterates this object when read, so `load_state_dict` and `trainer_callback` act on it."""
        return replay_trainer.as_hf_dataset(self)


# ---- inputs -----------------------------------------------------------------------------------------
def _integer(name: str, value: Any, minimum: int | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        want = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ConfigError(f"{name} is {value!r}; give {want}")


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"replay_fraction is {value!r}; give the replay share of the tokens, a number in [0, 1)")
    return float(value)


def _check_split(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise ConfigError(
            f"batch_size {batch_size} does not split over {world_size} processes; make the global batch "
            f"a multiple of {world_size}"
        )


def _accelerate_processes() -> int:
    """Processes of an initialized Accelerate state (1 when Accelerate is not in use)."""
    state = sys.modules.get("accelerate.state")
    shared = getattr(getattr(state, "PartialState", None), "_shared_state", None) or {}
    return int(dict(shared).get("num_processes", 1) or 1)
