"""One run description (issue 21): a Hugging Face fine-tuning run is a RunConfig (model.kind: hf, a `finetune`
plan), read from the fine-tuning form at the CLI/YAML boundary, and its run ids are the ones the fine-tuning
form had: recorded from the code before the change, for a table of `replaylab finetune` flags and for every
run of the shipped experiment configs/finetune_hf_sweep.yaml."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from replaylab.config import dump_yaml, from_dict, load_config, to_dict
from replaylab.errors import ConfigError
from replaylab.fingerprint import lr_cell, run_id, run_identity
from replaylab.runconfig import RunConfig

REPO = Path(__file__).resolve().parents[1]

# (flags, run_id, run_identity, lr_cell), computed by the fine-tuning config class before it became a reader.
OLD_IDS = [
    ([], "57f4869833f3105a", "7a3b59a215870fec", "b69940106435"),
    (["-R", "0.5"], "cb4148be304aea9c", "3ebbcf12786fc83b", "942859488d69"),
    (["--model", "some/hub-id", "--trust-remote-code"], "3cf1cef5bbed3ddf", "fcc8654d1294617b", "cfc648d3a581"),
    (["--target", "code", "--budget", "16"], "28518addd40181ea", "787b325e8f0ee0a7", "19e6c4a27a20"),
    (["--replay", "none"], "6d63d543522a659c", "7c6e5e05ad137287", "7aecaefe5bae"),
    (["--replay", "math", "-R", "0.25", "--epochs", "3"], "eca0338e0003513c", "95766ee768fe7fa3", "44818419328a"),
    (["--max-steps", "5", "--lr", "1e-3"], "ef63308c35833b73", "c51be133005e21d5", "6f67231b51fe"),
    (
        ["--seq-len", "128", "--batch-size", "16", "--micro-batch-size", "4"],
        "3c3ab25b0a8d270d",
        "1a8bb025914aefb8",
        "d15958be032d",
    ),
    (["--lora"], "e2e5030e2f15a9ba", "0b69f8b136dcc3b8", "4e8d0e760775"),
    (["--lora-r", "4", "-R", "0.75"], "b60abba2b063f101", "359f4fbf7cb27eb0", "7e1ae356b53a"),
    (["--gradient-checkpointing", "--precision", "bf16"], "99a3974f8c8ef519", "07b94b77b5b1415a", "e5ceb317b007"),
    (["--compile", "regional"], "328c1f8fbcaa60d4", "a0e307d4952e7ed7", "5d2e6a4d88b6"),
    (["--compile", "off"], "6c8644eebb55cf5a", "0fe86e261f602d21", "6a2114c79e4f"),
    (["--no-deterministic"], "12b4a28c567e3bbd", "a5199e53fd45c146", "60ae378d9ca9"),
    (["--deterministic"], "57f4869833f3105a", "7a3b59a215870fec", "b69940106435"),
    (["--fsdp"], "e2bf046337724be2", "5d14e8b75fe7443f", "c18b40a444c4"),
    (["--mc-task", "a.jsonl", "--mc-task", "b.jsonl"], "8384d4af643a4ab3", "c5f6ba063bd4c5dd", "674717026604"),
    (
        ["--lm-eval-task", "replaylab_basque_vocab", "--lm-eval-include", "tasks/"],
        "3848d75bf6bdd311",
        "592bc64435d9c994",
        "fc29d9b81f66",
    ),
    (["--seed", "3", "--threads", "2"], "ba1458b750a41e64", "84f35bdef9b53cce", "4c1396ab6c13"),
    (
        ["optim.warmup=0.05", "optim.schedule=linear", "optim.final_lr=1e-5"],
        "d97db8c2b36f5eab",
        "6021264aa889ed07",
        "ed0d3f39936c",
    ),
    (
        ["optim.betas=[0.9, 0.99]", "optim.eps=1e-6", "optim.weight_decay=0", "optim.grad_clip=0.5"],
        "b6ffc3206cfa6e36",
        "5fa44248e78c67ce",
        "e56c8e256660",
    ),
    (
        ["eval.every=4", "eval.max_sequences=16", "eval.batch_size=2", "eval.initial=false", "eval.mc_max_items=10"],
        "22a661c71b8bbc02",
        "41540d9a4c0a1b61",
        "056797ba3534",
    ),
    (
        ["checkpoint_every=2", "keep_checkpoints=3", "log_every=1", "progress=off"],
        "916a0db517fde022",
        "7a3b59a215870fec",
        "b69940106435",
    ),
    (
        ["save_final=false", "logging.tensorboard=true", "logging.wandb=true", "name=myrun", "device=cpu"],
        "360748b05c84643a",
        "dd1a0076f3d430ec",
        "2d89447e88e4",
    ),
    (
        [
            "--target",
            "basque",
            "meta={note: x}",
            "target.options={glob: '*.py'}",
            "--replay",
            "generic",
            "replay.budget=100",
            "lora.alpha=8",
            "lora.dropout=0.1",
        ],
        "c18283634dc0c9f5",
        "f05b4d0d39573674",
        "a217bbc8f988",
    ),
    (
        ["lora.target_modules=[q_proj, v_proj]", "lora.enabled=true"],
        "2cd19c7f0a8c529f",
        "6e493d103c9653d3",
        "cd94372c4933",
    ),
]
# (run_id, meta.lr_group, lr_cell, run_identity) of configs/finetune_hf_sweep.yaml's runs, in plan order.
OLD_EXPERIMENT = [
    ("87d1dee8c4d48852", "7660e80647a1", "a35bc503bf26", "9c5b8a5dc447e041"),
    ("5a656684d9e469b5", "7660e80647a1", "a35bc503bf26", "4b9de8653225706d"),
    ("aeb1281e863e1713", "7cb551e88357", "9df02867492c", "5dafca5badc977ec"),
    ("de0c0645ecc897ec", "7cb551e88357", "9df02867492c", "a7445b88c7d82a66"),
    ("50178408e43edddb", "eebad7a1aa06", "67f9a2dd27b8", "97606586f3871b5b"),
    ("b4ac28d9636c33d9", "eebad7a1aa06", "67f9a2dd27b8", "3bf281ffcfbf13c7"),
]


def _parse(flags: list[str]) -> argparse.Namespace:
    from replaylab.commands import finetune as ft

    p = argparse.ArgumentParser()
    ft.add_arguments(p)
    return p.parse_args(flags)


@pytest.mark.parametrize(
    "flags, rid, identity, cell", OLD_IDS, ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_finetune_flags_give_a_run_config_with_the_old_ids(flags, rid, identity, cell):
    from replaylab.commands.finetune import build_config

    cfg = build_config(_parse(flags))
    assert isinstance(cfg, RunConfig) and cfg.model.kind == "hf" and cfg.finetune is not None
    assert (run_id(cfg), run_identity(cfg), lr_cell(cfg)) == (rid, identity, cell)


def test_the_shipped_experiment_keeps_its_run_ids_lr_groups_and_cells():
    from replaylab.sweep.plan import load_plan

    runs, _, doc = load_plan(REPO / "configs" / "finetune_hf_sweep.yaml")
    got = [
        (e["run_id"], e["config"]["meta"]["lr_group"], lr_cell(r.config), run_identity(r.config))
        for e, r in zip(doc["runs"], runs)
    ]
    assert got == OLD_EXPERIMENT
    for entry, run in zip(doc["runs"], runs):  # sweep.json holds the RunConfig; read back, it is the same run
        from replaylab.finetune_form import read_run_config

        assert run_id(read_run_config(entry["config"])) == entry["run_id"] == run_id(run.config)


def test_a_run_folder_config_of_either_form_reads_as_the_same_run(tmp_path):
    """config.yaml is written as a RunConfig now; one written in the fine-tuning form (every run folder before)
    reads as the same run, so `finetune --resume` continues it."""
    from replaylab.commands.finetune import build_config
    from replaylab.finetune_form import load_run_config

    cfg = build_config(_parse(["-R", "0.5", "--lora", "--budget", "16", "log_every=1"]))
    (tmp_path / "new.yaml").write_text(dump_yaml(cfg))
    old = {
        "model": "smollm2-135m",
        "target": {"source": "basque", "budget": 16},
        "replay_fraction": 0.5,
        "lora": {"enabled": True},
        "log_every": 1,
    }
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    new_read, old_read = load_run_config(tmp_path / "new.yaml"), load_run_config(tmp_path / "old.yaml")
    assert run_id(new_read) == run_id(old_read) == run_id(cfg) == "4a3c6ac1a3dfc87b"  # recorded before the change
    assert to_dict(new_read) == to_dict(cfg)


def test_the_fine_tuning_form_keeps_its_words_in_errors():
    from replaylab.finetune_form import read_finetune

    for raw, message in [
        ({"replay_fraction": 1.0}, "replay_fraction must lie in [0, 1), got 1.0"),
        ({"replay": None, "replay_fraction": 0.5}, "no replay pool is set"),
        ({"optim": {"schedule": "wsd"}}, "optim.schedule 'wsd' is unknown"),
        ({"optim": {"peak": 1}}, "unknown config field optim.peak"),
        ({"lora": {"r": 0}}, "lora.r must be >= 1, got 0"),
        ({"target": "basque"}, "target: expected a mapping"),
        ({"parallel": "zero3"}, "parallel 'zero3' is unknown; choose one of ddp, fsdp"),
        ({"stages_": []}, "unknown config field stages_"),
    ]:
        with pytest.raises(ConfigError) as e:
            read_finetune(raw)
        assert message in str(e.value), (raw, str(e.value))


def test_kind_defaults_live_in_one_place():
    """A Hugging Face run's eval and batch defaults differ from ours (model_kinds.KIND_DEFAULTS); a config's own
    values win, and our Transformer's run configs are untouched (their ids too: test_fingerprint pins them)."""
    hf = {"model": {"kind": "hf"}, "data": {"domains": {"target": {"source": "basque"}}}, "finetune": {}}
    cfg = from_dict(RunConfig, hf)
    assert (
        cfg.train.batch_size,
        cfg.eval.max_sequences,
        cfg.eval.batch_size,
        cfg.eval.initial,
        cfg.logging.tensorboard,
        cfg.train.total_steps,
        cfg.finetune.lr.peak,
    ) == (8, 32, 8, True, False, None, 3e-4)
    cfg = from_dict(RunConfig, {**hf, "eval": {"max_sequences": 10}, "train": {"batch_size": 2}})
    assert (cfg.eval.max_sequences, cfg.eval.batch_size, cfg.train.batch_size) == (10, 8, 2)
    ours = load_config(RunConfig, REPO / "configs" / "tiny.yaml")
    assert ours.model.kind == "transformer" and ours.eval.initial is False and ours.finetune is None
    with pytest.raises(ConfigError, match="model.kind 'gpt' is unknown; choose one of transformer, hf"):
        from_dict(RunConfig, {"model": {"kind": "gpt"}})
    with pytest.raises(ConfigError, match="needs a Hugging Face model"):
        from_dict(RunConfig, {**hf, "model": {}})


