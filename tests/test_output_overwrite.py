"""What `--overwrite` and `--force` may remove, and where outputs may go (replaylab.outputs, docs/design.md):

- an overwrite or rebuild removes only what that kind of artifact writes: a folder of ours that also holds
  anything else (a user's notes, an export, results written into a sweep) is refused with one line listing it;
- no output is made inside another replaylab artifact (a run inside a store, a sweep inside a run, ...),
  except where replaylab puts one itself (a sweep's runs/<id>, its report/);
- an output file is never one of replaylab's own files (a sweep's index, a run's manifest, a marker);
- a refused folder is left exactly as it was: not even a lock file is created in it.

Each case runs the real CLI entry in this process (output_cli.cli_in_process), one after another, on its
own copy of a tiny real workspace (the cases: overwrite_cases.py); cases about another process's lock run it in
a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from hang import HANG_S
from output_cli import assert_one_line_refusal, cli_in_process, run_cli
from overwrite_cases import ALLOWED, CASES, CHECKS, Case, copy, first_run
from run_configs import tiny_raw


@pytest.fixture(scope="module")
def world(tmp_path_factory, prose_store, code_store, tiny_tokenizer):
    """A run, its export, another run's config, a store `gen`, a tokenizer and a finished sweep (templates)."""
    from replaylab.commands.export import export_run
    from replaylab.config import from_dict
    from replaylab.data.store import get_store
    from replaylab.runconfig import RunConfig
    from replaylab.sweep import run_sweep
    from replaylab.train import run_training

    ws = tmp_path_factory.mktemp("overwrite")
    old = os.environ.get("REPLAYLAB_HOME")
    os.environ["REPLAYLAB_HOME"] = str(ws / "home")
    try:
        lines = [json.dumps({"text": f"document {i}: " + "words and more words " * 20}) for i in range(40)]
        (ws / "corpus.jsonl").write_text("\n".join(lines) + "\n")
        shutil.copytree(tiny_tokenizer, ws / "tok")
        get_store(str(ws / "corpus.jsonl"), tokenizer=str(ws / "tok"), name="gen")
        raw = tiny_raw(prose_store, code_store, tiny_tokenizer)
        (ws / "run.yaml").write_text(yaml.safe_dump(raw))
        (ws / "run2.yaml").write_text(yaml.safe_dump({**raw, "seed": 4}))
        run_training(from_dict(RunConfig, raw), ws / "run")
        export_run(ws / "run", ws / "hf")
        exp = {
            "name": "policy",
            "base": {k: raw[k] for k in ("model", "data", "train", "eval", "logging")},
            "target": "code",
            "target_fraction": "1/8",
            "seeds": [0],
            "strategies": [{"strategy": "reference", "grid": {"budget_multiple": [1]}, "args": {"epochs": 1}}],
        }
        exp["base"]["train"] = {k: v for k, v in raw["train"].items() if k != "micro_batch_size"}
        (ws / "exp.yaml").write_text(yaml.safe_dump(exp))
        (ws / "other_exp.yaml").write_text(yaml.safe_dump({**exp, "name": "another"}))
        run_sweep(ws / "exp.yaml", ws / "S", progress=False)
    finally:
        if old is None:
            os.environ.pop("REPLAYLAB_HOME", None)
        else:
            os.environ["REPLAYLAB_HOME"] = old
    return ws


def snapshot(root: Path, strict: list[Path]) -> dict[str, bytes | str | None]:
    """Every entry under root with its bytes (a folder: None, a link: its target). Lock files count only inside
    `strict` folders: elsewhere a command may lock a folder of its own before refusing."""
    out: dict[str, bytes | str | None] = {}
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts or (p.name.endswith(".lock") and not any(s in p.parents for s in strict)):
            continue
        out[str(p.relative_to(root))] = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
    return out


