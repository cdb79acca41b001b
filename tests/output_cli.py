"""The real CLI, run as a user would, for the output-path tests (test_output_policy.py, test_output_overwrite.py):
in this process (a refusal needs no process of its own) or in a subprocess (when this process holds a lock), and
the checks every refusal must pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hang import HANG_S

SENTINEL = "a user's file: must survive"


def run_cli(*args: str, env: dict, cwd: Path, timeout: float = HANG_S) -> subprocess.CompletedProcess:
    """The real CLI in its own process: for cases where another process (this one) holds a lock."""
    return subprocess.run(
        [sys.executable, "-m", "replaylab.cli", *map(str, args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_in_process(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """The real CLI entry in this process, with `env` as the environment and `cwd` as the working folder for the
    call (both restored afterwards); what it prints is captured. Not thread-safe: run cases one after another."""
    import contextlib
    import io

    from replaylab.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_env, old_cwd = dict(os.environ), Path.cwd()
    os.environ.clear()
    os.environ.update(env)
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(map(str, args)))
            except SystemExit as e:  # argparse's own errors exit
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def plant(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "KEEP.txt").write_text(SENTINEL)
    return folder


def assert_one_line_refusal(r: subprocess.CompletedProcess, *pieces: str) -> None:
    """Exit 2, one line on stderr in the CLI's error form, no traceback, naming every piece."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr
    assert lines[0].startswith("replaylab ") and ": error: " in lines[0]
    for piece in pieces:
        assert piece in lines[0], lines[0]


def assert_refused(capsys, argv: list[str], *words: str) -> None:
    """`replaylab.cli.main(argv)` in this process exits 2 with one line on stderr, no traceback, naming every word
    (capsys: pytest's fixture, read and cleared here)."""
    from replaylab.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err
