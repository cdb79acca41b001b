"""Token stores: a corpus tokenized once into flat memory-mapped token arrays.

A store folder holds
  train.bin / val.bin        flat uint16 (vocab <= 65536) or uint32 tokens; every document is
                             followed by one EOS token, so documents are joined by EOS;
  train_docs.npy / val_docs.npy  int64 document start offsets into the .bin, plus the end (n_docs + 1);
  train_mask.bin / val_mask.bin  only in an instruction store (`data.instructions`): one uint8 per token, 1 where
                             the token carries loss; such a store is trained through per-document rows
                             (`data.rows.DocumentRows`), never as a stream;
  meta.json                  source (and a file's full path), tokenizer hash, dtype, counts, UTF-8 bytes,
                             content hash; an instruction store also its format and loss policy (`instructions`)
                             and each split's `loss_tokens`;
  tokenizer.json             a copy of the tokenizer (so a store decodes on its own).

The validation split is carved first, by document: a seeded permutation of document indices, whose
first documents go to `val` (see `StoreOptions`). Training data never contains a validation document.
Packing: sequence i of a split is tokens [i*L, i*L + L + 1) (inputs plus the shifted targets).
Budgets: `budget_indices(L, n, seed)` is the first n of a seeded permutation of the train sequences,
so a budget of 2n always contains the budget of n (nested budgets, as the paper's scaling law needs).

Building (`store_build.build_store`) streams documents in batches, appends to a .bin on disk, and
renames the finished folder into place: memory stays bounded and no reader sees half a store. This
module reads stores (`TokenStore`) and caches them under $REPLAYLAB_HOME/stores (`get_store`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from replaylab import paths
from replaylab.data.corpus import CorpusOptions, check_source, parse_source, source_fingerprint, source_name
from replaylab.data.store_build import (
    STORE_FORMAT,
    StoreOptions,
    build_store,
    choose_val_docs,  # noqa: F401  (kept importable from here: tests use it)
)
from replaylab.data.store_check import SPLITS, _check_store, _read_meta, damaged, rebuild_hint  # noqa: F401
from replaylab.data.tokenizer import Tokenizer, get_tokenizer
from replaylab.errors import DataError
from replaylab.outputs import check_name, claim_output


def _split_options(options: dict[str, Any] | None) -> tuple[CorpusOptions, StoreOptions]:
    options = dict(options or {})
    known = set(CorpusOptions.__dataclass_fields__) | set(StoreOptions.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise DataError(f"unknown data option {unknown[0]!r}; known options: {', '.join(sorted(known))}")
    return CorpusOptions.from_options(options), StoreOptions.from_options(options)


class TokenStore:
    """A built store, opened read-only. Token arrays are memory-mapped on first use.
    A damaged store (meta.json unreadable or incomplete, a .bin of the wrong size) is a DataError naming
    the rebuild command."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not (self.path / "meta.json").exists():
            raise DataError(f"{self.path} is not a token store (no meta.json); build one with `replaylab data build`")
        meta = _read_meta(self.path)
        _check_store(self.path, meta)
        self.meta: dict[str, Any] = meta
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

        if not (self.path / "tokenizer.json").is_file():
            raise damaged(self.path, "tokenizer.json is missing", self.meta)
        tok = load_tokenizer(self.path, name=self.meta["tokenizer"])
        if tok.hash != self.tokenizer_hash:
            raise damaged(self.path, "tokenizer.json does not match the tokenizer hash in meta.json", self.meta)
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
            self._tokens[split] = (
                np.memmap(file, dtype=self.dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype=self.dtype)
            )
        return self._tokens[split]

    @property
    def instructions(self) -> dict[str, Any] | None:
        """For an instruction store (structured records with a loss mask): its format and loss policy; else None."""
        return self.meta.get("instructions") or None

    def loss_mask(self, split: str) -> np.ndarray:
        """uint8 per token of the split: 1 where the token is on the loss (all ones for a text store)."""
        self._check_split(split)
        n = self.num_tokens(split)
        if not self.instructions:
            return np.ones(n, dtype=np.uint8)
        key = f"{split}_mask"
        if key not in self._tokens:
            file = self.path / f"{split}_mask.bin"
            self._tokens[key] = np.memmap(file, dtype=np.uint8, mode="r", shape=(n,)) if n else np.zeros(0, np.uint8)
        return self._tokens[key]

    def doc_offsets(self, split: str) -> np.ndarray:
        self._check_split(split)
        try:
            return np.load(self.path / f"{split}_docs.npy")
        except (OSError, ValueError) as e:  # cut short or overwritten
            raise damaged(self.path, f"{split}_docs.npy cannot be read ({e})", self.meta) from None

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
            raise DataError(
                f"store {self.name} has {self.num_tokens(split)} {split} tokens, fewer than one sequence of "
                f"{seq_len}+1; use more data (or a smaller val split) or a shorter seq_len"
            )
        return n

    def sequences(self, split: str, seq_len: int, index: np.ndarray) -> np.ndarray:
        """Sequences `index` of a split as int64 [len(index), seq_len + 1], with one vectorized gather."""
        n = self._require_sequences(split, seq_len)
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= n):
            bad = int(index.min() if index.min() < 0 else index.max())
            raise DataError(
                f"sequence index {bad} is out of range: store {self.name} has {n} {split} sequences of {seq_len}"
            )
        offsets = index[:, None] * seq_len + np.arange(seq_len + 1, dtype=np.int64)
        return self.tokens(split)[offsets].astype(np.int64)

    def budget_indices(self, seq_len: int, n: int, seed: int) -> np.ndarray:
        """The first n of a seeded permutation of the train sequences: nested across n for one seed."""
        total = self._require_sequences("train", seq_len)
        return nested_budget(total, n, seed, f"store {self.name}", f"sequences of {seq_len} tokens")

    def bytes_per_token(self, split: str) -> float:
        """UTF-8 bytes of the split's documents per token (EOS tokens included): loss / ln 2 / this = bits per byte."""
        tokens = self.num_tokens(split)
        if tokens == 0:
            raise DataError(f"store {self.name} has no {split} tokens; bytes per token is undefined")
        return self.meta["splits"][split]["utf8_bytes"] / tokens


