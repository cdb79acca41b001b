"""Follow-ups: a fine-tuning plan whose target_epochs overflows is a ConfigError (also through
`replaylab plan`), and a sweep records a failing run even when its manifest.json was cut short."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from run_configs import tiny_raw

from replaylab.cli import main
from replaylab.errors import ConfigError
from replaylab.finetune_plan import plan_mix
from replaylab.runconfig import MAX_STEPS
from replaylab.sweep.local import execute_run
from replaylab.sweep.runstore import RunStore


@pytest.mark.parametrize(
    "kwargs, words",
    [
        # round(target_epochs * budget) raised OverflowError (inf) or ValueError (nan) before
        (dict(target_epochs=1.7976931348623157e308, replay_fraction=0.0), "target_epochs=1.79769e+308"),
        (dict(target_epochs=1e300, replay_fraction=0.5), "beyond a 64-bit count"),
        (dict(target_epochs=float("nan"), replay_fraction=0.0), "target_epochs=nan"),
        # finite draws whose target steps alone pass any run (a replay fraction next to 1 stretches them further)
        (dict(target_epochs=1e15, replay_fraction=1 - 2**-53), "lower target_epochs, or set max_steps"),
    ],
)
def test_plan_mix_refuses_target_epochs_beyond_any_run(kwargs, words):
    with pytest.raises(ConfigError) as e:
        plan_mix(budget=64, batch_size=8, **kwargs)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_plan_mix_with_max_steps_caps_a_stretched_run_instead():
    plan = plan_mix(budget=64, batch_size=8, target_epochs=1e15, replay_fraction=1 - 2**-53, max_steps=10)
    assert plan.total_steps == 10 and plan.capped


def test_plan_of_a_finetune_hf_experiment_with_huge_target_epochs_is_one_line(tmp_path, capsys):
    base = {"model": "some/model", "target": {"source": "code.jsonl", "budget": 8}, "seq_len": 32, "batch_size": 4}
    exp = {"name": "huge", "kind": "finetune_hf", "base": base, "grid": {"target_epochs": [1, 1e300]}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("replaylab plan: error:") and "target_epochs=1e+300" in err and "\n" not in err


@pytest.mark.parametrize("max_steps", [None, 10])
def test_plan_mix_refuses_a_replay_fraction_that_stretches_the_plan(max_steps):
    """One refusal, in the planner: R = 0.9999999 stretches 8 target steps to 80,000,001. max_steps is no fix (the
    capped run would hold no target); the message shows R as given and the largest fraction that fits."""
    with pytest.raises(ConfigError) as e:
        plan_mix(budget=64, batch_size=8, target_epochs=1, replay_fraction=0.9999999, max_steps=max_steps)
    message = str(e.value)
    assert "replay_fraction 0.9999999 stretches" in message and "80,000,001 steps" in message, message
    assert "set max_steps" not in message and "\n" not in message
    bound = float(message.split("give replay_fraction <= ")[1].split()[0])
    fits = plan_mix(budget=64, batch_size=8, target_epochs=1, replay_fraction=bound)  # the named bound fits
    assert 0.99999 < bound < 0.9999999 and fits.planned_steps <= MAX_STEPS and fits.target_steps == 8


@pytest.mark.parametrize("argv", [["plan"], ["sweep"]])
def test_a_finetune_hf_experiment_whose_replay_fraction_explodes_is_refused_at_planning(tmp_path, capsys, argv):
    """`replaylab plan` and `replaylab sweep` of a finetune_hf experiment refuse the cell at planning, not at launch
    (nothing is loaded: the budget is given)."""
    base = {"model": "some/model", "target": {"source": "code.jsonl", "budget": 8}, "seq_len": 32, "batch_size": 4}
    exp = {"name": "stretch", "kind": "finetune_hf", "base": base, "grid": {"replay_fraction": [0.5, 0.9999999]}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = ["--out", str(tmp_path / "S")] if argv[0] == "sweep" else []
    assert main([*argv, str(path), *out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"replaylab {argv[0]}: error:") and "\n" not in err, err
    assert "replay_fraction 0.9999999 stretches" in err and "give replay_fraction <= 0.99999" in err, err
    assert not (tmp_path / "S").exists()


def test_a_failing_run_with_a_truncated_manifest_is_recorded_with_its_own_error(tmp_path, isolated_home):
    # The run's training raises (its tokenizer path does not exist) before the engine writes a manifest;
    # the folder holds a manifest.json cut short. read_manifest's DataError used to replace the real error.
    missing = tmp_path / "no_tokenizer" / "tokenizer.json"

    class Store:  # tiny_raw only reads .path
        path = tmp_path / "corpus.jsonl"

    store = RunStore(tmp_path / "sweep")
    run_dir = store.run_dir("r1")
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text('{"config_hash": "r1", "status": "runn')
    entry = {"run_id": "r1", "config": tiny_raw(Store, Store, str(missing))}
    # A damaged manifest is a failed attempt (status "damaged"): skipped, and taken up again by a retry,
    # which moves it aside into attempt_1/ first (issue 21: one manifest reader, one policy).
    assert store.status("r1") == "damaged" and execute_run(store, entry) == "skipped"
    assert execute_run(store, entry, retry_before=time.time() + 1) == "failed"
    assert (run_dir / "attempt_1" / "manifest.json").read_text().endswith('"runn')
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["config_hash"] == "r1"
    assert manifest["error"].startswith("DataError: tokenizer path") and str(missing) in manifest["error"]
    assert "not valid JSON" not in manifest["traceback"] and "execute_run" in manifest["traceback"]
    assert store.status("r1") == "failed"
