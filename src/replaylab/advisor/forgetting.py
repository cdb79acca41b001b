"""Forgetting on tasks, read for the answer: per task and metric (acc, acc_norm as the runs record them), the
base model, no replay and the replay fraction the answer compares, each over seeds (at each cell's picked LR),
and the changes between them with seed-bootstrap intervals (answer.py computes those with the same bootstrap as
its target-loss differences). Scores come from advisor/tasks.py (`collect_scores`).

A change's direction is read from its interval only: "replay keeps more" needs the interval of
(replay - no replay) above 0, "replay loses more" below 0; otherwise the two are not told apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from replaylab.advisor.tasks import METRICS, ONE_BASE


@dataclass
class Change:
    diff: float  # mean(a) - mean(b), accuracy points as a fraction (0.05 = 5 points)
    low: float | None  # 95% seed-bootstrap interval; None with fewer than 2 seeds on a side that varies
    high: float | None


@dataclass
class TaskResult:
    task: str
    metric: str
    rho: float  # the replay fraction compared (the answer's best replay R)
    items: int | None  # items scored
    base: float | None  # mean over seeds (an HF model: the one pretrained model)
    no_replay: float
    replay: float
    none_vs_base: Change | None
    replay_vs_base: Change | None
    replay_vs_none: Change
    base_seeds: list[float]
    none_seeds: list[float]
    replay_seeds: list[float]


def _rows(table: pd.DataFrame, sub_budget: int, rho: float) -> pd.DataFrame:
    t = table[(table["budget"] == sub_budget) & (table["status"] == "done") & table["selected"].astype(bool)]
    return t[t["rho"].astype(float).round(9) == round(rho, 9)].sort_values("seed")


def seed_values(table: pd.DataFrame, scores: dict, sub_budget: int, rho: float) -> dict[tuple[str, str], list]:
    """{(task, metric): [value per seed]} of the cell (sub_budget, rho) at its picked LR, and its items."""
    out: dict[tuple[str, str], list] = {}
    for rid in _rows(table, sub_budget, rho)["run_id"]:
        for task, rec in (scores.get("runs", {}).get(rid) or {}).items():
            for metric in METRICS:
                if isinstance(rec.get(metric), (int, float)):
                    out.setdefault((task, metric), []).append(float(rec[metric]))
    return out


def base_values(scores: dict, seeds: list[int]) -> dict[tuple[str, str], list]:
    """{(task, metric): [value per base]}: one value for an HF model, one per seed for a preset."""
    out: dict[tuple[str, str], list] = {}
    base = scores.get("base", {})
    for key in [ONE_BASE] if ONE_BASE in base else [str(s) for s in seeds]:
        for task, metrics in (base.get(key) or {}).items():
            for metric in METRICS:
                if isinstance(metrics.get(metric), (int, float)):
                    out.setdefault((task, metric), []).append(float(metrics[metric]))
    return out


def items_of(scores: dict, task: str) -> int | None:
    for rec in [*scores.get("base", {}).values(), *scores.get("runs", {}).values()]:
        n = (rec or {}).get(task, {}).get("n")
        if n is not None:
            return int(n)
    return None


def _fmt(c: Change) -> str:
    ci = f" [{c.low:+.3f}, {c.high:+.3f}]" if c.low is not None and c.high is not None else " (no interval)"
    return f"{c.diff:+.3f}{ci}"


def task_sentence(results: list[TaskResult]) -> str:
    """One plain sentence per task (its first metric, acc where recorded): does replay keep more of it?"""
    parts = []
    seen = set()
    for r in results:
        if r.task in seen:
            continue
        seen.add(r.task)
        c = r.replay_vs_none
        base = f"base {r.base:.3f}, " if r.base is not None and not math.isnan(r.base) else ""
        scores = f"{base}no replay {r.no_replay:.3f}, R={r.rho:g} {r.replay:.3f}"
        if c.low is not None and c.low > 0:
            how = "replay reduces forgetting"
        elif c.high is not None and c.high < 0:
            how = "replay forgets more"
        elif c.low is None:
            how = "too few seeds to tell replay from no replay"
        else:
            how = "no measurable difference between replay and no replay (the interval includes 0)"
        parts.append(f"Task {r.task} ({r.metric}: {scores}): {how}, R - none {_fmt(c)}.")
    return " ".join(parts)


def task_rows(results: list[TaskResult]) -> list[dict[str, str]]:
    """The forgetting-on-tasks table (advice.md, report.html)."""

    def ch(c: Change | None) -> str:
        return "n/a" if c is None else _fmt(c)

    return [
        {
            "task": r.task,
            "metric": r.metric,
            "items": "n/a" if r.items is None else str(r.items),
            "base": "n/a" if r.base is None else f"{r.base:.3f}",
            "no replay": f"{r.no_replay:.3f}",
            f"R={r.rho:g}": f"{r.replay:.3f}",
            "no replay - base [95%]": ch(r.none_vs_base),
            "R - base [95%]": ch(r.replay_vs_base),
            "R - no replay [95%]": ch(r.replay_vs_none),
        }
        for r in results
    ]
