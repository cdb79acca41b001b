"""What makes a folder replaylab's, for the output-path policy (replaylab.outputs): the names each kind of
folder writes, its marker (`.replaylab.json`), what it holds besides them, and the lock held while it is
written (`folder_lock`, `in_use`). outputs.py decides with these what a command may write or replace.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Iterator, Literal

from replaylab.errors import ReplaylabError
from replaylab.paths import atomic_write_text

MARKER = ".replaylab.json"
LOCK = ".replaylab.lock"
IN_USE = ".replaylab.use.lock"  # held shared by every process using a folder for long (a sweep), see `in_use`
Kind = Literal["store", "tokenizer", "run", "sweep", "report", "export", "advice"]

# What each kind writes at the top of its folder (names; `*` ends a prefix). A folder of ours that holds
# nothing else is recognised without a marker (folders made before markers existed), and an overwrite or a
# rebuild removes exactly these: a folder that also holds anything else is refused, never emptied.
_WRITES: dict[str, set[str]] = {
    "store": {
        "meta.json",
        "tokenizer.json",
        "train.bin",
        "val.bin",
        "train_docs.npy",
        "val_docs.npy",
        "train_mask.bin",  # instruction stores only (data/instructions.py)
        "val_mask.bin",
    },
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
    "advice": {"advice.yaml", "advice.json", "advice.md", "recommended.yaml", "tasks.json", "sweep", "report"},
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
