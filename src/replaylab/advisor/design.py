"""The advisor's design: which fine-tuning runs answer "how much should I replay?" for one model and target.

Cells (docs/advisor.md, /work/shared/ADVISOR.md):
  - no replay (R = 0) at target budgets N/8, N/4, N/2, N of the N unique target sequences, same epochs:
    this model's own data-efficiency curve on this target, the curve replay is read against;
  - replay at each fraction R (default 0.25, 0.5, 0.75) at a sub-budget (default N/4), so that its effective
    data usually falls inside the measured budgets [N/8, N] and is interpolated, not extrapolated;
  - every cell at a small LR grid around a default (x0.5, x1, x2), picked on the select half of the held-out
    target, at every seed (>= 2).
Every run is replay fine-tuning with fixed target exposure (`schedule.plan_mix`: the target's epochs over the
budget, stretched by 1 / (1 - R)). An HF model (full or LoRA) starts every run from its pretrained weights
(`schedule.finetune_hf`); one of our presets is first pre-trained on the replay corpus for `pretrain_steps`,
the same prefix in every run of a seed, so the sweep trains it once per seed (sweep/prefix.py) and
every fine-tuning branches off its checkpoint. With tasks (`--mc-task`, `--lm-eval-task`: forgetting on them), an HF
run of a cell at the sub-budget also scores them at its end (advisor/tasks.py says which models score them and why).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from replaylab.errors import ConfigError

PRESET = "preset:"
TARGET, REPLAY = "target", "replay"  # domain names, the same for both model kinds (schedule.finetune_hf's)

# Defaults that differ by model kind: ours (a preset trained from scratch here, the mini replication's
# regime, docs/results/mini.md) and a pretrained Hugging Face model (replaylab finetune's).
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "preset": {"lr": 2e-3, "epochs": 16.0, "seq_len": 128, "batch_size": 16, "eval_sequences": 256},
    "hf": {"lr": 3e-4, "epochs": 2.0, "seq_len": 256, "batch_size": 8, "eval_sequences": 64},
}
MIN_BUDGET = 8  # N/8 must be at least one sequence per budget: fewer and the curve has < 4 distinct points


@dataclass
class AdviceConfig:
    """What `replaylab advise` is asked. None = the model kind's default (KIND_DEFAULTS)."""

    model: str  # preset:NAME, or a Hugging Face id or folder
    target: str  # anything the data layer reads (recipe name, file, folder, hf:...): passed through unchanged
    replay: str = "generic"
    # the data layer's options of each source (a folder's glob, a text field, an instruction format...), passed
    # through unchanged to the stores and to every run
    target_options: dict[str, Any] = field(default_factory=dict)
    replay_options: dict[str, Any] = field(default_factory=dict)
    lora: bool = False
    budget: int | None = None  # N unique target sequences (None = every train sequence)
    epochs: float | None = None
    fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    curve_shares: list[float] = field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0])
    replay_share: float = 0.25  # the sub-budget (share of N) where replay is measured
    lr: float | None = None  # the grid's centre
    lr_factors: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    # rounds in which a cell whose best LR sits at its grid's edge gets the next LR past that edge (0 = never):
    # an edge pick may hide a better LR outside the grid, and an under-tuned no-replay curve would flatter replay
    lr_extend: int = 2
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    seq_len: int | None = None
    batch_size: int | None = None
    eval_sequences: int | None = None  # held-out sequences per domain (half select, half report)
    pretrain_steps: int = 192  # presets: generic pre-training before fine-tuning
    tokenizer: str = "default"  # presets: the tokenizer spec (an HF model always uses its own)
    pretrain_lr: float = 3e-3
    threads: int = 1
    precision: str = "auto"
    form: str = "loglinear"  # the law fitted to the no-replay curve (analysis.law.FORMS)
    # Forgetting on tasks (advisor/tasks.py), as `replaylab finetune`'s eval.mc_tasks / lm_eval_tasks /
    # lm_eval_include: multiple-choice jsonl files (both model kinds) and lm-evaluation-harness tasks (HF models).
    # Empty, they stay out of the identity (fields at their defaults are) and out of every run.
    mc_tasks: list[str] = field(default_factory=list)
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_include: str | None = None

    @property
    def kind(self) -> str:
        return "preset" if self.model.startswith(PRESET) else "hf"

    @property
    def preset(self) -> str:
        return self.model[len(PRESET) :]

    def value(self, name: str) -> Any:
        own = getattr(self, name)
        return KIND_DEFAULTS[self.kind][name] if own is None else own

    def validate(self) -> None:
        from replaylab.analysis.law import FORMS
        from replaylab.runconfig import MODEL_PRESETS

        if self.kind == "preset" and self.preset not in MODEL_PRESETS:
            raise ConfigError(
                f"--model {self.model!r}: unknown preset; choose preset:NAME with NAME one of "
                f"{', '.join(MODEL_PRESETS)}"
            )
        if self.lora and self.kind == "preset":
            raise ConfigError("--lora applies to Hugging Face models; a preset is trained in full")
        for r in self.fractions:
            if not 0 < r < 1:
                raise ConfigError(f"--fractions {r:g}: a replay fraction lies in (0, 1); e.g. 0.25,0.5,0.75")
        if not self.fractions:
            raise ConfigError("--fractions is empty; give at least one replay fraction, e.g. 0.5")
        shares = sorted(set(self.curve_shares))
        if len(shares) < 3 or not all(0 < s <= 1 for s in shares):
            raise ConfigError(f"curve shares {self.curve_shares}: give >= 3 distinct shares of the budget in (0, 1]")
        if not 0 < self.replay_share <= 1:
            raise ConfigError(f"--replay-share {self.replay_share:g} must lie in (0, 1] (a share of the budget)")
        if len(set(self.seeds)) < 2:
            raise ConfigError(f"--seeds {self.seeds}: intervals need at least 2 seeds, e.g. --seeds 2")
        if self.lr_extend < 0:
            raise ConfigError(f"--lr-extend {self.lr_extend} must be >= 0 (0 = never extend the LR grid)")
        if not self.lr_factors or any(not f > 0 for f in self.lr_factors):
            raise ConfigError(f"--lr-factors {self.lr_factors}: give factors > 0 around --lr, e.g. 0.5,1,2")
        for name in ("lr", "epochs"):
            v = self.value(name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"--{name} {v} must be a number > 0")
        for name in ("seq_len", "batch_size", "eval_sequences"):
            if self.value(name) < 1 + (name == "eval_sequences"):
                raise ConfigError(f"--{name.replace('_', '-')} {self.value(name)} is too small")
        if self.kind == "hf" and self.tokenizer != "default":
            raise ConfigError("--tokenizer applies to presets; a Hugging Face model packs data with its own")
        if self.kind == "preset" and self.pretrain_steps < 1:
            raise ConfigError(f"--pretrain-steps {self.pretrain_steps} must be >= 1")
        if self.form not in FORMS:
            raise ConfigError(f"--form {self.form!r} is unknown; choose one of {', '.join(FORMS)}")
        validate_tasks(self)

    @property
    def has_tasks(self) -> bool:
        return bool(self.mc_tasks or self.lm_eval_tasks)

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> str:
        """The advice folder's identity: the same question continues there, another one needs --overwrite. Fields
        at their defaults are left out, so a field added later keeps earlier questions' identities (the runs
        themselves are content-addressed: a changed run is a new run either way)."""
        defaults = AdviceConfig(model="", target="").to_dict()
        asked = {k: v for k, v in self.to_dict().items() if k in ("model", "target") or v != defaults[k]}
        return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()[:16]


