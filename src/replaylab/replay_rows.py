"""`ReplayMixture` on instruction data: per-document rows with completion-only labels, per-example positions and
per-source loss weights (docs/integrations.md, "Instruction data").

When the target (or the replay) store is an instruction store (`replaylab data build --format prompt_completion |
messages`, or `format=` on the mixture), its rows are whole examples packed per row (`data.rows`), and an example
is, each seq_len + 1 long:

    {"input_ids": tokens, "labels": tokens with -100 off the loss, "position_ids": restarting at 0 per example}

and no attention_mask: that is Hugging Face's padding-free convention, from which transformers builds a causal
mask that never crosses examples (sdpa and eager checked; flash reads the same positions) as long as the model
makes no KV cache (`config.use_cache = False`; the mixture's trainer callback sets it). Text rows of a masked
mixture (the replay, by default) carry full labels and positions 0..seq_len. With `loss_weights=True` each
example also holds "loss_weights" (float, aligned with labels: weight of predicting token t), the per-token
weights that make each source's share of the loss exactly its share (train/loss_shares.py); `replay_loss` is the
loss that uses them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from replaylab.errors import DataError
from replaylab.train.loss_shares import masked_batch, weighted_loss

TARGET, REPLAY = "target", "replay"


def with_format(options: dict | None, fmt: str | None) -> dict | None:
    """A source's data options with `format` set (None: the options as given)."""
    return options if fmt is None else {**(options or {}), "format": fmt}


def store_format(store) -> str:
    return (store.meta.get("instructions") or {}).get("format", "text")


def check_formats(stores: dict, formats: dict[str, str | None]) -> None:
    """A store handed in ready-made must be of the format asked for, if one was."""
    for role, store in stores.items():
        want = formats.get(role)
        if want is not None and store_format(store) != want:
            raise DataError(
                f"{role} store {store.path} holds {store_format(store)} records, not {want}; pass the source with "
                f"tokenizer= to build it as {want}, or drop the format argument"
            )


def loss_weights_of(mix) -> dict[str, float]:
    return {TARGET: 1.0 - mix.replay_fraction, REPLAY: mix.replay_fraction}


def masked_examples(mix, step: int, rows: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
    """Rows [lo, hi) of global batch `step` as examples (module docstring)."""
    batch = masked_batch(mix.sampler, step, loss_weights_of(mix), rows=rows)
    r = batch.rows
    tokens = torch.from_numpy(r.tokens)
    labels = torch.from_numpy(np.where(r.loss, r.tokens, -100))
    positions = torch.from_numpy(r.positions)
    out = []
    for i in range(len(tokens)):
        example = {"input_ids": tokens[i], "labels": labels[i], "position_ids": positions[i]}
        if mix.with_loss_weights:
            w = np.concatenate([[0.0], batch.weights[i]]).astype(np.float32)  # weight of predicting token t
            example["loss_weights"] = torch.from_numpy(w)
        out.append(example)
    return out


def held_out_examples(mix, role: str, max_rows: int | None) -> list[dict[str, torch.Tensor]]:
    """The held-out rows of a source's store (its `val` split, carved by document when the store was built: see
    docs/data.md, "Held-out split"), as examples in the training examples' format: instruction rows with labels on
    completions only and positions per example; text rows with full labels. For a Trainer's eval_dataset."""
    if role not in mix.stores:
        raise DataError(f"no {role!r} source in this mixture; the sources are {', '.join(mix.stores)}")
    store = mix.stores[role]
    n = store.num_sequences("val", mix.seq_len)
    if n < 1:
        raise DataError(
            f"the {role} store {store.path} holds no held-out row of {mix.seq_len} tokens (built with val_docs 0?); "
            "rebuild it with held-out documents (options={'val_docs': N})"
        )
    index = np.arange(min(n, max_rows or n), dtype=np.int64)
    if hasattr(store, "rows"):
        r = store.rows("val", mix.seq_len, index)
        labels = np.where(r.loss, r.tokens, -100)
        return [
            {"input_ids": torch.from_numpy(t), "labels": torch.from_numpy(y), "position_ids": torch.from_numpy(p)}
            for t, y, p in zip(r.tokens, labels, r.positions)
        ]
    seqs = torch.from_numpy(store.sequences("val", mix.seq_len, index))
    if mix.masked:  # the same keys as the training rows of a masked mixture
        pos = torch.arange(mix.seq_len + 1)
        return [{"input_ids": s, "labels": s.clone(), "position_ids": pos.clone()} for s in seqs]
    return [{"input_ids": s, "labels": s.clone(), "attention_mask": torch.ones_like(s)} for s in seqs]


def step_shares(mix, step: int) -> dict[str, dict[str, float]]:
    """Each source's realized share of global batch `step`: rows, tokens (padding left out), loss tokens, and
    loss weight (with `loss_weights`; under a plain mean over labels the loss weight is the loss-token share). For
    text data all four are the row share."""
    if not mix.masked:
        counts = mix.domain_counts(step)
        kinds = ("rows", "tokens", "loss_tokens", "loss_weight")
        return {k: dict.fromkeys(kinds, v / mix.batch_size) for k, v in counts.items()}
    shares = masked_batch(mix.sampler, step, loss_weights_of(mix), rows=(0, 0)).shares
    if not mix.with_loss_weights:
        for s in shares.values():
            s["loss_weight"] = s["loss_tokens"]
    return shares


def exposure(mix) -> dict[str, Any]:
    """The target's exposure over the run in rows, examples and loss (completion) tokens: every budget row, and so
    every example in it, is drawn the same number of times (`epochs`) when the epochs are whole."""
    sampler = mix.sampler
    draws = sampler.counts_before(mix.num_steps)[TARGET]
    store = sampler.stores[TARGET]
    ids = sampler.sequence_ids(TARGET, np.arange(draws, dtype=np.int64))
    times = np.bincount(ids, minlength=store.num_sequences("train", mix.seq_len))
    out: dict[str, Any] = {"budget": mix.plan.budget, "draws": draws, "epochs": draws / mix.plan.budget}
    if hasattr(store, "rows"):
        lay = store.layout("train", mix.seq_len)
        examples = np.diff(lay.row_start)
        budget = np.unique(ids)
        loss = store.loss_counts("train", mix.seq_len)
        out.update(
            {
                "budget_examples": int(examples[budget].sum()),
                "example_draws": int((times * examples).sum()),
                "budget_loss_tokens": int(loss[budget].sum()),
                "loss_token_draws": int((times * loss).sum()),
                "draws_per_budget_row": sorted({int(t) for t in times[budget]}),
            }
        )
    return out


def replay_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_weights: torch.Tensor) -> torch.Tensor:
    """The loss of a micro-batch of ReplayMixture examples made with `loss_weights=True`, for your own loop or a
    Trainer's compute_loss: sum over tokens of loss_weights x cross-entropy, with the causal shift (logits[:, t]
    predicts input_ids[:, t + 1], weighted by loss_weights[:, t + 1]). Sum it over micro-batches and processes (do
    not average): each optimizer step then gives the replay source weight exactly R."""
    return weighted_loss(logits[:, :-1], input_ids[:, 1:], loss_weights[:, 1:])
