"""Per-document packing: the rows an instruction store is trained on.

A text store is read as one stream cut into fixed rows (`TokenStore.sequences`): documents run across rows and
attend to each other, which is how the paper pre-trains. An instruction store (one with a loss mask, see
`data.instructions`) is read through `DocumentRows` instead, which packs whole documents (examples):

- Rule ("documents", the default): documents in store order; each goes into the current row when its tokens fit
  in what is left of the row's seq_len + 1, else it opens a new row. A document longer than seq_len + 1 gets a row
  of its own and is truncated to its first seq_len + 1 tokens (its prompt is kept, the end of its completion is
  cut); truncations are counted (`truncated_documents`, `truncated_tokens`), never silent, and no document is
  dropped. The rest of a row is padding: EOS ids, off the loss, a segment of their own.
- "padded": one document per row, padded the same way (for those who want no packing at all).

Every row comes with, per position (`Rows`): the loss flag (the token is on its document's loss and is not its
document's first token, which nothing in the row may predict), the position id (restarting at 0 per document, as
Hugging Face's padding-free convention and our model's document mask expect), and the segment id (which document
of the row the token belongs to). Row i is a pure function of the store and (split, seq_len, packing), so budgets,
epochs and resume work on rows exactly as on a text store's sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from replaylab.errors import DataError

PACKINGS = ("documents", "padded")


@dataclass(frozen=True)
class Rows:
    """Rows of length seq_len + 1: tokens int64, loss bool, positions int64, segments int32 (each (n, seq_len + 1)).
    The engine's convention holds: inputs are [:, :-1], targets [:, 1:], and target j counts when loss[:, j + 1]."""

    tokens: np.ndarray
    loss: np.ndarray
    positions: np.ndarray
    segments: np.ndarray


def stream_rows(tokens: np.ndarray) -> Rows:
    """A text store's sequences as Rows: every target on the loss, positions 0..seq_len, one segment."""
    n, width = tokens.shape
    loss = np.ones((n, width), dtype=bool)
    loss[:, 0] = False  # position 0 is never a target
    positions = np.broadcast_to(np.arange(width, dtype=np.int64), (n, width)).copy()
    return Rows(tokens, loss, positions, np.zeros((n, width), dtype=np.int32))


@dataclass(frozen=True)
class Layout:
    """Which documents each row holds: row r is pieces [row_start[r], row_start[r + 1]); piece p is document
    doc[p]'s first length[p] tokens."""

    row_start: np.ndarray
    doc: np.ndarray
    length: np.ndarray
    truncated_documents: int
    truncated_tokens: int

    @property
    def num_rows(self) -> int:
        return len(self.row_start) - 1


def check_packing(packing: str) -> None:
    if packing not in PACKINGS:
        raise DataError(f"packing is {packing!r}; choose 'documents' (whole examples packed per row) or 'padded'")


def layout(doc_lengths: np.ndarray, width: int, packing: str) -> Layout:
    """The packing rule of the module docstring over documents of `doc_lengths` tokens, rows of `width` tokens."""
    check_packing(packing)
    kept = np.minimum(doc_lengths, width)
    row_start = [0]
    fill = 0
    for p, n in enumerate(kept.tolist()):
        if p and (packing == "padded" or fill + n > width):
            row_start.append(p)
            fill = 0
        fill += n
    if len(kept):
        row_start.append(len(kept))
    over = doc_lengths > width
    return Layout(
        row_start=np.asarray(row_start, dtype=np.int64),
        doc=np.arange(len(kept), dtype=np.int64),
        length=kept.astype(np.int64),
        truncated_documents=int(over.sum()),
        truncated_tokens=int((doc_lengths[over] - width).sum()),
    )