# Tasks (forgetting on them: advisor/tasks.py scores them, advisor/forgetting.py reads them) ------------------


def task_name(path: str) -> str:
    return Path(path).stem  # the name hf/finetune.py records a multiple-choice file's scores under


def validate_tasks(config: AdviceConfig) -> None:
    """The task fields alone (no files read): called by AdviceConfig.validate."""
    if config.lm_eval_tasks and config.kind == "preset":
        raise ConfigError(
            f"--lm-eval-task {config.lm_eval_tasks[0]!r}: lm-evaluation-harness scores Hugging Face models, not "
            "our presets; score a multiple-choice .jsonl with --mc-task instead, or advise a Hugging Face model"
        )
    if config.lm_eval_include is not None and not config.lm_eval_tasks:
        raise ConfigError(
            f"--lm-eval-include {config.lm_eval_include!r} but no --lm-eval-task; name the tasks to run from it"
        )
    names = [task_name(p) for p in config.mc_tasks] + list(config.lm_eval_tasks)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"tasks named twice: {', '.join(twice)}; give each task once (files by distinct names)")


def in_run_eval(config: AdviceConfig) -> dict[str, Any]:
    """The fine-tuning form's eval fields of an HF run that scores the tasks at its end (none without tasks,
    so its run id is the one it had before tasks existed)."""
    out: dict[str, Any] = {}
    if config.mc_tasks:
        out["eval.mc_tasks"] = list(config.mc_tasks)
    if config.lm_eval_tasks:
        out["eval.lm_eval_tasks"] = list(config.lm_eval_tasks)
    if config.lm_eval_include is not None:
        out["eval.lm_eval_include"] = config.lm_eval_include
    return out


