"""Corpora: where documents come from. One function, `iter_documents(source, options)`, streams
plain-text documents from any source replaylab accepts:

- a built-in recipe name (`generic`, `code`, ...): the recipe is built, then its documents.jsonl read;
- a `.jsonl` file (one JSON object per line; `text_field`, or a `template` such as
  `"{question}\\n{answer}"` over the object's fields);
- a `.txt` file (the whole file is one document) or any file matched by `glob` in a folder;
- a `.parquet` file (a column, or a template over columns), read in record batches;
- a folder: every `.jsonl` / `.txt` / `.parquet` file under it (or those matching `glob`), sorted;
- `hf:org/name[:config][@revision]`: a Hugging Face dataset, streamed, only when online.

`recipe:NAME` and `path:PATH` say which of the first and the other kinds is meant. A bare name that is
both a recipe and an existing file or folder (a project folder named `code/`) is refused: reading either
one silently would train on data the user did not mean (`sources.parse_source`, where naming a source lives).
Records can also be instructions (`format`: prompt/completion or chat messages, `data.instructions`).

Documents are streamed one at a time so a multi-GB corpus never sits in memory. Bytes that are not
valid UTF-8 are replaced (U+FFFD) and counted in `CorpusStats`; whitespace-only documents are skipped.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from replaylab.data.instructions import check_format, loss_policy, messages, prompt_completion
from replaylab.data.sources import (  # noqa: F401  (re-exported: corpus.py was their home)
    FILE_SUFFIXES,
    HF_PREFIX,
    PATH_PREFIX,
    RECIPE_PREFIX,
    SPLIT_STEMS,
    _recipes,
    check_source,
    hub_reachable,
    is_hf,
    parse_hf,
    parse_source,
    source_kind,
    source_name,
    source_path,
)
from replaylab.errors import DataError


@dataclass
class CorpusOptions:
    """How to read documents out of a source.

    text_field: the JSON key / parquet column holding the text.
    template: instead of one field, a Python format string over fields, e.g. "{question}\\n{answer}".
    glob: in a folder, which files to read (default: every .jsonl/.txt/.parquet file); files that are
      not .jsonl/.parquet are read as one document each (so "**/*.py" reads source code).
    split: the Hugging Face dataset split.
    max_docs: stop after this many documents (None = all).
    format: "text" (default), "prompt_completion" or "messages": how a record becomes a document and which of
      its tokens carry loss (`replaylab.data.instructions`); prompt_field / completion_field / messages_field
      name the record's fields; loss: "all" or "completion" (default: "all" for text, else "completion").
    """

    text_field: str = "text"
    template: str | None = None
    glob: str | None = None
    split: str = "train"
    max_docs: int | None = None
    format: str = "text"
    loss: str | None = None
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    messages_field: str = "messages"

    def validate(self) -> None:
        if not self.text_field:
            raise DataError("corpus option text_field is empty; name the JSON key or column holding the text")
        if self.template is not None:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
            if not fields:
                raise DataError(
                    f"corpus option template {self.template!r} names no field; write e.g. '{{question}}\\n{{answer}}'"
                )
        if self.max_docs is not None and self.max_docs < 1:
            raise DataError(f"corpus option max_docs must be >= 1, got {self.max_docs}")
        check_format(self.format, self.loss)
        if self.format != "text" and self.template is not None:
            raise DataError(
                f"corpus options format={self.format!r} and template are exclusive: a template joins fields into "
                "plain text (all on the loss); drop one of them"
            )

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> "CorpusOptions":
        """The corpus part of a mixed options dict (store options such as val_docs are ignored here)."""
        known = {f for f in cls.__dataclass_fields__}
        opts = cls(**{k: v for k, v in (options or {}).items() if k in known})
        opts.validate()
        return opts

    def as_dict(self) -> dict[str, Any]:
        """The options; the instruction options only when not at their defaults, so a text source keeps the
        store key (and cached store) it had before they existed."""
        out = asdict(self)
        for key in INSTRUCTION_OPTIONS:
            if out[key] == _INSTRUCTION_DEFAULTS[key]:
                del out[key]
        return out

    @property
    def masked(self) -> bool:
        """Whether documents carry a loss mask (structured records with a completion-only policy)."""
        return self.format != "text" and loss_policy(self.format, self.loss) == "completion"


INSTRUCTION_OPTIONS = ("format", "loss", "prompt_field", "completion_field", "messages_field")
_INSTRUCTION_DEFAULTS = {
    "format": "text",
    "loss": None,
    "prompt_field": "prompt",
    "completion_field": "completion",
    "messages_field": "messages",
}


@dataclass
class CorpusStats:
    """Filled while documents stream by: what was read and what had to be repaired or skipped."""

    documents: int = 0
    chars: int = 0
    utf8_bytes: int = 0
    skipped_empty: int = 0
    invalid_utf8_docs: int = 0  # documents whose bytes were not valid UTF-8 (decoded with replacement)
    replaced_chars: int = 0  # U+FFFD characters those replacements produced
    files: list[str] = field(default_factory=list)

    def note(self) -> str | None:
        """A one-line warning when input had to be repaired, else None."""
        if not self.invalid_utf8_docs:
            return None
        return (
            f"{self.invalid_utf8_docs} document(s) were not valid UTF-8; "
            f"{self.replaced_chars} undecodable byte sequence(s) were replaced with U+FFFD"
        )


def source_fingerprint(source: str, options: CorpusOptions | None = None) -> str:
    """Hash of what identifies a source's content without reading it: the recipe name, the hf id, or
    for files the resolved paths with their sizes and modification times (so an edited file gets a
    new store instead of a stale cached one)."""
    h = hashlib.sha256()
    kind, what = parse_source(source)  # recipe:NAME and NAME, path:P and P: one store each
    h.update(f"{kind}\0{what if kind != 'path' else Path(what).resolve()}\0".encode())
    if kind == "recipe":  # a rebuilt recipe (new pinned sources) gets new stores
        from replaylab import paths

        summary = paths.home() / "corpora" / what / "summary.json"
        h.update(summary.read_bytes() if summary.exists() else b"not built")
    if kind == "path":
        for f in _list_files(Path(what), options or CorpusOptions()):
            st = f.stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    if options is not None:
        h.update(json.dumps(options.as_dict(), sort_keys=True).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- readers
# A document: plain text ("text"), segments (text, on_loss) ("prompt_completion"), or chat turns ("messages",
# rendered with the tokenizer's chat template when the store is built).
Document = str | list


def document_text(doc: Document) -> str:
    """The text a document holds (its segments or turns joined): what stats count and hashes see."""
    if isinstance(doc, str):
        return doc
    return "".join(part[0] if isinstance(part, tuple) else part["content"] for part in doc)


def _decode(raw: bytes, stats: CorpusStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        stats.invalid_utf8_docs += 1
        # Count only the replacements, not U+FFFD characters that were already in the text.
        stats.replaced_chars += text.count("\ufffd") - raw.count("\ufffd".encode())
        return text


def _render(record: Any, opts: CorpusOptions, where: str) -> Document:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}; one object per line")
    if opts.format == "prompt_completion":
        return prompt_completion(record, opts.prompt_field, opts.completion_field, where)
    if opts.format == "messages":
        return messages(record, opts.messages_field, where)
    if opts.template is not None:
        try:
            return opts.template.format_map(record)
        except KeyError as e:
            raise DataError(
                f"{where}: record has no field {e.args[0]!r} used by template {opts.template!r}; "
                f"fields present: {', '.join(map(str, record)) or 'none'}"
            ) from None
    if opts.text_field not in record:
        hint = "set the text field, e.g. --text-field NAME"
        if {"prompt", "completion"} <= set(record) or "messages" in record:  # instruction records
            # the same option has a flag per command; name each, as this reader does not know its caller
            fmt = "messages" if "messages" in record else "prompt_completion"
            hint = (
                f"records of {fmt}: read them with the format option, `data build --format {fmt}`, "
                f"`finetune`/`advise --target-format {fmt}` or options.format: {fmt} in YAML"
            )
        raise DataError(
            f"{where}: record has no field {opts.text_field!r}; fields present: "
            f"{', '.join(map(str, record)) or 'none'} ({hint})"
        )
    value = record[opts.text_field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {opts.text_field!r} is {type(value).__name__}, not text")
    return value


def _read_jsonl(path: Path, opts: CorpusOptions, stats: CorpusStats) -> Iterator[Document]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            line = _decode(raw, stats)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object"
                ) from None
            yield _render(record, opts, f"{path}:{lineno}")


def _read_parquet(path: Path, opts: CorpusOptions, stats: CorpusStats) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    columns = pf.schema_arrow.names
    if opts.template is not None:
        wanted = [f for _, f, _, _ in string.Formatter().parse(opts.template) if f is not None]
    else:
        wanted = {
            "text": [opts.text_field],
            "prompt_completion": [opts.prompt_field, opts.completion_field],
            "messages": [opts.messages_field],
        }[opts.format]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataError(
            f"{path}: no column {missing[0]!r}; columns present: {', '.join(columns)} (set the text field or template)"
        )
    row = 0
    for batch in pf.iter_batches(batch_size=1024, columns=sorted(set(wanted))):
        for record in batch.to_pylist():
            row += 1
            yield _render(record, opts, f"{path}:row {row}")


def _read_text_file(path: Path, opts: CorpusOptions, stats: CorpusStats) -> Iterator[str]:
    if opts.format != "text":
        raise DataError(
            f"{path}: a text file is one plain document, not {opts.format} records; give .jsonl or .parquet "
            "records, or drop the format option"
        )
    yield _decode(path.read_bytes(), stats)


def _list_files(path: Path, opts: CorpusOptions) -> list[Path]:
    if path.is_file():
        return [path]
    if opts.glob:
        files = [p for p in path.glob(opts.glob) if p.is_file()]
    else:
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix in FILE_SUFFIXES]
    # Hidden files (editor swap files, our own temp files) are never documents.
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(path).parts)]
    return sorted(files)


def _read_path(path: Path, opts: CorpusOptions, stats: CorpusStats) -> Iterator[Document]:
    files = _list_files(path, opts)
    if not files:
        what = f"files matching {opts.glob!r}" if opts.glob else ".jsonl, .txt or .parquet files"
        raise DataError(f"corpus folder {path} has no {what}; point at a folder of documents or set glob")
    for f in files:
        stats.files.append(str(f))
        if f.suffix == ".jsonl":
            yield from _read_jsonl(f, opts, stats)
        elif f.suffix == ".parquet":
            yield from _read_parquet(f, opts, stats)
        else:
            yield from _read_text_file(f, opts, stats)


def _read_hf(source: str, opts: CorpusOptions, stats: CorpusStats) -> Iterator[Document]:
    name, config, revision = parse_hf(source)
    check_source(source)
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{source}: reading Hugging Face datasets needs the 'datasets' package; pip install 'replaylab[hf]'"
        ) from None
    try:
        ds = datasets.load_dataset(name, config, revision=revision, split=opts.split, streaming=True)
    except Exception as e:  # datasets raises many types (not found, bad config, auth)
        raise DataError(f"{source}: cannot load dataset ({type(e).__name__}: {e})") from None
    for i, record in enumerate(ds):
        yield _render(record, opts, f"{source} row {i}")


def _read_recipe(name: str, opts: CorpusOptions, stats: CorpusStats) -> Iterator[Document]:
    from replaylab.data.recipes import build_recipe

    folder = Path(build_recipe(name))
    yield from _read_path(folder / "documents.jsonl", opts, stats)


def iter_documents(
    source: str, options: CorpusOptions | dict | None = None, stats: CorpusStats | None = None
) -> Iterator[Document]:
    """Stream the non-empty documents of `source` (see the module docstring for what a source is): texts, or
    for the structured formats (`options.format`) segments or chat turns (`Document`).

    `stats`, if given, is filled as documents go by. Raises DataError for a missing path, an unknown
    recipe, a bad jsonl line (naming file:line), an offline hf: source, or an empty corpus."""
    opts = options if isinstance(options, CorpusOptions) else CorpusOptions.from_options(options)
    opts.validate()
    stats = stats if stats is not None else CorpusStats()
    kind, what = parse_source(source)
    if kind == "recipe":
        docs = _read_recipe(what, opts, stats)
    elif kind == "hf":
        docs = _read_hf(source, opts, stats)
    else:
        docs = _read_path(Path(what), opts, stats)
    for doc in docs:
        text = document_text(doc)
        # A document that is only whitespace or U+FFFD (undecodable bytes) carries nothing to learn.
        if not text.replace("\ufffd", "").strip():
            stats.skipped_empty += 1
            continue
        stats.documents += 1
        stats.chars += len(text)
        stats.utf8_bytes += len(text.encode("utf-8", errors="surrogatepass"))
        yield doc
        if opts.max_docs is not None and stats.documents >= opts.max_docs:
            break
    if stats.documents == 0:
        detail = f" ({stats.invalid_utf8_docs} undecodable)" if stats.invalid_utf8_docs else ""
        raise DataError(
            f"corpus {source!r} is empty: no document with text{detail} "
            f"({stats.skipped_empty} empty skipped); check the source and the text field"
        )
