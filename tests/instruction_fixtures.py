"""Instruction corpora from real text for the instruction-tuning tests: the Python language reference topics
shipped in `pydoc_data`, as question/answer records.

- `write_prompt_completion(path)`: {"prompt": "Explain the Python topic 'X'.\\n", "completion": its first
  paragraphs} per topic (answers from ~40 to ~1,500 characters);
- `write_chat(path)`: the same pairs as chat records (a system turn, a user turn, an assistant turn; every fifth
  record a second user/assistant exchange), {"messages": [...]}.
conftest.py's session fixtures `pc_corpus`, `chat_corpus`, `pc_store` and `chat_store` write and build them (with
the session's tiny tokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path


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
