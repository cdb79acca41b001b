"""The `--overwrite` / `--force` cases of test_output_overwrite.py, as data: each a command line, the workspace it
finds (a copy of the module's tiny world) and what it must say; refused cases (CASES) and allowed ones (ALLOWED,
with CHECKS saying what each did)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from output_cli import SENTINEL, plant


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
