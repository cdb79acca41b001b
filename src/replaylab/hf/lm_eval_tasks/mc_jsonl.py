"""Loader for lm-eval tasks in this folder: a replaylab multiple-choice jsonl next to this file
({"context": str, "choices": [str, ...], "answer": int} per line) as a one-split DatasetDict."""

from __future__ import annotations

import json
from pathlib import Path


def load(data_file: str, split: str = "test", **_metadata):
    """lm-eval calls this with the task's dataset_kwargs and its metadata (ignored here)."""
    import datasets

    path = Path(__file__).parent / data_file
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})
