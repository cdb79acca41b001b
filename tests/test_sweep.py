"""Sweeps on real tiny runs: expansion, plan, skip-done, failure + retry, shared-prefix equality,
the claim race, a killed worker, and Ray end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from replaylab.sweep import prepare_sweep, run_sweep
from replaylab.sweep.local import execute_run, worker_loop
from replaylab.sweep.plan import plan_experiment
from replaylab.sweep.results import load_results
from replaylab.sweep.runstore import RunStore


def experiment(prose_store, code_store, tokenizer, strategies, steps=16, **train) -> dict:
    return {
        "name": "t",
        "base": {
            "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
            "data": {
                "tokenizer": tokenizer,
                "seq_len": 32,
                "domains": {"generic": {"source": str(prose_store.path)}, "code": {"source": str(code_store.path)}},
            },
            "train": {
                "total_steps": steps,
                "batch_size": 4,
                "precision": "fp32",
                "compile": "off",
                "log_every": 4,
                "progress": "off",
                **train,
            },
            "eval": {"max_sequences": 8, "batch_size": 8},
            "logging": {"tensorboard": False},
        },
        "target": "code",
        "target_fraction": "1/8",
        "seeds": [0],
        "prefix_granularity": 2,
        "strategies": strategies,
    }


@pytest.fixture
def write_exp(tmp_path, prose_store, code_store, tiny_tokenizer, isolated_home):
    def write(strategies, **kw):
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump(experiment(prose_store, code_store, tiny_tokenizer, strategies, **kw)))
        return path

    return write


def test_plan_counts_runs_steps_and_prefix_savings(write_exp):
    path = write_exp(
        [
            {"strategy": "reference", "grid": {"budget_multiple": [1, 2]}, "args": {"epochs": 2}},
            {"strategy": "finetune", "grid": {"multiplier": [1, 2]}, "lrs": [1e-3, 3e-3], "args": {"epochs": 2}},
            {"strategy": "midtrain", "grid": {"rho": [0, 0.5, 0.75]}, "args": {"alpha": 1, "epochs": 2}},
        ]
    )
    table, doc = plan_experiment(path)
    assert len(doc["runs"]) == 2 + 4 + 3
    total = table.iloc[-1]
    assert total["steps"] == 9 * 16
    # midtrain alpha=1: stage 2 = 4 / 8 / 16... steps; the generic-only WSD prefix is shared
    mid = table[table.strategy == "midtrain"].iloc[0]
    ft = table[table.strategy == "finetune"].iloc[0]
    assert mid["steps_saved"] > 0
    assert ft["steps_saved"] > 0  # LRs tuned on the fine-tuning stage share its pre-training
    assert table[table.strategy == "reference"].iloc[0]["steps_saved"] == 0
    assert total["flops"] > 0 and total["gpu_hours"] > 0


def test_sweep_skips_done_records_failures_and_retries(write_exp, tmp_path):
    path = write_exp(
        [
            {"strategy": "reference", "args": {"epochs": 2}},
            {"strategy": "finetune", "grid": {"multiplier": [2]}, "args": {"epochs": 2}},
        ]
    )
    out = tmp_path / "sweep"
    doc = prepare_sweep(path, out)
    store = RunStore(out)
    ref, ft = doc["runs"]
    # Break one run so it fails at start: its generic store path vanishes for this run only.
    ft["config"]["data"]["domains"]["generic"]["source"] = str(tmp_path / "missing.jsonl")
    (out / "sweep.json").write_text(json.dumps(doc))
    worker_loop(out, threads=1)
    assert store.status(ref["run_id"]) == "done" and store.status(ft["run_id"]) == "failed"
    assert store.manifest(ft["run_id"])["error"]
    df = load_results(out)
    assert set(df.status) == {"done", "failed"} and df.loc[df.status == "done", "target_test_loss"].notna().all()
    n_events = len(store.events())
    worker_loop(out, threads=1)  # everything done or failed: nothing runs again
    assert len(store.events()) == n_events
    # --retry: the failure predates this invocation, so the run trains again (once)
    doc["runs"][1]["config"]["data"]["domains"]["generic"]["source"] = ref["config"]["data"]["domains"]["generic"][
        "source"
    ]
    (out / "sweep.json").write_text(json.dumps(doc))
    worker_loop(out, threads=1, retry_before=time.time())
    assert store.status(ft["run_id"]) == "done"
    assert (store.run_dir(ft["run_id"]) / "attempt_1" / "manifest.json").exists()
    assert [e["event"] for e in store.events() if e["run_id"] == ref["run_id"]] == ["start", "finish"]


def test_branched_runs_equal_the_same_runs_alone(write_exp, tmp_path):
    # Mid-training alpha = 1 at gamma = 1/8: stage 2 is 2 / 4 / 8 steps for rho = 0 / 0.5 / 0.75, so the
    # generic-only WSD stable phase is shared up to steps 14 / 12 / 8. The fine-tuning LR grid shares
    # its pre-training (the fine-tuning stage, with its optimizer reset, starts at the branch step), and
    # so does fine-tuning on a second target (its budget only matters from its first draw on).
    strategies = [
        {"strategy": "midtrain", "grid": {"rho": [0.0, 0.5, 0.75]}, "args": {"alpha": 1, "epochs": 1}},
        {"strategy": "finetune", "grid": {"multiplier": [2]}, "lrs": [1e-3, 3e-3], "args": {"epochs": 1}},
        {"strategy": "finetune", "grid": {"multiplier": [2]}, "args": {"epochs": 1, "target": "code2", "lr": 1e-3}},
    ]
    path = write_exp(strategies)
    raw = yaml.safe_load(path.read_text())
    domains = raw["base"]["data"]["domains"]
    domains["code2"] = {"source": domains["code"]["source"]}  # same text, another domain: other draws
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "shared"
    doc = prepare_sweep(path, out)
    children = [e for e in doc["runs"] if e["branch"]]
    assert sorted(e["branch"]["step"] for e in children) == [8, 12, 12, 12]
    # the code2 run and a code run share the pre-training: one branches off the other (which one carries
    # the prefix depends on run-id tie-breaks, i.e. on the store paths in the configs)
    target = {e["run_id"]: e["config"]["meta"]["target_domain"] for e in doc["runs"]}
    links = {(target[e["run_id"]], target[e["branch"]["parent"]]) for e in children}
    assert ("code2", "code") in links or ("code", "code2") in links
    worker_loop(out, threads=1)
    store = RunStore(out)
    starts = {e["run_id"]: e for e in store.events() if e["event"] == "start"}
    for child in children:
        assert starts[child["run_id"]]["init_from"].endswith(f"step_{child['branch']['step']:07d}")
    # the same runs, each trained alone from scratch (prefix sharing off)
    raw = yaml.safe_load(path.read_text())
    raw["shared_prefixes"] = False
    path.write_text(yaml.safe_dump(raw))
    alone_dir = tmp_path / "alone"
    doc2 = prepare_sweep(path, alone_dir)
    assert all(e["branch"] is None for e in doc2["runs"])
    alone = RunStore(alone_dir)
    train_losses = lambda d: [
        r["loss"]
        for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())  # noqa: E731
        if r["type"] == "train"
    ]
    for child in children:
        entry = next(e for e in doc2["runs"] if e["run_id"] == child["run_id"])
        assert execute_run(alone, entry) == "done"
        assert store.manifest(child["run_id"])["final"] == alone.manifest(child["run_id"])["final"]  # bit for bit
        assert train_losses(store.run_dir(child["run_id"])) == train_losses(alone.run_dir(child["run_id"]))


@pytest.mark.slow  # two fresh worker processes (each imports torch: ~5-15 s)
def test_two_workers_never_run_the_same_run(write_exp, tmp_path):
    path = write_exp([{"strategy": "finetune", "grid": {"multiplier": [1, 2, 4]}, "args": {"epochs": 2}}])
    out = tmp_path / "race"
    counts = run_sweep(path, out, workers=2, threads=1, progress=False)
    assert counts["done"] == 3 and counts["failed"] == 0
    starts = [e["run_id"] for e in RunStore(out).events() if e["event"] == "start"]
    assert sorted(starts) == sorted(set(starts)) and len(starts) == 3
    pids = {e["pid"] for e in RunStore(out).events() if e["event"] == "start"}
    assert len(pids) >= 1


@pytest.mark.slow  # a worker process killed mid-run, then a sweep with a fresh one
def test_killed_worker_run_is_taken_over_and_resumed(write_exp, tmp_path):
    path = write_exp([{"strategy": "reference", "args": {"epochs": 2}}], steps=120, checkpoint_every=10)
    out = tmp_path / "fault"
    doc = prepare_sweep(path, out)
    rid = doc["runs"][0]["run_id"]
    store = RunStore(out, lease_ttl=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "replaylab.sweep.local", str(out), "--lease-ttl", "2"], env=env)
    ckpts = store.run_dir(rid) / "checkpoints"
    deadline = time.time() + 60
    while time.time() < deadline and not (ckpts.is_dir() and len(list(ckpts.glob("step_*"))) >= 2):
        time.sleep(0.2)
    assert store.status(rid) == "running"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    counts = run_sweep(path, out, workers=1, threads=1, lease_ttl=2, progress=False)
    assert counts == {"done": 1, "running": 0, "failed": 0, "pending": 0}
    events = [e["event"] for e in store.events()]
    assert events.count("start") == 1 and "resume" in events and events[-1] == "finish"
    assert store.manifest(rid)["steps_done"] == 120


@pytest.mark.slow
def test_ray_backend_two_run_sweep(write_exp, tmp_path):
    ray = pytest.importorskip("ray")
    path = write_exp([{"strategy": "finetune", "grid": {"multiplier": [1, 2]}, "args": {"epochs": 2}}])
    out = tmp_path / "ray"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"REPLAYLAB_HOME": os.environ["REPLAYLAB_HOME"]}},
    )
    try:
        counts = run_sweep(path, out, backend="ray", threads=1)
    finally:
        ray.shutdown()
    assert counts["done"] == 2
    df = load_results(out)
    assert list(df.status) == ["done", "done"] and df.target_test_loss.notna().all()
