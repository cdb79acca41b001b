"""`advise(...)`: from a model and a target to the answer, through an ordinary sweep.

Order: check the output folder (before anything is built), open the target and replay stores with the
model's tokenizer (so a model that cannot load offline, or a target too small, is one line before any
training), plan the design, time a short trial, print the plan, refuse a design that cannot fit the time
budget (saying what would), then write the advice folder and train its sweep (resumable: done runs are
skipped, a killed run resumes), grow the LR grid past an edge where a cell's best LR sits there (up to
`lr_extend` rounds, each one more sweep of the same folder), and write the answer (advice.json, advice.md, report/).

The advice folder (replaylab.outputs kind `advice`): advice.yaml (the question), sweep/ (a sweep folder:
`replaylab results OUT/sweep` reads it), advice.json, advice.md, recommended.yaml (presets: the run to
train), report/ (report.html and its figures), tasks.json (with --mc-task / --lm-eval-task: the task scores).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from replaylab.advisor.answer import Advice, answer
from replaylab.advisor.design import (
    REPLAY,
    AdviceConfig,
    Design,
    extend_at_edges,
    make_design,
    runs_of,
    task_name,
)
from replaylab.advisor.tasks import check_tasks, collect_scores, scorings_here
from replaylab.advisor.timing import Estimate, Trial, estimate, timed_trial, what_fits
from replaylab.errors import ConfigError


@dataclass
class AdvicePlan:
    design: Design
    doc: dict  # the sweep.json document
    trial: Trial
    estimate: Estimate

    def describe(self) -> str:
        d, e, c = self.design, self.estimate, self.design.config
        lines = [
            f"model {c.model}{' (LoRA)' if c.lora else ''}, target {c.target!r} ({d.num_available} train {d.unit}), "
            f"replay {c.replay!r}",
            f"no-replay curve at budgets {', '.join(map(str, d.budgets))}; replay R = "
            f"{', '.join(f'{r:g}' for r in c.fractions)} at budget {d.sub_budget}; {c.value('epochs'):g} epochs",
            f"LRs {', '.join(f'{lr:.3g}' for lr in d.lrs)} per cell"
            + (f" (+1 past an edge where a cell's best LR sits, up to {c.lr_extend}x)" if c.lr_extend else "")
            + f"; seeds {', '.join(map(str, c.seeds))}"
            + (
                f"; {c.pretrain_steps} pre-training steps on the replay corpus (once per seed)"
                if c.kind == "preset"
                else ""
            ),
            f"{e.runs} runs ({e.runs_left} to train), {e.steps:,} steps, {e.tokens:,} tokens; measured "
            f"{self.trial.steps_per_s:.2f} steps/s + {self.trial.overhead_s:.1f} s per run: about "
            f"{e.seconds / 60:.1f} min",
        ]
        if c.has_tasks:
            names = [task_name(p) for p in c.mc_tasks] + list(c.lm_eval_tasks)
            lines.append(
                f"tasks {', '.join(names)}: scored on the base model and at budget {d.sub_budget} (measured "
                f"{self.trial.task_s:.1f} s per scoring: about {e.task_seconds / 60:.1f} min of the estimate)"
            )
        return "\n".join(lines)


def _stores(config: AdviceConfig):
    """The target and replay stores, tokenized as the model's runs will be (ours: the default tokenizer)."""
    from replaylab.data.store import get_store

    if config.kind == "preset":
        tokenizer = config.tokenizer
    else:
        from replaylab.data.tokenizer import load_tokenizer
        from replaylab.hf.models import resolve_model

        tokenizer = load_tokenizer(resolve_model(config.model))
    from replaylab.data.rows import read_as_rows

    # read as every run reads them: an instruction store counts whole-example rows, not stream sequences
    stores = read_as_rows(
        {
            "target": get_store(config.target, tokenizer, config.target_options),
            "replay": get_store(config.replay, tokenizer, config.replay_options),
        }
    )
    return stores["target"], stores["replay"]