def test_train_and_finetune_default_to_one_output_rule(tmp_path):
    """Without --out both commands put a run in runs/<name>-<run id> (finetune's default name keeps its old
    folders, runs/finetune-<run id>); the same config finds its folder again, another config gets its own."""
    from replaylab.commands.finetune import build_config
    from replaylab.train.run_folder import default_run_dir

    ft = build_config(_parse(["-R", "0.5"]))
    assert default_run_dir(ft) == Path("runs") / f"finetune-{run_id(ft)}"
    ours = load_config(RunConfig, REPO / "configs" / "tiny.yaml")
    assert default_run_dir(ours) == Path("runs") / f"{ours.name}-{run_id(ours)}"
    other = load_config(RunConfig, REPO / "configs" / "tiny.yaml", ["seed=7"])
    assert default_run_dir(other) != default_run_dir(ours)
    named = load_config(RunConfig, REPO / "configs" / "tiny.yaml", ["name=my run/1"])
    assert default_run_dir(named).name.startswith("my-run-1-")


def test_finetune_config_may_be_a_run_config_and_the_flags_still_apply(tmp_path):
    """`replaylab finetune --config` takes the RunConfig form too (what a run folder's config.yaml holds now);
    the flags name the same settings there, so the run is the one the fine-tuning form with those flags gives."""
    from replaylab.commands.finetune import build_config

    form = build_config(_parse(["--target", "code", "--replay", "generic", "--epochs", "2"]))
    (tmp_path / "run.yaml").write_text(dump_yaml(form))
    for flags in (
        ["-R", "0.25", "--lr", "1e-3", "--budget", "16", "--lora-r", "4", "--seed", "3"],
        ["--replay", "none", "--budget", "8", "--fsdp"],
    ):
        from_run = build_config(_parse(["--config", str(tmp_path / "run.yaml"), *flags]))
        from_form = build_config(_parse(["--target", "code", "--replay", "generic", "--epochs", "2", *flags]))
        assert to_dict(from_run) == to_dict(from_form) and run_id(from_run) == run_id(from_form)
        assert from_run.data.domains["target"].source == "code"
    assert "replay" not in from_run.data.domains and from_run.model.parallel == "fsdp"
