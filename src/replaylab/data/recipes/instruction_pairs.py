"""`instruction_pairs`: the `instructions` recipe's examples as prompt/completion records (for instruction tuning).

The same 62 BIG-bench Natural-Instructions tasks and the same examples (at most `instructions.MAX_EXAMPLES_PER_TASK`
per task, chosen by content hash), but one example per document, kept apart: {"prompt": the task definition +
"Input: ...\nOutput:", "completion": " <answer>"}. Build it with `replaylab data build instruction_pairs --format
prompt_completion` to train on the answers only (docs/data.md, "Instruction records"). The `instructions` recipe
(5 examples per text document, all on the loss) is unchanged: the shipped configs keep their stores.
"""

from __future__ import annotations

from typing import Iterator

from replaylab.data.recipes import bigbench, instructions
from replaylab.data.recipes.build import Recipe


def documents() -> Iterator[tuple[str, dict]]:
    for task_id, task in bigbench.iter_tasks(bigbench.tasks_root(), bigbench.INSTRUCTION_TASKS):
        answered = [e for e in task["examples"] if bigbench.answer(e) is not None]
        for i, example in bigbench.select_examples(task_id, answered, instructions.MAX_EXAMPLES_PER_TASK):
            record = bigbench.render_instruction_pair(task, example)
            if record is not None:
                yield f"bigbench:{task_id}#{i}", record


RECIPE = Recipe(
    name="instruction_pairs",
    description=f"Natural Instructions (62 BIG-bench subtasks), at most {instructions.MAX_EXAMPLES_PER_TASK} "
    "examples per task, one {prompt, completion} record per example (build with --format prompt_completion)",
    licence="Apache-2.0 (BIG-bench); source datasets keep their own licences",
    artifacts=(bigbench.BIGBENCH,),
    documents=documents,
)
