"""Shared test fixtures: small real-text corpora cut from the running interpreter's standard library,
a tiny trained tokenizer, and token stores built from them. Session-scoped and cheap (~5 s in all),
so every layer's tests can train real models on real tokens.

- `code_corpus`:  a .jsonl of ~1 MB of Python standard-library source files (a target-like domain).
- `prose_corpus`: a .jsonl of the English documentation topics in `pydoc_data` (~0.45 MB; generic-like).
- `tiny_tokenizer`: path of a byte-level BPE (vocab 512) trained on both; pass it as `tokenizer=`.
- `code_store`, `prose_store`: `TokenStore`s of the two corpora with `tiny_tokenizer`
  (~1,500 and ~700 train sequences of 256 tokens, >= 64 val sequences each).
- `pc_corpus`, `chat_corpus`, `pc_store`, `chat_store`: instruction records (Python reference topics as Q/A,
  tests/instruction_fixtures.py) and their instruction stores (prompt_completion, messages);
- `store_home`: the REPLAYLAB_HOME holding those stores; `isolated_home`: a fresh, empty
  REPLAYLAB_HOME for one test (never touches ~/.cache/replaylab).
- `hf_world`: the Hugging Face tests' tiny world (tests/hf_world.py: corpora, a tiny random Llama folder and
  its own REPLAYLAB_HOME), built once per session and shared by every module that uses it.
"""

from __future__ import annotations

import json
import os
import sysconfig
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

CODE_CORPUS_BYTES = 1_000_000
TINY_VOCAB = 512


@contextmanager
def _home(path: Path):
    old = os.environ.get("REPLAYLAB_HOME")
    os.environ["REPLAYLAB_HOME"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("REPLAYLAB_HOME", None)
        else:
            os.environ["REPLAYLAB_HOME"] = old


@pytest.fixture(scope="module")
def module_home(tmp_path_factory) -> Iterator[Path]:
    """A fresh REPLAYLAB_HOME for one test module (the stores and models it builds), the old one restored after."""
    with _home(tmp_path_factory.mktemp("module_home")) as path:
        yield path


def write_code_corpus(path: Path, max_bytes: int = CODE_CORPUS_BYTES) -> Path:
    """Standard-library .py files (sorted, so deterministic on one interpreter) as {"text", "source"} lines."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    taken = 0
    with open(path, "w", encoding="utf-8") as f:
        for p in sorted(stdlib.glob("*.py")):
            text = p.read_text(encoding="utf-8", errors="replace")
            if len(text) > 200_000:  # skip the few giant files so the corpus has many documents
                continue
            f.write(json.dumps({"text": text, "source": p.name}) + "\n")
            taken += len(text.encode())
            if taken >= max_bytes:
                break
    return path


def write_prose_corpus(path: Path) -> Path:
    """The Python language reference topics shipped in pydoc_data: real English prose."""
    from pydoc_data.topics import topics

    with open(path, "w", encoding="utf-8") as f:
        for name in sorted(topics):
            f.write(json.dumps({"text": topics[name], "source": name}) + "\n")
    return path


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corpora")


@pytest.fixture(scope="session")
def code_corpus(corpus_dir) -> Path:
    return write_code_corpus(corpus_dir / "code.jsonl")


@pytest.fixture(scope="session")
def prose_corpus(corpus_dir) -> Path:
    return write_prose_corpus(corpus_dir / "prose.jsonl")


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory, code_corpus, prose_corpus) -> str:
    from replaylab.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizers") / "tiny"
    train_tokenizer([str(code_corpus), str(prose_corpus)], vocab_size=TINY_VOCAB, out=out, sample_bytes=400_000)
    return str(out)


@pytest.fixture(scope="session")
def store_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("replaylab_home")


@pytest.fixture(scope="session")
def code_store(store_home, code_corpus, tiny_tokenizer):
    from replaylab.data.store import get_store

    with _home(store_home):
        return get_store(str(code_corpus), tokenizer=tiny_tokenizer, name="code")


@pytest.fixture(scope="session")
def prose_store(store_home, prose_corpus, tiny_tokenizer):
    from replaylab.data.store import get_store

    with _home(store_home):
        return get_store(str(prose_corpus), tokenizer=tiny_tokenizer, name="prose")


@pytest.fixture(scope="session")
def pc_corpus(corpus_dir) -> Path:
    """Prompt/completion records of real text (instruction_fixtures.py)."""
    from instruction_fixtures import write_prompt_completion

    return write_prompt_completion(corpus_dir / "topics_pc.jsonl")


@pytest.fixture(scope="session")
def chat_corpus(corpus_dir) -> Path:
    """Chat records of the same pairs (instruction_fixtures.py)."""
    from instruction_fixtures import write_chat

    return write_chat(corpus_dir / "topics_chat.jsonl")


@pytest.fixture(scope="session")
def pc_store(store_home, pc_corpus, tiny_tokenizer):
    from replaylab.data.store import get_store

    with _home(store_home):
        return get_store(str(pc_corpus), tokenizer=tiny_tokenizer, options={"format": "prompt_completion"}, name="pc")


@pytest.fixture(scope="session")
def chat_store(store_home, chat_corpus, tiny_tokenizer):
    from replaylab.data.store import get_store

    with _home(store_home):
        return get_store(str(chat_corpus), tokenizer=tiny_tokenizer, options={"format": "messages"}, name="chat")


@pytest.fixture(scope="session")
def hf_world_files(tmp_path_factory) -> dict:
    from hf_world import write_tiny_world

    return write_tiny_world(tmp_path_factory.mktemp("hf_world"))


@pytest.fixture(scope="module")
def hf_world(hf_world_files):
    """The Hugging Face tests' tiny world (tests/hf_world.py): corpora and a tiny Llama folder built once per
    session, its REPLAYLAB_HOME (where their stores are built, once) set while a module runs."""
    with _home(hf_world_files["home"]):
        yield hf_world_files


@pytest.fixture
def isolated_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "replaylab_home"
    monkeypatch.setenv("REPLAYLAB_HOME", str(home))
    return home
