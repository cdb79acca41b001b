"""The torchrun backend of sweeps: each run is one torchrun job of N gloo processes (CPU). A 2-run sweep of
2-rank jobs gives the losses of `torchrun --nproc_per_node 2 ... train` by hand, bit for bit, a rerun skips
its done runs, and a run that fails in its ranks is recorded with their error while the sweep goes on; bad
backends, rank counts and a missing launcher are one-line refusals (no training)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest
import yaml
from hang import HANG_S
from output_cli import assert_refused
from test_sweep import experiment

from replaylab.errors import ConfigError
from replaylab.sweep import describe_backend, run_sweep
from replaylab.sweep.runstore import RunStore
from replaylab.sweep.torchrun import CPU_NPROC, job_slots


def train_losses(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]


@pytest.mark.slow  # three 2-rank torchrun jobs (two by the sweep, one by hand), one failing: ~1.5 min
def test_two_run_sweep_matches_torchrun_by_hand_and_skips_done(
    prose_store, code_store, tiny_tokenizer, tmp_path, isolated_home
):
    exp = experiment(
        prose_store,
        code_store,
        tiny_tokenizer,
        [{"strategy": "reference", "grid": {"budget_multiple": [1, 2]}, "args": {"epochs": 1}}],
        steps=6,
        micro_batch_size=2,
        threads=1,
        device="cpu",  # gloo ranks on any machine, a GPU one included
        log_every=1,
    )
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = tmp_path / "sweep"
    counts = run_sweep(path, out, backend="torchrun", nproc_per_node=2, progress=False)
    assert counts == {"done": 2, "running": 0, "failed": 0, "pending": 0}

    store = RunStore(out)
    entry = store.plan()["runs"][1]
    run = store.run_dir(entry["run_id"])
    assert store.manifest(entry["run_id"])["world_size"] == 2
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(entry["config"], sort_keys=False))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "REPLAYLAB_HOME": str(isolated_home), "OMP_NUM_THREADS": "1"}
    by_hand = tmp_path / "by_hand"
    r = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "replaylab.cli", "train", str(cfg), "--out",
         str(by_hand)],
        env=env, capture_output=True, text=True, timeout=HANG_S,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(train_losses(run)) == 6 and train_losses(run) == train_losses(by_hand)  # bit for bit
    assert store.manifest(entry["run_id"])["final"] == json.loads((by_hand / "manifest.json").read_text())["final"]

    events = (out / "events.jsonl").read_text()
    assert run_sweep(path, out, backend="torchrun", nproc_per_node=2, progress=False)["done"] == 2
    assert (out / "events.jsonl").read_text() == events  # nothing claimed, nothing trained again

    # 4 sequences per step cannot be shared by 3 processes: refused before any job (exit 2 in the CLI)
    with pytest.raises(ConfigError, match=r"--nproc-per-node 3: run \w+: train.batch_size \(4\) must be divisible"):
        run_sweep(path, tmp_path / "three", backend="torchrun", nproc_per_node=3, progress=False)

    # A run that fails in its ranks (its target store is gone) is recorded with the ranks' own error.
    exp["strategies"][0]["grid"]["budget_multiple"] = [2]  # one run
    exp["base"]["data"]["domains"]["code"]["source"] = str(tmp_path / "no-such-store")
    path.write_text(yaml.safe_dump(exp))
    failing = tmp_path / "failing"
    assert run_sweep(path, failing, backend="torchrun", nproc_per_node=2, progress=False)["failed"] == 1
    (failed,) = RunStore(failing).plan()["runs"]
    manifest = RunStore(failing).manifest(failed["run_id"])
    assert manifest["status"] == "failed" and "no-such-store" in manifest["error"], manifest


def test_refusals_are_one_line_and_train_nothing(tmp_path, monkeypatch, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: t\n")

    refused = functools.partial(assert_refused, capsys)

    sweep = ["sweep", str(exp), "--out", str(tmp_path / "s")]
    refused([*sweep, "--backend", "slurm"], "'slurm' is unknown", "torchrun")
    refused([*sweep, "--backend", "torchrun", "--nproc-per-node", "0"], "--nproc-per-node 0 must be >= 1")
    refused([*sweep, "--nproc-per-node", "2"], "--nproc-per-node is for --backend torchrun")
    refused(["advise", "--model", "preset:tiny", "--target", "code", "--backend", "torchrun", "--nproc-per-node",
             "-1", "--out", str(tmp_path / "a")], "--nproc-per-node -1")  # fmt: skip
    assert not (tmp_path / "s").exists() and not (tmp_path / "a").exists()

    import torch.distributed

    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)  # a torch built without it (some wheels)
    refused([*sweep, "--backend", "torchrun"], "needs torchrun (torch.distributed.run)", "--backend local")
    assert not (tmp_path / "s").exists()


def test_gpu_jobs_get_disjoint_gpus_and_too_many_ranks_is_refused():
    gpus = ["0", "1", "2", "5"]
    assert job_slots(workers=1, nproc_per_node=None, gpus=gpus, on_gpu=True) == (
        4,
        [{"CUDA_VISIBLE_DEVICES": "0,1,2,5"}],
    )
    n, slots = job_slots(workers=2, nproc_per_node=None, gpus=gpus, on_gpu=True)
    assert n == 2 and [s["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0,1", "2,5"]
    assert job_slots(workers=3, nproc_per_node=1, gpus=gpus, on_gpu=True)[1][2] == {"CUDA_VISIBLE_DEVICES": "2"}
    assert job_slots(workers=3, nproc_per_node=None, gpus=gpus, on_gpu=False) == (CPU_NPROC, [{}, {}, {}])
    for workers, nproc in ((1, 5), (2, 3), (5, None)):
        with pytest.raises(ConfigError) as e:
            job_slots(workers=workers, nproc_per_node=nproc, gpus=gpus, on_gpu=True)
        assert "\n" not in str(e.value) and "only 4 CUDA GPU(s) are visible" in str(e.value)


def test_the_plan_line_names_the_backend():
    """`advise` prints this line under its plan (the advisor's timed trial is what its own tests pay for)."""
    line = describe_backend("torchrun", 1, 1, 2)
    assert line.startswith("backend torchrun: each run is one torchrun job of 2 processes")
    assert describe_backend("local", 2, 1) == "backend local: 2 worker process(es) of 1 thread(s)"
