"""Token stores: a corpus tokenized once into flat memory-mapped token arrays.

A store folder holds
  train.bin / val.bin        flat uint16 (vocab <= 65536) or uint32 tokens; every document is
                             followed by one EOS token, so documents are joined by EOS;
  train_docs.npy / val_docs.npy  int64 document start offsets into the .bin, plus the end (n_docs + 1);
  meta.json                  source, tokenizer hash, dtype, counts, UTF-8 bytes, content hash;
  tokenizer.json             a copy of the tokenizer (so a store decodes on its own).

The validation split is carved first, by document: a seeded permutation of document indices, whose
first documents go to `val` (see `StoreOptions`). Training data never contains a validation document.
Packing: sequence i of a split is tokens [i*L, i*L + L + 1) (inputs plus the shifted targets).
Budgets: `budget_indices(L, n, seed)` is the first n of a seeded permutation of the train sequences,
so a budget of 2n always contains the budget of n (nested budgets, as the paper's scaling law needs).

Building streams documents in batches (tokenized on all cores), appends to a .bin on disk, and
renames the finished folder into place: memory stays bounded and no reader sees half a store.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from replaylab import paths
from replaylab.data.corpus import (CorpusOptions, CorpusStats, check_source, iter_documents, source_fingerprint,
                                  source_name)
from replaylab.data.tokenizer import Tokenizer, get_tokenizer
from replaylab.errors import DataError
from replaylab.outputs import check_name, claim_output, write_marker

SPLITS = ("train", "val")
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
    Neither: the default rule above (measured in tokens). split_seed: which documents are held out.
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


def _split_options(options: dict[str, Any] | None) -> tuple[CorpusOptions, StoreOptions]:
    options = dict(options or {})
    known = set(CorpusOptions.__dataclass_fields__) | set(StoreOptions.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise DataError(f"unknown data option {unknown[0]!r}; known options: {', '.join(sorted(known))}")
    return CorpusOptions.from_options(options), StoreOptions.from_options(options)


# --------------------------------------------------------------------------------------------- reading
class TokenStore:
    """A built store, opened read-only. Token arrays are memory-mapped on first use."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.exists():
            raise DataError(f"{self.path} is not a token store (no meta.json); build one with `replaylab data build`")
        self.meta: dict[str, Any] = json.loads(meta_file.read_text())
        self.dtype = np.dtype(self.meta["dtype"])
        self._tokens: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r}, train={self.num_tokens('train')}, val={self.num_tokens('val')})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def identity(self) -> str:
        """What run manifests record: a hash of (content hash, tokenizer hash)."""
        return self.meta["identity"]

    @property
    def tokenizer_hash(self) -> str:
        return self.meta["tokenizer_hash"]

    def tokenizer(self) -> Tokenizer:
        """The tokenizer this store was built with (its copy inside the store folder)."""
        from replaylab.data.tokenizer import load_tokenizer

        tok = load_tokenizer(self.path, name=self.meta["tokenizer"])
        if tok.hash != self.tokenizer_hash:
            raise DataError(f"store {self.path}: tokenizer.json does not match meta.json; rebuild the store")
        return tok

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise DataError(f"split {split!r} is unknown; choose 'train' or 'val'")

    def tokens(self, split: str) -> np.ndarray:
        """The flat token array of a split (memory-mapped, read-only)."""
        self._check_split(split)
        if split not in self._tokens:
            n = self.meta["splits"][split]["tokens"]
            file = self.path / f"{split}.bin"
            # np.memmap refuses empty files; an empty split is just an empty array.
            self._tokens[split] = (np.memmap(file, dtype=self.dtype, mode="r", shape=(n,)) if n
                                   else np.zeros(0, dtype=self.dtype))
        return self._tokens[split]

    def doc_offsets(self, split: str) -> np.ndarray:
        self._check_split(split)
        return np.load(self.path / f"{split}_docs.npy")

    def num_tokens(self, split: str) -> int:
        self._check_split(split)
        return int(self.meta["splits"][split]["tokens"])

    def num_documents(self, split: str) -> int:
        self._check_split(split)
        return int(self.meta["splits"][split]["documents"])

    def num_sequences(self, split: str, seq_len: int) -> int:
        """Packed sequences of `seq_len` (+1 shifted target) tokens in a split."""
        if seq_len < 1:
            raise DataError(f"seq_len must be >= 1, got {seq_len}")
        return max(0, (self.num_tokens(split) - 1) // seq_len)

    def _require_sequences(self, split: str, seq_len: int) -> int:
        n = self.num_sequences(split, seq_len)
        if n < 1:
            raise DataError(f"store {self.name} has {self.num_tokens(split)} {split} tokens, fewer than one sequence of "
                            f"{seq_len}+1; use more data (or a smaller val split) or a shorter seq_len")
        return n

    def sequences(self, split: str, seq_len: int, index: np.ndarray) -> np.ndarray:
        """Sequences `index` of a split as int64 [len(index), seq_len + 1], with one vectorized gather."""
        n = self._require_sequences(split, seq_len)
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= n):
            bad = int(index.min() if index.min() < 0 else index.max())
            raise DataError(f"sequence index {bad} is out of range: store {self.name} has {n} {split} sequences of {seq_len}")
        offsets = index[:, None] * seq_len + np.arange(seq_len + 1, dtype=np.int64)
        return self.tokens(split)[offsets].astype(np.int64)

    def budget_indices(self, seq_len: int, n: int, seed: int) -> np.ndarray:
        """The first n of a seeded permutation of the train sequences: nested across n for one seed."""
        total = self._require_sequences("train", seq_len)
        if n < 1 or n > total:
            raise DataError(f"a budget of {n} sequences does not fit store {self.name}: it has {total} train sequences "
                            f"of {seq_len} tokens; choose a budget between 1 and {total} or a larger corpus")
        return np.random.default_rng(seed).permutation(total)[:n].astype(np.int64)

    def bytes_per_token(self, split: str) -> float:
        """UTF-8 bytes of the split's documents per token (EOS tokens included): loss / ln 2 / this = bits per byte."""
        tokens = self.num_tokens(split)
        if tokens == 0:
            raise DataError(f"store {self.name} has no {split} tokens; bytes per token is undefined")
        return self.meta["splits"][split]["utf8_bytes"] / tokens


