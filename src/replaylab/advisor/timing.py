"""What the design costs here: a short timed trial, the estimate, and what would fit a time budget.

The trial trains one short run of the design's own shape (model, batch, sequence length, threads, the
held-out evaluation at its end) in a temporary folder and reads steps per second from the steps after the
first two (start-up and first-step costs excluded), and the per-run overhead (process start, loading,
evaluation) as the rest of its wall time. The estimate is then (steps still to train / steps per second
+ runs still to train x overhead) / workers, never below the longest single chain (a seed's pre-training
and its longest fine-tuning: children wait for their carrier).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from replaylab.advisor.design import REPLAY, AdviceConfig, Cell, Design, make_design

TRIAL_STEPS = 12


@dataclass
class Trial:
    steps_per_s: float
    overhead_s: float  # per run: start, load, evaluation
    task_s: float = 0.0  # one scoring of every task (advisor/tasks.py; 0 without tasks)
    mc_task_s: float = 0.0  # of that, the multiple-choice files (an HF run scores those before step 1 too)
    scores: dict = field(default_factory=dict)  # an HF model's base scores, measured on the way (tasks.py keeps them)


@dataclass
class Estimate:
    runs: int
    runs_left: int
    steps: int  # optimizer steps still to train (shared prefixes trained once)
    tokens: int
    seconds: float
    task_seconds: float = 0.0  # of `seconds`, scoring the tasks


def timed_trial(design: Design) -> Trial:
    """Train TRIAL_STEPS steps of a run shaped like the design's in a temporary folder, and time them."""
    from replaylab.advisor.design import _hf_run, _preset_run
    from replaylab.advisor.tasks import timed_scoring
    from replaylab.config import from_dict, to_dict
    from replaylab.runconfig import RunConfig
    from replaylab.train import run_training

    c = design.config
    cell = Cell(design.budget, max(c.fractions))  # the design's longest fine-tuning (HF: capped at TRIAL_STEPS)
    if c.kind == "preset":
        raw = to_dict(_preset_run(design, cell, design.lrs[0], c.seeds[0]))
        stage = raw["stages"][0]
        raw["stages"] = [{**stage, "steps": TRIAL_STEPS, "mixture": {REPLAY: 1.0}}]
        raw["train"].update(total_steps=TRIAL_STEPS, log_every=1)
        raw["data"]["domains"]["target"]["epochs"] = None  # the trial draws no target data
        cfg = from_dict(RunConfig, raw)
    else:
        cfg = _hf_run(design, cell, design.lrs[0], c.seeds[0])
        cfg = replace(cfg, finetune=replace(cfg.finetune, max_steps=TRIAL_STEPS), train=replace(cfg.train, log_every=1))
    # the trial scores no task inside the run (a replay share of 1 puts its cell at the sub-budget): timed apart
    cfg = replace(cfg, eval=replace(cfg.eval, mc_tasks=[], lm_eval_tasks=[], lm_eval_include=None))
    tmp = Path(tempfile.mkdtemp(prefix="replaylab-advise-trial-"))
    try:
        t0 = time.perf_counter()
        run_training(cfg, tmp / "run")
        wall = time.perf_counter() - t0
        task_s, mc_task_s, scores = timed_scoring(c, cfg, tmp / "run", TRIAL_STEPS)
        records = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines() if line]
        steps = [r for r in records if r.get("type") == "train"]
        tps = sorted(r["tok_per_s"] for r in steps if r.get("step", 0) > 2)
        # a run too short to leave its first steps out is timed whole (start-up included: an overestimate)
        sps = tps[len(tps) // 2] / (cfg.train.batch_size * cfg.data.seq_len) if tps else max(1, len(steps)) / wall
        # A second, one-step run: what each run costs besides its steps in a warm worker (its imports done).
        t0 = time.perf_counter()
        run_training(_one_step(cfg), tmp / "again")
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Trial(
        steps_per_s=sps, overhead_s=max(0.0, wall - 1 / sps), task_s=task_s, mc_task_s=mc_task_s, scores=scores
    )


def _one_step(cfg):
    if cfg.finetune is not None:
        return replace(cfg, finetune=replace(cfg.finetune, max_steps=1))
    stage = replace(cfg.stages[0], steps=1)
    return replace(cfg, stages=[stage], train=replace(cfg.train, total_steps=1))


def estimate(doc: dict, done: set[str], trial: Trial, workers: int, scorings: int = 0) -> Estimate:
    """Time to train the plan's runs not done yet (`doc`: the sweep.json document), the task scoring inside
    them, and `scorings` more task scorings in the advisor's process after the sweep (tasks.scorings_here)."""
    steps = tokens = left = 0
    chain = 0
    scoring = 0.0
    for e in doc["runs"]:
        cfg = e["config"]
        if e.get("kind") == "finetune_hf":  # planned at launch: its steps come from plan_mix, no prefix
            total = trained = _hf_steps(cfg)
        else:
            total = cfg["train"]["total_steps"]
            trained = total - (e["branch"]["step"] if e.get("branch") else 0)
        chain = max(chain, total)
        if e["run_id"] in done:
            continue
        left += 1
        if (cfg.get("eval") or {}).get("mc_tasks") or (cfg.get("eval") or {}).get("lm_eval_tasks"):
            scoring += trial.task_s + trial.mc_task_s  # at its end, and its mc files before step 1
        steps += trained
        tokens += trained * cfg["train"]["batch_size"] * cfg["data"]["seq_len"]
    seconds = (steps / trial.steps_per_s + left * trial.overhead_s + scoring) / workers
    if left:
        seconds = max(seconds, chain / trial.steps_per_s + trial.overhead_s)
    tasks = scoring / workers + scorings * trial.task_s
    return Estimate(len(doc["runs"]), left, steps, tokens, seconds + scorings * trial.task_s, tasks)


def _hf_steps(raw: dict) -> int:
    from replaylab.config import from_dict
    from replaylab.runconfig import RunConfig
    from replaylab.sweep.plan import planned_steps

    return planned_steps(from_dict(RunConfig, raw)) or 0


# Smaller designs, tried in this order when one does not fit the time budget: fewer LRs first (replay tends
# to want the larger ones), then fewer fractions, then a smaller target budget.
def smaller_designs(config: AdviceConfig) -> list[tuple[str, AdviceConfig]]:
    out = []
    lrs = [[1.0, 2.0], [1.0]]
    fr = sorted(config.fractions)
    fractions = [fr[-2:], fr[-1:]] if len(fr) > 2 else [fr[-1:]] if len(fr) > 1 else []
    for f in lrs:
        if len(f) < len(config.lr_factors):
            out.append((f"--lr-factors {','.join(f'{x:g}' for x in f)}", replace(config, lr_factors=f)))
    base = replace(config, lr_factors=[1.0]) if len(config.lr_factors) > 1 else config
    flag = "--lr-factors 1 " if base is not config else ""
    for f in fractions:
        out.append((f"{flag}--fractions {','.join(f'{x:g}' for x in f)}", replace(base, fractions=f)))
    return out


def what_fits(config: AdviceConfig, design: Design, trial: Trial, workers: int, limit: float, plan) -> str:
    """The first smaller design whose estimate fits `limit` seconds, as the flags to pass; '' if none does."""
    from replaylab.advisor.tasks import scorings_here

    for flags, smaller in smaller_designs(config):
        d = make_design(smaller, design.num_available, 2)
        est = estimate(plan(d), set(), trial, workers, scorings_here(smaller))
        if est.seconds <= limit:
            return f"{flags} (about {est.seconds / 60:.1f} min, {est.runs} runs)"
    return ""
