"""The output-path policy: where a command may write, and what it may replace. One place, every command.

A command writes only to
  - a path that does not exist yet, or an empty folder;
  - a folder replaylab created earlier, of the same kind and, where the kind has one, the same identity
    (a run continues, a store or report is rebuilt in place);
  - with `--overwrite`, a folder replaylab created, of the same kind but another identity: it is replaced.
It never writes into, deletes or replaces anything it did not create: a folder is replaced or rebuilt only
while it holds nothing but the names its kind writes (else refused, listing the rest), no output is made
inside another replaylab folder (but a sweep's runs and report), and no output file is one of its own.
Everything it creates carries a marker file, `.replaylab.json` = {"kind", "identity", "created", "version"},
so the check does not guess.
Folders written before markers existed are recognised by their layout: a folder holding nothing but the
files replaylab writes for that kind (and, for a tokenizer, a tokenizer_config.json that replaylab wrote).

Kinds: store, tokenizer, run (engine and Hugging Face runs), sweep, report, export, advice (`replaylab advise`:
a sweep and a report of its own).

Writers that are long-lived (a run, a sweep's plan) hold a lock while they write (`folder_lock`): an
`flock` on a file in the folder, which the OS releases when the process dies, so a lock left by a killed
process never blocks anyone. The lock file names its holder, so a refusal can say who holds it.

The folders' bookkeeping (each kind's names, markers, contents, locks) is output_folders.py's; its names are
importable from here too.
"""

from __future__ import annotations

import os
import re
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, Literal

from replaylab.output_folders import (  # noqa: F401 - the folder's bookkeeping, imported from here too
    _INNER,
    _REBUILT,
    _WRITES,
    IN_USE,
    LOCK,
    MARKER,
    Kind,
    OutputError,
    _allowed,
    _inner_folders,
    _legacy_kind,
    _ours,
    check_contents,
    folder_lock,
    foreign_entries,
    in_use,
    kind_of,
    read_marker,
    write_marker,
)
from replaylab.paths import atomic_dir, remove_dir

# ------------------------------------------------------------------------------------------- names
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_name(name: str, option: str = "--name") -> str:
    """A name is a name, not a path: letters, digits and . _ + - (starting with a letter or digit)."""
    if not _NAME.fullmatch(name or "") or name in (".", ".."):
        raise OutputError(
            f"{option} {name!r} is not a valid name: use letters, digits and . _ + - (starting with a "
            "letter or digit, at most 128 characters; no '/' and not '.' or '..')"
        )
    return name


# ------------------------------------------------------------------------------------------- the check
def _nested_in(path: Path, kind: str, option: str) -> None:
    """No output inside another replaylab folder, except where that folder holds its own artifacts (a sweep's
    runs/ID and report/): an overwrite of the outer one would delete it, and the inner one would not know."""
    real = Path(os.path.realpath(path))
    for outer in real.parents:
        marker = read_marker(outer)
        if marker is None:
            continue
        rel = real.relative_to(outer).parts
        if any(
            inner == kind and len(where) == len(rel) and all(w in ("*", r) for w, r in zip(where, rel))
            for where, inner in _INNER.get(marker["kind"], {}).items()
        ):
            return  # the nearest replaylab folder holds it as its own; that folder's place was checked when made
        raise OutputError(
            f"{option} {str(path)!r} is inside the replaylab {marker['kind']} folder {str(outer)!r}; "
            "choose a path outside it (one replaylab folder is never made inside another)"
        )


def _own_file(path: Path, option: str) -> None:
    """An output file is never one of replaylab's own (a sweep's index, a run's manifest, a marker, a lock)."""
    real = Path(os.path.realpath(path))
    shown = f"{option} {str(path)!r}" + (f" (a link to {str(real)!r})" if str(real) != os.path.abspath(path) else "")
    if _ours(real.name):
        raise OutputError(f"{shown} is replaylab's own bookkeeping file; choose another file name")
    for outer in real.parents:
        try:
            kind = kind_of(outer) if outer == real.parent and outer.is_dir() else (read_marker(outer) or {}).get("kind")
        except OSError:
            continue
        rel = real.relative_to(outer).parts
        if kind in _WRITES and _allowed(rel[0], _WRITES[kind]):
            raise OutputError(
                f"{shown} is replaylab's own: {rel[0]!r} of the {kind} folder {str(outer)!r}; choose a file outside it"
            )