def plan_document(design: Design) -> dict:
    from replaylab.sweep.experiment import HF_KIND
    from replaylab.sweep.plan import plan_document as plan_doc

    kind = HF_KIND if design.config.kind == "hf" else None
    return plan_doc(f"advise-{design.config.identity()}", runs_of(design), kind=kind)[1]


def plan_advice(config: AdviceConfig, *, workers: int = 1, done: set[str] | None = None) -> AdvicePlan:
    from replaylab.data.rows import DocumentRows

    config.validate()
    check_tasks(config)  # a task file or an lm-eval task the runs could not score: one line, nothing trained
    target, _ = _stores(config)
    seq_len = config.value("seq_len")
    heldout = target.num_sequences("val", seq_len)
    design = make_design(
        config,
        target.num_sequences("train", seq_len),
        min(heldout, config.value("eval_sequences")),
        rows=isinstance(target, DocumentRows),
    )
    doc = plan_document(design)
    trial = timed_trial(design)
    return AdvicePlan(design, doc, trial, estimate(doc, done or set(), trial, workers, scorings_here(config)))


def _done(sweep_dir: Path) -> set[str]:
    """Run ids finished in the advice's sweep folder (those of this plan are skipped: content-addressed)."""
    from replaylab.sweep.runstore import RunStore

    if not (sweep_dir / "runs").is_dir():
        return set()
    store = RunStore(sweep_dir)
    return {r.name for r in (sweep_dir / "runs").iterdir() if store.status(r.name) == "done"}


def advise(
    config: AdviceConfig,
    out: str | Path,
    *,
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    gpus_per_run: float = 0.0,
    nproc_per_node: int | None = None,
    time_budget: float | None = None,
    plan_only: bool = False,
    overwrite: bool = False,
    retry: bool = False,
    say: Callable[[str], None] = print,
) -> Advice | AdvicePlan:
    """Plan, train (unless `plan_only`) and answer. `time_budget` in seconds: a design whose estimate exceeds it
    is refused (ConfigError naming what would fit). Returns the Advice, or the AdvicePlan with `plan_only`."""
    from replaylab.outputs import claim_output, in_use, remove_ours, write_marker
    from replaylab.paths import atomic_write_text
    from replaylab.sweep import check_backend, describe_backend, train_sweep, write_sweep

    check_backend(backend, workers, config.threads, nproc_per_node)
    out = Path(out)
    config.validate()
    state = claim_output(out, "advice", config.identity(), overwrite=overwrite, describe="advice on another question")
    plan = plan_advice(config, workers=workers, done=set() if state == "replace" else _done(out / "sweep"))
    say(plan.describe())
    say(describe_backend(backend, workers, config.threads, nproc_per_node))
    if time_budget is not None and plan.estimate.seconds > time_budget:
        fits = what_fits(config, plan.design, plan.trial, workers, time_budget, plan_document)
        raise ConfigError(
            f"--time-budget {time_budget / 60:g} min is too short for this design (about "
            f"{plan.estimate.seconds / 60:.1f} min on this machine); "
            + (
                f"this would fit: {fits}"
                if fits
                else "no smaller design fits: give a longer --time-budget, more --workers, or a smaller --budget"
            )
        )
    if plan_only:
        return plan
    if state == "replace":
        remove_ours(out, "advice")
    out.mkdir(parents=True, exist_ok=True)
    if state != "same":
        write_marker(out, "advice", config.identity())
    from replaylab.config import dump_yaml

    atomic_write_text(out / "advice.yaml", dump_yaml(config.to_dict()))
    retry_before = time.time() if retry else None

    def train(doc: dict) -> None:
        write_sweep(out / "sweep", doc, dump_yaml(config.to_dict()))
        t0 = time.time()
        counts = train_sweep(
            out / "sweep",
            workers=workers,
            threads=config.threads,
            backend=backend,
            address=address,
            retry_before=retry_before,
            gpus_per_run=gpus_per_run,
            nproc_per_node=nproc_per_node,
        )
        say(
            f"sweep {out / 'sweep'}: "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + f" ({time.time() - t0:.0f} s)"
        )

    from replaylab.sweep.results import load_results

    started = time.time()
    with in_use(out, "advice folder"):
        train(plan.doc)
        for _ in range(config.lr_extend):
            doc = _extend_lr_grid(plan, out, workers, time_budget, started, say)
            if doc is None:
                break
            train(doc)
        from replaylab.advisor.report import write_answer

        table = load_results(out / "sweep")
        advice = answer(
            table,
            budget=plan.design.budget,
            sub_budget=plan.design.sub_budget,
            form=config.form,
            base_general=base_general_loss(out / "sweep", config),
            task_scores=collect_scores(out, plan.design, table, plan.trial.scores),
        )
        write_answer(advice, plan.design, out)
    return advice


