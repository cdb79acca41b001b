"""Forgetting on tasks: the user's multiple-choice files (`--mc-task`, scored by log-likelihood with
hf/evaluate.score_mc) and lm-evaluation-harness tasks (`--lm-eval-task`, hf/evaluate.run_lm_eval), scored on the
models the answer compares (docs/advisor.md):

- the base model, once per distinct base: an HF model's pretrained weights once (every seed starts from them), a
  preset's generic pre-training once per seed (the stage-end checkpoint of that seed's shared prefix). Scored
  here, in the advisor's process, with the runs' device, precision and threads (an HF model's by the timed
  trial, which loads it anyway: `timed_scoring`).
- fine-tuned, the cells at the sub-budget where replay is measured (no replay and every R). An HF run does not
  keep its weights (the advice keeps losses, not one model per run), so it scores the tasks at its end inside
  the run (eval.mc_tasks / lm_eval_tasks, the `mc` record of its manifest): every LR and seed of those cells.
  A preset run keeps its final checkpoint, so only the LR each cell picked is scored, here, after selection:
  no retraining, and no scoring of runs the answer never reads.

Scores are kept in OUT/tasks.json, keyed by run id (or `base` and the seed), so a second `advise` scores no
model again (but for its timed trial's one scoring). Task names are those the runs record: a file's stem, an
lm-eval task's name.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from replaylab.advisor.design import AdviceConfig, Design, task_name

if TYPE_CHECKING:
    import pandas as pd

SCORES = "tasks.json"
METRICS = ("acc", "acc_norm")  # what the answer compares, as the runs record them
ONE_BASE = "all"  # the base key of an HF model: one pretrained model for every seed (presets: one per seed)


def check_tasks(config: AdviceConfig) -> None:
    """Fail fast, before anything trains: every file a valid multiple-choice task, every lm-eval task known
    and its data loadable (one line each)."""
    from replaylab.hf import evaluate as ev

    for path in config.mc_tasks:
        ev.load_mc_task(path)
    if config.lm_eval_tasks:
        ev.check_lm_eval(config.lm_eval_tasks, config.lm_eval_include)


# Scoring ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _as_the_runs(cfg):
    """The runs' threads, device and deterministic kernels while scoring in this process; yields (device, dtype)."""
    from replaylab import runtime

    before = runtime.set_threads(None)
    runtime.set_threads(cfg.train.threads)
    device = runtime.resolve_device(cfg.train.device)
    try:
        with runtime.deterministic_run(device, cfg.train.deterministic):
            yield device, runtime.resolve_precision(cfg.train.precision, device)
    finally:
        runtime.set_threads(before)


def _mc_scores(config: AdviceConfig, model, tokenizer, *, device, dtype, max_len, forward=None) -> dict:
    from replaylab.hf import evaluate as ev

    return {
        task_name(p): ev.score_mc(
            model, tokenizer, ev.load_mc_task(p), device=device, dtype=dtype, max_len=max_len, forward=forward
        )
        for p in config.mc_tasks
    }


def score_ours(config: AdviceConfig, run_dir: Path, step: int) -> dict:
    """The tasks on our Transformer as a run folder's checkpoint at `step` holds it (its resolved config.yaml)."""
    import torch

    from replaylab.config import load_config
    from replaylab.data.tokenizer import get_tokenizer
    from replaylab.model import Transformer
    from replaylab.runconfig import RunConfig
    from replaylab.train import checkpoint as ckpt

    cfg = load_config(RunConfig, run_dir / "config.yaml")
    model = Transformer(cfg.model)
    model.load_state_dict(ckpt.load_model_weights(ckpt.step_dir(run_dir, step)))
    with _as_the_runs(cfg) as (device, dtype), torch.no_grad():
        model.to(device)
        return _mc_scores(
            config, model, get_tokenizer(cfg.data.tokenizer), device=device, dtype=dtype,
            max_len=cfg.model.max_seq_len, forward=model,
        )  # fmt: skip


