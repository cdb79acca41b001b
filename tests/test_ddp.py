"""Data parallelism: `torchrun --nproc_per_node 2` matches one process with the same global batch to
within float tolerance (the all-reduce sums in another order), and only rank 0 writes the run folder.
The gloo/CPU variant pins `train.device: cpu`, so it runs (and stays on CPU) on any machine, one GPU
included; the NCCL/CUDA variant needs two visible GPUs. More ranks than GPUs on CUDA is a one-line
error on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from hang import HANG_S

from replaylab.config import from_dict
from replaylab.errors import ConfigError
from replaylab.runconfig import RunConfig
from replaylab.train import ddp, run_training

TWO_GPUS = pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="NCCL variant: needs 2 visible CUDA GPUs, one per torchrun rank"
)
# (device, relative tolerance of the 2-rank run against the 1-process one)
DEVICES = [
    pytest.param("cpu", 1e-4, id="cpu-gloo"),
    pytest.param("cuda", 1e-3, id="cuda-nccl", marks=TWO_GPUS),
]  # looser: TF32 matmuls on CUDA


def ddp_raw(prose_store, code_store, tokenizer, device: str = "cpu") -> dict:
    return {
        "name": "ddp-test",
        "seed": 5,
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
        "data": {
            "tokenizer": tokenizer,
            "seq_len": 32,
            "domains": {
                "generic": {"source": str(prose_store.path)},
                "code": {"source": str(code_store.path), "budget": 8},
            },
        },
        "stages": [
            {"name": "pretrain", "steps": 6, "mixture": {"generic": 1.0}},
            {
                "name": "finetune",
                "steps": 4,
                "mixture": {"code": 0.5, "generic": 0.5},
                "optimizer": "reset",
                "lr": {"peak": 1e-3},
            },
        ],
        "train": {
            "total_steps": 10,
            "batch_size": 8,
            "micro_batch_size": 2,
            "precision": "fp32",
            "compile": "off",
            "threads": 1,
            "log_every": 1,
            "progress": "off",
            "device": device,
        },
        "eval": {"max_sequences": 8, "batch_size": 8},
        "logging": {"tensorboard": False},
    }


def _torchrun(nproc: int, *args: str, env: dict) -> subprocess.CompletedProcess:
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", str(nproc), "-m", "replaylab.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )


@pytest.mark.slow  # two torchrun processes: ~15-35 s on 2 cores
@pytest.mark.parametrize(("device", "rel"), DEVICES)
def test_two_processes_match_one(device, rel, prose_store, code_store, tiny_tokenizer, tmp_path, isolated_home):
    raw = ddp_raw(prose_store, code_store, tiny_tokenizer, device)
    single = run_training(from_dict(RunConfig, raw), tmp_path / "single")

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "REPLAYLAB_HOME": str(isolated_home), "OMP_NUM_THREADS": "1"}
    r = _torchrun(2, "train", str(cfg), "--out", str(tmp_path / "ddp"), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((tmp_path / "ddp/manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["world_size"] == 2
    for dom, ref in single["final"].items():
        for key, value in ref.items():
            assert manifest["final"][dom][key] == pytest.approx(value, rel=rel, abs=1e-5), (dom, key)

    def losses(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]

    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), rel=rel)
    assert len(losses(tmp_path / "ddp")) == 10  # rank 1 wrote nothing to the shared folder


def test_more_ranks_than_gpus_is_refused_with_both_numbers():
    for ranks, gpus in ((1, 1), (2, 2), (2, 8)):
        ddp.check_gpu_count(local_world_size=ranks, num_visible_gpus=gpus)
    for ranks, gpus in ((2, 1), (8, 1), (3, 2), (1, 0)):
        with pytest.raises(ConfigError) as e:
            ddp.check_gpu_count(local_world_size=ranks, num_visible_gpus=gpus)
        msg = str(e.value)
        assert "\n" not in msg
        assert f"torchrun started {ranks} processes" in msg and f"only {gpus} CUDA GPU(s) are visible" in msg
        assert f"--nproc_per_node {gpus} or fewer" in msg and "train.device=cpu" in msg and "--set device=cpu" in msg


def test_setup_checks_the_gpu_count_before_joining(monkeypatch):
    """The environment torchrun gives rank 0 of one GPU more ranks than this machine has: setup refuses
    before set_device and init_process_group (it would otherwise wait for the other ranks)."""
    import torch.distributed as dist

    ranks = max(2, torch.cuda.device_count() + 1)
    env = {"WORLD_SIZE": str(ranks), "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": str(ranks)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=f"torchrun started {ranks} processes"):
        ddp.setup("cuda")
    assert not dist.is_initialized()


@pytest.mark.slow  # one torchrun process per GPU plus one: ~10 s each to import torch
@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU; without one train.device=cuda is refused earlier (no GPU visible)",
)
def test_torchrun_with_more_ranks_than_gpus_exits_2_on_every_rank(
    prose_store, code_store, tiny_tokenizer, tmp_path, isolated_home
):
    ranks = torch.cuda.device_count() + 1
    raw = ddp_raw(prose_store, code_store, tiny_tokenizer, "cuda")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "REPLAYLAB_HOME": str(isolated_home), "OMP_NUM_THREADS": "1"}
    r = _torchrun(ranks, "train", str(cfg), "--out", str(tmp_path / "run"), env=env)
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("replaylab train: error: ")]
    assert len(errors) >= 1 and all(f"torchrun started {ranks} processes" in line for line in errors), r.stderr[-3000:]
    assert not (tmp_path / "run").exists()  # refused before any work
