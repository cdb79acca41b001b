"""Whether a token store folder is whole: meta.json readable and complete, each split's files present and of the
size meta.json records (`_check_store`, two stats per file: a copy cut short must never be read as a smaller
corpus), and the one-line error that names the command rebuilding a damaged store (`damaged`, `rebuild_hint`).
`store.TokenStore` checks every store it opens with these."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from replaylab.data.corpus import CorpusOptions
from replaylab.data.store_build import StoreOptions
from replaylab.errors import DataError

SPLITS = ("train", "val")


# What readers of meta.json use; a store whose meta.json lacks one of them is damaged.
META_KEYS = (
    "source",
    "tokenizer",
    "tokenizer_hash",
    "vocab_size",
    "dtype",
    "documents",
    "tokens",
    "chars",
    "utf8_bytes",
    "invalid_utf8_docs",
    "splits",
    "identity",
)
SPLIT_KEYS = ("documents", "tokens", "utf8_bytes")
_DERIVED_NAME = re.compile(r".+-[0-9a-f]{8}-[0-9a-f]{8}")


def _read_meta(path: Path) -> dict[str, Any] | None:
    """A store's meta.json, or None when it cannot be read as a JSON object (damaged)."""
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def rebuild_hint(path: Path, meta: dict | None) -> str:
    """The command that rebuilds the store at `path` in place (what `meta` says of it, else placeholders)."""
    meta = meta or {}
    source = meta.get("source_path") or meta.get("source")
    tokenizer = meta.get("tokenizer")
    words = [source if isinstance(source, str) else "SOURCE"]
    if isinstance(tokenizer, str) and tokenizer != "default":
        words.append(f"--tokenizer {tokenizer}")
    # The options that made it (its key): without them, --force would build another store beside it.
    defaults = {**CorpusOptions().as_dict(), **StoreOptions().identity()}
    given = {**(meta.get("corpus_options") or {}), **(meta.get("store_options") or {})}
    for key, value in sorted(given.items()) if isinstance(given, dict) else []:
        if key != "split_seed" and value is not None and value != defaults.get(key):
            words.append(f"--{key.replace('_', '-')} {shlex.quote(str(value))}")
    if not _DERIVED_NAME.fullmatch(path.name):
        words.append(f"--name {path.name}")
    return f"`replaylab data build {' '.join(words)} --force`"


def damaged(path: Path, what: str, meta: dict | None = None) -> DataError:
    return DataError(
        f"token store {str(path)!r} is damaged: {what}; rebuild it with {rebuild_hint(path, meta)} "
        "(or delete the folder)"
    )


def _check_store(path: Path, meta: dict | None) -> None:
    """Raise `damaged` unless meta.json is a store's and each split's .bin holds the tokens it records.
    Cheap (two stats): a copy cut short must never be read as a smaller corpus."""
    if meta is None:
        raise damaged(path, "meta.json is not a readable JSON object")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise damaged(path, f"meta.json has no {missing[0]!r}", meta)
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        counts = {split: {k: int(meta["splits"][split][k]) for k in SPLIT_KEYS} for split in SPLITS}
    except (TypeError, KeyError, ValueError):
        raise damaged(
            path,
            f"meta.json records no valid dtype and splits ({meta['dtype']!r}, {json.dumps(meta['splits'])[:80]})",
            meta,
        ) from None
    masked = bool(meta.get("instructions"))
    for split in SPLITS:
        files = [(f"{split}.bin", counts[split]["tokens"] * itemsize), (f"{split}_docs.npy", None)]
        if masked:  # one uint8 loss flag per token
            files.append((f"{split}_mask.bin", counts[split]["tokens"]))
        for name, want in files:
            file = path / name
            if not file.is_file():
                raise damaged(path, f"{name} is missing", meta)
            if want is not None and file.stat().st_size != want:
                raise damaged(
                    path,
                    f"{name} holds {file.stat().st_size:,} bytes, meta.json records "
                    f"{counts[split]['tokens']:,} tokens ({want:,} bytes)",
                    meta,
                )
