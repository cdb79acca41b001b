"""The training engine on real tiny runs: run folder, stages, optimizer reset, divergence, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import yaml
from hang import HANG_S
from run_configs import tiny_raw
from safetensors.torch import load_file

from replaylab.config import from_dict
from replaylab.errors import ConfigError, ReplaylabError
from replaylab.runconfig import RunConfig
from replaylab.train import run_training


@pytest.fixture
def raw(prose_store, code_store, tiny_tokenizer, isolated_home):
    return tiny_raw(prose_store, code_store, tiny_tokenizer)


def records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_run_folder_contents(raw, tmp_path, tiny_tokenizer):
    raw["logging"]["tensorboard"] = True
    raw["eval"]["every"] = 6
    out = tmp_path / "run"
    manifest = run_training(from_dict(RunConfig, raw), out)

    assert manifest["status"] == "done" and manifest["steps_done"] == 12 and manifest["error"] is None
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    for key in (
        "config_hash",
        "name",
        "seed",
        "store_identities",
        "tokenizer_hash",
        "versions",
        "git_commit",
        "host",
        "started",
        "finished",
        "meta",
        "final",
    ):
        assert key in on_disk, key
    assert set(on_disk["store_identities"]) == {"generic", "code"}
    assert on_disk["versions"]["torch"] == torch.__version__.split("+")[0] or on_disk["versions"]["torch"]
    for dom, r in manifest["final"].items():
        assert set(r) == {"val_loss", "test_loss", "val_bpb", "test_bpb"}
        assert 0 < r["val_loss"] < 10 and r["val_bpb"] < r["val_loss"]  # > 1 byte per token
        assert r["val_loss"] != r["test_loss"]  # two different halves

    saved = yaml.safe_load((out / "config.yaml").read_text())
    from replaylab.data.tokenizer import get_tokenizer

    assert saved["model"]["vocab_size"] == get_tokenizer(tiny_tokenizer).vocab_size
    assert saved["model"]["max_seq_len"] == 32

    train = records(out, "train")
    assert [r["step"] for r in train] == list(range(1, 13))
    assert all(set(r) == {"type", "step", "loss", "lr", "tokens", "tok_per_s", "grad_norm"} for r in train)
    assert all(r["grad_norm"] > 0 for r in train)
    assert train[-1]["tokens"] == 12 * 4 * 32
    evals = records(out, "eval")
    assert sorted({(r["step"], r["stage"]) for r in evals}) == [(6, "pretrain"), (8, "pretrain"), (12, "finetune")]
    data = records(out, "data")
    code_end = [r for r in data if r["domain"] == "code" and r["step"] == 12][0]
    assert code_end["tokens_seen"] == 8 * 32 and code_end["epochs"] == 1.0  # 4 steps x 2 code seqs = budget 8
    assert [r for r in data if r["domain"] == "code" and r["step"] == 8][0]["tokens_seen"] == 0

    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_0000008", "step_0000012"]  # stage ends
    state = json.loads((out / "checkpoints/step_0000012/state.json").read_text())
    assert state["step"] == 12 and state["stage"] == 1 and state["kind"] == "stage_end"
    assert isinstance(state["rng"]["torch"], list)
    assert "lm_head.weight" in load_file(out / "checkpoints/step_0000012/model.safetensors")
    assert any((out / "tb").iterdir())


def test_same_config_same_result_and_optimizer_reset(raw, tmp_path):
    a = run_training(from_dict(RunConfig, raw), tmp_path / "a")
    b = run_training(from_dict(RunConfig, raw), tmp_path / "b")
    assert a["final"] == b["final"]  # bit for bit
    assert records(tmp_path / "a", "train") != [] and [r["loss"] for r in records(tmp_path / "a", "train")] == [
        r["loss"] for r in records(tmp_path / "b", "train")
    ]

    # Reset: the optimizer's step count restarts at the fine-tuning stage; carry keeps counting.
    def adam_steps(run):
        t = load_file(run / "checkpoints/step_0000012/optim.safetensors")
        return {float(v) for k, v in t.items() if k.endswith(".step")}

    assert adam_steps(tmp_path / "a") == {4.0}
    raw["stages"][1]["optimizer"] = "carry"
    run_training(from_dict(RunConfig, raw), tmp_path / "carry")
    assert adam_steps(tmp_path / "carry") == {12.0}
    # With reset, the moments after the first fine-tuning step hold only that step's gradient:
    # exp_avg = (1 - beta1) * g, exp_avg_sq = (1 - beta2) * g^2, so exp_avg^2 / exp_avg_sq is constant.
    raw["stages"][1].update(optimizer="reset", steps=1)
    raw["train"]["total_steps"] = 9
    raw["data"]["domains"]["code"].pop("epochs")
    run_training(from_dict(RunConfig, raw), tmp_path / "one")
    t = load_file(tmp_path / "one/checkpoints/step_0000009/optim.safetensors")
    m, v = t["0.exp_avg"], t["0.exp_avg_sq"]
    nz = v > 0
    ratio = m[nz] ** 2 / v[nz]
    assert torch.allclose(ratio, torch.full_like(ratio, 0.1**2 / 0.05), rtol=1e-4)


def test_diverged_run_is_recorded(raw, tmp_path):
    raw["stages"][0]["lr"] = {"schedule": "constant", "peak": 1e6, "warmup": 0.0}
    raw["optim"] = {"grad_clip": 0.0}
    manifest = run_training(from_dict(RunConfig, raw), tmp_path / "div")
    assert manifest["status"] == "diverged"
    assert "diverged" in manifest["error"] and "lr.peak" in manifest["error"]
    assert json.loads((tmp_path / "div/manifest.json").read_text())["status"] == "diverged"
    last = records(tmp_path / "div", "train")[-1]
    # the step that was not applied: its gradient norm is not finite (JSON writes that as null)
    assert last["tok_per_s"] is None and (last["grad_norm"] is None or not math.isfinite(last["grad_norm"]))


def test_existing_run_dir_rules(raw, tmp_path):
    out = tmp_path / "run"
    first = run_training(from_dict(RunConfig, raw), out)
    assert run_training(from_dict(RunConfig, raw), out) == first  # same finished run: nothing to do
    raw["train"].update(log_every=1, checkpoint_steps=[1])  # bookkeeping only: still the same run
    assert run_training(from_dict(RunConfig, raw), out, resume=True)["final"] == first["final"]
    raw["seed"] = 4
    with pytest.raises(ConfigError, match="different run.*--out"):
        run_training(from_dict(RunConfig, raw), out)


def test_cli_end_to_end_with_overrides(raw, tmp_path, isolated_home):
    """The real command in a subprocess: `replaylab train CONFIG --out DIR KEY=VALUE ...`."""
    import os

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "REPLAYLAB_HOME": str(isolated_home)}
    out = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "replaylab.cli",
            "train",
            str(cfg),
            "--out",
            str(out),
            "stages.1.lr.peak=5e-4",
            "seed=7",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_S,
    )
    assert r.returncode == 0, r.stderr
    assert "done, 12 steps" in r.stdout
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["stages"][1]["lr"]["peak"] == 5e-4 and saved["seed"] == 7
    assert json.loads((out / "manifest.json").read_text())["status"] == "done"


def test_cli_errors_exit_2(raw, tmp_path, capsys):
    from replaylab.cli import main

    def cli(*args):
        code = main(["train", *args])
        return code, capsys.readouterr().err

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "run"
    assert cli(str(cfg), "--out", str(out), "seed=7")[0] == 0
    code, err = cli(str(cfg), "--out", str(out))  # a different run (seed 3) in the same folder
    assert code == 2 and "different run" in err and "--resume" in err
    assert len(err.strip().splitlines()) == 1
    code, err = cli(str(cfg), "--out", str(out), "seed=7")  # the same finished run: nothing to do
    assert code == 0
    code, err = cli(str(cfg), "--out", str(tmp_path / "x"), "train.batch_size=3")
    assert code == 2 and "micro_batch_size" in err
    code, err = cli(str(cfg), "--out", str(tmp_path / "x"), "optim.nope=1")
    assert code == 2 and "optim.nope" in err
    code, err = cli(str(tmp_path / "missing.yaml"))
    assert code == 2 and "does not exist" in err
    code, err = cli("--resume", str(tmp_path))
    assert code == 2 and "not a run folder" in err
    code, err = cli(
        str(cfg),
        "--out",
        str(tmp_path / "y"),
        "stages.0.lr.peak=1e6",
        "stages.0.lr.schedule=constant",
        "stages.0.lr.warmup=0",
        "optim.grad_clip=0",
    )
    assert code == 1 and "diverged" in err
    assert json.loads((tmp_path / "y/manifest.json").read_text())["status"] == "diverged"


def test_stage_init_from_checkpoint_and_hf(raw, tmp_path, tiny_tokenizer):
    """init checkpoint:PATH / hf:PATH load the weights: one step at LR 0 keeps them, so the losses match."""
    from replaylab.hf_convert import export_hf

    first = run_training(from_dict(RunConfig, raw), tmp_path / "first")
    frozen = json.loads(json.dumps(raw))
    frozen["stages"] = [
        {
            "name": "hold",
            "steps": 1,
            "mixture": {"generic": 1.0},
            "init": f"checkpoint:{tmp_path / 'first'}",
            "lr": {"schedule": "constant", "peak": 0.0, "warmup": 0.0},
        }
    ]
    frozen["train"]["total_steps"] = 1
    frozen["data"]["domains"]["code"].pop("epochs")
    held = run_training(from_dict(RunConfig, frozen), tmp_path / "held")
    assert held["final"] == first["final"]

    config = from_dict(RunConfig, yaml.safe_load((tmp_path / "first/config.yaml").read_text()))
    weights = load_file(tmp_path / "first/checkpoints/step_0000012/model.safetensors")
    export_hf(weights, config.model, None, tmp_path / "hf")
    frozen["stages"][0]["init"] = f"hf:{tmp_path / 'hf'}"
    frozen["model"] = {"d_model": 8, "n_layers": 1, "n_heads": 2, "d_ff": 8}  # the HF checkpoint's shape wins
    via_hf = run_training(from_dict(RunConfig, frozen), tmp_path / "via_hf")
    for dom, r in first["final"].items():
        assert via_hf["final"][dom]["test_loss"] == pytest.approx(r["test_loss"], abs=1e-5)
    assert yaml.safe_load((tmp_path / "via_hf/config.yaml").read_text())["model"]["d_model"] == 32

    frozen["stages"][0]["init"] = f"checkpoint:{tmp_path / 'nowhere'}"
    with pytest.raises(ReplaylabError, match="nowhere.*neither a checkpoint"):
        run_training(from_dict(RunConfig, frozen), tmp_path / "bad")


# The tiny two-stage run's numbers, recorded from the engine before the one-Trainer refactor (680aaf4) and
# equal bit for bit after it on the machine that recorded them (2-vCPU AMD EPYC, torch 2.13 CPU, fp32).
# Another CPU's kernels may round the last bits differently, hence the tolerance: what this pins is the
# arithmetic (batches, LR schedule, loss, optimizer reset), which any real change moves far more.
PINNED_FINAL = {"generic": 6.19519567489624, "code": 6.145096778869629}
PINNED_TRAIN = [
    6.219804525375366,
    6.234743118286133,
    6.210691452026367,
    6.1982741355896,
    6.15435004234314,
    6.217055320739746,
    6.107212543487549,
    6.122143983840942,
    6.1202404499053955,
    6.134339332580566,
    6.016338586807251,
    6.113072395324707,
]


def test_engine_numbers_are_pinned(raw, tmp_path):
    manifest = run_training(from_dict(RunConfig, raw), tmp_path / "pinned")
    assert {d: r["test_loss"] for d, r in manifest["final"].items()} == pytest.approx(PINNED_FINAL, rel=1e-5)
    assert [r["loss"] for r in records(tmp_path / "pinned", "train")] == pytest.approx(PINNED_TRAIN, rel=1e-5)
