"""One override syntax for every command: `replaylab train` and `replaylab finetune` both take bare
KEY=VALUE arguments and `--set KEY=VALUE`, in any order (the last one wins), through the same parser
(`replaylab.config.add_override_arguments`). Nothing here trains: a bad value fails while the config
is built, and a good one is read back from the config the command would run."""

from __future__ import annotations

import pytest
import yaml

import replaylab.train
from replaylab.cli import build_parser, main
from replaylab.commands.finetune import build_config

RUN = {
    "data": {"domains": {"generic": {"source": "generic"}}},
    "train": {"total_steps": 4, "batch_size": 2},
    "stages": [{"name": "only", "steps": 4, "mixture": {"generic": 1.0}}],
}


@pytest.fixture
def configs(tmp_path):
    run, ft = tmp_path / "run.yaml", tmp_path / "ft.yaml"
    run.write_text(yaml.safe_dump(RUN))
    ft.write_text(yaml.safe_dump({"replay_fraction": 0.25}))
    return {"train": ["train", str(run)], "finetune": ["finetune", "--config", str(ft)]}


@pytest.fixture
def trained(monkeypatch):
    """`replaylab train` up to the point where it would train: the config it would run."""
    seen = []

    def fake_run_training(config, out, **kwargs):
        seen.append(config)
        return {"status": "done", "final": {}, "steps_done": 0}

    monkeypatch.setattr(replaylab.train, "run_training", fake_run_training)
    return seen


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    command, _, message = err[0].partition(": error: ")
    assert command == f"replaylab {argv[0]}"
    return message


@pytest.mark.parametrize("form", [["seed=abc"], ["--set", "seed=abc"]])
def test_a_bad_value_is_the_same_one_line_error_in_both_commands(capsys, configs, trained, form):
    messages = {cmd: one_line_error(capsys, [*argv, *form]) for cmd, argv in configs.items()}
    assert messages["train"] == messages["finetune"] == "seed: expected a whole number, got 'abc'"
    assert not trained


def test_bad_choice_names_the_choices_in_both_commands(capsys, configs):
    assert (
        one_line_error(capsys, [*configs["train"], "train.precision=fp16"])
        == "train.precision 'fp16' is unknown; did you mean bf16? choose one of auto, fp32, bf16"
    )
    assert (
        one_line_error(capsys, [*configs["finetune"], "--set", "precision=fp16"])
        == "precision 'fp16' is unknown; did you mean bf16? choose one of auto, fp32, bf16"
    )


def test_train_takes_both_forms_in_command_line_order(capsys, configs, trained, tmp_path):
    argv = [
        *configs["train"],
        "--set",
        "seed=1",
        "train.log_every=3",
        "--out",
        str(tmp_path / "r"),
        "seed=2",
        "--set",
        "eval.every=2",
    ]
    assert main(argv) == 0
    (config,) = trained
    assert (config.seed, config.train.log_every, config.eval.every) == (2, 3, 2)
    assert main([*configs["train"], "seed=7", "--set", "seed=8"]) == 0
    assert main([*configs["train"], "--set=seed=9", "--out", str(tmp_path / "s"), "seed=10", "--set", "seed=11"]) == 0
    assert [c.seed for c in trained[1:]] == [8, 11]


def test_finetune_takes_both_forms_in_command_line_order(configs):
    parser = build_parser()
    args = parser.parse_args(
        [*configs["finetune"], "seed=5", "--lr", "1e-3", "--set", "optim.warmup=0.05", "eval.every=4"]
    )
    assert args.overrides == ["seed=5", "optim.warmup=0.05", "eval.every=4"]
    config = build_config(args)
    lr = config.finetune.lr
    assert (config.seed, lr.peak, lr.warmup, config.eval.every) == (5, 1e-3, 0.05, 4)
    assert config.finetune.replay_fraction == 0.25  # from the YAML; the overrides come on top of it
    assert build_config(parser.parse_args([*configs["finetune"], "--set", "seed=1", "seed=2"])).seed == 2
    assert build_config(parser.parse_args([*configs["finetune"], "seed=1", "--set", "seed=2"])).seed == 2


def test_resume_refuses_overrides_in_either_form(capsys, tmp_path):
    for form in (["seed=1"], ["--set", "seed=1"]):
        assert "takes no CONFIG or overrides" in one_line_error(capsys, ["train", "--resume", str(tmp_path), *form])
