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
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import time
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, Literal

from replaylab.errors import ReplaylabError
from replaylab.paths import atomic_dir, atomic_write_text, remove_dir

MARKER = ".replaylab.json"
LOCK = ".replaylab.lock"
IN_USE = ".replaylab.use.lock"  # held shared by every process using a folder for long (a sweep), see `in_use`
Kind = Literal["store", "tokenizer", "run", "sweep", "report", "export", "advice"]

# What each kind writes at the top of its folder (names; `*` ends a prefix). A folder of ours that holds
# nothing else is recognised without a marker (folders made before markers existed), and an overwrite or a
# rebuild removes exactly these: a folder that also holds anything else is refused, never emptied.
_WRITES: dict[str, set[str]] = {
    "store": {"meta.json", "tokenizer.json", "train.bin", "val.bin", "train_docs.npy", "val_docs.npy"},
    "tokenizer": {"tokenizer.json", "tokenizer_config.json"},
    # A sweep's run folder starts as the lease's lock file, before config.yaml.
    "run": {
        "config.yaml",
        "manifest.json",
        "metrics.jsonl",
        "tb",
        "checkpoints",
        "lease.json",
        "lease.lock",
        "attempt_*",
        "model",
        "adapter",
        "wandb",
    },
    "sweep": {"sweep.json", "experiment.yaml", "events.jsonl", "runs", "report"},
    "report": {"report.html", "report.md", "analysis.json", "summary.csv", "figures"},
    # `replaylab advise`: its inputs, its answer, the sweep it trained and the answer's report
    "advice": {"advice.yaml", "advice.json", "advice.md", "recommended.yaml", "sweep", "report"},
    # transformers' save_pretrained of a config, safetensors weights and a fast tokenizer
    "export": {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model-*",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.jinja",
    },
}
# What a folder without a marker must hold, besides nothing but the above, to be taken for one of that kind.
_REQUIRED: dict[str, set[str]] = {
    "store": {"meta.json"},
    "tokenizer": {"tokenizer.json"},
    "run": {"config.yaml", "lease.lock"},
    "sweep": {"sweep.json"},
    "report": {"report.html"},
}
# Where a kind holds artifacts of its own, the only places one replaylab folder may be inside another:
# (path under the folder, `*` = any name) -> the kind found there.
_INNER: dict[str, dict[tuple[str, ...], str]] = {
    "sweep": {("runs", "*"): "run", ("report",): "report"},
    "advice": {("sweep",): "sweep", ("report",): "report"},
}
# Kinds written whole (built aside, renamed over the old folder): writing the same one again replaces it too.
# A run or a sweep is continued in place instead, so only an overwrite replaces those.
_REBUILT = {"store", "tokenizer", "report", "export"}


class OutputError(ReplaylabError):
    """An output path that a command may not write to (not ours, another kind, held by another process)."""


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


# ------------------------------------------------------------------------------------------- markers
def read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("kind"), str) else None


def write_marker(folder: Path, kind: Kind, identity: str | None = None) -> None:
    from replaylab import __version__

    record = {
        "kind": kind,
        "identity": identity,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "version": __version__,
    }
    atomic_write_text(Path(folder) / MARKER, json.dumps(record, sort_keys=True) + "\n")


def _ours(name: str) -> bool:
    """Bookkeeping entries replaylab leaves in any folder it writes (marker, locks, temporary builds)."""
    return name.startswith(".replaylab") or (name.startswith(".") and name.endswith((".tmp", ".lock")))


def _allowed(name: str, names: set[str]) -> bool:
    return name in names or any(n.endswith("*") and name.startswith(n[:-1]) for n in names)


def _legacy_kind(folder: Path, entries: list[str]) -> str | None:
    for kind, required in _REQUIRED.items():
        if required & set(entries) and all(_allowed(e, _WRITES[kind]) for e in entries):
            if kind == "tokenizer":  # a tokenizer folder from the hub looks the same: only ours says so
                try:
                    cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                if not isinstance(cfg, dict) or "replaylab" not in cfg:
                    continue
            return kind
    return None


