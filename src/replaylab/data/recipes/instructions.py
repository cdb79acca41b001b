"""`instructions`: BIG-bench's Natural Instructions tasks (Flan stand-in), each example rendered as
"definition + input -> target"."""

from __future__ import annotations

from typing import Iterator

from replaylab.data.recipes import bigbench
from replaylab.data.recipes.build import Recipe


def documents() -> Iterator[tuple[str, str]]:
    for task_id, task in bigbench.iter_tasks(bigbench.tasks_root(), bigbench.INSTRUCTION_TASKS):
        for i, example in enumerate(task["examples"]):
            text = bigbench.render_instruction(task, example)
            if text:
                yield f"bigbench:{task_id}#{i}", text


RECIPE = Recipe(
    name="instructions",
    description="Natural Instructions (62 BIG-bench subtasks): task definition, input, output",
    licence="Apache-2.0 (BIG-bench); source datasets keep their own licences",
    artifacts=(bigbench.BIGBENCH,),
    documents=documents,
)
