"""A run's fingerprint (replaylab.fingerprint): run ids that never move, the same run under other
bookkeeping, the shared-prefix settings, LR cells; and `replaylab results` choosing the LR that
`replaylab analyze` chooses."""

from __future__ import annotations

import json

import pytest

from replaylab.config import from_dict, to_dict
from replaylab.errors import ConfigError
from replaylab.fingerprint import lr_cell, mixture_id, prefix_settings, run_id, run_identity
from replaylab.runconfig import RunConfig
from replaylab.schedule import finetune, midtrain, reference

BASE = {
    "data": {"domains": {"generic": {"source": "generic"}, "code": {"source": "code"}}},
    "train": {"total_steps": 1024, "batch_size": 1024},
}


def test_fields_added_later_leave_fine_tuning_run_ids_as_they_were(tmp_path):
    """FinetuneConfig.compile and .deterministic came after fine-tuning sweeps were on disk: at their defaults
    they are left out of every hash (config.added_field), so these ids, computed before the fields existed,
    still name the same runs; another value is another run. A config.yaml written before them loads as the
    same run as one written now."""
    from replaylab.finetune_form import FinetuneConfig, load_run_config, read_finetune
    from replaylab.fingerprint import finetune_view

    default = FinetuneConfig()
    lora = read_finetune({"replay_fraction": 0.25, "lora": {"enabled": True}})
    assert (run_id(default), run_identity(default), lr_cell(default)) == (
        "57f4869833f3105a",
        "7a3b59a215870fec",
        "b69940106435",
    )
    assert (run_id(lora), run_identity(lora), lr_cell(lora)) == ("819be59e2a471917", "5dbe4ae01f1ed62e", "4dedc91e2906")
    others = {
        run_id(read_finetune(change))
        for change in ({"deterministic": False}, {"compile": "regional"}, {"compile": "off"})
    }
    assert len(others) == 3 and run_id(default) not in others
    assert default.model.compile == "auto" and default.train.deterministic is True
    raw = finetune_view(default)  # the fine-tuning form, as run folders hold it
    import yaml

    old = tmp_path / "old.yaml"  # as written before the fields existed
    old.write_text(yaml.safe_dump({k: v for k, v in raw.items() if k not in ("compile", "deterministic")}))
    assert run_identity(load_run_config(old)) == run_identity(default)


def test_run_ids_and_lr_groups_stay_as_they_were():
    # Computed before replaylab.fingerprint existed: sweep folders on disk are named by these.
    # The fine-tuning run pre-trains at its own tuned peak (1e-3): only the fine-tuning stage is tuned.
    pinned = [
        (reference(BASE, seed=0), "4741a1c9cc354d12", "538300067c34"),
        (finetune(BASE, multiplier=2, lr=1e-3, pretrain_lr=1e-3, seed=1), "fbe14eef5d80bc30", "2efa57e9dadf"),
        (midtrain(BASE, rho=0.5, alpha=0.5, lr=1e-3, seed=2), "f9043dcb6f616a02", "00aac9b9fcd9"),
    ]
    for cfg, rid, group in pinned:
        assert (run_id(cfg), cfg.meta["lr_group"]) == (rid, group), cfg.meta["strategy"]


def test_runs_that_differ_only_in_lr_and_seed_share_a_cell():
    # Mid-training's `continue` stage copies the peak: it is blanked with the curve it continues.
    a, b = midtrain(BASE, rho=0.5, alpha=0.5, lr=1e-3, seed=0), midtrain(BASE, rho=0.5, alpha=0.5, lr=3e-3, seed=1)
    assert lr_cell(a) == lr_cell(b) == lr_cell(to_dict(b))
    assert lr_cell(a) != lr_cell(midtrain(BASE, rho=0.75, alpha=0.5, lr=1e-3, seed=0))
    assert a.meta["lr_group"] != b.meta["lr_group"]  # meta.lr_group keeps its rule: it is part of the run id
    # Fine-tuning: the tuned curve is the last one at meta.lr, not a pre-training at the same peak.
    f = [finetune(BASE, multiplier=2, lr=lr, pretrain_lr=1e-3, seed=0) for lr in (1e-3, 3e-4)]
    assert lr_cell(f[0]) == lr_cell(f[1])
    assert lr_cell(f[0]) != lr_cell(finetune(BASE, multiplier=2, lr=1e-3, pretrain_lr=3e-3, seed=0))
    # A carrier's planned config carries its branch steps: bookkeeping, the same cell.
    raw = to_dict(f[1])
    raw["train"]["checkpoint_steps"] = [512]
    assert lr_cell(raw) == lr_cell(f[0])
    assert lr_cell(reference(BASE, lr=1e-3)) == lr_cell(reference(BASE, lr=3e-3, seed=4))


def test_bookkeeping_does_not_make_another_run():
    cfg = reference(BASE)
    raw = to_dict(cfg)
    raw["train"].update(log_every=1, checkpoint_every=7, checkpoint_steps=[3], keep_checkpoints=5, progress="off")
    assert run_identity(from_dict(RunConfig, raw)) == run_identity(cfg)
    assert run_id(from_dict(RunConfig, raw)) != run_id(cfg)  # the id names the config as planned
    raw["train"]["batch_size"] = 512
    assert run_identity(from_dict(RunConfig, raw)) != run_identity(cfg)


