"""Replay fine-tuning of Hugging Face causal LMs, on a tiny random LlamaForCausalLM (real transformers
code) with a BPE tokenizer trained on real text: token-exact shares, fixed target exposure, full vs
LoRA, resume bit for bit, multiple-choice scoring, clear errors."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from hang import HANG_S
from hf_world import RANK_DEVICES, finetune_flags, make_config, read_losses, torchrun_two_ranks

from replaylab.errors import ConfigError, ReplaylabError
from replaylab.finetune_form import read_finetune
from replaylab.hf.packing import REPLAY, TARGET, open_stores, plan_mix, sampler_config
from replaylab.train.mixture import MixtureSampler

torch.set_num_threads(1)


@pytest.mark.parametrize("rho", [0.0, 0.25, 0.5, 0.75])
def test_fixed_target_exposure_stretches_the_run(rho):
    plan = plan_mix(budget=64, target_epochs=2, replay_fraction=rho, batch_size=8)
    assert plan.target_draws == 128 and plan.target_steps == 16
    assert plan.total_steps == math.ceil(16 / (1 - rho) - 1e-9)  # total steps = target steps / (1 - R)
    assert plan.target_weight * plan.total_steps * 8 == pytest.approx(128)  # exactly 2 epochs of target
    assert 0 <= (1 - rho) - plan.target_weight < 1 / plan.total_steps  # the share is 1 - R to within a batch


def test_token_exact_shares_and_exposure_on_real_stores(hf_world):
    from replaylab.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(hf_world["model"])
    for rho in (0.0, 0.3, 0.75):
        cfg = make_config(hf_world, replay_fraction=rho)
        stores = open_stores(cfg, tokenizer)
        plan = plan_mix(budget=12, target_epochs=2, replay_fraction=rho, batch_size=4)
        sampler = MixtureSampler(sampler_config(cfg, plan, str(tokenizer.path)), stores)
        drawn = {TARGET: 0, REPLAY: 0}
        for step in range(plan.total_steps):
            tokens, slots = sampler.batch(step)
            assert tokens.shape == (4, 33)  # packed: every sequence is seq_len + 1 tokens, no padding
            drawn[TARGET] += int((slots == 0).sum())
            drawn[REPLAY] += int((slots == 1).sum())
        assert drawn[TARGET] == plan.target_draws == 24  # exactly 2 epochs of 12, whatever R is
        share = drawn[REPLAY] * 32 / (plan.total_steps * 4 * 32)  # token share of replay
        assert abs(share - rho) <= 4 / (plan.total_steps * 4) + 1e-9  # within one batch of R
        assert sampler.realized_shares(0).get(REPLAY, 0.0) == pytest.approx(share)


def test_full_finetune_resume_is_bit_exact(hf_world, tmp_path):
    from replaylab.hf.finetune import run_finetune

    straight = run_finetune(make_config(hf_world), tmp_path / "a")
    assert straight["status"] == "done" and straight["plan"]["total_steps"] == 12  # 6 target steps / (1 - 0.5)
    assert straight["realized_token_shares"] == {TARGET: 0.5, REPLAY: 0.5}
    assert set(straight["final"]) == {TARGET, REPLAY}
    assert straight["final"][TARGET]["val_loss"] < straight["initial"]["losses"][TARGET]["val_loss"] - 0.2
    assert (tmp_path / "a" / "model" / "model.safetensors").exists()

    cfg = make_config(hf_world, checkpoint_every=5)
    run_finetune(cfg, tmp_path / "b")
    # Pretend the run died after step 5: drop the later checkpoint's successors and the result.
    b = tmp_path / "b"
    shutil.rmtree(b / "model")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["status"] = "running"
    (b / "manifest.json").write_text(json.dumps(manifest))
    assert [p.name for p in sorted((b / "checkpoints").iterdir())] == ["step_0000005", "step_0000010"]
    shutil.rmtree(b / "checkpoints" / "step_0000010")
    with pytest.raises(ConfigError, match="--resume"):
        run_finetune(cfg, b)
    resumed = run_finetune(cfg, b, resume=True)
    assert resumed["final"] == straight["final"]  # bit for bit
    assert read_losses(b) == read_losses(tmp_path / "a")


def test_lora_trains_only_adapters(hf_world, tmp_path):
    from safetensors.torch import load_file

    from replaylab.hf.finetune import run_finetune

    full = run_finetune(make_config(hf_world, replay_fraction=0.0), tmp_path / "full")
    lora = run_finetune(
        make_config(
            hf_world, replay_fraction=0.0, lora__enabled=True, lora__r=4, gradient_checkpointing=True, optim__lr=1e-2
        ),
        tmp_path / "lora",
    )
    assert full["plan"]["total_steps"] == lora["plan"]["total_steps"] == 6
    assert lora["trainable_params"] < full["trainable_params"] / 5
    adapter = load_file(str(tmp_path / "lora" / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert lora["final"][TARGET]["val_loss"] < lora["initial"]["losses"][TARGET]["val_loss"]
    assert lora["final"] != full["final"]


def test_multiple_choice_scoring_matches_direct_likelihoods(hf_world, tmp_path):
    from transformers import AutoModelForCausalLM

    from replaylab.data.tokenizer import load_tokenizer
    from replaylab.hf.evaluate import load_mc_task, score_mc

    tok = load_tokenizer(hf_world["model"])
    model = AutoModelForCausalLM.from_pretrained(hf_world["model"])
    items = []
    for i in range(6):
        context = f"def function_{i}(x):\n    return"
        choices = [" x + 1", " sorted(x)", " None", " 'text'"][: 2 + i % 3]
        scores = []
        for c in choices:  # summed log-prob of the choice, computed independently with HF's labels loss
            ctx, cont = tok.encode(context), tok.encode(c)
            ids = torch.tensor([ctx + cont])
            labels = ids.clone()
            labels[0, : len(ctx)] = -100
            with torch.no_grad():
                scores.append(-float(model(input_ids=ids, labels=labels).loss) * len(cont))
        items.append({"context": context, "choices": choices, "answer": int(np.argmax(scores))})
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps(it) + "\n" for it in items))
    res = score_mc(model, tok, load_mc_task(path), device=torch.device("cpu"), dtype=None)
    assert res == {"acc": 1.0, "acc_norm": res["acc_norm"], "n": 6}
    path.write_text('{"context": "x", "choices": ["a"], "answer": 0}\n')
    with pytest.raises(ReplaylabError, match="needs"):
        load_mc_task(path)


def test_cli_runs_and_reports_errors_on_one_line(hf_world, tmp_path, capsys):
    from replaylab.cli import main

    out = tmp_path / "cli"
    rc = main(["finetune", *finetune_flags(hf_world, replay_fraction=0.75, max_steps=3, lr=1e-3), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "realized token shares: target 0.2500, replay 0.7500" in text and "final" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["plan"]["capped"] and manifest["plan"]["planned_steps"] == 8 and manifest["steps_done"] == 3
    assert manifest["meta"]["rho"] == 0.75 and manifest["kind"] == "finetune_hf"

    assert (
        main(["finetune", "--model", hf_world["model"], "--replay-fraction", "1.0", "--out", str(tmp_path / "x")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "replay_fraction must lie in [0, 1), got 1.0" in err


def test_a_replay_fraction_whose_plan_explodes_is_refused_even_capped(hf_world, tmp_path, capsys):
    """R = 0.9999999 stretches 2 target steps to 20,000,001; --max-steps would cap the run but leave it no target.
    Shown as given (not rounded to 1), with the largest fraction that fits."""
    from replaylab.cli import main

    args = ["finetune", "--model", hf_world["model"], "--target", hf_world["code"], "--set", "target.options.glob=*.py"]
    args += ["--budget", "8", "--replay", hf_world["prose"], "--replay-fraction", "0.9999999", "--seq-len", "32"]
    args += ["--batch-size", "4", "--max-steps", "3", "--threads", "1", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "replay_fraction 0.9999999 stretches" in err and "20,000,001 steps" in err
    assert "give replay_fraction <= 0.99999" in err and not (tmp_path / "run" / "manifest.json").exists()


def test_unreachable_model_ids_fail_fast(monkeypatch, tmp_path):
    """Offline (HF_HUB_OFFLINE), an uncached hub id is refused with the one-line message without touching the
    network at all: no connection, no name lookup, so no retry or timeout to wait out (checked without a clock)."""
    import socket

    from replaylab.hf.models import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    tried: list[tuple] = []

    def refuse(*args, **kwargs):  # records the attempt, then fails the way an offline machine does
        tried.append(args)
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(*a))
    with pytest.raises(ConfigError, match="cannot be reached") as e:
        resolve_model("nobody-here/no-such-model")
    assert tried == []
    assert "\n" not in str(e.value) and "--model" in str(e.value)
    with pytest.raises(ConfigError, match="neither an existing folder"):
        resolve_model("./missing/model/folder")


@pytest.mark.slow
@pytest.mark.parametrize(("device", "pin", "tol"), RANK_DEVICES)
def test_torchrun_ddp_matches_one_process(device, pin, tol, hf_world, tmp_path):
    """Two ranks under torchrun (gloo on CPU, NCCL on two GPUs) train on halves of each global batch and
    average gradients: the run must match the single-process one up to float rounding."""
    from replaylab.config import dump_yaml
    from replaylab.hf.finetune import run_finetune

    cfg = make_config(hf_world, eval__initial=False, save_final=False, **pin)
    single = run_finetune(cfg, tmp_path / "one")
    (tmp_path / "cfg.yaml").write_text(dump_yaml(cfg))
    cli = ("-m", "replaylab.cli", "finetune")
    torchrun_two_ranks(*cli, "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "two"))
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert two["status"] == "done"
    for dom in (TARGET, REPLAY):
        assert two["final"][dom]["test_loss"] == pytest.approx(single["final"][dom]["test_loss"], abs=tol)


def test_fresh_lr_schedule_is_the_engines():
    """The fine-tuning AdamW's LR is the engine's schedule (train/lr.py) of the run's one stage."""
    from replaylab.train.lr import lr_schedule

    cfg = read_finetune({"optim": {"lr": 1e-3, "warmup": 0.25, "schedule": "cosine"}})
    plan = plan_mix(budget=8, target_epochs=1, replay_fraction=0.0, batch_size=1)
    lrs = list(lr_schedule(sampler_config(cfg, plan, "tok")))
    assert len(lrs) == 8 and lrs[:3] == [5e-4, 1e-3, 1e-3]  # 2 warmup steps, then the peak
    assert all(a > b > 0 for a, b in zip(lrs[2:], lrs[3:]))  # decays, never wastes a step at LR 0


