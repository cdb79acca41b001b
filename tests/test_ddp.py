"""Data parallelism: `torchrun --nproc_per_node 2` (gloo, CPU) matches one process with the same
global batch to within float tolerance (the all-reduce sums in another order), and only rank 0
writes the run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from replaylab.config import from_dict
from replaylab.runconfig import RunConfig
from replaylab.train import run_training


def ddp_raw(prose_store, code_store, tokenizer) -> dict:
    return {
        "name": "ddp-test",
        "seed": 5,
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
        "data": {"tokenizer": tokenizer, "seq_len": 32,
                 "domains": {"generic": {"source": str(prose_store.path)},
                             "code": {"source": str(code_store.path), "budget": 8}}},
        "stages": [
            {"name": "pretrain", "steps": 6, "mixture": {"generic": 1.0}},
            {"name": "finetune", "steps": 4, "mixture": {"code": 0.5, "generic": 0.5}, "optimizer": "reset",
             "lr": {"peak": 1e-3}},
        ],
        "train": {"total_steps": 10, "batch_size": 8, "micro_batch_size": 2, "precision": "fp32",
                  "compile": "off", "threads": 1, "log_every": 1, "progress": "off"},
        "eval": {"max_sequences": 8, "batch_size": 8},
        "logging": {"tensorboard": False},
    }


@pytest.mark.slow  # two torchrun processes: ~15-35 s on 2 cores
def test_two_processes_match_one(prose_store, code_store, tiny_tokenizer, tmp_path, isolated_home):
    raw = ddp_raw(prose_store, code_store, tiny_tokenizer)
    single = run_training(from_dict(RunConfig, raw), tmp_path / "single")

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "REPLAYLAB_HOME": str(isolated_home), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "replaylab.cli", "train",
                        str(cfg), "--out", str(tmp_path / "ddp")], env=env, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((tmp_path / "ddp/manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["world_size"] == 2
    for dom, ref in single["final"].items():
        for key, value in ref.items():
            assert manifest["final"][dom][key] == pytest.approx(value, rel=1e-4, abs=1e-5), (dom, key)

    def losses(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]

    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), rel=1e-4)
    assert len(losses(tmp_path / "ddp")) == 10  # rank 1 wrote nothing to the shared folder
