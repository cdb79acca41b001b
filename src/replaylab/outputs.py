"""The output-path policy: where a command may write, and what it may replace. One place, every command.

A command writes only to
  - a path that does not exist yet, or an empty folder;
  - a folder replaylab created earlier, of the same kind and, where the kind has one, the same identity
    (a run continues, a store or report is rebuilt in place);
  - with `--overwrite`, a folder replaylab created, of the same kind but another identity: it is replaced.
It never writes into, deletes or replaces anything it did not create. Everything it creates carries a
marker file, `.replaylab.json` = {"kind", "identity", "created", "version"}, so the check does not guess.
Folders written before markers existed are recognised by their layout: a folder holding nothing but the
files replaylab writes for that kind (and, for a tokenizer, a tokenizer_config.json that replaylab wrote).

Kinds: store, tokenizer, run (engine and Hugging Face runs), sweep, report, export.

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
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

from replaylab.errors import ReplaylabError
from replaylab.paths import atomic_dir, atomic_write_text, remove_dir

MARKER = ".replaylab.json"
LOCK = ".replaylab.lock"
Kind = Literal["store", "tokenizer", "run", "sweep", "report", "export"]

# What each kind's folder holds, for folders made before markers existed (names; `*` ends a prefix).
_LAYOUT: dict[str, tuple[set[str], set[str]]] = {
    # kind: (one of these must be there, every name the folder may hold)
    "store": ({"meta.json"}, {"meta.json", "tokenizer.json", "train.bin", "val.bin", "train_docs.npy",
                              "val_docs.npy"}),
    "tokenizer": ({"tokenizer.json"}, {"tokenizer.json", "tokenizer_config.json"}),
    # A sweep's run folder starts as the lease's lock file, before config.yaml.
    "run": ({"config.yaml", "lease.lock"}, {"config.yaml", "manifest.json", "metrics.jsonl", "tb", "checkpoints",
                                            "lease.json", "lease.lock", "attempt_*", "model", "adapter", "wandb"}),
    "sweep": ({"sweep.json"}, {"sweep.json", "experiment.yaml", "events.jsonl", "runs", "report"}),
    "report": ({"report.html"}, {"report.html", "report.md", "analysis.json", "summary.csv", "figures"}),
}


class OutputError(ReplaylabError):
    """An output path that a command may not write to (not ours, another kind, held by another process)."""


# ------------------------------------------------------------------------------------------- names
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_name(name: str, option: str = "--name") -> str:
    """A name is a name, not a path: letters, digits and . _ + - (starting with a letter or digit)."""
    if not _NAME.fullmatch(name or "") or name in (".", ".."):
        raise OutputError(f"{option} {name!r} is not a valid name: use letters, digits and . _ + - (starting with a "
                          "letter or digit, at most 128 characters; no '/' and not '.' or '..')")
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

    record = {"kind": kind, "identity": identity, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "version": __version__}
    atomic_write_text(Path(folder) / MARKER, json.dumps(record, sort_keys=True) + "\n")


def _ours(name: str) -> bool:
    """Bookkeeping entries replaylab leaves in any folder it writes (marker, locks, temporary builds)."""
    return name.startswith(".replaylab") or (name.startswith(".") and name.endswith((".tmp", ".lock")))


def _allowed(name: str, names: set[str]) -> bool:
    return name in names or any(n.endswith("*") and name.startswith(n[:-1]) for n in names)


def _legacy_kind(folder: Path, entries: list[str]) -> str | None:
    for kind, (required, allowed) in _LAYOUT.items():
        if required & set(entries) and all(_allowed(e, allowed) for e in entries):
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


# ------------------------------------------------------------------------------------------- the check
def _check_parents(path: Path, option: str) -> None:
    """The nearest existing ancestor must be a writable folder: a clear error instead of an OSError later."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{option} {str(path)!r}: {str(parent)!r} is a file, so nothing can be created under it; "
                          "choose a path under a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {str(path)!r}: cannot write in {str(parent)!r} (permission denied); "
                          "choose a path in a folder you can write to")


def claim_output(path: str | Path, kind: Kind, identity: str | None = None, *, overwrite: bool = False,
                 option: str = "--out", describe: str = "") -> Literal["new", "same", "replace"]:
    """May a `kind` folder with `identity` be written at `path`? Raises OutputError with the fix if not.

    Returns "new" (nothing there, or an empty folder), "same" (ours: same kind, same or no identity: continue
    or rebuild it), or "replace" (ours, same kind, another identity, and `overwrite` was given)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {str(path)!r} is a file, not a folder; give a new folder path")
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
        raise OutputError(f"{option} {str(path)!r} already exists and holds files that replaylab did not create; "
                          f"choose a new path (replaylab never writes into or replaces a folder it did not make)")
    if found != kind:
        raise OutputError(f"{option} {str(path)!r} is a replaylab {found} folder, not a {kind}; choose another path")
    theirs = marker.get("identity") if marker is not None else None
    if identity is None or theirs is None or theirs == identity:
        return "same"
    if overwrite:
        return "replace"
    what = f" ({describe})" if describe else ""
    raise OutputError(f"{option} {str(path)!r} holds another {kind}{what}; choose another path, or pass --overwrite "
                      f"to replace it")


def check_output_file(path: str | Path, *, overwrite: bool = False, option: str = "--out") -> Path:
    """A file a command will write (a CSV, a JSON): a new path, or an existing file with `overwrite`."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {str(path)!r} is a folder; give a file path")
    if path.exists() and not overwrite:
        raise OutputError(f"{option} {str(path)!r} already exists; choose a new file, or pass --overwrite to replace it")
    _check_parents(path, option)
    return path


def remove_ours(path: Path, kind: Kind) -> None:
    """Delete a folder that `claim_output` said is ours and of `kind` ("replace"): moved aside first, so a crash
    leaves a stale temporary folder, never half of the old one."""
    assert kind_of(path) == kind, f"{path} is not a replaylab {kind} folder"
    remove_dir(path)


@contextmanager
def build_output(path: str | Path, kind: Kind, identity: str | None = None, *, overwrite: bool = False,
                 option: str = "--out", describe: str = "") -> Iterator[Path]:
    """Check `path` (claim_output), build the folder under a temporary name beside it, mark it, and rename it
    into place on success (replacing our own earlier folder). On error nothing at `path` changes."""
    claim_output(path, kind, identity, overwrite=overwrite, option=option, describe=describe)
    with atomic_dir(path) as tmp:
        write_marker(tmp, kind, identity)
        yield tmp


# ------------------------------------------------------------------------------------------- locks
_HELD: dict[str, int] = {}  # folders whose lock this process holds: taking it again is a no-op


@contextmanager
def folder_lock(folder: str | Path, what: str, *, wait: bool = False) -> Iterator[None]:
    """Hold `folder`'s lock while writing it. Another holder: wait (`wait=True`) or a one-line OutputError naming
    its process. The lock is an flock, released by the OS when the holder dies: never stale. Reentrant within
    a process (a second flock on a new descriptor of the same file would conflict with the first)."""
    folder = Path(folder)
    key = os.path.abspath(folder)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise OutputError(f"{what} {str(folder)!r} is being written by {holder}; wait for it to finish or stop "
                              "that process first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} (since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(), 0)
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # closing the descriptor releases the flock
