"""Faults: SIGKILL then --resume, SIGTERM checkpoints, damaged checkpoints, branching from a prefix.

Every comparison is exact (==): in deterministic mode a resumed or branched run must end with the
same numbers, bit for bit, as the same run trained without interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from hang import HANG_S

from replaylab.config import from_dict
from replaylab.errors import ConfigError
from replaylab.runconfig import RunConfig
from replaylab.train import run_training

STEPS = 60


def long_raw(prose_store, code_store, tokenizer) -> dict:
    """Long enough (~1-2 s of steps) that a signal lands mid-run; checkpoints every 5 steps."""
    return {
        "name": "resume-test",
        "seed": 1,
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 128},
        "data": {
            "tokenizer": tokenizer,
            "seq_len": 64,
            "domains": {
                "generic": {"source": str(prose_store.path)},
                "code": {"source": str(code_store.path), "budget": 16},
            },
        },
        "stages": [
            {"name": "pretrain", "steps": 40, "mixture": {"generic": 1.0}},
            {
                "name": "finetune",
                "steps": 20,
                "mixture": {"code": 0.25, "generic": 0.75},
                "optimizer": "reset",
                "lr": {"peak": 1e-3},
            },
        ],
        "train": {
            "total_steps": STEPS,
            "batch_size": 8,
            "micro_batch_size": 4,
            "precision": "fp32",
            "compile": "off",
            "threads": 1,
            "log_every": 1,
            "progress": "off",
            "checkpoint_every": 5,
            "keep_checkpoints": 3,
        },
        "eval": {"max_sequences": 8, "batch_size": 8, "every": 20},
        "logging": {"tensorboard": False},
    }


@pytest.fixture(scope="module")
def setup(prose_store, code_store, tiny_tokenizer, tmp_path_factory):
    """The config as a file, and the same run trained without interruption (shared by the tests)."""
    root = tmp_path_factory.mktemp("resume")
    raw = long_raw(prose_store, code_store, tiny_tokenizer)
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))  # key order matters: it is the domains' order
    env = {**os.environ, "REPLAYLAB_HOME": str(root / "home"), "PYTHONUNBUFFERED": "1"}
    reference = run_training(from_dict(RunConfig, raw), root / "reference")
    return raw, cfg, env, reference, root / "reference"


def _metrics(run_dir, kinds=("train", "eval", "data")):
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["type"] in kinds:
            r.pop("tok_per_s", None)
            out.append(r)
    return out


def _start(cfg, out, env):
    return subprocess.Popen(
        [sys.executable, "-m", "replaylab.cli", "train", str(cfg), "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_step(out, step, proc, timeout=HANG_S):
    """Wait until metrics.jsonl records `step` (the process is then past its first checkpoint)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = out / "metrics.jsonl"
        if path.exists() and any(f'"step":{step},' in line for line in path.read_text().splitlines()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before step {step}: {proc.stderr.read()}")
        time.sleep(0.005)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def _resume(out, env):
    return subprocess.run(
        [sys.executable, "-m", "replaylab.cli", "train", "--resume", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )


def test_sigkill_then_resume_is_bit_identical(setup, tmp_path):
    raw, cfg, env, reference, reference_dir = setup
    out = tmp_path / "killed"
    proc = _start(cfg, out, env)
    _wait_for_step(out, 12, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=HANG_S)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["steps_done"] < STEPS  # really killed mid-run

    r = _resume(out, env)
    assert r.returncode == 0, r.stderr
    resumed = json.loads((out / "manifest.json").read_text())
    assert resumed["status"] == "done" and resumed["steps_done"] == STEPS
    assert resumed["final"] == reference["final"]
    assert _metrics(out) == _metrics(reference_dir)  # no duplicated or missing records


def test_sigterm_saves_checkpoint_and_damaged_checkpoint_falls_back(setup, tmp_path):
    raw, cfg, env, reference, reference_dir = setup
    out = tmp_path / "termed"
    proc = _start(cfg, out, env)
    _wait_for_step(out, 7, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 143, stderr
    assert "--resume" in stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running"
    steps = sorted(int(p.name[5:]) for p in (out / "checkpoints").iterdir() if p.name.startswith("step_"))
    stopped = manifest["steps_done"]
    assert steps[-1] == stopped and 7 <= stopped < STEPS
    state = json.loads((out / f"checkpoints/step_{stopped:07d}/state.json").read_text())
    assert state["kind"] in ("signal", "periodic", "stage_end")

    # Damage the newest checkpoint: resume must say so and use the previous good one.
    newest = out / f"checkpoints/step_{stopped:07d}/model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    r = _resume(out, env)
    assert r.returncode == 0, r.stderr
    assert "skipping checkpoint" in r.stderr and "sha256" in r.stderr
    done = json.loads((out / "manifest.json").read_text())
    assert done["final"] == reference["final"]
    assert _metrics(out) == _metrics(reference_dir)


def test_init_from_prefix_equals_run_alone(prose_store, code_store, tiny_tokenizer, tmp_path, isolated_home):
    raw = long_raw(prose_store, code_store, tiny_tokenizer)
    raw["train"].update(checkpoint_every=0, total_steps=30)
    raw["eval"]["every"] = 10
    # One WSD-like stable phase: a constant-LR pre-training shared by two fine-tuning variants.
    raw["stages"] = [
        {
            "name": "pretrain",
            "steps": 20,
            "mixture": {"generic": 1.0},
            "lr": {"schedule": "constant", "peak": 2e-3, "warmup": 0.0},
        },
        {"name": "finetune", "steps": 10, "mixture": {"code": 0.25, "generic": 0.75}, "optimizer": "reset"},
    ]
    parent = run_training(from_dict(RunConfig, raw), tmp_path / "parent")
    assert parent["status"] == "done"
    branch_point = tmp_path / "parent/checkpoints/step_0000020"

    child = json.loads(json.dumps(raw))
    child["stages"][1].update(steps=14, mixture={"code": 0.5, "generic": 0.5})
    child["train"].update(total_steps=34, log_every=2)  # its own logging: the copied prefix must follow it
    child["eval"]["every"] = 0
    alone = run_training(from_dict(RunConfig, child), tmp_path / "alone")
    branched = run_training(from_dict(RunConfig, child), tmp_path / "branched", init_from=branch_point)
    assert branched["final"] == alone["final"]
    assert branched["init_from"] == str(branch_point)
    assert _metrics(tmp_path / "branched") == _metrics(tmp_path / "alone")  # prefix records copied over

    other = json.loads(json.dumps(child))
    other["stages"][0]["lr"]["peak"] = 1e-3  # a different prefix
    with pytest.raises(ConfigError, match="learning rates"):
        run_training(from_dict(RunConfig, other), tmp_path / "bad", init_from=branch_point)
    # A domain's budget matters once it is drawn: generic is drawn in the prefix, so a generic budget breaks it.
    other = json.loads(json.dumps(child))
    other["data"]["domains"]["generic"]["budget"] = 64
    with pytest.raises(ConfigError, match="different budget"):
        run_training(from_dict(RunConfig, other), tmp_path / "bad2", init_from=branch_point)


def test_killed_after_its_last_checkpoint_resumes_to_done_with_its_losses(setup, tmp_path):
    """A run killed after saving its last step but before recording `done` resumes straight to done, with
    the same final losses and no records added."""
    import shutil

    raw, _, _, reference, ref_dir = setup
    run = tmp_path / "late"
    shutil.copytree(ref_dir, run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest.update(status="running", finished=None, final={})
    (run / "manifest.json").write_text(json.dumps(manifest))
    resumed = run_training(from_dict(RunConfig, raw), run, resume=True)
    assert resumed["status"] == "done" and resumed["final"] == reference["final"]
    assert _metrics(run) == _metrics(ref_dir)
