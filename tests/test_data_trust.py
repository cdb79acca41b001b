"""Issue 20, data: no silent substitution of a corpus, and damaged stores or caches answered in one line.

- A source name that is both a recipe and a local path is refused; `recipe:NAME`, `./NAME`, `path:NAME`
  say which is meant, and every unambiguous spelling (the shipped configs') works as before.
- A damaged store (a .bin cut short, meta.json cut short, `{}` or of another shape) is never read as a
  smaller corpus: `data build` says damaged and names `--force` (which repairs it), `data inspect` is one
  line, and `data list` shows it as damaged beside the good ones.
- A read-only cache is one line naming REPLAYLAB_HOME.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hang import HANG_S

from replaylab.cli import main
from replaylab.data.corpus import parse_source
from replaylab.data.store import TokenStore
from replaylab.errors import DataError

REPO = Path(__file__).resolve().parent.parent


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, *argv) -> str:
    rc, out, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and ": error: " in lines[0], (rc, out, err)
    return lines[0]


# ------------------------------------------------------------------------------------- source spellings
@pytest.fixture
def project(tmp_path, monkeypatch, prose_corpus):
    """A project folder holding folders named like recipes (generic/, code/) and a data/ file; the cwd."""
    for name in ("generic", "code"):
        (tmp_path / name).mkdir()
        shutil.copyfile(prose_corpus, tmp_path / name / "docs.jsonl")
    (tmp_path / "data").mkdir()
    shutil.copyfile(prose_corpus, tmp_path / "data" / "mine.jsonl")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "source, expected",
    [
        ("recipe:generic", ("recipe", "generic")),
        ("math", ("recipe", "math")),  # no local math/: the recipe, as always
        ("./generic", ("path", "./generic")),
        ("path:generic", ("path", "generic")),
        ("path:code", ("path", "code")),
        ("data/mine.jsonl", ("path", "data/mine.jsonl")),
        ("path:data/mine.jsonl", ("path", "data/mine.jsonl")),
        ("hf:org/name", ("hf", "hf:org/name")),
    ],
)
def test_unambiguous_spellings(project, source, expected):
    assert parse_source(source) == expected


@pytest.mark.parametrize(
    "source, message",
    [
        ("generic", "source 'generic' is ambiguous: it is the built-in recipe 'generic' and also"),
        ("code", "write recipe:code for the recipe or ./code (or path:code) for the local one"),
        ("recipe:nope", "unknown recipe in source 'recipe:nope'; the recipes are basque, code"),
        ("path:math", "corpus path 'math' does not exist"),
        ("path:missing.jsonl", "corpus path 'missing.jsonl' does not exist"),
    ],
)
def test_ambiguous_or_missing_spellings_are_refused(project, source, message):
    with pytest.raises(DataError) as e:
        parse_source(source)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_local_folder_named_like_a_recipe_is_not_trained_on(project, capsys, isolated_home, tiny_tokenizer):
    """The issue's case: `replaylab train` in a folder holding generic/ trained on it without a word."""
    cfg = project / "tiny.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "local",
                "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
                "data": {"tokenizer": tiny_tokenizer, "seq_len": 32, "domains": {"generic": {"source": "generic"}}},
                "stages": [{"name": "s", "steps": 2, "mixture": {"generic": 1.0}}],
                "train": {"total_steps": 2, "batch_size": 2, "compile": "off", "progress": "off", "threads": 1},
            }
        )
    )
    line = one_line_error(capsys, "train", cfg, "--out", project / "run")
    assert "'generic' is ambiguous" in line and "recipe:generic" in line and "./generic" in line
    assert not (project / "run").exists() and not (isolated_home / "stores").exists()
    line = one_line_error(capsys, "data", "build", "code", "--tokenizer", tiny_tokenizer)
    assert "'code' is ambiguous" in line
    # Spelled apart, the local folder builds (the recipe needs a download: not tried here).
    rc, out, _ = run(capsys, "data", "build", "./code", "--tokenizer", tiny_tokenizer)
    store = TokenStore(out.strip().splitlines()[-1])
    assert rc == 0 and store.meta["source_path"] == str(project / "code")


def test_recipe_and_path_prefixes_share_the_plain_spellings_stores(project, isolated_home, tiny_tokenizer):
    from replaylab.data.store import get_store

    a = get_store("data/mine.jsonl", tokenizer=tiny_tokenizer, options={"max_docs": 20})
    b = get_store("path:data/mine.jsonl", tokenizer=tiny_tokenizer, options={"max_docs": 20})
    assert a.path == b.path and a.identity == b.identity


def test_shipped_configs_keep_their_spellings(tmp_path, monkeypatch):
    """Every source in configs/ still means the recipe it meant (in a folder without recipe-named folders)."""
    monkeypatch.chdir(tmp_path)
    sources = []

    def collect(node):
        if isinstance(node, dict):
            sources.extend(v for k, v in node.items() if k == "source" and isinstance(v, str))
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    for f in sorted((REPO / "configs").rglob("*.yaml")):
        collect(yaml.safe_load(f.read_text()))
    assert len(sources) >= 10
    for source in sources:
        assert parse_source(source) == ("recipe", source), source


# ------------------------------------------------------------------------------------- damaged stores
def _cut(file: Path, keep: int) -> None:
    data = file.read_bytes()
    file.write_bytes(data[:keep] if keep >= 0 else data[: len(data) + keep])