def nested_budget(total: int, n: int, seed: int, where: str, unit: str) -> np.ndarray:
    """The first n of a seeded permutation of `total` train sequences (or rows): nested across n for one seed."""
    if n < 1 or n > total:
        raise DataError(
            f"a budget of {n} does not fit {where}: it has {total} train {unit}; choose a budget between 1 and "
            f"{total} or a larger corpus"
        )
    return np.random.default_rng(seed).permutation(total)[:n].astype(np.int64)


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
    # A source name (e.g. `code`): its stores are named exactly `<source>-<tokenizer hash>-<key>` (8 hex
    # digits each), so `code` never picks `code-train-...` (the store of code/train.jsonl). One match
    # is unambiguous; with several, the one made with the default tokenizer, if it is among them.
    own = re.compile(rf"{re.escape(str(name_or_dir))}-[0-9a-f]{{8}}-[0-9a-f]{{8}}")
    matches = (
        sorted(q for q in stores_dir().iterdir() if own.fullmatch(q.name) and (q / "meta.json").exists())
        if stores_dir().is_dir() and "/" not in str(name_or_dir)
        else []
    )
    if len(matches) > 1:
        default = [m for m in matches if (_read_meta(m) or {}).get("tokenizer") == "default"]
        matches = default if len(default) == 1 else matches
    if len(matches) == 1:
        return TokenStore(matches[0])
    if len(matches) > 1:
        raise DataError(
            f"{len(matches)} stores match {str(name_or_dir)!r}: {', '.join(m.name for m in matches)}; "
            "give the full store name"
        )
    raise DataError(
        f"no token store {str(name_or_dir)!r} (not a store folder, nor a name in {stores_dir()}); "
        "see `replaylab data list` or build it with `replaylab data build SOURCE`"
    )


@paths.writing_cache()  # a read-only or full cache: one line naming REPLAYLAB_HOME
def get_store(
    source: str,
    tokenizer: str | Tokenizer = "default",
    options: dict[str, Any] | None = None,
    build: bool = True,
    *,
    name: str | None = None,
    force: bool = False,
    overwrite: bool = False,
) -> TokenStore:
    """The store of `source` tokenized with `tokenizer`, built and cached on first use.

    source: a recipe name, a .jsonl/.txt/.parquet file or folder, hf:..., or a built store folder.
    options: corpus options (text_field, template, glob, split, max_docs) and store options
    (val_docs, val_fraction, split_seed). name: the cache folder name (default: derived from the
    source, the tokenizer hash and the options). force: rebuild this store even if it is cached.
    overwrite: a store `name` that holds another corpus (or tokenizer, or options) is replaced; without it,
    that is an error (replaylab.outputs)."""
    source = str(source)
    # A missing path, unknown recipe, ambiguous name or offline hf: fails here, before any tokenizer work.
    kind, what = parse_source(source)
    if kind == "path" and (Path(what) / "meta.json").exists():  # already a store folder
        return TokenStore(what)
    if name is not None:
        check_name(name)
    corpus_opts, store_opts = _split_options(options)
    check_source(source)
    if kind == "recipe" and build:
        from replaylab.data.recipes import build_recipe

        build_recipe(what)  # first, so the store key sees the built recipe's summary
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
        theirs = (_read_meta(folder) or {}) if (folder / "meta.json").exists() else None
        describe = f"from {theirs.get('source')!r}, tokenizer {theirs.get('tokenizer')!r}" if theirs else ""
        claim_output(folder, "store", key, overwrite=overwrite, option="--name" if name else "store", describe=describe)
        if theirs and theirs.get("key") not in (None, key) and not overwrite:
            raise DataError(
                f"store {folder.name!r} holds another corpus ({describe}); choose another --name, or "
                "pass --overwrite to replace it"
            )

    store = cached()
    if store is not None:
        return store
    if not build:
        raise DataError(f"token store for {source!r} is not built ({folder}); run `replaylab data build {source}`")
    folder.parent.mkdir(parents=True, exist_ok=True)
    paths.check_cache_writable(folder.parent)
    check_folder()
    # One builder at a time per store: parallel workers asking for the same store wait, then reuse it.
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
            store = TokenStore(build_store(source, folder, tok, corpus_opts, store_opts, key=key))
    return store


def store_folders() -> list[Path]:
    """The cached store folders (built or damaged), sorted by name."""
    root = stores_dir()
    if not root.exists():
        return []
    return [p for p in sorted(root.iterdir()) if not p.name.startswith(".") and (p / "meta.json").exists()]


def store_source(identity: str) -> str | None:
    """The source (a file's full path) of a cached store with this identity, or None when none is cached."""
    for folder in store_folders():
        meta = _read_meta(folder) or {}
        if meta.get("identity") == identity:
            return meta.get("source_path") or meta.get("source")
    return None


def list_stores() -> list[TokenStore]:
    """The cached stores; a damaged one is a DataError (`replaylab data list` shows it as damaged instead)."""
    return [TokenStore(p) for p in store_folders()]
