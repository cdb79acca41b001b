"""Issue 20, hangs and tracebacks: each bad input is one line naming the value and the fix, exit status 2,
refused before a run folder exists; an alias bomb or a plan of millions of steps is refused at once; a Ctrl-C
is one line. Families are tables; the CLI runs in-process (replaylab.cli.main) unless a signal is involved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hang import HANG_S

from replaylab.cli import main
from replaylab.config import MAX_CONFIG_VALUES
from replaylab.errors import ConfigError
from replaylab.runconfig import MAX_STEPS

RUN = {
    "name": "errors",
    "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
    "data": {"tokenizer": "@/tok", "seq_len": 32, "domains": {"generic": {"source": "@/t.jsonl"}}},
    "stages": [{"name": "main", "steps": 4, "mixture": {"generic": 1.0}}],
    "train": {
        "total_steps": 4,
        "batch_size": 2,
        "precision": "fp32",
        "compile": "off",
        "threads": 1,
        "progress": "off",
    },
    "logging": {"tensorboard": False},
}


def _bomb(depth: int, indent: str = "") -> str:
    """A "billion laughs" YAML mapping: each level lists the previous one ten times (10**depth strings)."""
    lines = [f"{indent}l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{indent}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, depth + 1)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("inputs")
    (root / "t.jsonl").write_text(
        "".join(json.dumps({"text": f"document {i}: some words to read and more words"}) + "\n" for i in range(200))
    )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        ["some words to read"] * 10,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    (root / "tok").mkdir()
    tok.save(str(root / "tok" / "tokenizer.json"))
    run = yaml.safe_dump(RUN, sort_keys=False).replace("@/", f"{root}/")
    (root / "run.yaml").write_text(run)
    (root / "bomb.yaml").write_text(run + "meta:\n" + _bomb(9, "  "))
    (root / "deep_bomb.yaml").write_text(run + "meta:\n" + _bomb(30, "  "))
    (root / "exp_bomb.yaml").write_text("name: x\n" + _bomb(9))
    (root / "ft_bomb.yaml").write_text("meta:\n" + _bomb(9, "  "))
    base = {k: v for k, v in yaml.safe_load(run).items() if k not in ("stages", "name")}
    (root / "exp.yaml").write_text(
        yaml.safe_dump(
            {"name": "exp", "base": base, "target": "generic", "seeds": [0], "strategies": [{"strategy": "reference"}]}
        )
    )
    return root


def _one_line(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, (code, err)
    assert err[0].startswith(f"replaylab {argv[0]}: error: "), err
    return err[0].partition(": error: ")[2]


# (override, what the message must say): each was a traceback after the run folder was made, or a silent
# substitution (0 read as "unset"), or a run that diverged on its first step.
BAD_VALUES = [
    ("eval.batch_size=0", "eval.batch_size must be >= 1, got 0"),
    ("train.log_every=0", "train.log_every must be >= 1, got 0"),
    ("data.budget_seed=-3", "data.budget_seed must be >= 0, got -3"),
    ("eval.max_sequences=1", "eval.max_sequences must be >= 2"),
    ("eval.every=-1", "eval.every must be >= 0"),
    ("data.val_sequences=0", "data.val_sequences must be >= 2"),
    ("train.checkpoint_every=-5", "train.checkpoint_every must be >= 0"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints must be >= 1, got 0"),
    ("train.micro_batch_size=0", "train.micro_batch_size must be >= 1, got 0; or leave it unset"),
    ("train.mixture_block=0", "train.mixture_block must be >= 1, got 0"),
    ("model.n_kv_heads=0", "model.n_kv_heads must be >= 1, got 0"),
    ("model.rope_theta=0", "model.rope_theta must be > 0, got 0.0"),
    ("model.norm_eps=-1", "model.norm_eps must be > 0"),
    ("model.init_std=-1", "model.init_std must be > 0"),
    ("optim.eps=0", "optim.eps must be > 0"),
    ("optim.grad_clip=-1", "optim.grad_clip must be >= 0, got -1.0"),
    ("train.total_steps=0", "train.total_steps must be >= 1, got 0"),
    ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
    (f"train.total_steps={MAX_STEPS + 1}", f"above the {MAX_STEPS:,} steps"),
]


@pytest.mark.parametrize("override, words", BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_bad_value_is_refused_before_the_run_folder(inputs, tmp_path, monkeypatch, capsys, override, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPLAYLAB_HOME", str(tmp_path / "home"))
    message = _one_line(capsys, ["train", str(inputs / "run.yaml"), override, "--out", "run"])
    assert words in message, message
    assert not (tmp_path / "run").exists() and not (tmp_path / "home").exists()


# Configs that expand without bound: every reader of YAML configs refuses them at once, naming the limit.
BOMBS = [
    ("train-file", ["train", "@/bomb.yaml"]),
    ("train-file-deeper", ["train", "@/deep_bomb.yaml"]),  # 10**30 values: hung before
    (
        "train-override",
        [
            "train",
            "@/run.yaml",
            "meta={a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,"
            "*a], c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], e: [*d,*d,"
            "*d,*d,*d,*d,*d,*d,*d,*d,*d]}",
        ],
    ),
    ("plan-experiment", ["plan", "@/exp_bomb.yaml"]),
    ("finetune-config", ["finetune", "--config", "@/ft_bomb.yaml"]),
]


@pytest.mark.parametrize("argv", [c[1] for c in BOMBS], ids=[c[0] for c in BOMBS])
def test_alias_bomb_is_refused_naming_the_limit(inputs, tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPLAYLAB_HOME", str(tmp_path / "home"))
    message = _one_line(capsys, [a.replace("@/", f"{inputs}/") for a in argv])
    assert f"expands to more than {MAX_CONFIG_VALUES:,} values" in message
    assert list(tmp_path.iterdir()) == []


def test_config_just_under_the_limit_still_loads(tmp_path):
    from replaylab.config import load_yaml

    path = tmp_path / "big.yaml"
    path.write_text("meta:\n" + _bomb(3, "  "))  # ~1,100 values
    assert len(load_yaml(path)["meta"]["l3"]) == 10


# Clearer messages: what was wrong, the value, the closest valid name; the CLI's words only in the CLI.
MESSAGES = [
    (["train", "@/run.yaml", "trian.total_steps=8"], "unknown config field trian; did you mean train?"),
    (["train", "@/run.yaml", "stages.0.lr.schedul=wsd"], "stages[0].lr.schedul; did you mean schedule?"),
    (["train", "@/run.yaml", "model.preset=tinny"], "model.preset 'tinny' is unknown; did you mean tiny?"),
    (["train", "@/run.yaml", "train.batch_size=0"], "train.batch_size must be >= 1, got 0"),
    (
        ["train", "@/exp.yaml"],
        "is an experiment (it has strategies, base), not a run config; list its runs with replaylab plan",
    ),
    (
        ["tokenizer", "train", "@/t.jsonl", "--vocab-size", "300", "--out", "tk", "--sample-mb", "nan"],
        "--sample-mb nan is not a size",
    ),
    (
        ["tokenizer", "train", "@/t.jsonl", "--vocab-size", "300", "--out", "tk", "--sample-mb", "inf"],
        "--sample-mb inf is not a size",
    ),
    (
        ["tokenizer", "train", "@/t.jsonl", "--vocab-size", "300", "--out", "tk", "--sample-mb=-2"],
        "--sample-mb -2.0 is not a size",
    ),
    (["sweep", "@/exp.yaml", "--workers", "0"], "--workers 0 must be >= 1"),
]


@pytest.mark.parametrize("argv, words", MESSAGES, ids=[" ".join(c[0][:1] + c[0][2:])[:40] for c in MESSAGES])
def test_messages_name_the_value_and_the_fix(inputs, tmp_path, monkeypatch, capsys, argv, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPLAYLAB_HOME", str(tmp_path / "home"))
    message = _one_line(capsys, [a.replace("@/", f"{inputs}/") for a in argv])
    assert words in message, message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "build, words",
    [
        (
            lambda: __import__("replaylab.sweep", fromlist=["run_sweep"]).run_sweep("x.yaml", "out", workers=0),
            "workers (0) and threads (1) must be >= 1",
        ),
        (
            lambda: (
                __import__("replaylab.hf", fromlist=["FinetuneConfig"])
                .FinetuneConfig(replay=None, replay_fraction=0.5)
                .validate()
            ),
            "no replay pool is set",
        ),
        (
            lambda: __import__("replaylab.hf", fromlist=["FinetuneConfig"]).FinetuneConfig(log_every=0).validate(),
            "log_every must be >= 1, got 0",
        ),
    ],
)
def test_library_errors_name_fields_not_flags(build, words):
    with pytest.raises(ConfigError) as e:
        build()
    assert words in str(e.value) and "--" not in str(e.value)


# Plans: a replay fraction next to 1 stretches a run by 1 / (1 - R); refused at once, and max_steps is no way around
# it (the capped run would hold no target): the message names the largest fraction that fits.
@pytest.mark.parametrize("rho", [0.999999, 0.99999])
@pytest.mark.parametrize("max_steps", [None, 20])
def test_replay_mixture_refuses_a_plan_beyond_the_cap(code_store, prose_store, rho, max_steps):
    from replaylab import ReplayMixture

    with pytest.raises(ConfigError) as e:
        ReplayMixture(code_store, prose_store, replay_fraction=rho, seq_len=256, batch_size=4, max_steps=max_steps)
    message = str(e.value)
    assert f"above the {MAX_STEPS:,} steps" in message and "give replay_fraction <= " in message
    assert "--" not in message and "\n" not in message


def test_an_experiment_grid_beyond_the_cap_is_refused_before_planning(tmp_path, capsys):
    from replaylab.sweep.experiment import MAX_RUNS

    axes = {f"axis{i}": list(range(100)) for i in range(3)}  # 10**6 cells: expanding them would hang `plan`
    exp = {
        "name": "huge",
        "base": RUN,
        "target": "generic",
        "strategies": [{"strategy": "reference", "grid": axes, "args": {"epochs": 1}}],
    }
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(exp), encoding="utf-8")
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "1,000,000 runs" in err and f"{MAX_RUNS:,}" in err and "grid" in err


# Ctrl-C. A KeyboardInterrupt raised while a heavy module is imported (what a Ctrl-C in the first second hits),
# then real SIGINTs at a few moments: one line, exit 130 (or death by SIGINT, the shell's 130), no traceback.
DRIVER = """
import builtins, sys
from replaylab import cli
heavy, real_import = sys.argv[1], builtins.__import__
def interrupting_import(name, *args, **kwargs):
    if name.split(".")[0] == heavy:
        raise KeyboardInterrupt
    return real_import(name, *args, **kwargs)
