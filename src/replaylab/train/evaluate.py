"""Held-out evaluation: per-domain loss and bits per byte on two disjoint halves.

Each domain's first `n` validation sequences (n = data.val_sequences or eval.max_sequences, at most
what the store holds) are split in two: the first half is `val_*` (the "select" half, used to pick
LRs and replay fractions) and the second half is `test_*` (the "report" half). Tuning on one half
and reporting the other keeps the reported number honest.
bpb = loss_nats / ln 2 / bytes_per_token. The engine and the Hugging Face bridge (`replaylab.hf.evaluate`)
both score through `evaluate`.

An instruction domain (a store read as rows, `data.rows`) is scored on its held-out examples, packed per document
like its training rows: the loss is the mean over loss tokens only (completions, assistant turns), each example
attending to itself alone; its bpb divides by the split's average bytes per token (all tokens, prompts included),
so compare it only with itself. Which documents are held out is the store's rule (docs/data.md, "Held-out split").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from replaylab.data.rows import Rows
from replaylab.errors import DataError
from replaylab.runconfig import RunConfig
from replaylab.runtime import autocast
from replaylab.train.loss import next_token_loss


@dataclass
class EvalSet:
    domain: str
    val: np.ndarray  # int64 (n_val, seq_len + 1): the select half
    test: np.ndarray  # int64 (n_test, seq_len + 1): the report half
    bytes_per_token: float
    val_rows: Rows | None = None  # instruction domains: the halves as rows (loss flags, positions, segments)
    test_rows: Rows | None = None


def build_eval_sets(config: RunConfig, stores: dict) -> list[EvalSet]:
    names = config.eval.domains if config.eval.domains is not None else list(config.data.domains)
    unknown = [d for d in names if d not in config.data.domains]
    if unknown:
        raise DataError(
            f"eval.domains names {unknown[0]!r}, which data.domains does not define "
            f"(defined: {', '.join(config.data.domains)})"
        )
    seq_len = config.data.seq_len
    cap = config.data.val_sequences or config.eval.max_sequences
    sets = []
    for name in names:
        store = stores[name]
        n = min(cap, store.num_sequences("val", seq_len))
        if n < 2:
            raise DataError(
                f"domain {name!r} has {n} held-out sequence(s) of {seq_len} tokens; evaluation needs >= 2 "
                "(a select half and a report half): give the store more validation documents or lower data.seq_len"
            )
        half = (n + 1) // 2
        if hasattr(store, "rows"):  # instruction data: held-out examples, loss on their completions only
            r = store.rows("val", seq_len, np.arange(n, dtype=np.int64))
            cut = [
                Rows(*(a[sl] for a in (r.tokens, r.loss, r.positions, r.segments)))
                for sl in (slice(0, half), slice(half, n))
            ]
            sets.append(EvalSet(name, cut[0].tokens, cut[1].tokens, float(store.bytes_per_token("val")), *cut))
            continue
        seqs = store.sequences("val", seq_len, np.arange(n, dtype=np.int64))
        sets.append(EvalSet(name, seqs[:half], seqs[half:], float(store.bytes_per_token("val"))))
    return sets


Forward = Callable[[torch.Tensor], torch.Tensor]  # tokens (B, T) -> logits (B, T, V)


@torch.no_grad()
def mean_loss(
    forward: Forward, seqs: np.ndarray, *, batch_size: int, device: torch.device, autocast_dtype: torch.dtype | None
) -> float:
    """Mean next-token cross-entropy (nats) over every token of `seqs` (n, seq_len + 1); sums in
    float64 so the batch size does not change the result beyond float rounding."""
    total, count = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        batch = torch.from_numpy(seqs[i : i + batch_size]).to(device)
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T) each
        with autocast(device, autocast_dtype):
            logits = forward(x)  # (B, T, V)
        total += float(next_token_loss(logits, y, reduction="sum").double())
        count += y.numel()
    return total / count


RowsForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (tokens, positions, segments)


@torch.no_grad()
def mean_masked_loss(
    forward: RowsForward, rows: Rows, *, batch_size: int, device: torch.device, autocast_dtype: torch.dtype | None
) -> float:
    """Mean next-token cross-entropy (nats) over the loss tokens of `rows` (held-out instruction examples)."""
    total, count = 0.0, 0
    for i in range(0, len(rows.tokens), batch_size):
        t, p, s = (
            torch.from_numpy(a[i : i + batch_size]).to(device)
            for a in (rows.tokens, rows.positions, rows.segments.astype(np.int64))
        )
        on = torch.from_numpy(rows.loss[i : i + batch_size, 1:]).to(device)  # (B, T)
        with autocast(device, autocast_dtype):
            logits = forward(t[:, :-1], p[:, :-1], s[:, :-1])  # (B, T, V)
        y = t[:, 1:].masked_fill(~on, -100)
        total += float(F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=-100, reduction="sum").double())
        count += int(on.sum())
    return total / max(count, 1)


def evaluate(
    model: torch.nn.Module,
    sets: list[EvalSet],
    *,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    forward: Forward | None = None,
    forward_rows: RowsForward | None = None,
) -> dict[str, dict[str, float]]:
    """{domain: {val_loss, test_loss, val_bpb, test_bpb}}; the model's train/eval mode is restored.

    forward: how to get logits from `model` (default: `model(x)`, the engine's Transformer; a Hugging
    Face model's is `model(input_ids=x, use_cache=False).logits`, see `replaylab.hf.evaluate`)."""
    forward = model if forward is None else forward
    forward_rows = (
        model if forward_rows is None else forward_rows
    )  # our Transformer takes (tokens, positions, segments)
    was_training = model.training
    model.eval()
    out = {}
    try:
        for s in sets:
            if s.val_rows is not None:
                kw = dict(batch_size=batch_size, device=device, autocast_dtype=autocast_dtype)
                val = mean_masked_loss(forward_rows, s.val_rows, **kw)
                test = mean_masked_loss(forward_rows, s.test_rows, **kw)
            else:
                val = mean_loss(forward, s.val, batch_size=batch_size, device=device, autocast_dtype=autocast_dtype)
                test = mean_loss(forward, s.test, batch_size=batch_size, device=device, autocast_dtype=autocast_dtype)
            scale = 1.0 / math.log(2) / s.bytes_per_token
            out[s.domain] = {"val_loss": val, "test_loss": test, "val_bpb": val * scale, "test_bpb": test * scale}
    finally:
        model.train(was_training)
    return out
