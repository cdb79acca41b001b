"""What `replaylab.ReplayMixture` is given, made into token stores: a store, a source to tokenize, texts or records
(plain, prompt/completion or chat messages), or a Hugging Face dataset, with the tokenizer given (a spec, a loaded
data-layer Tokenizer, or a fast Hugging Face tokenizer object)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from replaylab import paths
from replaylab.errors import ConfigError, DataError


def tokenizer_of(spec: Any):
    """A data-layer Tokenizer from a spec, a loaded one, or a fast Hugging Face tokenizer object (its tokenizer.json
    is cached under $REPLAYLAB_HOME/tokenizers/objects/<hash>)."""
    from replaylab.data.tokenizer import Tokenizer, get_tokenizer, load_tokenizer

    if spec is None or isinstance(spec, Tokenizer):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        return get_tokenizer(str(spec))
    backend = getattr(spec, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(
            f"tokenizer is a {type(spec).__name__}; give a tokenizer.json path or folder (e.g. the "
            "model's folder), 'default', or a fast Hugging Face tokenizer"
        )
    raw = backend.to_str()
    folder = paths.home() / "tokenizers" / "objects" / hashlib.sha256(raw.encode()).hexdigest()[:16]
    if not (folder / "tokenizer.json").exists():
        with paths.atomic_dir(folder) as tmp:
            (tmp / "tokenizer.json").write_text(raw, encoding="utf-8")
            if getattr(spec, "eos_token", None):
                (tmp / "tokenizer_config.json").write_text(json.dumps({"eos_token": str(spec.eos_token)}))
    return load_tokenizer(folder)


def _is_records(data: Any) -> bool:
    return isinstance(data, (list, tuple)) or type(data).__module__.split(".")[0] == "datasets"


def store_of(data: Any, role: str, tok, options: dict | None, text_field: str):
    """The token store of one pool (see ReplayMixture: target, replay)."""
    from replaylab.data.store import TokenStore, get_store, open_store

    opts = dict(options or {})
    if isinstance(data, TokenStore):
        store = data
    elif isinstance(data, (str, os.PathLike)) and (tok is None or (Path(data) / "meta.json").exists()):
        try:
            store = open_store(data)
        except DataError as e:
            raise DataError(f"{role}: {e}; or pass tokenizer= to tokenize {str(data)!r}") from None
    elif isinstance(data, (str, os.PathLike)):
        store = get_store(str(data), tok, {"text_field": text_field, **opts} if text_field != "text" else opts)
    elif _is_records(data):
        if tok is None:
            raise ConfigError(
                f"{role} is a {type(data).__name__} of texts; pass tokenizer= (e.g. the model's folder) to tokenize it"
            )
        store = get_store(str(_texts_file(data, role, text_field, opts)), tok, opts)
    else:
        raise ConfigError(
            f"{role} is a {type(data).__name__}; give a token store (or its folder or name), a source "
            "with tokenizer=, a list of texts or a Hugging Face dataset"
        )
    if tok is not None and store.tokenizer_hash != tok.hash:
        raise DataError(
            f"{role} store {store.path} was built with another tokenizer than the one given; pass the "
            "source instead of the store, or the store's own tokenizer"
        )
    return store


def _record_fields(opts: dict) -> tuple[str, ...]:
    """The fields a structured record keeps in the .jsonl (`opts`: the source's data-layer options)."""
    fmt = opts.get("format", "text")
    if fmt == "prompt_completion":
        return (opts.get("prompt_field", "prompt"), opts.get("completion_field", "completion"))
    return (opts.get("messages_field", "messages"),)


def _texts_file(records: Any, role: str, text_field: str, opts: dict | None = None) -> Path:
    """Texts or records as a .jsonl under $REPLAYLAB_HOME/texts, named by its content (so its store is cached)."""
    folder = paths.home() / "texts"
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = paths.temp_file(folder / "texts")
    digest, count = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            structured = (opts or {}).get("format", "text") != "text"
            for i, record in enumerate(records):
                if structured:
                    if not isinstance(record, dict):
                        raise DataError(
                            f"{role} item {i} is a {type(record).__name__}, not a record; give dicts with "
                            f"{' and '.join(map(repr, _record_fields(opts)))}"
                        )
                    missing = [k for k in _record_fields(opts) if k not in record]
                    if missing:
                        raise DataError(
                            f"{role} record {i} has no field {missing[0]!r} (fields: "
                            f"{', '.join(map(str, record)) or 'none'}); name it in the options (e.g. "
                            "prompt_field=) or use format='text'"
                        )
                    line = json.dumps({k: record[k] for k in _record_fields(opts)}) + "\n"
                    f.write(line)
                    digest.update(line.encode())
                    count += 1
                    continue
                if isinstance(record, dict):
                    if text_field not in record:
                        raise DataError(
                            f"{role} record {i} has no field {text_field!r} (fields: "
                            f"{', '.join(map(str, record)) or 'none'}); set text_field="
                        )
                    record = record[text_field]
                if not isinstance(record, str):
                    raise DataError(
                        f"{role} item {i} is a {type(record).__name__}, not a text; give texts or records "
                        f"with a {text_field!r} field"
                    )
                line = json.dumps({"text": record}) + "\n"
                f.write(line)
                digest.update(line.encode())
                count += 1
        if count == 0:
            raise DataError(f"{role} holds no text; give at least one document")
        final = folder / f"{digest.hexdigest()[:24]}.jsonl"
        if final.exists():
            os.unlink(tmp)
        else:
            os.replace(tmp, final)
        return final
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