builtins.__import__ = interrupting_import
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    "heavy, argv",
    [
        ("scipy", ["train", "@/run.yaml"]),  # while the parser imports the analysis commands
        ("torch", ["train", "@/run.yaml"]),  # while train imports the engine
        ("pandas", ["results", "@/missing"]),
        ("replaylab", ["data", "list"]),  # while the first command module is imported
    ],
    ids=["parser-scipy", "train-torch", "results-pandas", "data-list"],
)
def test_ctrl_c_while_importing_is_one_line(inputs, tmp_path, heavy, argv):
    env = {**os.environ, "REPLAYLAB_HOME": str(tmp_path / "home")}
    argv = [a.replace("@/", f"{inputs}/") for a in argv]
    p = subprocess.run(
        [sys.executable, "-c", DRIVER, heavy, *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert p.returncode in (130, -signal.SIGINT), (p.returncode, p.stderr)
    assert p.stderr.strip().splitlines() == [f"replaylab {argv[0]}: interrupted"], p.stderr


def test_ctrl_c_at_any_moment_of_a_short_command_is_one_line(inputs, tmp_path):
    """The driver imports the CLI first (what runs before replaylab's code is Python's own start-up), then
    SIGINT arrives while the command imports, plans or trains; or after it finished."""
    env = {**os.environ, "REPLAYLAB_HOME": str(tmp_path / "home")}
    driver = (
        "import os, signal, sys, threading\nfrom replaylab import cli\n"
        "t = threading.Timer(float(sys.argv[1]), os.kill, (os.getpid(), signal.SIGINT)); t.start()\n"
        "code = cli.main(sys.argv[2:]); t.cancel(); sys.exit(code)\n"
    )
    for delay in (0.05, 0.3, 1.0, 2.5):
        p = subprocess.run(
            [sys.executable, "-c", driver, str(delay), "train", str(inputs / "run.yaml"), "--out", f"run{delay}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=HANG_S,
        )
        assert "Traceback" not in p.stderr, p.stderr
        lines = p.stderr.strip().splitlines()
        if p.returncode == 0:
            continue  # finished before the signal
        assert p.returncode in (130, -signal.SIGINT), (delay, p.returncode, p.stderr)
        assert len(lines) == 1 and lines[0].startswith("replaylab train: "), (delay, p.stderr)


@pytest.mark.slow
def test_ctrl_c_on_a_sweep_with_two_workers_is_one_line_and_the_rerun_continues(inputs, tmp_path):
    """The terminal's Ctrl-C reaches `replaylab sweep` (its own process group here), which stops each worker once:
    no worker traceback, one line that says to rerun the sweep, no run counted failed, and the rerun finishes."""
    base = yaml.safe_load((inputs / "run.yaml").read_text())
    base = {k: v for k, v in base.items() if k not in ("stages", "name")}
    base["data"]["domains"] = {
        "generic": base["data"]["domains"]["generic"],
        "code": base["data"]["domains"]["generic"],
    }
    base["train"]["total_steps"] = 400
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        yaml.safe_dump(
            {
                "name": "sw",
                "base": base,
                "target": "code",
                "target_fraction": "1/8",
                "seeds": [0],
                "strategies": [{"strategy": "finetune", "grid": {"rho": [0, 0.5]}, "args": {"epochs": 1}}],
            }
        )
    )
    env = {**os.environ, "REPLAYLAB_HOME": str(tmp_path / "home")}
    argv = [sys.executable, "-m", "replaylab.cli", "sweep", str(exp), "--workers", "2", "--out", str(tmp_path / "sw")]
    p = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    hang_guard = time.monotonic() + HANG_S  # not a measure: only stops a hung test
    while not list((tmp_path / "sw").glob("runs/*/metrics.jsonl")):
        assert p.poll() is None and time.monotonic() < hang_guard, p.communicate()
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGINT)  # what a Ctrl-C on the terminal sends
    _, err = p.communicate(timeout=HANG_S)
    assert p.returncode == 130 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"continue with replaylab sweep {exp} --out" in lines[0], err
    assert "train --resume" not in err
    statuses = [json.loads(m.read_text())["status"] for m in (tmp_path / "sw").glob("runs/*/manifest.json")]
    assert "failed" not in statuses, statuses
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0 and "done 2" in done.stdout, done.stderr
