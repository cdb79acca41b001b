"""What an experiment costs before anything runs, and the sweep plan written to SWEEP/sweep.json.

Compute: training FLOPs = (6 N + 12 L d S) per token (N = matmul parameters incl. the output head,
L layers, d model width, S sequence length: the usual forward+backward count with attention), GPU-hours
= FLOPs / (peak FLOP/s x MFU). Defaults: an H100's 989 dense bf16 TFLOP/s at 35% MFU; change with
`replaylab plan --gpu-tflops --mfu`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pandas as pd

from replaylab.config import to_dict
from replaylab.finetune_plan import given_plan
from replaylab.runconfig import RunConfig
from replaylab.sweep.experiment import HF_KIND, Experiment, PlannedRun, expand, load_experiment, prefix_granularity
from replaylab.sweep.prefix import Branch, carrier_checkpoints, plan_prefixes

DEFAULT_VOCAB = 4096  # the built-in tokenizer's vocabulary, used when model.vocab_size is unset


def matmul_params(config: RunConfig) -> int:
    m = config.model
    head = m.d_model // m.n_heads
    kv = (m.n_kv_heads or m.n_heads) * head
    per_layer = 2 * m.d_model * m.d_model + 2 * m.d_model * kv + 3 * m.d_model * m.d_ff
    return m.n_layers * per_layer + m.d_model * (m.vocab_size or DEFAULT_VOCAB)


def flops_per_token(config: RunConfig) -> float:
    m = config.model
    return 6.0 * matmul_params(config) + 12.0 * m.n_layers * m.d_model * config.data.seq_len


def build_plan(exp: Experiment, base: dict) -> tuple[list[PlannedRun], dict[str, Branch], dict[str, Any]]:
    """Runs, shared-prefix branches, and the sweep.json document (run configs as they will train). A
    `kind: finetune_hf` experiment's entries and document carry that kind, and its runs never branch."""
    runs = expand(exp, base)
    gran = None if exp.kind == HF_KIND else prefix_granularity(exp, runs)
    branches, doc = plan_document(exp.name, runs, kind=exp.kind, shared_prefixes=exp.shared_prefixes, granularity=gran)
    return runs, branches, doc


def plan_document(
    name: str,
    runs: list[PlannedRun],
    *,
    kind: str | None = None,
    shared_prefixes: bool = True,
    granularity: int | None = 1,
) -> tuple[dict[str, Branch], dict[str, Any]]:
    """The shared-prefix branches of planned runs and the sweep.json document that trains them: what
    `build_plan` writes for an experiment file, and what a planner with its own runs (the advisor) writes."""
    if kind == HF_KIND:
        entries = [
            {
                "run_id": r.run_id,
                "kind": HF_KIND,
                "coords": r.coords,
                "config": to_dict(r.config),
                "branch": None,
                "branch_steps": [],
            }
            for r in runs
        ]
        return {}, {"name": name, "kind": HF_KIND, "prefix_granularity": None, "runs": entries}
    gran = granularity or 1
    configs = {r.run_id: r.config for r in runs}
    branches = plan_prefixes(configs, granularity=gran, min_shared=gran) if shared_prefixes else {}
    keep = carrier_checkpoints(branches)
    entries = []
    for r in runs:
        raw = to_dict(r.config)
        if r.run_id in keep:
            # A carrier writes (and keeps) a checkpoint at exactly its children's branch steps. This does
            # not change what it computes; the run id stays the hash of the planned config.
            raw = copy.deepcopy(raw)
            raw["train"]["checkpoint_steps"] = keep[r.run_id]
        b = branches.get(r.run_id)
        entries.append(
            {
                "run_id": r.run_id,
                "coords": r.coords,
                "config": raw,
                "branch": {"parent": b.parent, "step": b.step} if b else None,
                "branch_steps": keep.get(r.run_id, []),
            }
        )
    return branches, {"name": name, "prefix_granularity": gran, "runs": entries}


def estimate(
    runs: list[PlannedRun], branches: dict[str, Branch], *, gpu_tflops: float = 989.0, mfu: float = 0.35
) -> pd.DataFrame:
    """One row per strategy plus a total: runs, steps (alone / with shared prefixes), tokens, FLOPs, GPU-hours."""
    rows = []
    for r in runs:
        c = r.config
        steps = c.train.total_steps
        trained = steps - (branches[r.run_id].step if r.run_id in branches else 0)
        tokens = trained * c.train.batch_size * c.data.seq_len
        flops = flops_per_token(c) * tokens
        rows.append(
            {
                "strategy": r.coords["strategy"],
                "runs": 1,
                "steps": steps,
                "steps_trained": trained,
                "tokens": tokens,
                "flops": flops,
            }
        )
    df = pd.DataFrame(rows, columns=["strategy", "runs", "steps", "steps_trained", "tokens", "flops"])
    out = df.groupby("strategy", sort=False).sum(numeric_only=True).reset_index()
    total = df.sum(numeric_only=True).to_frame().T
    total.insert(0, "strategy", "total")
    out = pd.concat([out, total], ignore_index=True)
    out["steps_saved"] = out["steps"] - out["steps_trained"]
    out["gpu_hours"] = out["flops"] / (gpu_tflops * 1e12 * mfu) / 3600
    return out


def planned_steps(cfg: RunConfig) -> int | None:
    """A fine-tuning run's total steps when its target budget is given (None = every train sequence: that
    needs the tokenized store, which planning never builds)."""
    plan = given_plan(cfg)
    return None if plan is None else plan.total_steps


def estimate_hf(runs: list[PlannedRun]) -> pd.DataFrame:
    """One row per cell (axis values) plus a total: runs (LRs x seeds), steps, tokens. FLOPs and
    GPU-hours are left unknown (NaN): they need the model's shape, which would mean loading it."""
    rows = []
    for r in runs:
        label = " ".join(f"{k}={v}" for k, v in r.coords.items() if k not in ("strategy", "lr", "seed")) or HF_KIND
        steps = planned_steps(r.config)
        tokens = steps * r.config.train.batch_size * r.config.data.seq_len if steps is not None else math.nan
        rows.append(
            {
                "cell": label,
                "runs": 1,
                "steps": math.nan if steps is None else steps,
                "steps_trained": math.nan if steps is None else steps,
                "tokens": tokens,
                "flops": math.nan,
            }
        )
    df = pd.DataFrame(rows, columns=["cell", "runs", "steps", "steps_trained", "tokens", "flops"])
    # min_count=1 / skipna=False: a sum over unknown steps stays unknown instead of becoming 0
    out = df.groupby("cell", sort=False).sum(numeric_only=True, min_count=1).reset_index()
    total = df.drop(columns="cell").sum(skipna=False).to_frame().T
    total.insert(0, "cell", "total")
    out = pd.concat([out, total], ignore_index=True)
    out["steps_saved"] = 0
    out["gpu_hours"] = math.nan
    return out


def load_plan(path: str | Path) -> tuple[list, dict[str, Branch], dict[str, Any]]:
    """`build_plan` for an experiment file of either kind: schedule (strategies:) or `kind: finetune_hf`."""
    return build_plan(*load_experiment(path))


def experiment_name(path: str | Path) -> str:
    return load_experiment(path)[0].name


def plan_experiment(path: str | Path, **kw: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    runs, branches, doc = load_plan(path)
    if doc.get("kind") == HF_KIND:
        return estimate_hf(runs), doc
    return estimate(runs, branches, **kw), doc