@dataclass(frozen=True)
class Cell:
    budget: int  # unique target sequences
    rho: float  # replay fraction R

    @property
    def label(self) -> str:
        return f"R={self.rho:g} @ {self.budget}"


@dataclass
class Design:
    """The cells, LRs and seeds; N is the full budget, `sub_budget` where replay is measured."""

    config: AdviceConfig
    num_available: int  # train sequences of the target (N when no budget is given)
    budget: int
    budgets: list[int]
    sub_budget: int
    lrs: list[float]
    rows: bool = False  # an instruction target: budgets count whole-example rows (data/rows.py), not stream sequences
    extra_lrs: dict[Cell, list[float]] = field(default_factory=dict)  # added past a grid edge (extend_at_edges)

    def lrs_of(self, cell: Cell) -> list[float]:
        return sorted({*self.lrs, *self.extra_lrs.get(cell, [])})

    @property
    def unit(self) -> str:
        return unit_of(self.config.value("seq_len"), self.rows)

    @property
    def cells(self) -> list[Cell]:
        curve = [Cell(b, 0.0) for b in self.budgets]
        return curve + [Cell(self.sub_budget, float(r)) for r in self.config.fractions]

    @property
    def num_runs(self) -> int:
        return sum(len(self.lrs_of(c)) for c in self.cells) * len(self.config.seeds)


def extend_at_edges(design: Design, picks: dict[Cell, str]) -> list[tuple[Cell, float]]:
    """Add, in place, the next LR past the edge where each cell's pick sits (`picks`: cell -> "low" / "high"),
    one grid step further (the ratio of the two LRs at that edge); returns the (cell, LR) pairs added."""
    added = []
    for cell, edge in picks.items():
        lrs = design.lrs_of(cell)
        if edge not in ("low", "high") or len(lrs) < 2:
            continue
        lr = lrs[0] * lrs[0] / lrs[1] if edge == "low" else lrs[-1] * lrs[-1] / lrs[-2]
        design.extra_lrs.setdefault(cell, []).append(lr)
        added.append((cell, lr))
    return added


def unit_of(seq_len: int, rows: bool) -> str:
    """What one unit of a budget is, for messages: a stream sequence, or a row of whole examples."""
    return f"rows (whole examples packed into {seq_len + 1} tokens)" if rows else f"sequences of {seq_len} tokens"


def make_design(config: AdviceConfig, num_available: int, num_heldout: int, *, rows: bool = False) -> Design:
    """Budgets from the target's size; refuses a target too small for the design (one line, the fix)."""
    budget = config.budget or num_available
    unit = unit_of(config.value("seq_len"), rows)
    if config.budget is not None and config.budget > num_available:
        raise ConfigError(
            f"--budget {config.budget} exceeds the {num_available} train {unit} in "
            f"{config.target!r}; give --budget <= {num_available} or a shorter --seq-len"
        )
    if budget < MIN_BUDGET:
        if config.budget is not None:
            raise ConfigError(
                f"--budget {config.budget} is too small for the design: the no-replay curve needs >= {MIN_BUDGET} "
                f"target sequences (budgets N/8..N); give --budget >= {MIN_BUDGET}"
            )
        raise ConfigError(
            f"target {config.target!r} is too small for the design: {budget} train {unit}, "
            f"the curve needs >= {MIN_BUDGET} (budgets N/8..N); give more target data or a shorter --seq-len"
        )
    if num_heldout < 2:
        raise ConfigError(
            f"target {config.target!r} has {num_heldout} held-out {unit}; the advisor "
            "needs >= 2 (a select half to pick LRs, a report half to report on): give more target data"
        )
    budgets = sorted({max(1, round(budget * s)) for s in config.curve_shares})
    if len(budgets) < 3:
        raise ConfigError(
            f"budget {budget} gives only {len(budgets)} distinct curve budgets; give more target data (--budget)"
        )
    sub = max(1, round(budget * config.replay_share))
    lrs = sorted({config.value("lr") * f for f in config.lr_factors})
    return Design(config, num_available, budget, budgets, sub, lrs, rows)