def kind_of(folder: Path) -> str | None:
    """The kind of a replaylab folder (marker, else a pre-marker layout); None if not ours."""
    marker = read_marker(folder)
    if marker is not None:
        return marker["kind"]
    entries = [e for e in os.listdir(folder) if not _ours(e)]
    return _legacy_kind(folder, entries) if entries else None


# ------------------------------------------------------------------------------------------- contents
def _inner_folders(folder: Path, kind: str) -> Iterator[tuple[Path, str]]:
    """The artifacts a `kind` folder holds (a sweep's run folders and report), with their kinds."""
    for where, inner in _INNER.get(kind, {}).items():
        base = folder / where[0]
        if len(where) == 1:
            subs = [base] if base.is_dir() else []
        else:
            subs = [base / e for e in sorted(os.listdir(base)) if not _ours(e)] if base.is_dir() else []
        for sub in subs:
            yield sub, inner


def foreign_entries(folder: Path, kind: str) -> list[str]:
    """What `folder`, a `kind` folder of ours, holds that its kind does not write, as paths relative to it,
    looking into the artifacts it holds too (a note in a sweep's run folder is `runs/ID/NOTES.md`)."""
    folder = Path(folder)
    found = [e for e in sorted(os.listdir(folder)) if not _ours(e) and not _allowed(e, _WRITES[kind])]
    for sub, inner in _inner_folders(folder, kind):
        rel = sub.relative_to(folder).as_posix()
        found += [f"{rel}/{e}" for e in foreign_entries(sub, inner)] if sub.is_dir() else [rel]
    return found


def check_contents(path: Path, kind: Kind, *, option: str = "--out", action: str = "replacing") -> None:
    """An overwrite or a rebuild deletes only what the kind writes: a folder holding anything else is refused,
    with one line listing it (a user's notes, an export made into a run folder, results saved in a sweep)."""
    extra = foreign_entries(path, kind)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise OutputError(
            f"{option} {str(path)!r} also holds what replaylab did not write there ({shown}); "
            f"{action} this {kind} would delete it: move it out first, or choose another path"
        )


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


# ------------------------------------------------------------------------------------------- locks
_HELD: dict[str, int] = {}  # lock files this process holds: taking one again is a no-op


@contextmanager
def folder_lock(
    folder: str | Path, what: str, *, wait: bool = False, shared: bool = False, name: str = LOCK
) -> Iterator[None]:
    """Hold `folder`'s lock while writing it. Another holder: wait (`wait=True`) or a one-line OutputError naming
    its process. The lock is an flock, released by the OS when the holder dies: never stale. Reentrant within
    a process (a second flock on a new descriptor of the same file would conflict with the first). `shared`:
    one of many users (`in_use`); `name`: the lock file. A folder that is not replaylab's gets no lock file:
    its refusal must leave it as it was."""
    folder = Path(folder)
    key = os.path.abspath(folder / name)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    if (
        folder.is_dir()
        and read_marker(folder) is None
        and [e for e in os.listdir(folder) if not _ours(e)]
        and kind_of(folder) is None
    ):
        raise OutputError(
            f"{str(folder)!r} already exists and holds files that replaylab did not create; choose a "
            "new path (replaylab never writes into or replaces a folder it did not make)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise OutputError(
                f"{what} {str(folder)!r} is being written by {holder}; wait for it to finish or stop that process first"
            ) from None
        record = (
            f"process {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n"
        ).encode()
        os.ftruncate(fd, 0)  # shared holders: the latest one's name, a fair answer to "who uses it"
        os.pwrite(fd, record, 0)
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def in_use(folder: str | Path, what: str) -> AbstractContextManager[None]:
    """Mark `folder` as in use by this process for as long as it runs (a sweep training into it): any number of
    users at once, but `remove_ours` refuses to delete it meanwhile."""
    return folder_lock(folder, what, shared=True, name=IN_USE)