# --------------------------------------------------------------------------------------------- building
def _batches(docs: Iterator[str], opts: StoreOptions) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for text in docs:
        batch.append(text)
        chars += len(text)
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
    return Progress(TextColumn(description), BarColumn(bar_width=None), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), console=console, disable=not console.is_terminal, transient=True)


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
        raise DataError(f"the validation split ({k} documents) leaves no training document: the corpus has {n_docs}; "
                        "lower --val-docs / --val-fraction or add documents")
    mask = np.zeros(n_docs, dtype=bool)
    mask[order[:k]] = True
    return mask


def _write_split(all_tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, keep: np.ndarray, out: Path) -> np.ndarray:
    """Copy the kept documents' tokens into `out` in corpus order; return their offsets (n + 1)."""
    with open(out, "wb") as f:
        # Contiguous runs of kept documents are copied as one slice (few, large writes).
        idx = np.flatnonzero(keep)
        if idx.size:
            breaks = np.flatnonzero(np.diff(idx) != 1) + 1
            for run in np.split(idx, breaks):
                a, b = int(starts[run[0]]), int(starts[run[-1]] + lengths[run[-1]])
                for c in range(a, b, 1 << 24):
                    f.write(all_tokens[c:min(b, c + (1 << 24))].tobytes())
    return np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64)