class DocumentRows:
    """An instruction store read as per-document rows (module docstring). It answers what the mixture sampler asks
    of a store (num_sequences, budget_indices, sequences, identity, ...) with rows in place of stream sequences, and
    `rows()` with their loss flags, positions and segments."""

    def __init__(self, store, packing: str = "documents"):
        check_packing(packing)
        self.store, self.packing = store, packing
        self._layouts: dict[tuple[str, int], Layout] = {}
        self._counts: dict[tuple[str, str, int], np.ndarray] = {}

    def __getattr__(self, name: str):  # path, name, identity, tokenizer_hash, meta, tokenizer(), ...
        return getattr(self.store, name)

    def __repr__(self) -> str:
        return f"DocumentRows({self.store!r}, packing={self.packing!r})"

    def layout(self, split: str, seq_len: int) -> Layout:
        key = (split, seq_len)
        if key not in self._layouts:
            offsets = self.store.doc_offsets(split)
            self._layouts[key] = layout(np.diff(offsets), seq_len + 1, self.packing)
        return self._layouts[key]

    def num_sequences(self, split: str, seq_len: int) -> int:
        if seq_len < 1:
            raise DataError(f"seq_len must be >= 1, got {seq_len}")
        return self.layout(split, seq_len).num_rows

    def budget_indices(self, seq_len: int, n: int, seed: int) -> np.ndarray:
        """As `TokenStore.budget_indices`, over rows: the first n of a seeded permutation (nested in n)."""
        from replaylab.data.store import nested_budget

        total = self.num_sequences("train", seq_len)
        return nested_budget(total, n, seed, f"store {self.store.name}", f"rows of {seq_len} tokens (whole examples)")

    def sequences(self, split: str, seq_len: int, index: np.ndarray) -> np.ndarray:
        return self.rows(split, seq_len, index).tokens

    def rows(self, split: str, seq_len: int, index: np.ndarray) -> Rows:
        lay = self.layout(split, seq_len)
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= lay.num_rows):
            bad = int(index.min() if index.min() < 0 else index.max())
            raise DataError(
                f"row index {bad} is out of range: store {self.store.name} packs into {lay.num_rows} {split} rows"
            )
        width = seq_len + 1
        n = len(index)
        tokens = np.full((n, width), int(self.store.meta.get("eos_id", 0)), dtype=np.int64)
        loss = np.zeros((n, width), dtype=bool)
        positions = np.zeros((n, width), dtype=np.int64)
        segments = np.zeros((n, width), dtype=np.int32)
        flat, mask = self.store.tokens(split), self.store.loss_mask(split)
        offsets = self.store.doc_offsets(split)
        for i, r in enumerate(index.tolist()):
            at = 0
            pieces = range(int(lay.row_start[r]), int(lay.row_start[r + 1]))
            for s, p in enumerate(pieces):
                start, k = int(offsets[lay.doc[p]]), int(lay.length[p])
                tokens[i, at : at + k] = flat[start : start + k]
                loss[i, at + 1 : at + k] = mask[start + 1 : start + k].astype(bool)
                positions[i, at : at + k] = np.arange(k)
                segments[i, at : at + k] = s
                at += k
            positions[i, at:] = np.arange(width - at)  # padding: a segment of its own
            segments[i, at:] = len(pieces)
        return Rows(tokens, loss, positions, segments)

    def loss_counts(self, split: str, seq_len: int) -> np.ndarray:
        """Targets on the loss in each row, int64 (num_rows,): what `rows(...).loss[:, 1:].sum(1)` gives, without
        reading tokens (the per-source loss weights of a global batch need every row's count on every rank)."""
        key = ("loss", split, seq_len)
        if key not in self._counts:
            lay = self.layout(split, seq_len)
            csum = np.concatenate([[0], np.cumsum(self.store.loss_mask(split), dtype=np.int64)])
            starts = self.store.doc_offsets(split)[lay.doc]
            per_piece = np.where(lay.length > 1, csum[starts + lay.length] - csum[starts + 1], 0)
            self._counts[key] = np.add.reduceat(per_piece, lay.row_start[:-1]) if lay.num_rows else per_piece[:0]
        return self._counts[key]

    def token_counts(self, split: str, seq_len: int) -> np.ndarray:
        """Tokens of documents (not padding) in each row, int64 (num_rows,)."""
        lay = self.layout(split, seq_len)
        return np.add.reduceat(lay.length, lay.row_start[:-1]) if lay.num_rows else lay.length[:0]

    def summary(self, split: str, seq_len: int) -> dict[str, int | str]:
        """What packing did to a split: rows, examples, truncations, loss and padding tokens."""
        lay = self.layout(split, seq_len)
        width = seq_len + 1
        return {
            "packing": self.packing,
            "rows": lay.num_rows,
            "examples": int(len(lay.doc)),
            "truncated_examples": lay.truncated_documents,
            "truncated_tokens": lay.truncated_tokens,
            "padding_tokens": int(lay.num_rows * width - lay.length.sum()),
        }


def read_as_rows(stores: dict, packing: str = "documents") -> dict:
    """Instruction stores (those with a loss mask) wrapped as `DocumentRows`; text stores as they are. What every
    trainer of masked data opens its stores with (ReplayMixture, `replaylab train`, `replaylab finetune`)."""
    check_packing(packing)
    return {name: DocumentRows(s, packing) if s.meta.get("instructions") else s for name, s in stores.items()}


def instruction_summary(stores: dict, seq_len: int) -> dict:
    """For a run's manifest: each domain's loss policy, and for instruction domains what packing did to their train
    split (rows, examples, truncations, padding); {} when no store is read as rows (text runs record nothing new)."""
    if not any(isinstance(s, DocumentRows) for s in stores.values()):
        return {}
    out = {}
    for name, s in stores.items():
        inst = s.meta.get("instructions")
        out[name] = {"loss": inst["describe"] if inst else "text: loss on every token"}
        if isinstance(s, DocumentRows):
            out[name].update(s.summary("train", seq_len))
    return {"instruction_data": out}
