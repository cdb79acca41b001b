"""A replay share that means what it says for masked (instruction) data: each source's weight in the loss.

For text data, rows, tokens and loss tokens agree, so a share of rows is a share of the loss, and the loss is
the plain mean over the batch's tokens (the paper's meaning; that path is untouched and stays bit-identical).
With loss masks they drift apart: a replay row has seq_len loss tokens, a packed instruction row only its
completions' tokens (a third to a half as many on typical SFT data), so under the usual mean over loss tokens
the source with more loss tokens per row dominates the gradient, whatever its row share.

The rule here: per optimizer step, source s gets loss weight w_s exactly, whatever the loss-token counts, by
a per-source mean weighted by the shares:

    loss = sum_s w_s * (sum of the loss of s's loss tokens in the global batch) / N_s

with N_s the loss tokens of s in the whole global batch (every rank, every accumulation micro-batch). Each
token's weight w_s / N_s is computed before the forward pass (`MaskedBatch.weights`), so a micro-batch's loss is
`weighted_loss(...)` = sum(weight x token loss), and summing micro-batches and ranks (no averaging) gives exactly
the global objective. w = {replay: R, target: 1 - R} (`ReplayMixture`); a step that holds no loss token of a
source gives its weight to the others (renormalized), which the realized shares show.

`MaskedBatch.shares` reports, per step, each source's realized share of rows, tokens, loss tokens and loss
weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from replaylab.data.rows import Rows, stream_rows
from replaylab.train.mixture import MixtureSampler, stage_at


@dataclass(frozen=True)
class MaskedBatch:
    """Rows [lo, hi) of a global batch with per-target loss weights (rows, seq_len) that sum, over the whole
    global batch, to 1; `shares` are the global step's realized shares per source."""

    rows: Rows
    domains: np.ndarray  # int16 (rows,)
    weights: np.ndarray  # float64 (rows, seq_len): weight of target j of each row (0 off the loss)
    shares: dict[str, dict[str, float]]


def _loss_counts(sampler: MixtureSampler, name: str, ids: np.ndarray) -> np.ndarray:
    store = sampler.stores[name]
    counts = getattr(store, "loss_counts", None)
    if counts is None:  # a text store: every target of a sequence is on the loss
        return np.full(len(ids), sampler.seq_len, dtype=np.int64)
    return counts("train", sampler.seq_len)[ids]


def _token_counts(sampler: MixtureSampler, name: str, ids: np.ndarray) -> np.ndarray:
    counts = getattr(sampler.stores[name], "token_counts", None)
    if counts is None:
        return np.full(len(ids), sampler.seq_len + 1, dtype=np.int64)
    return counts("train", sampler.seq_len)[ids]


def _rows(sampler: MixtureSampler, name: str, ids: np.ndarray) -> Rows:
    store = sampler.stores[name]
    if hasattr(store, "rows"):
        return store.rows("train", sampler.seq_len, ids)
    return stream_rows(store.sequences("train", sampler.seq_len, ids))


def masked_batch(
    sampler: MixtureSampler, step: int, weights: dict[str, float], rows: tuple[int, int] | None = None
) -> MaskedBatch:
    """Step `step`'s rows [lo, hi) as a MaskedBatch; `weights`: each source's loss weight (summing to 1)."""
    slots = sampler.order(step)
    start = sampler._row(step)
    lo, hi = rows if rows is not None else (0, sampler.batch_size)
    width = sampler.seq_len + 1
    names = sampler.names
    n_loss = np.zeros(len(names), dtype=np.int64)
    n_tokens = np.zeros(len(names), dtype=np.int64)
    per_slot = np.zeros(len(slots), dtype=np.int64)
    ids_of: dict[int, np.ndarray] = {}
    for d, name in enumerate(names):
        where = np.flatnonzero(slots == d)  # the domain's k-th slot holds its k-th draw of the step
        if not len(where):
            continue
        ids_of[d] = sampler.sequence_ids(name, start[d] + np.arange(len(where), dtype=np.int64))
        per_slot[where] = _loss_counts(sampler, name, ids_of[d])
        n_loss[d] = per_slot[where].sum()
        n_tokens[d] = _token_counts(sampler, name, ids_of[d]).sum()
    wanted = np.array([float(weights.get(name, 0.0)) for name in names])
    present = np.where(n_loss > 0, wanted, 0.0)
    realized = present / present.sum() if present.sum() > 0 else present
    per_token = np.divide(realized, n_loss, out=np.zeros(len(names)), where=n_loss > 0)

    k = hi - lo
    out = {
        "tokens": np.empty((k, width), dtype=np.int64),
        "loss": np.zeros((k, width), dtype=bool),
        "positions": np.empty((k, width), dtype=np.int64),
        "segments": np.empty((k, width), dtype=np.int32),
    }
    for d, name in enumerate(names):
        where = np.flatnonzero(slots == d)
        mine = (where >= lo) & (where < hi)
        if not mine.any():
            continue
        got = _rows(sampler, name, ids_of[d][mine])
        for key in out:
            out[key][where[mine] - lo] = getattr(got, key)
    domains = slots[lo:hi]
    token_weights = out["loss"][:, 1:] * per_token[domains][:, None]

    shares = {
        name: {
            "rows": float((slots == d).mean()),
            "tokens": float(n_tokens[d] / max(1, n_tokens.sum())),  # tokens of documents, padding left out
            "loss_tokens": float(n_loss[d] / max(1, n_loss.sum())),
            "loss_weight": float(realized[d]),
        }
        for d, name in enumerate(names)
    }
    return MaskedBatch(Rows(**out), domains, token_weights, shares)


def weighted_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(weights x next-token cross-entropy) of logits (B, T, V) against targets (B, T), in fp32: a micro-batch's
    part of the step objective (module docstring). Off-loss targets have weight 0 and are never scored."""
    ce = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    return (ce * weights.reshape(-1).to(ce.dtype)).sum()


def engine_weights(config, sampler: MixtureSampler):
    """step -> each domain's loss weight, for the engine's trainer; None when no store is read as rows (text data:
    the plain mean over tokens, unchanged). A replay fine-tuning run (`finetune` planned) weighs replay R and the
    target 1 - R; any other run, each domain by its weight in the step's stage mixture."""
    if not any(hasattr(store, "rows") for store in sampler.stores.values()):
        return None
    ft = getattr(config, "finetune", None)
    if ft is not None and {"target", "replay"} <= set(sampler.names):
        fixed = {"target": 1.0 - ft.replay_fraction, "replay": ft.replay_fraction}
        return lambda step: fixed
    starts = config.stage_starts()
    return lambda step: {k: float(w) for k, w in config.stages[stage_at(starts, step)].mixture.items()}


def batch_tensors(batch: MaskedBatch) -> dict[str, torch.Tensor]:
    """A MaskedBatch as the tensors a train module's `weighted_micro_loss` takes (rows, seq_len + 1 / seq_len)."""
    r = batch.rows
    return {
        "tokens": torch.from_numpy(r.tokens),
        "positions": torch.from_numpy(r.positions),
        "segments": torch.from_numpy(r.segments.astype(np.int64)),
        "weights": torch.from_numpy(batch.weights.astype(np.float32)),
    }
