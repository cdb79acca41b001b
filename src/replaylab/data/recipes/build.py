"""Write a recipe's documents as a corpus folder: `documents.jsonl` + `summary.json`.

Determinism: documents come out in the order the recipe yields them (each recipe walks sorted file
lists), exact duplicates are dropped by a hash of their text, and nothing time- or machine-dependent
goes into either file, so two builds give identical bytes. Memory stays bounded: documents are
streamed to disk, only their 16-byte hashes are kept."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import sys
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from replaylab.data.fetch import Artifact
from replaylab.paths import atomic_dir

FORMAT_VERSION = 1
_REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Recipe:
    """A built-in corpus: where its bytes come from and how they become documents.

    `documents()` yields (source label, text or raw bytes); bytes are decoded as UTF-8 with
    replacement characters for invalid sequences (counted in the summary). A structured recipe yields
    records instead ({field: text}, e.g. prompt and completion), written whole beside `source`."""

    name: str
    description: str
    licence: str
    artifacts: tuple[Artifact, ...]
    documents: Callable[[], Iterator[tuple[str, str | bytes | dict]]]

    def pins(self) -> dict:
        """What the recipe declares before downloading anything: the part of its summary.json that
        the code fixes (name, description, licence, format version, sources with versions and sha256).
        The default tokenizer is looked up by these, so a cached one is found without building."""
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "licence": self.licence,
            "sources": [a.to_dict() for a in self.artifacts],
        }


def normalize(raw: str | bytes) -> tuple[str, int]:
    """Valid UTF-8 text and the number of replacement characters this introduced."""
    if isinstance(raw, bytes):
        text = raw.decode("utf-8", errors="replace")
        return text, text.count(_REPLACEMENT) - raw.count(_REPLACEMENT.encode("utf-8"))
    try:
        raw.encode("utf-8")
        return raw, 0
    except UnicodeEncodeError:  # lone surrogates from JSON escapes
        return _SURROGATE.subn(_REPLACEMENT, raw)


def _progress(enabled: bool, name: str):
    """A live document counter on a terminal; nothing at all otherwise (logs, CI)."""
    if not (enabled and sys.stderr.isatty()):
        return None
    from rich.progress import Progress, SpinnerColumn, TextColumn

    progress = Progress(SpinnerColumn(), TextColumn(f"building {name}: {{task.completed:,}} documents"), transient=True)
    return progress


@contextmanager
def _sigterm_unwinds():
    """Turn SIGTERM (a scheduler, `kill`, a timeout) into SystemExit while building, so that
    `atomic_dir` removes its half-built temporary folder instead of leaving it beside the corpus.
    Only from the main thread and only over the default handler: a program's own handler wins."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def write_corpus(recipe: Recipe, final: Path, *, progress: bool = True) -> dict:
    """Build the corpus folder `final` atomically and return its summary."""
    with _sigterm_unwinds():
        return _write_corpus(recipe, final, progress=progress)


def _write_corpus(recipe: Recipe, final: Path, *, progress: bool) -> dict:
    seen: set[bytes] = set()  # membership only: never iterated, so order cannot leak into output
    per_source: Counter[str] = Counter()
    docs = chars = nbytes = duplicates = replaced = 0
    bar = _progress(progress, recipe.name)
    task = bar.add_task(recipe.name, total=None) if bar else None
    if bar:
        bar.start()
    try:
        with atomic_dir(final) as tmp:
            with open(tmp / "documents.jsonl", "w", encoding="utf-8", newline="\n") as out:
                for source, raw in recipe.documents():
                    record = None
                    if isinstance(raw, dict):  # a structured record: its fields normalized, hashed as one
                        fields = {k: normalize(v) for k, v in raw.items()}
                        record = {k: t for k, (t, _) in fields.items()}
                        text, n_replaced = json.dumps(record, ensure_ascii=False), sum(n for _, n in fields.values())
                        if not "".join(record.values()).strip():
                            continue
                    else:
                        text, n_replaced = normalize(raw)
                        text = text.strip()
                    if not text:
                        continue
                    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
                    if digest in seen:
                        duplicates += 1
                        continue
                    seen.add(digest)
                    replaced += n_replaced
                    line = {**record, "source": source} if record is not None else {"text": text, "source": source}
                    out.write(json.dumps(line, ensure_ascii=False) + "\n")
                    if record is not None:
                        text = "".join(record.values())
                    docs += 1
                    chars += len(text)
                    nbytes += len(text.encode("utf-8"))
                    per_source[source.split(":", 1)[0]] += 1
                    if bar and docs % 1000 == 0:
                        bar.update(task, completed=docs)
            summary = {
                **recipe.pins(),  # written with sort_keys: the file does not depend on this order
                "docs": docs,
                "chars": chars,
                "bytes": nbytes,
                "duplicates_removed": duplicates,
                "utf8_replacements": replaced,
                "docs_per_source": dict(sorted(per_source.items())),
            }
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    finally:
        if bar:
            bar.stop()
    return summary
