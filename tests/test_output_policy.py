"""The output-path policy (replaylab.outputs): every command that writes refuses paths it may not write, with
one line and exit 2, and leaves every file it could have touched as it was.

The bad-input table runs the real CLI entry (`replaylab.cli.main`) in this process, one case after another: a
refusal needs no process of its own, and a subprocess per case was mostly import time. Cases about another
process's lock run the CLI in a subprocess (a lock is reentrant within one process).
Each case plants sentinel files in every folder the command could touch and checks them afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml
from hang import HANG_S
from output_cli import assert_one_line_refusal, cli_in_process, plant, run_cli
from run_configs import tiny_raw

from replaylab.outputs import OutputError, check_name, claim_output, folder_lock, kind_of, write_marker


@dataclass
class Case:
    name: str
    args: Callable[[Path], list]  # ws -> argv after `replaylab`
    expect: str  # a piece of the one-line message
    setup: Callable[[Path], None] = lambda ws: None
    cwd: Callable[[Path], Path] = lambda ws: ws / "cwd"
    keep: list = field(default_factory=list)  # extra files (relative to ws) that must be unchanged


def _sweep_folder(ws: Path, name: str, experiment: Path) -> None:
    from replaylab.sweep import prepare_sweep

    prepare_sweep(experiment, ws / name)


CASES = [
    # --name is a name, not a path
    Case("name-dotdot", lambda ws: ["data", "build", ws / "corpus.jsonl", "--name", ".."], "not a valid name"),
    Case("name-dot", lambda ws: ["data", "build", ws / "corpus.jsonl", "--name", "."], "not a valid name"),
    Case("name-parent-path", lambda ws: ["data", "build", ws / "corpus.jsonl", "--name", "../x"], "not a valid name"),
    Case(
        "name-absolute",
        lambda ws: ["data", "build", ws / "corpus.jsonl", "--name", str(ws / "abs")],
        "not a valid name",
    ),
    Case("name-separator", lambda ws: ["data", "build", ws / "corpus.jsonl", "--name", "a/b"], "not a valid name"),
    # a store name that holds another corpus
    Case(
        "store-other-corpus",
        lambda ws: ["data", "build", ws / "other.jsonl", "--name", "gen", "--tokenizer", ws / "tok"],
        "another",
        keep=["home/stores/gen/meta.json", "home/stores/gen/train.bin"],
    ),
    # tokenizer train into folders that are not replaylab tokenizers
    Case(
        "tokenizer-user-folder",
        lambda ws: ["tokenizer", "train", ws / "corpus.jsonl", "--vocab-size", "300", "--out", ws / "user"],
        "did not create",
    ),
    Case(
        "tokenizer-cwd",
        lambda ws: ["tokenizer", "train", ws / "corpus.jsonl", "--vocab-size", "300", "--out", "."],
        "did not create",
    ),
    Case(
        "tokenizer-out-is-file",
        lambda ws: [
            "tokenizer",
            "train",
            ws / "corpus.jsonl",
            "--vocab-size",
            "300",
            "--out",
            ws / "user" / "KEEP.txt",
        ],
        "is a file",
    ),
    Case(
        "tokenizer-into-store",
        lambda ws: [
            "tokenizer",
            "train",
            ws / "corpus.jsonl",
            "--vocab-size",
            "300",
            "--out",
            ws / "home" / "stores" / "gen",
        ],
        "store folder, not a tokenizer",
    ),
    # report / analyze / results outputs
    Case("report-user-folder", lambda ws: ["report", ws / "sweep", "--out", ws / "user"], "did not create"),
    Case(
        "report-into-sweep", lambda ws: ["report", ws / "sweep", "--out", ws / "sweep2"], "sweep folder, not a report"
    ),
    Case(
        "report-through-file", lambda ws: ["report", ws / "sweep", "--out", ws / "user" / "KEEP.txt" / "r"], "is a file"
    ),
    Case(
        "analyze-json-exists",
        lambda ws: ["analyze", ws / "sweep", "--json", ws / "user" / "KEEP.txt"],
        "already exists",
    ),
    Case("analyze-json-dir", lambda ws: ["analyze", ws / "sweep", "--json", ws / "user"], "is a folder"),
    Case(
        "analyze-csv-through-file",
        lambda ws: ["analyze", ws / "sweep", "--csv", ws / "user" / "KEEP.txt" / "x.csv"],
        "is a file",
    ),
    Case(
        "results-csv-exists", lambda ws: ["results", ws / "sweep", "--csv", ws / "user" / "KEEP.txt"], "already exists"
    ),
    # sweeps: another experiment's folder, a user's folder
    Case(
        "sweep-other-experiment",
        lambda ws: ["sweep", ws / "other_exp.yaml", "--out", ws / "sweep"],
        "holds another sweep",
        keep=["sweep/experiment.yaml", "sweep/sweep.json"],
    ),
    Case("sweep-user-folder", lambda ws: ["sweep", ws / "exp.yaml", "--out", ws / "user"], "did not create"),
    Case(
        "demo-user-folder", lambda ws: ["demo", "--experiment", ws / "exp.yaml", "--out", ws / "user"], "did not create"
    ),
    # train / finetune / export into folders that are not theirs
    Case("train-user-folder", lambda ws: ["train", ws / "run.yaml", "--out", ws / "user"], "did not create"),
    Case("train-out-is-file", lambda ws: ["train", ws / "run.yaml", "--out", ws / "user" / "KEEP.txt"], "is a file"),
    Case(
        "train-through-file",
        lambda ws: ["train", ws / "run.yaml", "--out", ws / "user" / "KEEP.txt" / "run"],
        "is a file",
    ),
    Case("train-into-sweep", lambda ws: ["train", ws / "run.yaml", "--out", ws / "sweep"], "sweep folder, not a run"),
    Case("train-resume-user-folder", lambda ws: ["train", "--resume", ws / "user"], "not a run folder"),
    Case(
        "finetune-user-folder",
        lambda ws: [
            "finetune",
            "--model",
            ws / "hf",
            "--target",
            ws / "corpus.jsonl",
            "--replay",
            "none",
            "--seq-len",
            "16",
            "--out",
            ws / "user",
        ],
        "did not create",
    ),
    Case("export-user-folder", lambda ws: ["export", ws / "run", "--hf", ws / "user"], "did not create"),
    Case(
        "export-into-store",
        lambda ws: ["export", ws / "run", "--hf", ws / "home" / "stores" / "gen"],
        "store folder, not a export",
    ),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory, code_corpus, prose_corpus, tiny_tokenizer, prose_store, code_store):
    """A workspace with a user's folder, a store `gen`, a sweep, a trained run and the inputs the cases name."""
    from replaylab.config import from_dict
    from replaylab.data.store import get_store
    from replaylab.runconfig import RunConfig
    from replaylab.train import run_training

    ws = tmp_path_factory.mktemp("policy")
    home = ws / "home"
    old = os.environ.get("REPLAYLAB_HOME")
    os.environ["REPLAYLAB_HOME"] = str(home)
    try:
        lines = [json.dumps({"text": f"document {i}: " + "words and more words " * 20}) for i in range(40)]
        (ws / "corpus.jsonl").write_text("\n".join(lines) + "\n")
        (ws / "other.jsonl").write_text("\n".join(lines[::-1][:30]) + "\n")
        shutil.copytree(tiny_tokenizer, ws / "tok")
        get_store(str(ws / "corpus.jsonl"), tokenizer=str(ws / "tok"), name="gen")
        raw = tiny_raw(prose_store, code_store, tiny_tokenizer)
        (ws / "run.yaml").write_text(yaml.safe_dump(raw))
        run_training(from_dict(RunConfig, raw), ws / "run")
        from replaylab.commands.export import export_run

        export_run(ws / "run", ws / "hf")  # a real (tiny) Hugging Face model for `finetune --model`
        exp = {
            "name": "policy",
            "base": {k: raw[k] for k in ("model", "data", "train", "eval", "logging")},
            "target": "code",
            "target_fraction": "1/8",
            "seeds": [0],
            "strategies": [{"strategy": "reference", "grid": {"budget_multiple": [1]}, "args": {"epochs": 1}}],
        }
        exp["base"]["data"] = {
            **raw["data"],
            "domains": {"generic": {"source": str(prose_store.path)}, "code": {"source": str(code_store.path)}},
        }
        exp["base"]["train"] = {k: v for k, v in raw["train"].items() if k != "micro_batch_size"}
        (ws / "exp.yaml").write_text(yaml.safe_dump(exp))
        (ws / "other_exp.yaml").write_text(yaml.safe_dump({**exp, "name": "another"}))
        _sweep_folder(ws, "sweep", ws / "exp.yaml")
        _sweep_folder(ws, "sweep2", ws / "exp.yaml")
        plant(ws / "user")
        plant(ws / "cwd")
    finally:
        if old is None:
            os.environ.pop("REPLAYLAB_HOME", None)
        else:
            os.environ["REPLAYLAB_HOME"] = old
    return ws


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file under root (a folder's name maps to None), with its bytes: a command must change none."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.name == ".replaylab.lock" or "__pycache__" in p.parts:
            continue
        out[str(p.relative_to(root))] = p.read_bytes() if p.is_file() else None
    return out


@pytest.fixture(scope="module")
def outcomes(world):
    env = {**os.environ, "REPLAYLAB_HOME": str(world / "home"), "PYTHONWARNINGS": "ignore"}
    before = _snapshot(world)

    results = {c.name: cli_in_process(*c.args(world), env=env, cwd=c.cwd(world)) for c in CASES}
    return results, before, _snapshot(world)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused_with_one_line_and_nothing_touched(case, outcomes):
    results, _, _ = outcomes
    assert_one_line_refusal(results[case.name], case.expect)


def test_no_case_changed_or_left_any_file(outcomes):
    """Every sentinel and every file of the workspace (user's, store, sweep, run) is byte-identical afterwards,
    and no case left a new file or a half-written folder behind."""
    _, before, after = outcomes
    assert after == before


# ------------------------------------------------------------------------------------------ the rule itself
def test_claim_output_rules(tmp_path):
    assert claim_output(tmp_path / "new", "report") == "new"
    (tmp_path / "empty").mkdir()
    assert claim_output(tmp_path / "empty", "report") == "new"
    ours = tmp_path / "ours"
    ours.mkdir()
    write_marker(ours, "report", "A")
    assert kind_of(ours) == "report"
    assert claim_output(ours, "report", "A") == "same"
    with pytest.raises(OutputError, match="--overwrite"):
        claim_output(ours, "report", "B")
    assert claim_output(ours, "report", "B", overwrite=True) == "replace"
    with pytest.raises(OutputError, match="not a sweep"):
        claim_output(ours, "sweep", "A", overwrite=True)  # --overwrite never crosses kinds
    plant(tmp_path / "user")
    with pytest.raises(OutputError, match="did not create"):
        claim_output(tmp_path / "user", "report", overwrite=True)  # nor takes a user's folder


def test_folders_from_before_markers_are_recognised_by_layout(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for f in ("config.yaml", "manifest.json", "metrics.jsonl"):
        (run / f).write_text("{}")
    assert kind_of(run) == "run"
    (run / "notes.txt").write_text("mine")
    assert kind_of(run) is None  # anything foreign: not ours
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    (tok / "tokenizer_config.json").write_text(json.dumps({"eos_token": "x"}))
    assert kind_of(tok) is None  # a hub tokenizer folder looks the same: only ours says "replaylab"
    (tok / "tokenizer_config.json").write_text(json.dumps({"replaylab": {}}))
    assert kind_of(tok) == "tokenizer"


@pytest.mark.parametrize("name", ["..", ".", "../x", "/abs", "a/b", "", ".hidden", "x" * 200])
def test_names_are_not_paths(name):
    with pytest.raises(OutputError, match="not a valid name"):
        check_name(name)


def test_overwrite_replaces_only_our_own_store(world, tiny_tokenizer):
    """`data build OTHER --name gen --overwrite` replaces the store gen (ours, same kind); without it, refused."""
    env = {**os.environ, "REPLAYLAB_HOME": str(world / "home")}
    home = world / "home"
    # A copy of the home so the module's other tests keep their store.
    copy = world.parent / "home_copy"
    shutil.copytree(home, copy)
    env["REPLAYLAB_HOME"] = str(copy)
    args = ["data", "build", world / "other.jsonl", "--name", "gen", "--tokenizer", world / "tok"]
    assert run_cli(*args, env=env, cwd=world).returncode == 2
    r = run_cli(*args, "--overwrite", env=env, cwd=world)
    assert r.returncode == 0, r.stderr
    assert json.loads((copy / "stores" / "gen" / "meta.json").read_text())["source"] == str(world / "other.jsonl")
    assert not [p for p in (copy / "stores").iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------ locks and leftovers
def test_second_trainer_on_a_running_run_is_refused(world, tmp_path, prose_store, code_store, tiny_tokenizer):
    """Two processes on one run folder: the second gets one line naming the first; after the first is stopped
    (SIGTERM: checkpoint), the folder resumes normally."""
    raw = tiny_raw(prose_store, code_store, tiny_tokenizer)
    raw["stages"][0]["steps"] = 2000
    raw["train"].update(total_steps=2004, log_every=50)
    cfg = tmp_path / "long.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    env = {**os.environ, "REPLAYLAB_HOME": str(world / "home")}
    first = subprocess.Popen(
        [sys.executable, "-m", "replaylab.cli", "train", str(cfg), "--out", str(run)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        hang_guard = time.monotonic() + HANG_S  # not a measure: only stops a hung test
        while not (run / "manifest.json").exists():
            assert first.poll() is None and time.monotonic() < hang_guard, first.communicate()
            time.sleep(0.2)
        second = run_cli("train", "--resume", run, env=env, cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        line = second.stderr.strip()
        assert len(line.splitlines()) == 1 and f"process {first.pid}" in line and "being written" in line
        assert first.poll() is None  # the first one trains on
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=HANG_S)
    assert first.returncode == 143
    # The lock died with its holder: a stale lock file never blocks.
    assert (run / ".replaylab.lock").exists()
    with folder_lock(run, "run folder"):
        pass


def test_two_builds_of_one_store_at_once_and_stale_leftovers(tmp_path, tiny_tokenizer, code_corpus):
    """Two `data build` of the same store at once both succeed with one store; a killed builder's lock file and
    temporary folders never block a later build, and are cleaned."""
    home = tmp_path / "home"
    stores = home / "stores"
    stores.mkdir(parents=True)
    # Leftovers of a builder killed earlier: its lock file and two temporary folders (old and new naming).
    (stores / ".code.lock").write_text("")
    (stores / ".code.abcd1234.tmp").mkdir()
    (stores / ".code.efgh5678.999999@nohost.tmp").mkdir()
    (stores / ".code.x.abcd1234.tmp").mkdir()  # a store named `code.x`'s: not ours to clean
    env = {**os.environ, "REPLAYLAB_HOME": str(home)}
    args = [
        sys.executable,
        "-m",
        "replaylab.cli",
        "data",
        "build",
        str(code_corpus),
        "--name",
        "code",
        "--tokenizer",
        tiny_tokenizer,
    ]
    procs = [
        subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=HANG_S) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0].splitlines()[-1] == outs[1][0].splitlines()[-1] == str(stores / "code")
    left = sorted(p.name for p in stores.iterdir())
    assert left == [".code.lock", ".code.x.abcd1234.tmp", "code"], left