def _extend_lr_grid(
    plan: AdvicePlan, out: Path, workers: int, time_budget: float | None, started: float, say
) -> dict | None:
    """One round of the LR grid's extension: every cell whose best LR (over seeds, select half) sits at its grid's
    edge gets the next LR past it. Returns the grown plan document, or None when no cell is at an edge or the
    round would not fit the time budget (the answer then flags the edge). Deterministic in the finished runs,
    so a rerun after a kill grows the same grid and resumes the same runs."""
    from replaylab.advisor.answer import cell_results
    from replaylab.sweep.results import load_results

    design = plan.design
    cells = {(c.budget, round(c.rho, 9)): c for c in design.cells}
    results, _ = cell_results(load_results(out / "sweep"))
    picks = {cells[(r.budget, round(r.rho, 9))]: r.lr_edge for r in results if r.lr_edge}
    if not picks:
        return None
    before = {c: list(design.extra_lrs.get(c, [])) for c in design.cells}
    added = extend_at_edges(design, picks)
    doc = plan_document(design)
    left = estimate(doc, _done(out / "sweep"), plan.trial, workers)
    if time_budget is not None and time.time() - started + left.seconds > time_budget:
        design.extra_lrs = {c: v for c, v in before.items() if v}
        say(f"LR grid not extended: {left.runs_left} more runs would pass the time budget; edges stay flagged")
        return None
    say(
        "best LR at its grid's edge; adding "
        + ", ".join(f"{cell.label}: {lr:.3g}" for cell, lr in added)
        + f" ({left.runs_left} runs, about {left.seconds / 60:.1f} min)"
    )
    return doc


def base_general_loss(sweep_dir: Path, config: AdviceConfig) -> float | None:
    """The general (replay) domain's report-half loss of the model before fine-tuning: an HF run's initial
    evaluation, or for a preset the evaluation at the end of its pre-training stage; mean over seeds."""
    from replaylab.sweep.runstore import RunStore

    store = RunStore(sweep_dir)
    by_seed: dict[int, float] = {}
    for e in store.plan()["runs"]:
        seed = e["config"].get("seed")
        if seed in by_seed:
            continue
        run = store.run_dir(e["run_id"])
        manifest = store.manifest(e["run_id"]) or {}
        if config.kind == "hf":
            loss = (((manifest.get("initial") or {}).get("losses") or {}).get(REPLAY) or {}).get("test_loss")
        else:
            loss = _pretrain_eval(run / "metrics.jsonl", config.pretrain_steps)
        if loss is not None:
            by_seed[seed] = float(loss)
    return sum(by_seed.values()) / len(by_seed) if by_seed else None


def _pretrain_eval(metrics: Path, step: int) -> float | None:
    if not metrics.exists():
        return None
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("type") == "eval" and r.get("step") == step and r.get("domain") == REPLAY:
            return r.get("test_loss")
    return None