@pytest.fixture(scope="module")
def outcomes(world):
    def one(case: Case):
        c = world / "cases" / case.name
        c.mkdir(parents=True)
        if case.home:
            copy(world, c, "home")
        case.setup(world, c)
        strict = [c / s for s in case.strict]
        env = {
            **os.environ,
            "REPLAYLAB_HOME": str(c / "home" if case.home else world / "home"),
            "PYTHONWARNINGS": "ignore",
        }
        before = snapshot(c, strict)
        r = cli_in_process(*case.args(world, c), env=env, cwd=c)
        return r, before, snapshot(c, strict)

    return {c.name: one(c) for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused_with_one_line_and_nothing_touched(case, outcomes):
    r, before, after = outcomes[case.name]
    assert_one_line_refusal(r, *case.expect)
    assert after == before  # every file as it was; strict folders did not even gain a lock file


# ------------------------------------------------------------------------------------------ what stays allowed


@pytest.fixture(scope="module")
def allowed(world):
    def one(case: Case):
        c = world / "allowed" / case.name
        c.mkdir(parents=True)
        if case.home:
            copy(world, c, "home")
        case.setup(world, c)
        env = {
            **os.environ,
            "REPLAYLAB_HOME": str(c / "home" if case.home else world / "home"),
            "PYTHONWARNINGS": "ignore",
        }
        return cli_in_process(*case.args(world, c), env=env, cwd=c)

    return {c.name: one(c) for c in ALLOWED}


@pytest.mark.parametrize("case", ALLOWED, ids=[c.name for c in ALLOWED])
def test_allowed_overwrites_and_outputs_work(case, allowed, world):
    r = allowed[case.name]
    assert r.returncode == 0, r.stderr[-2000:]
    if case.name in CHECKS:
        CHECKS[case.name](world, world / "allowed" / case.name)


# ------------------------------------------------------------------------------------------ live writers
@pytest.mark.parametrize("held", ["sweep", "run"])
def test_sweep_overwrite_refused_while_the_folder_is_in_use(world, tmp_path, held):
    """A running sweep holds its folder `in_use` and each run it trains holds the run's lock: `sweep --overwrite`
    of another experiment is refused with one line naming the process, and deletes nothing."""
    from replaylab.outputs import folder_lock, in_use

    copy(world, tmp_path, "S")
    before = snapshot(tmp_path, [])
    lock = in_use(tmp_path / "S", "sweep folder") if held == "sweep" else folder_lock(first_run(tmp_path / "S"), "run")
    env = {**os.environ, "REPLAYLAB_HOME": str(world / "home")}
    with lock:
        r = run_cli("sweep", world / "other_exp.yaml", "--out", tmp_path / "S", "--overwrite", env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and f"process {os.getpid()}" in line and "being written" in line, line
    assert snapshot(tmp_path, []) == before


def test_sweep_overwrite_refused_while_another_sweep_trains(world, tmp_path):
    """The issue's case, end to end: `sweep --out S --overwrite` while another `sweep` trains into S is refused
    (it used to delete S under the running sweep), and the running sweep goes on.

    No race: the test holds the run's lease lock (as a worker does while it reads or writes the lease), so the
    first sweep's worker waits at its claim until the test lets go; the first sweep holds S in use meanwhile."""
    import subprocess
    import sys
    import time

    from replaylab.output_folders import IN_USE
    from replaylab.sweep import prepare_sweep
    from replaylab.sweep.runstore import RunStore

    env = {**os.environ, "REPLAYLAB_HOME": str(world / "home"), "PYTHONWARNINGS": "ignore"}
    prepare_sweep(world / "exp.yaml", tmp_path / "S")
    store = RunStore(tmp_path / "S")
    (rid,) = [e["run_id"] for e in store.plan()["runs"]]
    argv = [sys.executable, "-m", "replaylab.cli", "sweep", str(world / "exp.yaml"), "--out", str(tmp_path / "S")]
    with store._locked(rid):
        first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            use = tmp_path / "S" / IN_USE
            hang_guard = time.monotonic() + HANG_S  # not a measure: only stops a hung test
            while not (use.exists() and f"process {first.pid} " in use.read_text()):
                assert first.poll() is None and time.monotonic() < hang_guard, first.communicate()
                time.sleep(0.2)
            r = run_cli(
                "sweep", world / "other_exp.yaml", "--out", tmp_path / "S", "--overwrite", env=env, cwd=tmp_path
            )
            assert r.returncode == 2, r.stderr[-2000:]
            line = r.stderr.strip()
            assert len(line.splitlines()) == 1 and f"being written by process {first.pid} " in line, line
            assert first.poll() is None  # the first sweep waits for its run, in its own folder
            assert json.loads((tmp_path / "S" / "sweep.json").read_text())["name"] == "policy"
        except BaseException:
            first.kill()
            first.communicate()
            raise
    out, err = first.communicate(timeout=HANG_S)  # let go: the first sweep trains its run and finishes
    assert first.returncode == 0, err[-2000:]
    assert store.status(rid) == "done"