def build_store(source: str, out: Path | str, tokenizer: Tokenizer, corpus_opts: CorpusOptions,
                store_opts: StoreOptions, key: str = "") -> TokenStore:
    """Tokenize `source` into a store folder at `out` (built beside it, renamed into place)."""
    out = Path(out)
    stats = CorpusStats()
    eos = np.array([tokenizer.eos_id], dtype=tokenizer.dtype)
    with paths.atomic_dir(out) as tmp:
        lengths: list[np.ndarray] = []
        doc_bytes: list[np.ndarray] = []
        digests = bytearray()  # 16 bytes of sha256 per document: the content hash without keeping text
        with open(tmp / "all.bin", "wb") as f, _progress(f"tokenizing {source}") as progress:
            task = progress.add_task("", total=None, info="")
            for batch in _batches(iter_documents(source, corpus_opts, stats), store_opts):
                encoded = tokenizer.encode_batch(batch)
                for text, ids in zip(batch, encoded):
                    f.write(np.asarray(ids, dtype=tokenizer.dtype).tobytes())
                    f.write(eos.tobytes())
                    digests += hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).digest()[:16]
                lengths.append(np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(encoded)))
                doc_bytes.append(np.fromiter((len(t.encode("utf-8", errors="surrogatepass")) for t in batch),
                                             dtype=np.int64, count=len(batch)))
                progress.update(task, info=f"{stats.documents:,} docs, {stats.utf8_bytes / 1e6:,.1f} MB")
        doc_tokens = np.concatenate(lengths)
        nbytes = np.concatenate(doc_bytes)
        starts = np.concatenate([[0], np.cumsum(doc_tokens)[:-1]]).astype(np.int64)
        if len(doc_tokens) < 2 and not store_opts.val_docs == 0 and not store_opts.val_fraction == 0:
            raise DataError(f"corpus {source!r} has a single document, so no document can be held out for validation; "
                            "split it into several documents (e.g. a folder of files or a .jsonl) or pass --val-docs 0")
        val_mask = choose_val_docs(doc_tokens, store_opts) if len(doc_tokens) > 1 else np.zeros(1, dtype=bool)
        all_tokens = np.memmap(tmp / "all.bin", dtype=tokenizer.dtype, mode="r", shape=(int(doc_tokens.sum()),))
        splits: dict[str, Any] = {}
        content = hashlib.sha256(f"replaylab-store-v{STORE_FORMAT}\0".encode())
        digest_rows = np.frombuffer(bytes(digests), dtype=np.uint8).reshape(-1, 16)
        for split, keep in (("train", ~val_mask), ("val", val_mask)):
            offsets = _write_split(all_tokens, starts, doc_tokens, keep, tmp / f"{split}.bin")
            np.save(tmp / f"{split}_docs.npy", offsets)
            content.update(f"{split}\0".encode())
            content.update(digest_rows[keep].tobytes())
            splits[split] = {"documents": int(keep.sum()), "tokens": int(offsets[-1]),
                             "utf8_bytes": int(nbytes[keep].sum())}
        del all_tokens
        os.unlink(tmp / "all.bin")
        content_hash = content.hexdigest()
        meta = {
            "format": STORE_FORMAT,
            "source": source,
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
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        write_marker(tmp, "store", key)
        # A copy of the tokenizer makes the store self-contained: it can always be decoded and checked.
        shutil.copyfile(tokenizer.path / "tokenizer.json", tmp / "tokenizer.json")
    note = stats.note()
    if note:
        print(f"replaylab: warning: {source}: {note}", file=sys.stderr)
    return TokenStore(out)


# --------------------------------------------------------------------------------------------- the cache
def stores_dir() -> Path:
    return paths.home() / "stores"


def store_key(source: str, tokenizer: Tokenizer, corpus_opts: CorpusOptions, store_opts: StoreOptions) -> str:
    h = hashlib.sha256()
    h.update(f"v{STORE_FORMAT}\0{source_fingerprint(source, corpus_opts)}\0{tokenizer.hash}\0".encode())
    h.update(json.dumps(store_opts.identity(), sort_keys=True).encode())
    return h.hexdigest()


def open_store(name_or_dir: str | Path) -> TokenStore:
    """Open a built store by folder path, by its name under $REPLAYLAB_HOME/stores, or by its source
    name (`code`) when that picks one store."""
    p = Path(name_or_dir)
    if (p / "meta.json").exists():
        return TokenStore(p)
    cached = stores_dir() / str(name_or_dir)
    if (cached / "meta.json").exists():
        return TokenStore(cached)
    # A source name (e.g. `code`): its stores are named `<source>-<tokenizer hash>-<key>`. One match
    # is unambiguous; with several, the one made with the default tokenizer, if it is among them.
    matches = sorted(p for p in stores_dir().glob(f"{name_or_dir}-*-*")
                     if not p.name.startswith(".") and (p / "meta.json").exists()) \
        if stores_dir().exists() and "/" not in str(name_or_dir) else []
    if len(matches) > 1:
        default = [m for m in matches if json.loads((m / "meta.json").read_text()).get("tokenizer") == "default"]
        matches = default if len(default) == 1 else matches
    if len(matches) == 1:
        return TokenStore(matches[0])
    if len(matches) > 1:
        raise DataError(f"{len(matches)} stores match {str(name_or_dir)!r}: {', '.join(m.name for m in matches)}; "
                        "give the full store name")
    raise DataError(f"no token store {str(name_or_dir)!r} (not a store folder, nor a name in {stores_dir()}); "
                    "see `replaylab data list` or build it with `replaylab data build SOURCE`")


def get_store(source: str, tokenizer: str | Tokenizer = "default", options: dict[str, Any] | None = None,
              build: bool = True, *, name: str | None = None, force: bool = False,
              overwrite: bool = False) -> TokenStore:
    """The store of `source` tokenized with `tokenizer`, built and cached on first use.

    source: a recipe name, a .jsonl/.txt/.parquet file or folder, hf:..., or a built store folder.
    options: corpus options (text_field, template, glob, split, max_docs) and store options
    (val_docs, val_fraction, split_seed). name: the cache folder name (default: derived from the
    source, the tokenizer hash and the options). force: rebuild this store even if it is cached.
    overwrite: a store `name` that holds another corpus (or tokenizer, or options) is replaced; without it,
    that is an error (replaylab.outputs)."""
    source = str(source)
    if (Path(source) / "meta.json").exists():  # already a store folder
        return TokenStore(source)
    if name is not None:
        check_name(name)
    corpus_opts, store_opts = _split_options(options)
    kind = check_source(source)  # a missing path, unknown recipe or offline hf: fails here, before any tokenizer work
    if kind == "recipe" and build:
        from replaylab.data.recipes import build_recipe

        build_recipe(source)  # first, so the store key sees the built recipe's summary
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else get_tokenizer(tokenizer)
    key = store_key(source, tok, corpus_opts, store_opts)
    folder = stores_dir() / (name or f"{source_name(source)}-{tok.hash[:8]}-{key[:8]}")

    def cached() -> TokenStore | None:
        if (folder / "meta.json").exists() and not force:
            store = TokenStore(folder)
            if store.meta.get("key") == key:
                return store
        return None

    def check_folder() -> None:
        """Only this store, or (with overwrite) another store, may be rebuilt at `folder`."""
        theirs = None
        if (folder / "meta.json").exists():
            try:
                theirs = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            except ValueError:
                theirs = {}
        describe = f"from {theirs.get('source')!r}, tokenizer {theirs.get('tokenizer')!r}" if theirs else ""
        claim_output(folder, "store", key, overwrite=overwrite, option="--name" if name else "store",
                     describe=describe)
        if theirs and theirs.get("key") not in (None, key) and not overwrite:
            raise DataError(f"store {folder.name!r} holds another corpus ({describe}); choose another --name, or "
                            "pass --overwrite to replace it")

    store = cached()
    if store is not None:
        return store
    if not build:
        raise DataError(f"token store for {source!r} is not built ({folder}); run `replaylab data build {source}`")
    check_folder()
    # One builder at a time per store: parallel workers asking for the same store wait, then reuse it.
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        store = cached()
        if store is None:
            # Under the lock no one else builds this store: its temporary folders were all left by dead builders.
            # (`.NAME.<8 random chars>[.<pid>@<host>].tmp`: exactly this store's, not those of a store `NAME.x`.)
            own = re.compile(rf"\.{re.escape(folder.name)}\.[a-z0-9_]{{8}}(\.\d+@.+)?\.tmp")
            for tmp in folder.parent.iterdir():
                if own.fullmatch(tmp.name):
                    shutil.rmtree(tmp, ignore_errors=True)
            check_folder()
            store = build_store(source, folder, tok, corpus_opts, store_opts, key=key)
    return store


def list_stores() -> list[TokenStore]:
    root = stores_dir()
    if not root.exists():
        return []
    return [TokenStore(p) for p in sorted(root.iterdir()) if not p.name.startswith(".") and (p / "meta.json").exists()]
