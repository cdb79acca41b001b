"""The `replaylab data` and `replaylab tokenizer` commands: outputs, and exit 2 + one line on bad input."""

import json
import os
import subprocess
import sys

import pytest
from hang import HANG_S

from replaylab.cli import main


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(capsys, match, *argv):
    rc, out, err = run(capsys, *argv)
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("replaylab ") and ": error: " in lines[0], err
    assert match in lines[0], lines[0]
    return lines[0]


def test_build_list_inspect(capsys, isolated_home, prose_corpus, tiny_tokenizer):
    rc, out, _ = run(
        capsys, "data", "build", str(prose_corpus), "--tokenizer", tiny_tokenizer, "--name", "prose", "--val-docs", "8"
    )
    assert rc == 0
    path = out.strip().splitlines()[-1]
    assert path == str(isolated_home / "stores" / "prose") and os.path.exists(os.path.join(path, "meta.json"))
    assert "8 held out" in out
    rc, out, _ = run(capsys, "data", "list")
    assert rc == 0 and "prose" in out and "tokens" in out and "recipes:" in out
    rc, out, _ = run(capsys, "data", "inspect", "prose")
    assert rc == 0
    for word in ("tokens", "documents", "chars/token", "val ", "8 documents", "sample"):
        assert word in out, word
    rc, out, _ = run(capsys, "data", "inspect", path, "--json", "--seq-len", "128")
    info = json.loads(out)
    assert info["splits"]["val"]["documents"] == 8 and info["sequences"]["val"] >= 1 and info["sample"]


def test_build_with_template_and_val_fraction(capsys, isolated_home, tmp_path, tiny_tokenizer):
    f = tmp_path / "qa.jsonl"
    f.write_text("".join(json.dumps({"q": f"question {i}?", "a": f"answer {i}."}) + "\n" for i in range(40)))
    rc, out, _ = run(
        capsys,
        "data",
        "build",
        str(f),
        "--tokenizer",
        tiny_tokenizer,
        "--template",
        "{q} {a}",
        "--val-fraction",
        "0.25",
    )
    assert rc == 0
    meta = json.loads(open(os.path.join(out.strip().splitlines()[-1], "meta.json")).read())
    assert meta["splits"]["val"]["documents"] == 10 and meta["corpus_options"]["template"] == "{q} {a}"


def test_tokenizer_train_and_show(capsys, tmp_path, prose_corpus):
    out_dir = tmp_path / "tok"
    rc, out, _ = run(
        capsys,
        "tokenizer",
        "train",
        str(prose_corpus),
        "--vocab-size",
        "400",
        "--out",
        str(out_dir),
        "--sample-mb",
        "0.1",
    )
    assert rc == 0 and out.strip().splitlines()[-1] == str(out_dir)
    assert (out_dir / "tokenizer.json").exists()
    rc, out, _ = run(capsys, "tokenizer", "show", str(out_dir), "--text", "hello world")
    assert rc == 0 and "vocab      400" in out and "<|endoftext|>" in out


