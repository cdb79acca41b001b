"""Building a token store: stream a corpus through a tokenizer into the folder layout `store.py` reads.

Documents stream in batches (tokenized on all cores) and are appended to one `all.bin` on disk, with a
16-byte digest and the UTF-8 size of each document, so memory stays bounded. Then the validation
documents are chosen (`choose_val_docs`), each split's tokens are copied out in corpus order
(`_write_split`), and meta.json records the counts and the content hash. The folder is built beside
its final place and renamed into it (`paths.atomic_dir`), so no reader sees half a store.

This module writes stores (and defines `StoreOptions`, how a corpus becomes one); `replaylab.data.store`
reads them (`TokenStore`) and caches them (`get_store`, which calls `build_store` under the store's lock).
It imports nothing from store.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from replaylab import paths
from replaylab.data.corpus import (
    CorpusOptions,
    CorpusStats,
    document_text,
    iter_documents,
    source_kind,
    source_name,
    source_path,
)
from replaylab.data.instructions import ChatRenderer, describe_policy, loss_policy
from replaylab.data.tokenizer import Tokenizer
from replaylab.errors import DataError
from replaylab.outputs import write_marker

STORE_FORMAT = 1
# Default held-out size: 1% of the corpus tokens, but at least 64 sequences of 256 tokens (so a small
# corpus still gets a usable validation set) and at most 1024 of them (eval never reads more, so a
# large corpus does not waste data); never more than a quarter of the corpus.
VAL_MIN_TOKENS = 64 * 257
VAL_MAX_TOKENS = 1024 * 257
VAL_DEFAULT_FRACTION = 0.01
VAL_MAX_SHARE = 0.25


@dataclass
class StoreOptions:
    """How a corpus becomes a store.

    val_docs: hold out exactly this many documents (0 = no validation split).
    val_fraction: hold out this fraction of the documents.
    Neither: the default rule, in tokens (`store_build.choose_val_docs`). split_seed: which documents are
    held out.
    batch_docs / batch_chars: tokenization batch size (memory vs. speed; not part of the identity).
    """

    val_docs: int | None = None
    val_fraction: float | None = None
    split_seed: int = 0
    batch_docs: int = 2048
    batch_chars: int = 8_000_000

    def validate(self) -> None:
        if self.val_docs is not None and self.val_fraction is not None:
            raise DataError(f"give val_docs ({self.val_docs}) or val_fraction ({self.val_fraction}), not both")
        if self.val_docs is not None and self.val_docs < 0:
            raise DataError(f"val_docs must be >= 0, got {self.val_docs}")
        if self.val_fraction is not None and not 0 <= self.val_fraction < 1:
            raise DataError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.batch_docs < 1 or self.batch_chars < 1:
            raise DataError(f"batch_docs and batch_chars must be >= 1, got {self.batch_docs}, {self.batch_chars}")

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> "StoreOptions":
        known = set(cls.__dataclass_fields__)
        opts = cls(**{k: v for k, v in (options or {}).items() if k in known})
        opts.validate()
        return opts

    def identity(self) -> dict[str, Any]:
        return {"val_docs": self.val_docs, "val_fraction": self.val_fraction, "split_seed": self.split_seed}


def _batches(docs: Iterator, opts: StoreOptions) -> Iterator[list]:
    batch: list = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(document_text(doc))
        if len(batch) >= opts.batch_docs or chars >= opts.batch_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _progress(description: str):
    """A rich progress display on stderr, silent when stderr is not a terminal (logs, CI, pipes)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn(description),
        BarColumn(bar_width=None),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )


class _SegmentEncoder:
    """Structured documents -> (token ids, loss mask uint8, hash key) per document: each segment tokenized on its
    own (`instructions` module docstring), chat turns rendered first."""

    def __init__(self, tokenizer: Tokenizer, opts: CorpusOptions):
        self.tokenizer, self.opts = tokenizer, opts
        self.renderer = ChatRenderer(tokenizer.path) if opts.format == "messages" else None
        self.chat = self.renderer.name if self.renderer is not None else None

    def __call__(self, batch: list) -> tuple[list[list[int]], list[np.ndarray], list[str]]:
        policy = loss_policy(self.opts.format, self.opts.loss)
        docs = []
        for n, doc in enumerate(batch):
            if self.renderer is not None:
                doc = self.renderer.segments(doc, policy, f"document {n} of a batch")
            docs.append([(t, on or policy == "all") for t, on in doc])
        flat = self.tokenizer.encode_batch([t for doc in docs for t, _ in doc])
        ids_out, masks, keys = [], [], []
        k = 0
        for doc in docs:
            ids: list[int] = []
            mask: list[np.ndarray] = []
            for _, on in doc:
                ids.extend(flat[k])
                mask.append(np.full(len(flat[k]), on, dtype=np.uint8))
                k += 1
            ids_out.append(ids)
            masks.append(np.concatenate(mask) if mask else np.zeros(0, dtype=np.uint8))
            keys.append(json.dumps(doc, ensure_ascii=False))
        return ids_out, masks, keys


