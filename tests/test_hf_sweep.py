"""`kind: finetune_hf` sweeps: a replay_fraction grid x LRs of real fine-tuning runs (the tiny random
LlamaForCausalLM world of tests/hf_world.py) trained by the sweep worker, read back by results,
LR-selected per rho, skipped when done; the plan per cell; clear errors for bad axes."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from replaylab.errors import ConfigError
from replaylab.sweep import prepare_sweep
from replaylab.sweep.local import worker_loop
from replaylab.sweep.plan import plan_experiment
from replaylab.sweep.results import load_results
from replaylab.sweep.runstore import RunStore

torch.set_num_threads(1)


def base_config(model: str, code: str, prose: str) -> dict:
    """8 target sequences x 1 epoch at batch 4: 2 steps at R = 0, 4 at R = 0.5."""
    return {
        "model": model,
        "target": {"source": code, "budget": 8, "options": {"glob": "*.py"}},
        "replay": {"source": prose},
        "target_epochs": 1.0,
        "seq_len": 32,
        "batch_size": 4,
        "optim": {"warmup": 0.0},
        "eval": {"max_sequences": 8, "initial": False},
        "log_every": 1,
        "progress": "off",
        "save_final": False,
    }


def write_experiment(tmp_path, base: dict, **kw) -> str:
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(base))
    exp = {
        "name": "hf_t",
        "kind": "finetune_hf",
        "base": "ft.yaml",
        "overrides": ["threads=1"],
        "grid": {"replay_fraction": [0, 0.5]},
        "lrs": ["1e-3", "1e-2"],
        "seeds": [0],
        **kw,
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return str(path)


def test_plan_counts_runs_and_steps_per_cell(tmp_path):
    path = write_experiment(
        tmp_path,
        base_config("some/model", "code.jsonl", "prose.jsonl"),
        grid={"replay_fraction": [0, 0.5, 0.75], "lora.r": [4]},
        seeds=[0, 1],
    )
    table, doc = plan_experiment(path)
    assert len(doc["runs"]) == 3 * 2 * 2 and len({e["run_id"] for e in doc["runs"]}) == 12
    assert all(e["kind"] == "finetune_hf" and e["branch"] is None for e in doc["runs"])
    rows = table.set_index("cell")
    assert list(rows["runs"]) == [4, 4, 4, 12]
    assert list(rows["steps"]) == [2 * 4, 4 * 4, 8 * 4, 56]  # summed over runs; per run target steps / (1 - R)
    e = doc["runs"][0]
    assert e["coords"] == {"strategy": "finetune_hf", "replay_fraction": 0.0, "lora.r": 4, "lr": 1e-3, "seed": 0}
    assert e["config"]["train"]["threads"] == 1 and e["config"]["meta"]["rho"] == 0.0  # the run's RunConfig
    # lr_group: the two LRs of a (cell, seed) share it, nothing else does
    groups = {}
    for e in doc["runs"]:
        groups.setdefault(e["config"]["meta"]["lr_group"], set()).add(e["coords"]["lr"])
    assert len(groups) == 6 and all(v == {1e-3, 1e-2} for v in groups.values())

    no_budget = base_config("some/model", "code.jsonl", "prose.jsonl")
    no_budget["target"].pop("budget")
    table, _ = plan_experiment(write_experiment(tmp_path, no_budget))
    assert table["steps"].isna().all()  # unknown until tokenized: plan never tokenizes


@pytest.mark.parametrize(
    "change, message",
    [
        ({"grid": {"lora.rank": [4]}}, "grid axis 'lora.rank' is not a config field (lora has: alpha, dropout"),
        ({"grid": {"replay_fraction": []}}, "grid axis 'replay_fraction' is empty"),
        ({"grid": {"optim.lr": [1e-3]}}, "list learning rates under lrs:"),
        ({"zip": {"seq_len.x": [1]}}, "zip axis 'seq_len.x': seq_len is a value, not a section"),
        ({"grid": {"replay_fraction": [1.0]}}, "at replay_fraction=1.0: replay_fraction must lie in [0, 1)"),
        ({"lrs": []}, "lrs is empty"),
        ({"strategies": []}, "unknown config field experiment.strategies"),
        ({"kind": "finetune"}, "experiment kind 'finetune' is unknown; use kind: finetune_hf"),
    ],
)
def test_experiment_mistakes_name_the_key(tmp_path, change, message):
    path = write_experiment(tmp_path, base_config("m", "c", "p"), **change)
    with pytest.raises(ConfigError) as e:
        plan_experiment(path)
    assert message in str(e.value)


def test_sweep_trains_selects_per_rho_and_skips_done(hf_world, tmp_path, capsys):  # noqa: F811
    from replaylab.cli import main

    path = write_experiment(tmp_path, base_config(hf_world["model"], hf_world["code"], hf_world["prose"]))
    out = tmp_path / "sweep"
    prepare_sweep(path, out)
    worker_loop(out, threads=1, poll=0.05)

    df = load_results(out)
    assert len(df) == 4 and (df["status"] == "done").all()
    assert sorted(df["rho"]) == [0.0, 0.0, 0.5, 0.5] and set(df["strategy"]) == {"finetune_hf"}
    assert sorted(df["lr"]) == [1e-3, 1e-3, 1e-2, 1e-2] and sorted(df["steps"]) == [2, 2, 4, 4]
    for col in ("target_val_loss", "target_test_loss", "generic_val_loss", "generic_test_loss"):
        assert df[col].notna().all() and (df[col] > 0).all()
    store = RunStore(out)
    for _, row in df.iterrows():
        manifest = store.manifest(row["run_id"])
        assert manifest["config_hash"] == row["run_id"] and manifest["kind"] == "finetune_hf"
        assert row["target_test_loss"] == manifest["final"]["target"]["test_loss"]
        assert row["generic_val_loss"] == manifest["final"]["replay"]["val_loss"]
        shares = manifest["realized_token_shares"]
        assert shares.get("replay", 0.0) == pytest.approx(row["rho"]) == pytest.approx(row["replay_share"])
        assert manifest["meta"]["lr_group"] == row["lr_group"]
    # LR selection: one run per rho, the one with the lowest target loss on the val (select) half
    sel = df[df["selected"]]
    assert sorted(sel["rho"]) == [0.0, 0.5]
    for rho, group in df.groupby("rho"):
        assert group.loc[group["target_val_loss"].idxmin(), "selected"]

    starts = [e for e in store.events() if e["event"] == "start"]
    assert len(starts) == 4
    worker_loop(out, threads=1, poll=0.05)  # everything is done: nothing trains again
    assert [e for e in store.events() if e["event"] == "start"] == starts
    assert json.loads((out / "sweep.json").read_text())["kind"] == "finetune_hf"

    assert main(["results", str(out), "--csv", str(tmp_path / "r.csv")]) == 0
    text = capsys.readouterr().out
    assert text.count("finetune_hf") == 4 and "True" in text
    assert "replay_share" in (tmp_path / "r.csv").read_text().splitlines()[0]