DAMAGE = {  # how a store gets damaged -> what the one line says is wrong
    "train.bin cut short": (lambda s: _cut(s / "train.bin", -2), "train.bin holds"),
    "val.bin missing": (lambda s: (s / "val.bin").unlink(), "val.bin is missing"),
    "train_docs.npy missing": (lambda s: (s / "train_docs.npy").unlink(), "train_docs.npy is missing"),
    "meta.json cut short": (lambda s: _cut(s / "meta.json", 40), "meta.json is not a readable JSON object"),
    "meta.json = {}": (lambda s: (s / "meta.json").write_text("{}"), "meta.json has no 'source'"),
    "meta.json = []": (lambda s: (s / "meta.json").write_text("[]"), "meta.json is not a readable JSON object"),
    "meta.json bad dtype": (
        lambda s: (s / "meta.json").write_text(
            json.dumps({**json.loads((s / "meta.json").read_text()), "dtype": "float99"})
        ),
        "no valid dtype",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_store_is_named_never_read(case, capsys, isolated_home, prose_corpus, tiny_tokenizer):
    build = ["data", "build", prose_corpus, "--tokenizer", tiny_tokenizer, "--val-docs", "8"]
    assert run(capsys, *build, "--name", "bad")[0] == 0
    assert run(capsys, *build, "--name", "good")[0] == 0
    bad = isolated_home / "stores" / "bad"
    damage, what = DAMAGE[case]
    damage(bad)

    with pytest.raises(DataError, match="is damaged") as e:
        TokenStore(bad)
    assert what in str(e.value)
    for argv in (build + ["--name", "bad"], ["data", "inspect", "bad"], ["data", "inspect", bad]):
        line = one_line_error(capsys, *argv)
        assert "is damaged" in line and what in line and "--force" in line, line
    # One damaged store does not hide (or break) the others in `data list`.
    rc, out, err = run(capsys, "data", "list")
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert rc == 0 and err == "", err
    assert "damaged" in rows["bad"] and what in rows["bad"] and "--force" in rows["bad"]
    assert "damaged" not in rows["good"] and str(prose_corpus) in rows["good"]
    # The command it names repairs it, to the very store it was.
    rc, out, _ = run(capsys, *build, "--name", "bad", "--force")
    assert rc == 0
    assert TokenStore(bad).identity == TokenStore(isolated_home / "stores" / "good").identity


def test_damage_message_names_the_command_that_rebuilt_it(isolated_home, prose_corpus, tiny_tokenizer):
    """A store of a derived name, built with options: the hint carries them, so --force rebuilds it in place."""
    from replaylab.data.store import get_store

    store = get_store(str(prose_corpus), tokenizer=tiny_tokenizer, options={"max_docs": 30, "val_docs": 4})
    _cut(store.path / "val.bin", -1)
    with pytest.raises(DataError) as e:
        TokenStore(store.path)
    hint = str(e.value).split("rebuild it with `")[1].split("`")[0]
    assert (
        hint == f"replaylab data build {prose_corpus} --tokenizer {tiny_tokenizer} --max-docs 30 --val-docs 4 --force"
    )
    assert main(hint.split()[1:]) == 0 and TokenStore(store.path).identity == store.identity


def test_store_with_replaced_tokenizer_names_force(capsys, isolated_home, prose_corpus, tiny_tokenizer):
    assert run(capsys, "data", "build", prose_corpus, "--tokenizer", tiny_tokenizer, "--name", "p")[0] == 0
    from tokenizers import Tokenizer as HF

    tok = isolated_home / "stores" / "p" / "tokenizer.json"
    other = HF.from_file(str(tok))
    other.add_tokens(["replaylab"])
    other.save(str(tok))
    line = one_line_error(capsys, "data", "inspect", "p")
    assert "tokenizer.json does not match" in line and "--name p --force" in line


# ------------------------------------------------------------------------------------- read-only cache
def _read_only_prefix(home: Path) -> list[str]:
    """A command prefix under which `home` is read-only: a read-only bind mount in a private mount namespace
    (root ignores file modes), or a plain chmod for other users."""
    if os.geteuid() != 0:
        home.chmod(0o555)
        return []
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind -o ro {home} {home} && ! touch {home}/x"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip("root without a private mount namespace: no way to make a folder read-only")
    return ["unshare", "-m", "sh", "-c", f'mount --bind -o ro {home} {home} && exec "$@"', "sh"]


@pytest.mark.parametrize("made", ["empty", "with stores/"])
def test_read_only_cache_names_replaylab_home(tmp_path, prose_corpus, tiny_tokenizer, made):
    home = tmp_path / "home"
    (home / "stores" if made != "empty" else home).mkdir(parents=True)
    env = {**os.environ, "REPLAYLAB_HOME": str(home), "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "replaylab.cli", "data", "build", str(prose_corpus), "--tokenizer", tiny_tokenizer]
    p = subprocess.run(_read_only_prefix(home) + cmd, capture_output=True, text=True, env=env, timeout=HANG_S)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "cannot write to the replaylab cache" in lines[0] and f"REPLAYLAB_HOME is '{home}'" in lines[0], lines[0]
    assert "export REPLAYLAB_HOME=" in lines[0]
