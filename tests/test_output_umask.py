"""Outputs respect the umask: a file replaylab writes is 0666 & ~umask, a folder 0777 & ~umask, as with a plain
`open` or `mkdir` (temporary files and folders, renamed into place, used to carry mkstemp's 0600 and
mkdtemp's 0700, so a team could not read a shared cache or report)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hang import HANG_S
from run_configs import tiny_raw

from replaylab.outputs import folder_lock, write_marker
from replaylab.paths import atomic_dir, atomic_write_text, umask


@contextmanager
def set_umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, str]:
    """Every path under root (and root) with its permission bits, in octal."""
    return {
        str(p.relative_to(root.parent)): oct(stat.S_IMODE(p.lstat().st_mode)) for p in [root, *sorted(root.rglob("*"))]
    }


def expected(root: Path, mask: int) -> dict[str, str]:
    return {
        str(p.relative_to(root.parent)): oct((0o777 if p.is_dir() else 0o666) & ~mask)
        for p in [root, *sorted(root.rglob("*"))]
    }


@pytest.mark.parametrize("mask", [0o002, 0o022, 0o027, 0o077])
def test_atomic_writes_and_locks_follow_the_umask(tmp_path, mask):
    with set_umask(mask):
        assert umask() == mask
        assert umask() == mask  # reading it leaves it as it was
        out = tmp_path / "out"
        with atomic_dir(out) as tmp:
            write_marker(tmp, "report", "x")
            atomic_write_text(tmp / "figures" / "a.json", "{}")
        with folder_lock(out, "report folder"):
            pass
        atomic_write_text(tmp_path / "table.csv", "a,b\n")
    assert modes(out) == expected(out, mask)
    assert modes(tmp_path / "table.csv") == expected(tmp_path / "table.csv", mask)


def run(*args, env: dict, mask: int) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "replaylab.cli", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
        umask=mask,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_commands_write_with_the_umask(tmp_path, prose_store, code_store, tiny_tokenizer):
    """data build (a store: built aside, renamed) and train (a run: atomic files, checkpoints that safetensors
    writes 0600, locks) under umask 027: 0640 files, 0750 folders."""
    mask = 0o027
    env = {**os.environ, "REPLAYLAB_HOME": str(tmp_path / "home"), "PYTHONWARNINGS": "ignore"}
    lines = [json.dumps({"text": f"document {i}: " + "words and more words " * 20}) for i in range(40)]
    (tmp_path / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(tiny_raw(prose_store, code_store, tiny_tokenizer)))

    run("data", "build", tmp_path / "corpus.jsonl", "--name", "gen", "--tokenizer", tiny_tokenizer, env=env, mask=mask)
    run("train", tmp_path / "run.yaml", "--out", tmp_path / "run", env=env, mask=mask)
    for out in ("home", "run"):
        assert modes(tmp_path / out) == expected(tmp_path / out, mask)
