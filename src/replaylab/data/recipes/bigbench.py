"""BIG-bench (PyPI `bigbench` 1.0.0 sdist) feeds three recipes. Which task goes where is fixed
here, in one place, so that no task can be both generic (replayed) data and target data: a target
example that also sits in the generic pool would leak the target into "replay".

Task ids are folders under `bigbench/benchmark_tasks/`; an id also covers its sub-folders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

from replaylab.data.fetch import Artifact, fetch_pypi_members

BIGBENCH = Artifact(
    "pypi",
    "bigbench",
    "1.0.0",
    "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
    licence="Apache-2.0 (task data keep their own licences)",
)

# Documents (no task framing) for the generic pool.
GENERIC_TASKS = ("paragraph_segmentation", "gem/xsum", "gem/wikilingua_en")
# Natural Instructions: 62 subtasks, each with a written definition.
INSTRUCTION_TASKS = ("natural_instructions",)
# Math word problems and exercises with a single correct answer. `modified_arithmetic` is left out on
# purpose: half of it teaches deliberately wrong sums.
MATH_TASKS = (
    "elementary_math_qa/question_with_mathematical_hint",
    "arithmetic",
    "chinese_remainder_theorem",
    "unit_conversion",
    "matrixshapes",
    "mathematical_induction",
    "operators",
)
TASK_SPLIT = {"generic": GENERIC_TASKS, "instructions": INSTRUCTION_TASKS, "math": MATH_TASKS}

_ROOT = "bigbench/benchmark_tasks/"


def overlaps(a: str, b: str) -> bool:
    """Whether two task ids share any task (equal, or one is a sub-folder of the other)."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def check_disjoint(split: dict[str, tuple[str, ...]] = TASK_SPLIT) -> None:
    names = sorted(split)
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            for a in split[x]:
                for b in split[y]:
                    if overlaps(a, b):
                        raise AssertionError(f"BIG-bench task {a!r} ({x}) overlaps {b!r} ({y})")


check_disjoint()  # at import: a bad edit of the lists above fails loudly, before any build


def _wanted(rel: str) -> bool:
    if not (rel.startswith(_ROOT) and rel.endswith("/task.json")):
        return False
    task = rel[len(_ROOT) : -len("/task.json")]
    return any(overlaps(task, t) or task.startswith(t + "/") for ts in TASK_SPLIT.values() for t in ts)


def tasks_root() -> Path:
    """`benchmark_tasks/` holding only the task.json files the three recipes use (one shared,
    cached download of the 358 MB sdist)."""
    # the cache folder is named after the task lists, so editing them re-extracts
    label = hashlib.sha256(json.dumps(TASK_SPLIT, sort_keys=True).encode()).hexdigest()[:12]
    return fetch_pypi_members(BIGBENCH, _wanted, f"tasks-{label}") / _ROOT


def iter_tasks(root: Path, task_ids: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    """(task id, parsed task.json) for every task with examples under the given ids, sorted."""
    for tid in task_ids:
        for path in sorted((root / tid).rglob("task.json"), key=lambda p: p.as_posix()):
            task = json.loads(path.read_text(encoding="utf-8"))
            if task.get("examples"):
                yield path.parent.relative_to(root).as_posix(), task


def answer(example: dict) -> str | None:
    """The correct answer of an example: its `target` (first, if a list) or the best-scored choice
    (first in file order on ties)."""
    target = example.get("target")
    if isinstance(target, list):
        target = target[0] if target else None
    if isinstance(target, str) and target.strip():
        return target.strip()
    scores = example.get("target_scores") or {}
    if scores:
        best = max(scores.values())
        return next(k for k, v in scores.items() if v == best).strip()
    return None


# ------------------------------------------------------------------------------------------ renderers

_ENGLISH = frozenset("the of and to in is was for that with as on by it are from at his an which".split())


def looks_english(text: str) -> bool:
    """paragraph_segmentation mixes Wikipedia languages: keep a text when common English function
    words make up at least 15% of its words."""
    words = text.lower().split()
    return bool(words) and sum(w in _ENGLISH for w in words) / len(words) >= 0.15


def render_paragraphs(example: dict) -> str:
    """paragraph_segmentation: input = one sentence per line, target = 0/1 per sentence (1 = the
    sentence ends a paragraph). Rebuild the article's paragraphs."""
    sentences = example["input"].split("\n")
    labels = str(answer(example) or "").split()
    paragraphs, current = [], []
    for i, sentence in enumerate(sentences):
        current.append(sentence.strip())
        if i < len(labels) and labels[i] == "1":
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(p for p in paragraphs if p)


def render_instruction(task: dict, example: dict) -> str | None:
    """Natural Instructions: "definition + input -> target"."""
    return render_instruction_group(task, [example])


def render_instruction_group(task: dict, examples: list[dict]) -> str | None:
    """The task definition once, then each answered example as "Input: ...\nOutput: ..." (Flan's
    few-shot layout); None when no example has an answer."""
    pairs = [(e["input"].strip(), target) for e in examples if (target := answer(e)) is not None]
    if not pairs:
        return None
    definition = (task.get("task_prefix") or task.get("description") or "").strip()
    shots = "\n\n".join(f"Input: {x}\nOutput: {y}" for x, y in pairs)
    return f"{definition}\n\n{shots}"


def render_instruction_pair(task: dict, example: dict) -> dict | None:
    """One example as a prompt/completion record: the task definition and "Input: ...\nOutput:" as the prompt, the
    answer (after a space) as the completion; the text layout of `render_instruction`, split where the answer
    starts. None when the example has no answer."""
    target = answer(example)
    if target is None:
        return None
    definition = (task.get("task_prefix") or task.get("description") or "").strip()
    return {"prompt": f"{definition}\n\nInput: {example['input'].strip()}\nOutput:", "completion": f" {target}"}


def select_examples(task_id: str, examples: list[dict], cap: int) -> list[tuple[int, dict]]:
    """At most `cap` (index, example) pairs of a task, in file order: those whose input hashes lowest
    (blake2b of task id + input). A hash, not the first `cap`, because tasks list their examples
    grouped by source passage; and not a seeded RNG, so the choice survives reordering of the file."""

    def key(item: tuple[int, dict]) -> tuple[bytes, int]:
        i, e = item
        return hashlib.blake2b(f"{task_id}\0{e['input']}".encode("utf-8"), digest_size=16).digest(), i

    chosen = sorted(enumerate(examples), key=key)[:cap]
    return sorted(chosen, key=lambda item: item[0])


def render_math(task_id: str, example: dict) -> str | None:
    """A problem and its answer; MathQA carries its worked solution as an operation program."""
    target = answer(example)
    if target is None:
        return None
    if task_id.startswith("elementary_math_qa"):
        problem, _, program = example["input"].partition("\n")
        return f"Problem: {problem.strip()}\nSolution: {program.strip()}\nAnswer: {target}"
    return f"Problem: {example['input'].strip()}\nAnswer: {target}"