def runs_of(design: Design) -> list:
    """Every run of the design as the sweep's PlannedRun (run id, config, coordinates)."""
    from replaylab.fingerprint import run_id
    from replaylab.sweep.experiment import PlannedRun

    out = {}
    for cell in design.cells:
        for lr in design.lrs_of(cell):
            for seed in design.config.seeds:
                cfg = (_preset_run if design.config.kind == "preset" else _hf_run)(design, cell, lr, seed)
                rid = run_id(cfg)
                coords = {
                    "strategy": cfg.meta["strategy"],
                    "budget": cell.budget,
                    "rho": cell.rho,
                    "lr": lr,
                    "seed": seed,
                }
                out.setdefault(rid, PlannedRun(rid, cfg, coords))
    return list(out.values())


def _preset_run(design: Design, cell: Cell, lr: float, seed: int):
    """Generic pre-training (the same prefix for every run of a seed), then a fresh AdamW and a cosine over the
    fine-tuning stage that `plan_mix` lays out: the target's epochs over the budget, stretched by 1 / (1 - R)."""
    from replaylab.config import from_dict
    from replaylab.fingerprint import lr_group
    from replaylab.runconfig import RunConfig
    from replaylab.schedule import plan_mix

    c = design.config
    batch, epochs = c.value("batch_size"), c.value("epochs")
    plan = plan_mix(budget=cell.budget, target_epochs=epochs, replay_fraction=cell.rho, batch_size=batch)
    mixture = {TARGET: plan.target_weight}
    if plan.target_weight < 1:
        mixture[REPLAY] = 1.0 - plan.target_weight
    p = c.pretrain_steps
    # options only when given: the raw config (and so meta.lr_group, part of the run id) stays as without them
    target_options = {"options": dict(c.target_options)} if c.target_options else {}
    replay_options = {"options": dict(c.replay_options)} if c.replay_options else {}
    raw = {
        "name": f"advise-{c.preset}-n{cell.budget}-rho{cell.rho:g}-lr{lr:.6g}",
        "seed": seed,
        "model": {"preset": c.preset},
        "data": {
            "tokenizer": c.tokenizer,
            "seq_len": c.value("seq_len"),
            "domains": {
                TARGET: {"source": c.target, "budget": cell.budget, "epochs": plan.target_epochs, **target_options},
                REPLAY: {"source": c.replay, **replay_options},
            },
        },
        "train": {
            "total_steps": p + plan.total_steps,
            "batch_size": batch,
            "precision": c.precision,
            "compile": "off",
            "threads": c.threads,
            "log_every": 32,
            "progress": "off",
        },
        "eval": {"every": 0, "max_sequences": c.value("eval_sequences"), "batch_size": 64},
        "logging": {"tensorboard": False},
        "stages": [
            {
                "name": "pretrain",
                "steps": p,
                "mixture": {REPLAY: 1.0},
                "lr": {"schedule": "cosine", "peak": c.pretrain_lr, "warmup": 0.01},
            },
            {
                "name": "finetune",
                "steps": plan.total_steps,
                "mixture": mixture,
                "lr": {"schedule": "cosine", "peak": lr, "warmup": 0.01},
                "optimizer": "reset",
            },
        ],
        "meta": {
            "strategy": "advise",
            "target_domain": TARGET,
            "generic_domain": REPLAY,
            "rho": cell.rho,
            "budget": cell.budget,
            "target_epochs": epochs,
            "lr": lr,
            "pretrain_steps": p,
        },
    }
    raw["meta"]["lr_group"] = lr_group(raw)
    return from_dict(RunConfig, raw)


def hf_form(config: AdviceConfig) -> dict:
    """The fine-tuning form (`replaylab finetune --config`) every HF run of the advice starts from."""
    form: dict[str, Any] = {
        "model": config.model,
        "target": {"source": config.target, "options": dict(config.target_options)},
        "replay": {"source": config.replay, "options": dict(config.replay_options)},
        "seq_len": config.value("seq_len"),
        "batch_size": config.value("batch_size"),
        "threads": config.threads,
        "precision": config.precision,
        "progress": "off",
        "save_final": False,  # the advice keeps losses, not one model per run
        "eval": {"max_sequences": config.value("eval_sequences")},
    }
    if config.lora:
        form["lora"] = {}
    return form


def _hf_run(design: Design, cell: Cell, lr: float, seed: int):
    from replaylab.schedule import finetune_hf

    c = design.config
    fields = {"target.budget": cell.budget, "replay_fraction": cell.rho, "target_epochs": c.value("epochs")}
    if cell.budget == design.sub_budget:  # the cells the answer compares score the tasks at their end
        fields.update(in_run_eval(c))
    cfg = finetune_hf(hf_form(c), seed=seed, lr=lr, **fields)
    # the analysis reads `advise` runs as a curve and a comparison (analysis.tables.ADVISE)
    cfg.meta.update(strategy="advise", budget=cell.budget)
    return cfg