def test_bad_inputs_exit_2_with_one_line(capsys, isolated_home, tmp_path, tiny_tokenizer, prose_corpus, monkeypatch):
    tok = ["--tokenizer", tiny_tokenizer]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert_user_error(capsys, "is empty", "data", "build", str(empty), *tok)
    junk = tmp_path / "junk.txt"
    junk.write_bytes(b"\xff\xfe")
    assert_user_error(capsys, "1 undecodable", "data", "build", str(junk), *tok)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    assert_user_error(capsys, "bad.jsonl:2: not valid JSON", "data", "build", str(bad), *tok)
    assert_user_error(
        capsys, "bad.jsonl:1: record has no field 'body'", "data", "build", str(bad), *tok, "--text-field", "body"
    )
    assert_user_error(capsys, "does not exist", "data", "build", str(tmp_path / "missing.jsonl"), *tok)
    assert_user_error(capsys, "unknown source 'no_such_recipe'", "data", "build", "no_such_recipe", *tok)
    assert_user_error(
        capsys,
        "vocab size 100 is too small",
        "tokenizer",
        "train",
        str(prose_corpus),
        "--vocab-size",
        "100",
        "--out",
        str(tmp_path / "t"),
    )
    assert not (tmp_path / "t").exists()
    assert_user_error(capsys, "no token store 'nope'", "data", "inspect", "nope")
    assert_user_error(
        capsys,
        "leaves no training document",
        "data",
        "build",
        str(prose_corpus),
        *tok,
        "--max-docs",
        "3",
        "--val-docs",
        "3",
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_user_error(capsys, "hub is not reachable", "data", "build", "hf:org/name", *tok)
    # Nothing half-written: no store and no temporary folder was left behind.
    stores = isolated_home / "stores"
    assert not stores.exists() or [p.name for p in stores.iterdir() if not p.name.endswith(".lock")] == []


def test_invalid_utf8_builds_with_a_warning(capsys, isolated_home, tmp_path, tiny_tokenizer):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.txt").write_bytes(b"good text here " * 20)
    (d / "b.txt").write_bytes(b"bad \xff bytes " * 20)
    rc, out, err = run(capsys, "data", "build", str(d), "--tokenizer", tiny_tokenizer, "--val-docs", "1")
    assert rc == 0 and "1 document(s) were not valid UTF-8; 20 undecodable" in err


def test_subprocess_error_is_one_line(tmp_path, prose_corpus):
    env = {**os.environ, "REPLAYLAB_HOME": str(tmp_path / "home")}
    p = subprocess.run(
        [sys.executable, "-m", "replaylab.cli", "data", "build", str(tmp_path / "nope.jsonl")],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_S,
    )
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "replaylab data: error: corpus path" in p.stderr


def test_val_docs_and_fraction_are_exclusive(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "build", "x", "--val-docs", "1", "--val-fraction", "0.5"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_inspect_by_source_name(capsys, isolated_home, prose_corpus, tiny_tokenizer):
    """A store built without --name is named <source>-<tokenizer hash>-<key>; `inspect SOURCE` finds it."""
    rc, out, _ = run(capsys, "data", "build", str(prose_corpus), "--tokenizer", tiny_tokenizer, "--val-docs", "4")
    assert rc == 0
    name = os.path.basename(out.strip().splitlines()[-1])
    source = name.rsplit("-", 2)[0]
    rc, out, _ = run(capsys, "data", "inspect", source)
    assert rc == 0 and name in out


def test_list_shows_full_source_paths(capsys, isolated_home, tmp_path, prose_corpus, tiny_tokenizer, monkeypatch):
    """Two datasets' train.jsonl, built from relative paths: readable names, full paths, aligned columns."""
    lines = prose_corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    for folder, part in (("wiki", lines[:10]), ("forum", lines[10:20])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "train.jsonl").write_text("".join(part))
    monkeypatch.chdir(tmp_path)
    names = {}
    for folder in ("wiki", "forum"):
        rc, out, _ = run(
            capsys, "data", "build", f"{folder}/train.jsonl", "--tokenizer", tiny_tokenizer, "--val-docs", "2"
        )
        assert rc == 0
        names[folder] = os.path.basename(out.strip().splitlines()[-1])
        assert names[folder].startswith(f"{folder}-train-")
    rc, out, _ = run(capsys, "data", "list")
    assert rc == 0
    rows = out.split("stores:\n", 1)[1].splitlines()
    assert rows[0].split() == ["name", "tokens", "docs", "on", "disk", "source"]
    for folder in ("wiki", "forum"):
        row = next(r for r in rows if r.split()[0] == names[folder])
        assert row.endswith(f"  {tmp_path / folder / 'train.jsonl'}")
    assert len({r.index("/") for r in rows[1:]} | {rows[0].index("source")}) == 1  # the source column lines up
