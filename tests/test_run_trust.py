"""Issue 20, runs: a resume never trains on other data or into another folder, and a checkpoint that cannot
be written (full disk, `ulimit -f`) or read back for export (cut short) is one line naming it, exit 2."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hang import HANG_S
from run_configs import tiny_raw

from replaylab.cli import main
from replaylab.config import from_dict
from replaylab.runconfig import RunConfig
from replaylab.train import run_training

REPO = Path(__file__).resolve().parent.parent


def one_line_error(capsys, *argv) -> str:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and ": error: " in lines[0], (rc, out, err)
    return lines[0]


def cli(*argv, cwd, env, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "replaylab.cli", *map(str, argv)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
        **kw,
    )


@pytest.fixture(scope="module")
def finished(prose_store, code_store, tiny_tokenizer, tmp_path_factory):
    """A finished tiny run (12 steps, a checkpoint at its stage end)."""
    out = tmp_path_factory.mktemp("runs") / "base1"
    run_training(from_dict(RunConfig, tiny_raw(prose_store, code_store, tiny_tokenizer)), out)
    return out


def test_resume_refuses_another_out(finished, tmp_path, capsys):
    before = (finished / "manifest.json").read_text()
    line = one_line_error(capsys, "train", "--resume", finished, "--out", tmp_path / "other")
    assert f"--resume {str(finished)!r}" in line and "--out" in line and "drop --out" in line, line
    assert not (tmp_path / "other").exists() and (finished / "manifest.json").read_text() == before
    # The same folder spelled another way is no other --out.
    assert main(["train", "--resume", str(finished), "--out", f"{finished}/../{finished.name}"]) == 0


# ----------------------------------------------------------------------------------- resume on other data
def _interrupted_run(cwd: Path, env: dict, run: Path) -> dict:
    """Start a long run on `data/mine.jsonl` (relative) in `cwd`; SIGTERM it once it has a checkpoint."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "replaylab.cli", "train", "cfg.yaml", "--out", str(run)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list((run / "checkpoints").glob("step_*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 143, err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["steps_done"] > 0
    return manifest


@pytest.mark.slow  # two trainers start (~30 s)
def test_resume_refuses_data_that_changed(tmp_path, prose_corpus, code_corpus, tiny_tokenizer):
    """The issue's case: resumed from another working directory, a relative source names another file."""
    here, there = tmp_path / "here", tmp_path / "there"
    for cwd, corpus in ((here, prose_corpus), (there, code_corpus)):
        (cwd / "data").mkdir(parents=True)
        shutil.copyfile(corpus, cwd / "data" / "mine.jsonl")
    (here / "cfg.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "mine",
                "seed": 1,
                "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
                "data": {
                    "tokenizer": tiny_tokenizer,
                    "seq_len": 32,
                    "domains": {"target": {"source": "data/mine.jsonl"}},
                },
                "stages": [{"name": "s", "steps": 5000, "mixture": {"target": 1.0}}],
                "train": {
                    "total_steps": 5000,
                    "batch_size": 2,
                    "precision": "fp32",
                    "compile": "off",
                    "threads": 1,
                    "progress": "off",
                    "checkpoint_every": 5,
                    "log_every": 50,
                },
                "eval": {"max_sequences": 4, "batch_size": 4, "every": 0},
                "logging": {"tensorboard": False},
            }
        )
    )
    env = {**os.environ, "REPLAYLAB_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO / "src")}
    run = here / "runs" / "mine"
    recorded = _interrupted_run(here, env, run)
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())

    p = cli("train", "--resume", run, cwd=there, env=env)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    line = lines[0]
    assert "cannot resume" in line and "domain 'target' (source 'data/mine.jsonl')" in line, line
    assert f"now reads {there / 'data' / 'mine.jsonl'}" in line and f"trained on {here / 'data' / 'mine.jsonl'}" in line
    assert recorded["store_identities"]["target"][:12] in line
    after = json.loads((run / "manifest.json").read_text())
    assert after["store_identities"] == recorded["store_identities"] and after["steps_done"] == recorded["steps_done"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == checkpoints


# ----------------------------------------------------------------------------------- checkpoints on disk
def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: a write past `limit` bytes fails with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_checkpoint_past_the_file_size_limit_is_one_line(prose_store, code_store, tiny_tokenizer, tmp_path):
    """`ulimit -f` (or a full disk) while the first checkpoint (~200 KB) is written: one line naming it."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(prose_store, code_store, tiny_tokenizer), sort_keys=False))
    env = {**os.environ, "REPLAYLAB_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO / "src")}
    p = cli("train", cfg, "--out", tmp_path / "run", cwd=tmp_path, env=env, preexec_fn=_file_size_limit(40_000))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    step = tmp_path / "run" / "checkpoints" / "step_0000008"
    assert f"cannot write checkpoint {str(step)!r}" in lines[0] and "File too large" in lines[0], lines[0]
    assert not list((tmp_path / "run" / "checkpoints").iterdir())  # nothing half written is left
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "cannot write checkpoint" in manifest["error"]


@pytest.mark.parametrize("state", ["recorded sha256", "no state.json"])
def test_export_of_a_truncated_checkpoint_is_one_line(finished, tmp_path, capsys, state):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    ckpt = sorted((run / "checkpoints").iterdir())[-1]  # the one export picks
    if state == "no state.json":
        (ckpt / "state.json").unlink()
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = one_line_error(capsys, "export", run, "--hf", tmp_path / "hf")
    assert line.startswith("replaylab export: error: checkpoint ") and str(ckpt) in line, line
    assert ("does not match its recorded sha256" if state == "recorded sha256" else "cannot be read") in line, line
    assert not (tmp_path / "hf").exists()