def test_prefix_settings_keep_what_eval_records_say_not_when():
    cfg = midtrain(BASE, rho=0.5, alpha=1.0)

    def changed(**fields):
        raw = to_dict(cfg)
        for key, value in fields.items():
            section, name = key.split("__")
            raw[section][name] = value
        return prefix_settings(from_dict(RunConfig, raw))

    same = prefix_settings(cfg)
    assert changed(eval__every=5) == same and changed(train__log_every=1) == same
    assert changed(eval__max_sequences=8) != same and changed(optim__weight_decay=0.0) != same


def _write_run(tmp_path, raw: dict, step: int):
    from replaylab.config import dump_yaml
    from replaylab.train.checkpoint import Checkpoint

    (tmp_path / "checkpoints" / f"step_{step:07d}").mkdir(parents=True)
    (tmp_path / "config.yaml").write_text(dump_yaml(from_dict(RunConfig, raw)))
    return Checkpoint(path=tmp_path / "checkpoints" / f"step_{step:07d}", state={"step": step}, model={}, optim={})


def test_check_prefix_and_planner_agree_on_eval(tmp_path):
    from replaylab.sweep.prefix import plan_prefixes
    from replaylab.train.checkpoint import check_prefix

    base = {**BASE, "train": {"total_steps": 64, "batch_size": 4}}
    carrier = to_dict(midtrain(base, rho=0.0, alpha=1.0, target_fraction=1 / 16, epochs=1))
    child = to_dict(midtrain(base, rho=0.5, alpha=1.0, target_fraction=1 / 16, epochs=1))
    point = _write_run(tmp_path, carrier, 48)
    child["eval"]["every"] = 16  # when records are written: the child re-picks the carrier's
    check_prefix(from_dict(RunConfig, child), point)
    assert plan_prefixes({"a": from_dict(RunConfig, carrier), "b": from_dict(RunConfig, child)})
    child["eval"]["max_sequences"] = 8  # what they say: the carrier's eval losses are not the child's
    with pytest.raises(ConfigError, match="'eval'"):
        check_prefix(from_dict(RunConfig, child), point)
    assert plan_prefixes({"a": from_dict(RunConfig, carrier), "b": from_dict(RunConfig, child)}) == {}


def test_results_select_the_lr_analyze_selects(tmp_path):
    """Three seeds, two LRs per cell; the LR most seeds prefer is not the one with the best mean."""
    from replaylab.analysis import select_cells
    from replaylab.paths import atomic_write_text
    from replaylab.sweep.results import load_results
    from replaylab.sweep.runstore import RunStore

    base = {**BASE, "train": {"total_steps": 64, "batch_size": 4}}
    builders = {
        "finetune": lambda lr, seed: finetune(base, multiplier=2, lr=lr, target_fraction=1 / 16, epochs=2, seed=seed),
        "midtrain": lambda lr, seed: midtrain(
            base, rho=0.5, alpha=0.5, lr=lr, target_fraction=1 / 16, epochs=2, seed=seed
        ),
    }
    # select-half losses per (strategy, lr), one per seed: per seed 1e-3 wins twice, by the mean 3e-3 wins
    val = {
        ("finetune", 1e-3): [2.0, 2.0, 3.0],
        ("finetune", 3e-3): [2.1, 2.1, 2.1],
        ("midtrain", 1e-3): [1.9, 1.9, 3.5],
        ("midtrain", 3e-3): [2.2, 2.2, 2.2],
    }
    store = RunStore(tmp_path)
    entries, manifests = [], {}
    for (strategy, lr), losses in val.items():
        for seed, v in enumerate(losses):
            cfg = builders[strategy](lr, seed)
            rid = run_id(cfg)
            entries.append({"run_id": rid, "coords": {}, "config": to_dict(cfg), "branch": None})
            final = {"code": {"val_loss": v, "test_loss": 5.0 - v}, "generic": {"val_loss": 4.0, "test_loss": 4.0}}
            manifests[rid] = {"status": "done", "seed": seed, "meta": cfg.meta, "final": final, "steps_done": 64}
    store.write_plan({"name": "t", "runs": entries}, "name: t\n", {})
    for rid, m in manifests.items():
        atomic_write_text(store.run_dir(rid) / "manifest.json", json.dumps(m))

    df = load_results(tmp_path)
    picked = df[df["selected"]]
    assert sorted(picked["seed"]) == [0, 0, 1, 1, 2, 2]  # the chosen LR's run for every seed of both cells
    assert set(picked["lr"]) == {3e-3}
    cells, _, _ = select_cells(df)
    assert list(cells["lr"]) == [3e-3, 3e-3]
    for _, cell in cells.iterrows():
        mine = picked[picked["strategy"] == cell["strategy"]]
        assert set(mine["lr"]) == {cell["lr"]}


def test_mixture_id_keeps_the_rule_saved_replay_mixture_states_carry():
    """ReplayMixture's identity moved from replay.py into fingerprint.mixture_id with its rule unchanged (sorted
    keys): the value recorded before the move, so a saved position still loads; any input changes it."""
    kw = dict(
        store_identities={"target": "abc", "replay": "def"},
        plan={"budget": 12, "total_steps": 6, "target_weight": 0.5},
        seed=0,
        seq_len=32,
        batch_size=4,
    )
    assert mixture_id(**kw) == "9f7cd45b41a40805"
    assert mixture_id(**{**kw, "seed": 1}) != mixture_id(**kw)
    assert mixture_id(**{**kw, "store_identities": {"replay": "def", "target": "abc"}}) == mixture_id(**kw)
