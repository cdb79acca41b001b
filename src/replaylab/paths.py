"""Where replaylab keeps its cache (corpora, tokenizers, token stores): `$REPLAYLAB_HOME`,
default `~/.cache/replaylab`, never inside the git checkout; and writing files and folders atomically
(write aside, then rename), with temporaries that say which process made them.
What a command may write where is `replaylab.outputs`."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _home_setting() -> tuple[Path, str, str]:
    """(the cache folder, what says where it comes from, the fix that points it elsewhere)."""
    env = os.environ.get("REPLAYLAB_HOME")
    root = env or os.path.join(os.path.expanduser("~"), ".cache", "replaylab")
    what = f"REPLAYLAB_HOME is {env!r}" if env else f"the default cache folder {root!r} (REPLAYLAB_HOME is unset)"
    fix = "set REPLAYLAB_HOME to a folder you can write: export REPLAYLAB_HOME=/path/to/cache"
    return Path(root), what, fix


def home() -> Path:
    """The cache folder, created if missing; one that cannot be a folder is a ReplaylabError."""
    from replaylab.errors import ReplaylabError

    path, what, fix = _home_setting()
    if path.exists() and not path.is_dir():
        raise ReplaylabError(f"{what}, which is a file, not a folder; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReplaylabError(f"{what}, which cannot be created ({e.strerror or e}); {fix}") from None
    return path


def _in_cache(path: str, root: Path) -> bool:
    return (os.path.abspath(path) + os.sep).startswith(os.path.abspath(root) + os.sep)


def _cache_error(where: str, reason: str, full: bool = False):
    from replaylab.errors import ReplaylabError

    _, what, fix = _home_setting()
    fix = f"free space there, or {fix}" if full else fix
    return ReplaylabError(f"cannot write to the replaylab cache: {reason} ({where}); {what}; {fix}")


def check_cache_writable(folder: Path | str) -> None:
    """Raise the REPLAYLAB_HOME error unless this process may create entries in `folder` (inside the cache)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
        raise _cache_error(str(folder), "read-only file system" if read_only else "permission denied")


@contextmanager
def writing_cache() -> Iterator[None]:
    """Around code that writes into the cache (also as a decorator): the file system refusing a path inside it
    (read-only, no permission, full) is one ReplaylabError naming REPLAYLAB_HOME, the setting to change."""
    try:
        yield
    except OSError as e:
        if not isinstance(e.filename, str) or not _in_cache(e.filename, _home_setting()[0]):
            raise
        full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        raise _cache_error(os.path.abspath(e.filename), e.strerror or str(e), full) from None


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (memory bounded)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def umask() -> int:
    """The process's umask: from /proc where there is one, else set and put back at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_file(final: Path) -> tuple[int, str]:
    """A temporary file beside `final` (descriptor, path), with the mode a plain `open` would give it: mkstemp
    makes it 0600, which a rename would carry to the output and lock a team out of a shared cache or report."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=temp_suffix(), dir=final.parent)
    os.fchmod(fd, 0o666 & ~umask())
    return fd, tmp


def temp_dir(final: Path) -> Path:
    """A temporary folder beside `final`, with the mode a plain `mkdir` would give it (mkdtemp's is 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=temp_suffix(), dir=final.parent))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def plain_modes(folder: Path) -> None:
    """Give everything under `folder` the mode a plain `open`/`mkdir` would (0666/0777 & ~umask): some writers
    (safetensors) create their files 0600 whatever the umask."""
    mask = umask()
    for root, dirs, files in os.walk(folder):
        for name, mode in [(d, 0o777) for d in dirs] + [(f, 0o666) for f in files]:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), mode & ~mask)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def temp_suffix() -> str:
    """Temporary files and folders name their maker, `.<pid>@<host>.tmp`, so a later process can tell the ones
    a killed process left behind (`clean_stale_temps`) from a live build."""
    return f".{os.getpid()}@{socket.gethostname()}.tmp"


_TEMP = re.compile(r"\.(\d+)@(.+)\.tmp$")


def clean_stale_temps(final: Path | str) -> None:
    """Remove temporary builds of `final` (`.NAME.*.tmp` beside it) whose maker on this host has died."""
    final = Path(final)
    host = socket.gethostname()
    try:
        siblings = list(final.parent.glob(f".{final.name}.*.tmp"))
    except OSError:
        return
    for tmp in siblings:
        m = _TEMP.search(tmp.name)
        if m and m.group(2) == host and not pid_alive(int(m.group(1))):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def remove_dir(path: Path | str) -> None:
    """Delete folder `path`: renamed aside to a temporary first (one atomic step), then removed, so a crash
    leaves a stale temporary (`clean_stale_temps`), never half of the folder at `path`."""
    path = Path(os.path.abspath(path))
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=temp_suffix(), dir=path.parent))
    os.replace(path, aside / path.name)
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Build a directory under a temporary name beside `final`, rename it into place on success.

    On any error the temporary directory is removed and `final` is left as it was. An existing `final` is
    moved aside before the rename and deleted after it, so a crash never leaves half of either. Callers
    decide whether `final` may be replaced (`replaylab.outputs.claim_output`); this only makes it atomic."""
    final = Path(os.path.abspath(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(final)
    tmp = temp_dir(final)
    try:
        yield tmp
        plain_modes(tmp)
        old = None
        if final.exists() and (not final.is_dir() or any(final.iterdir())):
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=temp_suffix(), dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