def _segment_encoder(tokenizer: Tokenizer, opts: CorpusOptions) -> _SegmentEncoder:
    return _SegmentEncoder(tokenizer, opts)


def choose_val_docs(doc_tokens: np.ndarray, opts: StoreOptions) -> np.ndarray:
    """Boolean mask of the held-out documents (see StoreOptions); deterministic in split_seed."""
    n_docs = len(doc_tokens)
    order = np.random.default_rng(opts.split_seed).permutation(n_docs)
    if opts.val_docs is not None:
        k = opts.val_docs
    elif opts.val_fraction is not None:
        k = int(round(opts.val_fraction * n_docs))
        k = max(k, 1) if opts.val_fraction > 0 else 0
    else:
        total = int(doc_tokens.sum())
        want = min(max(VAL_DEFAULT_FRACTION * total, VAL_MIN_TOKENS), VAL_MAX_TOKENS, VAL_MAX_SHARE * total)
        # Smallest prefix of the permuted documents that reaches `want` tokens (at least one document).
        k = int(np.searchsorted(np.cumsum(doc_tokens[order]), want)) + 1
        k = min(k, n_docs - 1)
    if k >= n_docs:
        raise DataError(
            f"the validation split ({k} documents) leaves no training document: the corpus has {n_docs}; "
            "lower --val-docs / --val-fraction or add documents"
        )
    mask = np.zeros(n_docs, dtype=bool)
    mask[order[:k]] = True
    return mask


def _write_split(
    all_tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, keep: np.ndarray, out: Path
) -> np.ndarray:
    """Copy the kept documents' tokens into `out` in corpus order; return their offsets (n + 1)."""
    with open(out, "wb") as f:
        # Contiguous runs of kept documents are copied as one slice (few, large writes).
        idx = np.flatnonzero(keep)
        if idx.size:
            breaks = np.flatnonzero(np.diff(idx) != 1) + 1
            for run in np.split(idx, breaks):
                a, b = int(starts[run[0]]), int(starts[run[-1]] + lengths[run[-1]])
                for c in range(a, b, 1 << 24):
                    f.write(all_tokens[c : min(b, c + (1 << 24))].tobytes())
    return np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64)