def _check_parents(path: Path, option: str) -> None:
    """The nearest existing ancestor must be a writable folder: a clear error instead of an OSError later."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(
            f"{option} {str(path)!r}: {str(parent)!r} is a file, so nothing can be created under it; "
            "choose a path under a folder"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"{option} {str(path)!r}: cannot write in {str(parent)!r} (permission denied); "
            "choose a path in a folder you can write to"
        )


def claim_output(
    path: str | Path,
    kind: Kind,
    identity: str | None = None,
    *,
    overwrite: bool = False,
    option: str = "--out",
    describe: str = "",
) -> Literal["new", "same", "replace"]:
    """May a `kind` folder with `identity` be written at `path`? Raises OutputError with the fix if not.

    Returns "new" (nothing there, or an empty folder), "same" (ours: same kind, same or no identity: continue
    or rebuild it), or "replace" (ours, same kind, another identity, and `overwrite` was given). What it would
    replace or rebuild must hold nothing but what the kind writes (`check_contents`), and no path inside another
    replaylab folder is ever given (but a sweep's own runs and report)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {str(path)!r} is a file, not a folder; give a new folder path")
    _nested_in(path, kind, option)
    if not path.exists():
        _check_parents(path, option)
        return "new"
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {str(path)!r}: cannot write in it (permission denied); choose another path")
    entries = [e for e in os.listdir(path) if not _ours(e)]
    marker = read_marker(path)
    if marker is None and not entries:
        return "new"
    found = marker["kind"] if marker is not None else _legacy_kind(path, entries)
    if found is None:
        raise OutputError(
            f"{option} {str(path)!r} already exists and holds files that replaylab did not create; "
            f"choose a new path (replaylab never writes into or replaces a folder it did not make)"
        )
    if found != kind:
        raise OutputError(f"{option} {str(path)!r} is a replaylab {found} folder, not a {kind}; choose another path")
    theirs = marker.get("identity") if marker is not None else None
    if identity is None or theirs is None or theirs == identity:
        if kind in _REBUILT:
            check_contents(path, kind, option=option, action="rebuilding")
        return "same"
    if overwrite:
        check_contents(path, kind, option=option)
        return "replace"
    what = f" ({describe})" if describe else ""
    raise OutputError(
        f"{option} {str(path)!r} holds another {kind}{what}; choose another path, or pass --overwrite to replace it"
    )


def check_output_file(path: str | Path, *, overwrite: bool = False, option: str = "--out") -> Path:
    """A file a command will write (a CSV, a JSON): a new path, or an existing file with `overwrite`."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {str(path)!r} is a folder; give a file path")
    _own_file(path, option)
    if path.exists() and not overwrite:
        raise OutputError(
            f"{option} {str(path)!r} already exists; choose a new file, or pass --overwrite to replace it"
        )
    _check_parents(path, option)
    return path


def remove_ours(path: Path, kind: Kind, *, option: str = "--out") -> None:
    """Delete a folder that `claim_output` said is ours and of `kind` ("replace"), once it holds nothing but what
    the kind writes and no process writes it or the artifacts it holds (their locks, taken here, and a sweep's
    `in_use`). Moved aside first, so a crash leaves a stale temporary folder, never half of the old one."""
    assert kind_of(path) == kind, f"{path} is not a replaylab {kind} folder"
    check_contents(path, kind, option=option)
    with ExitStack() as held:
        held.enter_context(folder_lock(path, f"{kind} folder", name=IN_USE))
        held.enter_context(folder_lock(path, f"{kind} folder"))
        for sub, inner in _inner_folders(path, kind):
            held.enter_context(folder_lock(sub, f"{inner} folder"))
        remove_dir(path)


@contextmanager
def build_output(
    path: str | Path,
    kind: Kind,
    identity: str | None = None,
    *,
    overwrite: bool = False,
    option: str = "--out",
    describe: str = "",
) -> Iterator[Path]:
    """Check `path` (claim_output), build the folder under a temporary name beside it, mark it, and rename it
    into place on success (replacing our own earlier folder). On error nothing at `path` changes."""
    claim_output(path, kind, identity, overwrite=overwrite, option=option, describe=describe)
    with atomic_dir(path) as tmp:
        write_marker(tmp, kind, identity)
        yield tmp
