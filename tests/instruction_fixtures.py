"""Instruction corpora from real text for the instruction-tuning tests: the Python language reference topics
shipped in `pydoc_data`, as question/answer records.

- `write_prompt_completion(path)`: {"prompt": "Explain the Python topic 'X'.\\n", "completion": its first
  paragraphs} per topic (answers from ~40 to ~1,500 characters);
- `write_chat(path)`: the same pairs as chat records (a system turn, a user turn, an assistant turn; every fifth
  record a second user/assistant exchange), {"messages": [...]}.
Fixtures `pc_store` / `chat_store` build them with the session's tiny tokenizer (import them into a test module).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _pairs() -> list[tuple[str, str, str]]:
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        paragraphs = [p for p in topics[name].split("\n\n") if p.strip()]
        answer = "\n\n".join(paragraphs[: 1 + len(name) % 3])[:1500]
        out.append((name, f"Explain the Python topic {name!r}.\n", answer))
    return out


def write_prompt_completion(path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for _, prompt, answer in _pairs():
            f.write(json.dumps({"prompt": prompt, "completion": answer}) + "\n")
    return path


def write_chat(path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, (name, prompt, answer) in enumerate(_pairs()):
            turns = [
                {"role": "system", "content": "You answer questions about Python."},
                {"role": "user", "content": prompt.strip()},
                {"role": "assistant", "content": answer},
            ]
            if i % 5 == 0:
                turns += [
                    {"role": "user", "content": f"Say {name!r} once more."},
                    {"role": "assistant", "content": name},
                ]
            f.write(json.dumps({"messages": turns}) + "\n")
    return path


@pytest.fixture(scope="session")
def pc_corpus(corpus_dir) -> Path:
    return write_prompt_completion(corpus_dir / "topics_pc.jsonl")


@pytest.fixture(scope="session")
def chat_corpus(corpus_dir) -> Path:
    return write_chat(corpus_dir / "topics_chat.jsonl")


@pytest.fixture(scope="session")
def pc_store(store_home, pc_corpus, tiny_tokenizer):
    from conftest import _home

    from replaylab.data.store import get_store

    with _home(store_home):
        return get_store(str(pc_corpus), tokenizer=tiny_tokenizer, options={"format": "prompt_completion"}, name="pc")


@pytest.fixture(scope="session")
def chat_store(store_home, chat_corpus, tiny_tokenizer):
    from conftest import _home

    from replaylab.data.store import get_store

    with _home(store_home):
        return get_store(str(chat_corpus), tokenizer=tiny_tokenizer, options={"format": "messages"}, name="chat")
