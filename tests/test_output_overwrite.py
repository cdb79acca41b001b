"""What `--overwrite` and `--force` may remove, and where outputs may go (replaylab.outputs, docs/design.md):

- an overwrite or rebuild removes only what that kind of artifact writes: a folder of ours that also holds
  anything else (a user's notes, an export, results written into a sweep) is refused with one line listing it;
- no output is made inside another replaylab artifact (a run inside a store, a sweep inside a run, ...),
  except where replaylab puts one itself (a sweep's runs/<id>, its report/);
- an output file is never one of replaylab's own files (a sweep's index, a run's manifest, a marker);
- a refused folder is left exactly as it was: not even a lock file is created in it.

Each case runs the real CLI entry in this process (test_output_policy.cli_in_process), one after another, on its
own copy of a tiny real workspace; cases about another process's lock run it in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml
from hang import HANG_S
from run_configs import tiny_raw
from test_output_policy import SENTINEL, cli_in_process, plant, run_cli


@dataclass
class Case:
    name: str
    args: Callable[[Path, Path], list]  # (ws, case folder) -> argv after `replaylab`
    expect: list[str]  # pieces of the one-line message
    setup: Callable[[Path, Path], None] = lambda ws, c: None
    home: bool = False  # the case gets its own copy of REPLAYLAB_HOME at c/home
    strict: list[str] = field(default_factory=list)  # folders (relative to c) that must not gain even a lock file


def copy(ws: Path, c: Path, *names: str) -> None:
    for name in names:
        shutil.copytree(ws / name, c / name, symlinks=True)


def note(path: Path, text: str = SENTINEL) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def first_run(sweep: Path) -> Path:
    return sorted((sweep / "runs").iterdir())[0]


def _export_inside_run(ws: Path, c: Path) -> None:
    copy(ws, c, "run")
    shutil.copytree(ws / "hf", c / "run" / "hf_export")  # what `export run --hf run/hf_export` made before


def _run_inside_store(ws: Path, c: Path) -> None:
    shutil.copytree(ws / "run", c / "home" / "stores" / "gen" / "run1")  # a run `train` was allowed to put there


def _symlink_to_manifest(ws: Path, c: Path) -> None:
    copy(ws, c, "run")
    plant(c / "user")
    (c / "user" / "link.csv").symlink_to(c / "run" / "manifest.json")


def _report_of_other_runs(ws: Path, c: Path) -> None:
    from replaylab.outputs import write_marker

    note(c / "rep" / "report.html", "<html></html>")
    write_marker(c / "rep", "report", "another sweep")
    note(c / "rep" / "notes.md")


_TOK = ["tokenizer", "train", "{ws}/corpus.jsonl", "--vocab-size", "300"]


def tok(ws: Path, *rest) -> list:
    return [a.format(ws=ws) for a in _TOK] + list(rest)


CASES = [
    # ---- an overwrite or rebuild removes only what that kind writes: anything else is refused, listed
    Case(
        "train-overwrite-notes",
        lambda ws, c: ["train", ws / "run2.yaml", "--out", c / "run", "--overwrite"],
        ["NOTES.md", "did not write"],
        lambda ws, c: (copy(ws, c, "run"), note(c / "run" / "NOTES.md")),
    ),
    Case(
        "train-overwrite-export",
        lambda ws, c: ["train", ws / "run2.yaml", "--out", c / "run", "--overwrite"],
        ["hf_export"],
        _export_inside_run,
    ),
    Case(
        "sweep-overwrite-user-files",
        lambda ws, c: ["sweep", ws / "other_exp.yaml", "--out", c / "S", "--overwrite"],
        ["results.csv", "analysis.json"],
        lambda ws, c: (copy(ws, c, "S"), note(c / "S" / "results.csv"), note(c / "S" / "analysis.json")),
    ),
    Case(
        "sweep-overwrite-notes-in-a-run",
        lambda ws, c: ["sweep", ws / "other_exp.yaml", "--out", c / "S", "--overwrite"],
        ["NOTES.md", "runs/"],
        lambda ws, c: (copy(ws, c, "S"), note(first_run(c / "S") / "NOTES.md")),
    ),
    Case(
        "data-build-force-run-inside",
        lambda ws, c: ["data", "build", ws / "corpus.jsonl", "--name", "gen", "--tokenizer", ws / "tok", "--force"],
        ["run1", "did not write"],
        _run_inside_store,
        home=True,
    ),
    Case(
        "report-overwrite-notes",
        lambda ws, c: ["report", ws / "S", "--out", c / "rep", "--overwrite"],
        ["notes.md"],
        _report_of_other_runs,
    ),
    Case(
        "tokenizer-overwrite-notes",
        lambda ws, c: tok(ws, "--out", c / "tok", "--overwrite"),
        ["notes.txt"],
        lambda ws, c: (copy(ws, c, "tok"), note(c / "tok" / "notes.txt")),
    ),
    Case(
        "export-force-notes",
        lambda ws, c: ["export", ws / "run", "--hf", c / "hf", "--force"],
        ["notes.txt"],
        lambda ws, c: (copy(ws, c, "hf"), note(c / "hf" / "notes.txt")),
    ),
    # ---- no output inside another replaylab artifact
    Case(
        "train-inside-store",
        lambda ws, c: ["train", ws / "run.yaml", "--out", c / "home" / "stores" / "gen" / "r"],
        ["inside the replaylab store folder"],
        home=True,
    ),
    Case(
        "sweep-inside-run",
        lambda ws, c: ["sweep", ws / "exp.yaml", "--out", c / "run" / "sweep"],
        ["inside the replaylab run folder"],
        lambda ws, c: copy(ws, c, "run"),
    ),
    Case(
        "export-inside-run",
        lambda ws, c: ["export", ws / "run", "--hf", c / "run" / "hf_export"],
        ["inside the replaylab run folder"],
        lambda ws, c: copy(ws, c, "run"),
    ),
    Case(
        "report-inside-run",
        lambda ws, c: ["report", ws / "S", "--out", c / "run" / "report"],
        ["inside the replaylab run folder"],
        lambda ws, c: copy(ws, c, "run"),
    ),
    Case(
        "tokenizer-inside-sweep",
        lambda ws, c: tok(ws, "--out", c / "S" / "tok"),
        ["inside the replaylab sweep folder"],
        lambda ws, c: copy(ws, c, "S"),
    ),
    Case(
        "train-inside-sweep",
        lambda ws, c: ["train", ws / "run.yaml", "--out", c / "S" / "mine"],
        ["inside the replaylab sweep folder"],
        lambda ws, c: copy(ws, c, "S"),
    ),
    Case(
        "train-inside-checkpoints",
        lambda ws, c: ["train", ws / "run.yaml", "--out", c / "run" / "checkpoints"],
        ["inside the replaylab run folder"],
        lambda ws, c: copy(ws, c, "run"),
    ),
    Case(
        "finetune-inside-store",
        lambda ws, c: [
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
            c / "home" / "stores" / "gen" / "ft",
        ],
        ["inside the replaylab store folder"],
        home=True,
    ),
    # ---- an output file is never one of replaylab's own files
    Case(
        "analyze-json-sweep-index",
        lambda ws, c: ["analyze", c / "S", "--json", c / "S" / "sweep.json", "--overwrite"],
        ["replaylab's own", "sweep.json"],
        lambda ws, c: copy(ws, c, "S"),
    ),
    Case(
        "results-csv-run-manifest",
        lambda ws, c: ["results", ws / "S", "--csv", c / "run" / "manifest.json", "--overwrite"],
        ["replaylab's own", "manifest.json"],
        lambda ws, c: copy(ws, c, "run"),
    ),
    Case(
        "results-csv-sweep-run-config",
        lambda ws, c: ["results", c / "S", "--csv", first_run(c / "S") / "config.yaml", "--overwrite"],
        ["replaylab's own"],
        lambda ws, c: copy(ws, c, "S"),
    ),
    Case(
        "results-csv-marker",
        lambda ws, c: ["results", ws / "S", "--csv", c / "run" / ".replaylab.json", "--overwrite"],
        ["replaylab's own"],
        lambda ws, c: copy(ws, c, "run"),
    ),
    Case(
        "results-csv-in-runs",
        lambda ws, c: ["results", ws / "S", "--csv", c / "S" / "runs" / "all.csv"],
        ["replaylab's own", "runs"],
        lambda ws, c: copy(ws, c, "S"),
    ),
    Case(
        "results-csv-in-checkpoints",
        lambda ws, c: ["results", ws / "S", "--csv", c / "run" / "checkpoints" / "x.csv"],
        ["replaylab's own", "checkpoints"],
        lambda ws, c: copy(ws, c, "run"),
    ),
    Case(
        "results-csv-store-meta",
        lambda ws, c: ["results", ws / "S", "--csv", c / "home" / "stores" / "gen" / "meta.json", "--overwrite"],
        ["replaylab's own", "meta.json"],
        home=True,
    ),
    Case(
        "results-csv-symlink-to-manifest",
        lambda ws, c: ["results", ws / "S", "--csv", c / "user" / "link.csv", "--overwrite"],
        ["replaylab's own", "manifest.json"],
        _symlink_to_manifest,
    ),
    # ---- a refused folder gets nothing, not even a lock file
    Case(
        "train-user-folder-no-lock",
        lambda ws, c: ["train", ws / "run.yaml", "--out", c / "user"],
        ["did not create"],
        lambda ws, c: plant(c / "user"),
        strict=["user"],
    ),
    Case(
        "train-home-no-lock",
        lambda ws, c: ["train", ws / "run.yaml", "--out", c / "fakehome"],
        ["did not create"],
        lambda ws, c: (plant(c / "fakehome"), note(c / "fakehome" / ".bashrc")),
        strict=["fakehome"],
    ),
    Case(
        "train-overwrite-user-folder-no-lock",
        lambda ws, c: ["train", ws / "run.yaml", "--out", c / "user", "--overwrite"],
        ["did not create"],
        lambda ws, c: plant(c / "user"),
        strict=["user"],
    ),
    Case(
        "finetune-user-folder-no-lock",
        lambda ws, c: [
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
            c / "user",
        ],
        ["did not create"],
        lambda ws, c: plant(c / "user"),
        strict=["user"],
    ),
    Case(
        "sweep-user-folder-no-lock",
        lambda ws, c: ["sweep", ws / "exp.yaml", "--out", c / "user", "--overwrite"],
        ["did not create"],
        lambda ws, c: plant(c / "user"),
        strict=["user"],
    ),
]


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
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr
    assert lines[0].startswith("replaylab ") and ": error: " in lines[0]
    for piece in case.expect:
        assert piece in lines[0], lines[0]
    assert after == before  # every file as it was; strict folders did not even gain a lock file


# ------------------------------------------------------------------------------------------ what stays allowed
def _replaced_run(ws: Path, c: Path) -> None:
    assert yaml.safe_load((c / "run" / "config.yaml").read_text())["seed"] == 4
    assert json.loads((c / "run" / "manifest.json").read_text())["status"] == "done"


def _replaced_sweep(ws: Path, c: Path) -> None:
    assert json.loads((c / "S" / "sweep.json").read_text())["name"] == "another"
    assert yaml.safe_load((c / "S" / "experiment.yaml").read_text())["name"] == "another"


def _kept_user_file(ws: Path, c: Path) -> None:
    assert (c / "S" / "results.csv").read_text() == SENTINEL  # continuing a sweep never touches it
    assert (c / "S" / "all.csv").read_text().startswith("run_id,")


def _rebuilt_store(ws: Path, c: Path) -> None:
    assert (c / "home" / "stores" / "gen" / "meta.json").stat().st_mtime > (
        ws / "home" / "stores" / "gen" / "meta.json"
    ).stat().st_mtime


ALLOWED = [  # an overwrite or rebuild of a folder holding only what its kind wrote works; CHECKS says what it did
    Case(
        "train-overwrite-clean",
        lambda ws, c: ["train", ws / "run2.yaml", "--out", c / "run", "--overwrite"],
        [],
        lambda ws, c: copy(ws, c, "run"),
    ),
    Case(
        "sweep-overwrite-clean",
        lambda ws, c: ["sweep", ws / "other_exp.yaml", "--out", c / "S", "--overwrite"],
        [],
        lambda ws, c: copy(ws, c, "S"),
    ),
    Case(
        "data-build-force-clean",
        lambda ws, c: ["data", "build", ws / "corpus.jsonl", "--name", "gen", "--tokenizer", ws / "tok", "--force"],
        [],
        home=True,
    ),
    Case(
        "export-force-clean",
        lambda ws, c: ["export", ws / "run", "--hf", c / "hf", "--force"],
        [],
        lambda ws, c: copy(ws, c, "hf"),
    ),
    # a user's file may sit in a sweep folder (it is then the user's to move before an --overwrite)
    Case(
        "user-csv-in-sweep",
        lambda ws, c: ["results", c / "S", "--csv", c / "S" / "all.csv"],
        [],
        lambda ws, c: (copy(ws, c, "S"), note(c / "S" / "results.csv")),
    ),
    Case(
        "sweep-continues-beside-user-file",
        lambda ws, c: ["sweep", ws / "exp.yaml", "--out", c / "S"],
        [],
        lambda ws, c: (copy(ws, c, "S"), note(c / "S" / "results.csv"), note(c / "S" / "all.csv", "run_id,")),
    ),
]
CHECKS = {
    "train-overwrite-clean": _replaced_run,
    "sweep-overwrite-clean": _replaced_sweep,
    "data-build-force-clean": _rebuilt_store,
    "user-csv-in-sweep": _kept_user_file,
    "sweep-continues-beside-user-file": _kept_user_file,
}


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
