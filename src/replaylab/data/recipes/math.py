"""`math`: math word problems and exercises from BIG-bench (FineMath stand-in): MathQA problems with
their worked solution program, arithmetic, number theory, unit conversion, induction."""

from __future__ import annotations

from typing import Iterator

from replaylab.data.recipes import bigbench
from replaylab.data.recipes.build import Recipe


def documents() -> Iterator[tuple[str, str]]:
    for task_id, task in bigbench.iter_tasks(bigbench.tasks_root(), bigbench.MATH_TASKS):
        for i, example in enumerate(task["examples"]):
            text = bigbench.render_math(task_id, example)
            if text:
                yield f"bigbench:{task_id}#{i}", text


RECIPE = Recipe(
    name="math",
    description="Math problems -> answers from BIG-bench (MathQA with solution programs, arithmetic, "
    "Chinese remainder theorem, unit conversion, matrix shapes, induction)",
    licence="Apache-2.0 (BIG-bench); MathQA Apache-2.0",
    artifacts=(bigbench.BIGBENCH,),
    documents=documents,
)