def score_hf_base(config: AdviceConfig, run_config) -> dict:
    """The tasks on the pretrained HF model, built as `run_config`'s run builds it (LoRA adapters start at zero)."""
    from replaylab.data.tokenizer import load_tokenizer
    from replaylab.hf import evaluate as ev
    from replaylab.hf.models import resolve_model
    from replaylab.hf.train_module import build_model

    m = run_config.model
    folder = resolve_model(m.source, trust_remote_code=m.trust_remote_code)
    with _as_the_runs(run_config) as (device, dtype):
        model = build_model(run_config, folder, device)
        out = _mc_scores(
            config, model, load_tokenizer(folder), device=device, dtype=dtype,
            max_len=getattr(model.config, "max_position_embeddings", None),
        )  # fmt: skip
        if config.lm_eval_tasks:
            from transformers import AutoTokenizer

            hf_tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            batch = run_config.eval.batch_size
            out.update(
                ev.run_lm_eval(model, hf_tok, config.lm_eval_tasks, batch_size=batch, include=config.lm_eval_include)
            )
    return out


def timed_scoring(config: AdviceConfig, run_config, run_dir: Path, step: int) -> tuple[float, float, dict]:
    """The trial's scoring of every task: (seconds, seconds of the multiple-choice files alone, the scores). An
    HF model: its base, which the advice keeps (`collect_scores`); a preset: the trial's checkpoint."""
    if not config.has_tasks:
        return 0.0, 0.0, {}
    t0 = time.perf_counter()
    if config.kind == "hf":
        scores = score_hf_base(replace(config, lm_eval_tasks=[], lm_eval_include=None), run_config)
        mc = time.perf_counter() - t0
        if config.lm_eval_tasks:
            scores.update(score_hf_base(replace(config, mc_tasks=[]), run_config))
    else:
        scores = score_ours(config, run_dir, step)
        mc = time.perf_counter() - t0
    return time.perf_counter() - t0, mc, scores if config.kind == "hf" else {}


def scorings_here(config: AdviceConfig) -> int:
    """Scorings this process runs after the sweep: none for an HF model (its base is the trial's, its runs score
    themselves); for a preset each seed's base and each compared cell (no replay and every R) at its picked LR."""
    if not config.has_tasks or config.kind == "hf":
        return 0
    return len(config.seeds) * (2 + len(config.fractions))


def collect_scores(out: Path, design: Design, table: pd.DataFrame, hf_base: dict | None = None) -> dict:
    """{"base": {seed: {task: metrics}}, "runs": {run_id: {task: metrics}}} for the runs the answer compares;
    {} without tasks. Scores already in OUT/tasks.json are reused; new ones are added to it as they come.
    `hf_base`: an HF model's base scores as the timed trial measured them (scored the same way: not again)."""
    from replaylab.finetune_form import read_run_config
    from replaylab.paths import atomic_write_text
    from replaylab.sweep.runstore import RunStore

    config = design.config
    if not config.has_tasks:
        return {}
    path = out / SCORES
    kept = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    scores: dict[str, dict] = {"base": dict(kept.get("base", {})), "runs": dict(kept.get("runs", {}))}

    def keep(section: str, key: str, value: dict) -> None:
        scores[section][key] = value
        atomic_write_text(path, json.dumps(scores, indent=1, sort_keys=True) + "\n")

    store = RunStore(out / "sweep")
    entries = {e["run_id"]: e for e in store.plan()["runs"]}
    sub = table[(table["budget"] == design.sub_budget) & (table["status"] == "done")]
    if config.kind == "hf":
        for rid in sub["run_id"]:  # scored inside the run: its manifest's `mc` record
            keep("runs", rid, (store.manifest(rid) or {}).get("mc") or {})
        if ONE_BASE not in scores["base"] and not sub.empty:
            entry = entries[sub["run_id"].iloc[0]]
            base = hf_base or score_hf_base(config, read_run_config(entry["config"]))
            keep("base", ONE_BASE, base)
        return scores
    for _, row in sub[sub["selected"].astype(bool)].iterrows():
        if row["run_id"] not in scores["runs"]:
            steps = int(row["steps"])
            keep("runs", row["run_id"], score_ours(config, store.run_dir(row["run_id"]), steps))
    for seed in config.seeds:
        if str(seed) not in scores["base"]:
            found = _prefix_checkpoint(store, entries.values(), seed, config.pretrain_steps)
            if found is not None:
                keep("base", str(seed), score_ours(config, found, config.pretrain_steps))
    return scores


def _prefix_checkpoint(store, entries, seed: int, step: int) -> Path | None:
    """A run folder of `seed` holding the checkpoint at the end of generic pre-training (the carrier of the
    seed's shared prefix keeps it as a stage end; every run of the seed shares those weights)."""
    from replaylab.train import checkpoint as ckpt

    for e in entries:
        run = store.run_dir(e["run_id"])
        if e["config"].get("seed") == seed and (ckpt.step_dir(run, step) / "model.safetensors").is_file():
            return run
    return None