def test_remote_code_stays_off_unless_asked(tmp_path):
    from replaylab.hf.models import load_model

    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {"model_type": "not-in-transformers", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}}
        )
    )
    (folder / "configuration_custom.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ConfigError, match="--trust-remote-code"):
        load_model(str(folder))


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_matches_straight_run(hf_world, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from replaylab.config import dump_yaml
    from replaylab.hf.finetune import run_finetune

    cfg = make_config(hf_world, replay_fraction=0.75, eval__initial=False, save_final=False)  # 24 steps
    straight = run_finetune(cfg, tmp_path / "straight")
    (tmp_path / "cfg.yaml").write_text(dump_yaml(cfg))
    cmd = [
        sys.executable,
        "-m",
        "replaylab.cli",
        "finetune",
        "--config",
        str(tmp_path / "cfg.yaml"),
        "--out",
        str(tmp_path / "run"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    hang_guard = time.monotonic() + HANG_S  # not a measure: only stops a hung test (a loaded machine takes minutes)
    while not (metrics.exists() and '"train"' in metrics.read_text()):
        assert proc.poll() is None and time.monotonic() < hang_guard, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=HANG_S)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived (machine too fast for this check)")
    assert proc.returncode == 143 and "--resume" in err
    assert (tmp_path / "run" / "checkpoints").is_dir()
    assert subprocess.run(cmd + ["--resume"], env=env, timeout=HANG_S).returncode == 0
    resumed = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert resumed["final"] == straight["final"]
    assert read_losses(tmp_path / "run") == read_losses(tmp_path / "straight")


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"replay_fraction": 1.0}, "replay_fraction must lie in [0, 1), got 1.0"),
        ({"replay": None, "replay_fraction": 0.5}, "no replay pool is set"),
        ({"batch_size": 6, "micro_batch_size": 4}, "batch_size (6) must be a multiple of micro_batch_size (4)"),
        ({"lora": {"r": 0}}, "lora.r must be >= 1, got 0"),
        ({"eval": {"max_sequences": 1}}, "eval.max_sequences must be >= 2"),
        ({"optim": {"schedule": "wsd"}}, "optim.schedule 'wsd' is unknown"),
    ],
)
def test_config_mistakes_name_the_value_and_the_fix(raw, message):
    with pytest.raises(ConfigError) as e:
        read_finetune(raw)
    assert message in str(e.value)


def test_divergence_stops_before_the_bad_step_like_the_engine(hf_world, tmp_path):
    """The one Trainer's divergence rule holds for Hugging Face runs too: status diverged (not failed), a
    message naming the setting to lower, and the step with a non-finite gradient norm is not applied."""
    from replaylab.hf.finetune import run_finetune

    cfg = make_config(
        hf_world,
        optim__lr=1e12,
        optim__grad_clip=0.0,
        optim__warmup=0.0,
        eval__initial=False,
        save_final=False,
        log_every=1,
    )
    manifest = run_finetune(cfg, tmp_path / "div")
    assert manifest["status"] == "diverged" and "optim.lr" in manifest["error"]
    assert manifest["steps_done"] < manifest["plan"]["total_steps"]
    last = [json.loads(line) for line in (tmp_path / "div" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["type"] == "train" and last["step"] == manifest["steps_done"] + 1 and last["tok_per_s"] is None
