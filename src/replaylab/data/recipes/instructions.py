"""`instructions`: BIG-bench's Natural Instructions tasks (Flan stand-in).

Size cap, and why: the 62 tasks hold 193,250 examples, and each example repeated its task's
definition (often 600-3,000 characters for a 20-200 character input): the uncapped corpus was
337 MB, 62% of it the same 62 definitions over and over: slow to tokenize, and a target
domain whose loss is dominated by memorised boilerplate. Flan itself caps examples per task so no
task dominates the mixture. We keep at most `MAX_EXAMPLES_PER_TASK` examples per task (chosen by a
content hash, so deterministic) and write the definition once per document of
`EXAMPLES_PER_DOCUMENT` examples (Flan's few-shot layout): 5,360 documents, 21.7 MB."""

from __future__ import annotations

from typing import Iterator

from replaylab.data.recipes import bigbench
from replaylab.data.recipes.build import Recipe

MAX_EXAMPLES_PER_TASK = 500
EXAMPLES_PER_DOCUMENT = 5


def documents() -> Iterator[tuple[str, str]]:
    for task_id, task in bigbench.iter_tasks(bigbench.tasks_root(), bigbench.INSTRUCTION_TASKS):
        answered = [e for e in task["examples"] if bigbench.answer(e) is not None]
        chosen = [e for _, e in bigbench.select_examples(task_id, answered, MAX_EXAMPLES_PER_TASK)]
        for g in range(0, len(chosen), EXAMPLES_PER_DOCUMENT):
            text = bigbench.render_instruction_group(task, chosen[g : g + EXAMPLES_PER_DOCUMENT])
            if text:
                yield f"bigbench:{task_id}#{g // EXAMPLES_PER_DOCUMENT}", text


RECIPE = Recipe(
    name="instructions",
    description=f"Natural Instructions (62 BIG-bench subtasks), at most {MAX_EXAMPLES_PER_TASK} examples per task, "
    f"task definition once per document of {EXAMPLES_PER_DOCUMENT} input/output examples",
    licence="Apache-2.0 (BIG-bench); source datasets keep their own licences",
    artifacts=(bigbench.BIGBENCH,),
    documents=documents,
)
