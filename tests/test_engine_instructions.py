"""The engine trains instruction data: a run whose fine-tuning target is prompt/completion records (the store's
format chosen in the run description's domain options, as in an experiment YAML) trains on completion tokens only,
whole examples per row under the document mask, each source weighted by its mixture share per step; it logs the
realized shares, evaluates completions only, and resumes bit-identically."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from run_configs import tiny_raw

from replaylab.config import from_dict
from replaylab.runconfig import RunConfig
from replaylab.train import run_training

torch.set_num_threads(1)


@pytest.fixture
def raw(prose_store, code_store, pc_corpus, tiny_tokenizer, isolated_home):
    raw = tiny_raw(prose_store, code_store, tiny_tokenizer)
    raw["data"]["seq_len"] = 64
    raw["data"]["domains"]["code"] = {
        "source": str(pc_corpus),
        "options": {"format": "prompt_completion", "val_docs": 8},
        "budget": 8,
        "epochs": 1.0,
    }
    raw["model"]["max_seq_len"] = 64
    return raw


def lines(run, kind):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_engine_trains_an_instruction_target_and_resumes_bit_identically(raw, tmp_path):
    full = tmp_path / "full"
    manifest = run_training(from_dict(RunConfig, raw), full)
    assert manifest["status"] == "done"
    shares = lines(full, "shares")
    # the fine-tuning stage mixes 0.5 / 0.5: each source's loss weight is exactly 0.5 every step, whatever its
    # share of the loss tokens
    ft = [s for s in shares if s["step"] > 8]
    assert len(ft) == 4
    for s in ft:
        assert s["code_loss_weight"] == pytest.approx(0.5) and s["generic_loss_weight"] == pytest.approx(0.5)
        assert s["code_loss_tokens"] != pytest.approx(0.5)
    assert all(s["generic_loss_weight"] == 1.0 for s in shares if s["step"] <= 8)
    data = manifest["instruction_data"]
    assert data["code"]["loss"] == "prompt_completion: loss on completion tokens only"
    assert data["generic"]["loss"] == "text: loss on every token"
    assert data["code"]["examples"] == 71 and data["code"]["truncated_examples"] > 0  # at seq_len 64 many are cut
    final = manifest["final"]["code"]
    assert 0 < final["val_loss"] < 10

    # killed after its step-10 checkpoint: the run folder as it was then, resumed: the same losses bit for bit
    raw["train"]["checkpoint_every"] = 10
    cfg = from_dict(RunConfig, raw)
    ref = tmp_path / "ref"
    run_training(cfg, ref)
    losses = [r["loss"] for r in lines(ref, "train")]
    assert losses == [r["loss"] for r in lines(full, "train")]  # checkpoints change nothing
    killed = tmp_path / "killed"
    shutil.copytree(ref, killed)
    for c in (killed / "checkpoints").iterdir():
        if int("".join(ch for ch in c.name if ch.isdigit()) or 0) > 10:
            shutil.rmtree(c)
    kept = [ln for ln in (killed / "metrics.jsonl").read_text().splitlines() if json.loads(ln).get("step", 0) <= 10]
    (killed / "metrics.jsonl").write_text("".join(ln + "\n" for ln in kept))
    manifest = json.loads((killed / "manifest.json").read_text())
    manifest.update(status="running", finished=None, final={}, steps_done=10)
    (killed / "manifest.json").write_text(json.dumps(manifest))
    run_training(cfg, killed, resume=True)
    assert [r["loss"] for r in lines(killed, "train")] == losses
    assert lines(killed, "shares") == lines(ref, "shares")


def test_finetune_of_a_hf_model_on_instruction_records(tmp_path, hf_world):
    """`replaylab finetune --target-format prompt_completion`: a tiny random Llama, replay weighted exactly R per
    step, completion-only held-out loss, the shares logged."""
    from instruction_fixtures import write_prompt_completion

    from replaylab.commands.finetune import add_arguments, build_config
    from replaylab.hf.finetune import run_finetune

    world = hf_world
    pc = write_prompt_completion(tmp_path / "topics.jsonl")
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--model",
            world["model"],
            "--target",
            str(pc),
            "--target-format",
            "prompt_completion",
            "--replay",
            world["prose"],
            "--replay-fraction",
            "0.25",
            "--seq-len",
            "64",
            "--batch-size",
            "4",
            "--budget",
            "6",
            "--epochs",
            "1",
            "--threads",
            "1",
            "eval.max_sequences=8",
            "log_every=1",
            "progress=off",
            "target.options.val_docs=8",
        ]
    )
    cfg = build_config(args)
    manifest = run_finetune(cfg, tmp_path / "run")
    assert manifest["status"] == "done"
    shares = lines(tmp_path / "run", "shares")
    assert shares and all(s["replay_loss_weight"] == pytest.approx(0.25) or s["replay_rows"] == 0 for s in shares)
    assert any(s["replay_rows"] > 0 for s in shares)
    assert 0 < manifest["final"]["target"]["test_loss"] < 20


@pytest.mark.slow  # two torchrun processes: ~30-60 s on 2 shared cores
def test_two_processes_match_one_on_instruction_data(raw, tmp_path, isolated_home):
    """torchrun --nproc_per_node 2 (gloo, CPU) on an instruction target gives the one-process losses: the per-token
    weights are global (each rank's loss is its part of one step objective, its backward scaled by the world size
    because gradients are averaged)."""
    import os

    import yaml
    from test_ddp import _torchrun

    raw["train"].update(batch_size=8, micro_batch_size=2)
    raw["data"]["domains"]["code"]["epochs"] = 2.0
    single = run_training(from_dict(RunConfig, raw), tmp_path / "single")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "REPLAYLAB_HOME": str(isolated_home), "OMP_NUM_THREADS": "1"}
    r = _torchrun(2, "train", str(cfg), "--out", str(tmp_path / "ddp"), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [x["loss"] for x in lines(tmp_path / "ddp", "train")]
    assert losses == pytest.approx([x["loss"] for x in lines(tmp_path / "single", "train")], rel=1e-4)
    manifest = json.loads((tmp_path / "ddp/manifest.json").read_text())
    assert manifest["final"]["code"]["val_loss"] == pytest.approx(single["final"]["code"]["val_loss"], rel=1e-4)
    assert lines(tmp_path / "ddp", "shares") == lines(tmp_path / "single", "shares")


def test_padded_packing_trains_one_example_per_row(raw, tmp_path):
    """`data.packing: padded`: one example per row (the switch for those who want no packing); the default
    (documents) packs several per row and stays out of the run id, so runs recorded before the switch keep theirs."""
    from replaylab import fingerprint

    raw["data"]["seq_len"] = raw["model"]["max_seq_len"] = 256  # rows that fit several of these examples
    packed_id = fingerprint.run_id(from_dict(RunConfig, raw))
    raw["data"]["packing"] = "padded"
    cfg = from_dict(RunConfig, raw)
    assert fingerprint.run_id(cfg) != packed_id
    del raw["data"]["packing"]
    assert fingerprint.run_id(from_dict(RunConfig, raw)) == packed_id
    manifest = run_training(cfg, tmp_path / "padded")
    assert manifest["status"] == "done"
    code = manifest["instruction_data"]["code"]
    assert code["packing"] == "padded" and code["rows"] == code["examples"]
    packed = run_training(from_dict(RunConfig, raw), tmp_path / "packed")["instruction_data"]["code"]
    assert packed["packing"] == "documents" and packed["rows"] < packed["examples"] == code["examples"]


def test_unknown_packing_is_refused(raw):
    from replaylab.errors import ConfigError

    raw["data"]["packing"] = "stream"
    with pytest.raises(ConfigError, match="documents"):
        from_dict(RunConfig, raw)


def test_the_fine_tuning_form_names_packing():
    """`replaylab finetune --set packing=padded` (the flat fine-tuning form) reaches the run description."""
    from replaylab.finetune_form import read_finetune

    raw = {"model": "some/model", "target": {"source": "instructions"}, "replay": {"source": "generic"}}
    assert read_finetune(raw).data.packing == "documents"
    assert read_finetune({**raw, "packing": "padded"}).data.packing == "padded"
