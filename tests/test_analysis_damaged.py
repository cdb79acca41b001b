"""Damaged inputs of results / analyze / report (issue 20) and one manifest reader with one policy
(issue 21): a sweep.json or manifest.json that cannot be read is named with its fix in one line (exit 2)
or reported as `damaged` with its path, never as `pending` and never as a traceback."""

from __future__ import annotations

import json

import pytest
from analysis_fixtures import make_sweep

from replaylab.cli import main as cli
from replaylab.sweep.local import terminal
from replaylab.sweep.runstore import RunStore

PLAN_DAMAGES = {
    "truncated": lambda text: text[: len(text) // 2],
    "a list": lambda text: "[]",
    "an object without runs": lambda text: '{"name": "x"}',
    "runs without ids": lambda text: '{"runs": [{"config": {}}]}',
    "empty": lambda text: "",
    "not text": lambda text: "\udcff",
}
MANIFEST_DAMAGES = {
    "truncated": lambda text: text[: len(text) // 2],
    "a list": lambda text: "[1, 2]",
    "not JSON": lambda text: "hello: world\n",
    "a number": lambda text: "3",
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("sweep"), seeds=(0, 1), domains=("code",))


def _one_line_error(capsys, *must: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in must:
        assert text in err, (text, err)
    return err


def _damage(path, how, table) -> None:
    text = path.read_text(encoding="utf-8")
    damaged = table[how](text)
    path.write_bytes(damaged.encode("utf-8", "surrogateescape"))


@pytest.mark.parametrize("how", list(PLAN_DAMAGES))
@pytest.mark.parametrize("command", [["results"], ["analyze", "--boot", "20"], ["report", "--boot", "20"]])
def test_a_damaged_sweep_json_is_one_line_naming_it_and_the_fix(tmp_path, capsys, how, command):
    root = make_sweep(tmp_path / "s", seeds=(0,), domains=("code",))
    _damage(root / "sweep.json", how, PLAN_DAMAGES)
    assert cli([command[0], str(root), *command[1:]]) == 2
    _one_line_error(capsys, str(root / "sweep.json"), "is not a sweep plan", "replaylab sweep")
    assert not (root / "report").exists()


@pytest.mark.parametrize("how", list(MANIFEST_DAMAGES))
def test_a_foreign_manifest_in_a_bare_folder_stops_analyze_naming_it(tmp_path, capsys, how):
    root = make_sweep(tmp_path / "s", seeds=(0,), domains=("code",), with_plan=False)
    bad = sorted((root / "runs").glob("*/manifest.json"))[3]
    _damage(bad, how, MANIFEST_DAMAGES)
    assert cli(["analyze", str(root), "--boot", "20"]) == 2
    _one_line_error(capsys, str(bad), "move its folder out")


@pytest.mark.parametrize("how", list(MANIFEST_DAMAGES))
def test_a_damaged_manifest_in_a_sweep_is_damaged_everywhere_never_pending(tmp_path, capsys, how):
    root = make_sweep(tmp_path / "s", seeds=(0, 1), domains=("code",))
    store = RunStore(root)
    rid = "run0002"
    before = store.status(rid)
    assert before == "done"
    _damage(store.manifest_path(rid), how, MANIFEST_DAMAGES)
    assert store.status(rid) == "damaged"
    assert terminal(store, rid, retry_before=None)  # a sweep neither retrains it nor overwrites its record
    assert cli(["results", str(root)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith(rid))
    assert "damaged" in line and "pending" not in line
    assert f"damaged: run {rid}: {store.manifest_path(rid)}" in out
    assert cli(["analyze", str(root), "--boot", "20", "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert f"run {rid} left out, its manifest is damaged: {store.manifest_path(rid)}" in out.replace("\n", "")
    assert any(rid in n for n in json.loads((tmp_path / "a.json").read_text())["notes"])


def test_the_damaged_manifest_is_kept_when_a_retry_moves_the_attempt_aside(tmp_path):
    from replaylab.sweep.local import _archive_failed_attempt

    root = make_sweep(tmp_path / "s", seeds=(0,), domains=("code",))
    store = RunStore(root)
    store.manifest_path("run0001").write_text("[")
    assert store.status("run0001") == "damaged"
    assert not terminal(store, "run0001", retry_before=float("inf"))  # --retry takes it up again ...
    _archive_failed_attempt(store.run_dir("run0001"))  # ... after moving the attempt aside, as for a failure
    assert (store.run_dir("run0001") / "attempt_1" / "manifest.json").read_text() == "["
    assert store.status("run0001") == "pending"