def build_store(
    source: str,
    out: Path | str,
    tokenizer: Tokenizer,
    corpus_opts: CorpusOptions,
    store_opts: StoreOptions,
    key: str = "",
) -> Path:
    """Tokenize `source` into a store folder at `out` (built beside it, renamed into place); return `out`.
    Open it with `store.TokenStore(out)`; `store.get_store` is the cached way to get one."""
    out = Path(out)
    stats = CorpusStats()
    eos = np.array([tokenizer.eos_id], dtype=tokenizer.dtype)
    with paths.atomic_dir(out) as tmp:
        lengths: list[np.ndarray] = []
        doc_bytes: list[np.ndarray] = []
        digests = bytearray()  # 16 bytes of sha256 per document: the content hash without keeping text
        masked = corpus_opts.format != "text"
        encode = _segment_encoder(tokenizer, corpus_opts) if masked else None
        mask_file = open(tmp / "all_mask.bin", "wb") if masked else None
        with open(tmp / "all.bin", "wb") as f, _progress(f"tokenizing {source}") as progress:
            task = progress.add_task("", total=None, info="")
            for batch in _batches(iter_documents(source, corpus_opts, stats), store_opts):
                if encode is None:
                    encoded, masks, keys = tokenizer.encode_batch(batch), None, batch
                else:
                    encoded, masks, keys = encode(batch)
                for i, (doc_key, ids) in enumerate(zip(keys, encoded)):
                    f.write(np.asarray(ids, dtype=tokenizer.dtype).tobytes())
                    f.write(eos.tobytes())
                    digests += hashlib.sha256(doc_key.encode("utf-8", errors="surrogatepass")).digest()[:16]
                    if mask_file is not None:
                        # The EOS that ends a document is on the loss when its last token is (the model learns
                        # to stop after a completion, not after a prompt).
                        mask_file.write(masks[i].tobytes() + (masks[i][-1:].tobytes() or b"\0"))
                lengths.append(np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(encoded)))
                doc_bytes.append(
                    np.fromiter(
                        (len(document_text(t).encode("utf-8", errors="surrogatepass")) for t in batch),
                        dtype=np.int64,
                        count=len(batch),
                    )
                )
                progress.update(task, info=f"{stats.documents:,} docs, {stats.utf8_bytes / 1e6:,.1f} MB")
        if mask_file is not None:
            mask_file.close()
        doc_tokens = np.concatenate(lengths)
        nbytes = np.concatenate(doc_bytes)
        starts = np.concatenate([[0], np.cumsum(doc_tokens)[:-1]]).astype(np.int64)
        if len(doc_tokens) < 2 and not store_opts.val_docs == 0 and not store_opts.val_fraction == 0:
            raise DataError(
                f"corpus {source!r} has a single document, so no document can be held out for validation; "
                "split it into several documents (e.g. a folder of files or a .jsonl) or pass --val-docs 0"
            )
        val_mask = choose_val_docs(doc_tokens, store_opts) if len(doc_tokens) > 1 else np.zeros(1, dtype=bool)
        all_tokens = np.memmap(tmp / "all.bin", dtype=tokenizer.dtype, mode="r", shape=(int(doc_tokens.sum()),))
        all_mask = (
            np.memmap(tmp / "all_mask.bin", dtype=np.uint8, mode="r", shape=(int(doc_tokens.sum()),))
            if masked
            else None
        )
        splits: dict[str, Any] = {}
        # A masked store's content is its documents' segments (text and loss flags), so its identity covers the mask.
        content = hashlib.sha256(f"replaylab-store-v{STORE_FORMAT}{'-masked' if masked else ''}\0".encode())
        digest_rows = np.frombuffer(bytes(digests), dtype=np.uint8).reshape(-1, 16)
        for split, keep in (("train", ~val_mask), ("val", val_mask)):
            offsets = _write_split(all_tokens, starts, doc_tokens, keep, tmp / f"{split}.bin")
            np.save(tmp / f"{split}_docs.npy", offsets)
            content.update(f"{split}\0".encode())
            content.update(digest_rows[keep].tobytes())
            splits[split] = {
                "documents": int(keep.sum()),
                "tokens": int(offsets[-1]),
                "utf8_bytes": int(nbytes[keep].sum()),
            }
            if all_mask is not None:
                _write_split(all_mask, starts, doc_tokens, keep, tmp / f"{split}_mask.bin")
                loss = np.fromfile(tmp / f"{split}_mask.bin", dtype=np.uint8)
                splits[split]["loss_tokens"] = int(loss.sum(dtype=np.int64))
        del all_tokens, all_mask
        os.unlink(tmp / "all.bin")
        if masked:
            os.unlink(tmp / "all_mask.bin")
        content_hash = content.hexdigest()
        meta = {
            "format": STORE_FORMAT,
            "source": source,
            **({"source_path": str(source_path(source).resolve())} if source_kind(source) == "path" else {}),
            "source_name": source_name(source),
            "corpus_options": corpus_opts.as_dict(),
            "store_options": store_opts.identity(),
            "key": key,
            "tokenizer": tokenizer.name,
            "tokenizer_hash": tokenizer.hash,
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
            "dtype": tokenizer.dtype.name,
            "documents": stats.documents,
            "chars": stats.chars,
            "utf8_bytes": stats.utf8_bytes,
            "tokens": int(doc_tokens.sum()),
            "skipped_empty": stats.skipped_empty,
            "invalid_utf8_docs": stats.invalid_utf8_docs,
            "replaced_chars": stats.replaced_chars,
            "splits": splits,
            "content_hash": content_hash,
            "identity": hashlib.sha256(f"{content_hash}\0{tokenizer.hash}".encode()).hexdigest(),
        }
        if masked:
            meta["instructions"] = {
                "format": corpus_opts.format,
                "loss_policy": loss_policy(corpus_opts.format, corpus_opts.loss),
                "describe": describe_policy(corpus_opts.format, corpus_opts.loss),
                **({"chat_template": encode.chat} if corpus_opts.format == "messages" else {}),
            }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        write_marker(tmp, "store", key)
        # A copy of the tokenizer makes the store self-contained: it can always be decoded and checked.
        shutil.copyfile(tokenizer.path / "tokenizer.json", tmp / "tokenizer.json")
    note = stats.note()
    if note:
        print(f"replaylab: warning: {source}: {note}", file=sys.stderr)
    return out
