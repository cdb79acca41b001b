"""The configuration of one training run: model, data domains, stages, optimizer, training, eval.
The model section (`model.kind`: our Transformer or a Hugging Face model) is described in model_kinds.py.

A run is a list of stages. Each stage has a length, a mixture {domain: token share}, an LR schedule
and an optimizer policy. Domains name token stores; a limited domain (the target) has a budget in
sequences. Strategy builders (`replaylab.schedule`) produce these configs; `replaylab.train` runs them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from replaylab.config import added_field, check_choices
from replaylab.errors import ConfigError
from replaylab.model_kinds import (  # noqa: F401 - ModelConfig, MODEL_PRESETS: imported from here too (their old home)
    HF,
    MODEL_PRESETS,
    HFModelConfig,
    ModelConfig,
    model_kind,
    validate_hf_run,
    with_kind_defaults,
)

# Settings with a fixed set of values: the types name the values (YAML and overrides are checked against
# them by replaylab.config, with an error that lists them), and the fine-tuning config shares them.
Precision = Literal["auto", "fp32", "bf16"]  # bf16 = autocast; auto = bf16 where the hardware runs it natively
Device = Literal["auto", "cpu", "cuda"]
Switch = Literal["auto", "on", "off"]
LRSchedule = Literal["constant", "cosine", "wsd", "linear", "continue"]

# The longest run replaylab plans, in optimizer steps. The mixture plan holds counts per step (about 110
# bytes each: 1M steps ~ 110 MB, built in ~0.5 s), so a mistaken length, or a replay fraction near 1
# stretching a fine-tuning run by 1 / (1 - R), is refused here rather than ending in the OOM killer.
MAX_STEPS = 1_000_000


@dataclass
class DomainConfig:
    """One data domain: a token store built from `source` with the run's tokenizer.

    source: a built-in recipe name (generic, code, math, instructions, basque), a file or folder
    path (.jsonl/.txt/.parquet), or `hf:org/name[:config][@revision]`.
    budget: unique training sequences of this domain (a limited domain, e.g. the target);
    None = unlimited (the generic pool, cycled only if exhausted).
    epochs: if given, how many passes over the budget the whole run must make; the engine checks
    that the stages draw exactly that many (to within one sequence per stage that mixes the domain)
    and errors otherwise.
    """

    source: str
    budget: int | None = None
    epochs: float | None = None
    options: dict[str, Any] = field(default_factory=dict)  # source options, e.g. {text_field: text}

    def validate(self) -> None:
        if self.budget is not None and self.budget < 1:
            raise ConfigError(f"domain budget must be >= 1 sequence, got {self.budget}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"domain epochs must be > 0, got {self.epochs}")
        if self.epochs is not None and self.budget is None:
            raise ConfigError("domain epochs is set but budget is not; epochs count passes over a budget")


@dataclass
class DataConfig:
    tokenizer: str = (
        "default"  # "default" (BPE trained on the built-in recipes), a tokenizer.json / folder, or a hub id
    )
    seq_len: int = 256
    domains: dict[str, DomainConfig] = field(default_factory=dict)
    budget_seed: int = 0  # which sequences form a budget; fixed across run seeds so budgets are nested and shared
    val_sequences: int | None = None  # cap on held-out sequences per domain used for eval (None = eval.max_sequences)
    # Instruction stores only (data/rows.py): whole examples packed per row, or one example per padded row.
    packing: Literal["documents", "padded"] = added_field("documents")

    def validate(self) -> None:
        check_choices(self, "data.")
        if self.seq_len < 8:
            raise ConfigError(f"data.seq_len must be >= 8, got {self.seq_len}")
        if not self.domains:
            raise ConfigError("data.domains is empty; name at least one domain, e.g. {generic: {source: generic}}")
        if self.budget_seed < 0:  # a numpy seed: non-negative
            raise ConfigError(f"data.budget_seed must be >= 0, got {self.budget_seed}")
        if self.val_sequences is not None and self.val_sequences < 2:
            raise ConfigError(
                f"data.val_sequences must be >= 2 (it is split in select and report halves), got "
                f"{self.val_sequences}; or leave it unset (null) to use eval.max_sequences"
            )


@dataclass
class LRConfig:
    """LR over a stage (or a span of stages: a stage whose schedule is `continue` extends the previous
    stage's schedule, so one WSD/cosine curve can run across several mixtures, as in mid-training).

    warmup: fraction of the span's steps of linear warmup from 0 to peak.
    decay: for `wsd`, the fraction of the span's steps (at the end) decaying linearly to `final`.
    """

    schedule: LRSchedule = "cosine"
    peak: float = 3e-3
    final: float = 0.0
    warmup: float = 0.01
    decay: float = 0.1

    def validate(self) -> None:
        check_choices(self, "lr.")
        if self.peak < 0 or self.final < 0:
            raise ConfigError(f"lr.peak and lr.final must be >= 0, got {self.peak} and {self.final}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"lr.warmup is a fraction of the stage in [0, 1), got {self.warmup}")
        if not 0 <= self.decay <= 1:
            raise ConfigError(f"lr.decay is a fraction of the stage in [0, 1], got {self.decay}")


def lr_span_stages(schedules: Sequence[str | None]) -> list[list[int]]:
    """Stage indices of each LR span, from the stages' `lr.schedule` values in order: a stage and the
    `continue` stages right after it. (A leading `continue`, which RunConfig.validate refuses, opens
    a span of its own.)"""
    spans: list[list[int]] = []
    for i, schedule in enumerate(schedules):
        if schedule == "continue" and spans:
            spans[-1].append(i)
        else:
            spans.append([i])
    return spans


@dataclass
class StageConfig:
    """One stage. Length: `steps`, or `fraction` of train.total_steps (exactly one of them).

    optimizer: `reset` = fresh AdamW state (moments zero, step count restarts) at the stage start;
    `carry` = keep it. The first stage always starts fresh.
    init (first stage only): `scratch`, `checkpoint:PATH` (a run folder or checkpoint folder: model
    weights only) or `hf:PATH_OR_ID` (a Hugging Face Llama checkpoint).
    """

    name: str
    mixture: dict[str, float]
    steps: int | None = None
    fraction: float | None = None
    lr: LRConfig = field(default_factory=LRConfig)
    optimizer: Literal["reset", "carry"] = "carry"
    init: str = "scratch"

    def validate(self) -> None:
        if (self.steps is None) == (self.fraction is None):
            raise ConfigError(f"stage {self.name!r}: give exactly one of steps or fraction")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"stage {self.name!r}: steps must be >= 1, got {self.steps}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ConfigError(f"stage {self.name!r}: fraction must be in (0, 1], got {self.fraction}")
        if not self.mixture:
            raise ConfigError(f"stage {self.name!r}: mixture is empty; give {{domain: weight}}")
        for dom, w in self.mixture.items():
            if not 0 <= w <= 1:
                raise ConfigError(
                    f"stage {self.name!r}: mixture weight of {dom!r} is {w}; weights are token shares in [0, 1]"
                )
        total = sum(self.mixture.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ConfigError(
                f"stage {self.name!r}: mixture weights sum to {total:.6g}; they are token shares and must sum to 1"
            )
        check_choices(self, f"stage {self.name!r}: ")
        if not (self.init == "scratch" or self.init.startswith(("checkpoint:", "hf:"))):
            raise ConfigError(f"stage {self.name!r}: init {self.init!r} must be scratch, checkpoint:PATH or hf:PATH")


@dataclass
class OptimConfig:
    """AdamW as in the paper. Weight decay applies to matrices only unless the flags say otherwise."""

    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_norms: bool = False
    decay_embeddings: bool = False
    grad_clip: float = 1.0  # global-norm clipping; 0 = off
    # auto: fused on CUDA and on a CPU under bf16 autocast, foreach on an fp32 CPU (train/optim.adamw_kwargs)
    implementation: Literal["auto", "fused", "foreach", "single"] = "auto"

    def validate(self) -> None:
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must lie in [0, 1), got {self.betas}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"optim.{name} must be >= 0, got {getattr(self, name)}")
        if self.eps <= 0:  # Adam divides by sqrt(v) + eps, and v is 0 wherever a gradient was 0
            raise ConfigError(f"optim.eps must be > 0, got {self.eps}")
        check_choices(self, "optim.")


FINETUNE_PEAK = 3e-4  # a fine-tuning run's peak LR unless it gives one (pre-training's, LRConfig's, is 3e-3)


@dataclass
class FinetunePlanConfig:
    """Replay fine-tuning with fixed target exposure, planned at launch (`hf.packing.replay_sampler`): the run
    draws `target_epochs` x the target budget (data.domains.target; its budget may be every train sequence,
    known only once the store is read) and replay stretches it to target steps / (1 - replay_fraction). Its
    one stage, its length (train.total_steps) and its exact token shares follow; `lr` is that stage's (a fresh
    AdamW). max_steps: a hard cap on total steps (a smoke test: the target exposure is then cut short)."""

    replay_fraction: float = 0.0
    target_epochs: float = 1.0
    max_steps: int | None = None
    lr: LRConfig = field(default_factory=lambda: LRConfig(peak=FINETUNE_PEAK))

    @classmethod
    def _merge_defaults(cls, data: dict) -> dict:
        if isinstance(data.get("lr"), dict):  # a partial lr section keeps the fine-tuning peak
            data["lr"] = {"peak": FINETUNE_PEAK, **data["lr"]}
        return data

    def validate(self) -> None:
        if not 0 <= self.replay_fraction < 1:
            raise ConfigError(
                f"finetune.replay_fraction must lie in [0, 1), got {self.replay_fraction}; it is the "
                "replay share of the tokens"
            )
        if self.target_epochs <= 0:
            raise ConfigError(f"finetune.target_epochs must be > 0, got {self.target_epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"finetune.max_steps must be >= 1, got {self.max_steps}")
        if self.lr.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(
                f"finetune.lr.schedule {self.lr.schedule!r} is unknown; choose one of cosine, linear, constant"
            )


@dataclass
class TrainConfig:
    total_steps: int | None = 1024  # None: planned at launch (RunConfig.finetune)
    batch_size: int = 16  # sequences per optimizer step (global, across DDP ranks)
    micro_batch_size: int | None = None  # sequences per forward pass; None = batch_size (no accumulation)
    mixture_block: int | None = None  # sequences per mixture block; None = batch_size
    precision: Precision = "auto"
    compile: Switch = "auto"  # auto: compile where it works, else eager (runtime.maybe_compile)
    threads: int | None = None  # torch intra-op threads; None = leave as is
    device: Device = "auto"  # auto: CUDA when available
    deterministic: bool = True
    checkpoint_every: int = 0  # steps; 0 = only at stage ends and on SIGINT/SIGTERM
    keep_checkpoints: int = 2  # periodic checkpoints kept (stage-end ones are always kept)
    # Extra checkpoints at exactly these steps, kept like stage ends: a sweep sets them on the carrier of
    # a shared prefix, one per branch point, so children start exactly where they diverge.
    checkpoint_steps: list[int] = field(default_factory=list)
    log_every: int = 10
    progress: Switch = "auto"  # auto: a bar on a terminal

    def validate(self) -> None:
        if self.total_steps is not None and self.total_steps < 1:  # None: a fine-tuning plan sets it at launch
            raise ConfigError(f"train.total_steps must be >= 1, got {self.total_steps}")
        for name in ("batch_size", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.total_steps is not None and self.total_steps > MAX_STEPS:
            raise ConfigError(
                f"train.total_steps is {self.total_steps:,}, above the {MAX_STEPS:,} steps replaylab plans "
                "a run for; give a shorter run"
            )
        for name in ("micro_batch_size", "mixture_block", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}; or leave it unset (null)")
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"train.checkpoint_every must be >= 0 (0 = at stage ends only), got {self.checkpoint_every}"
            )
        mb = self.micro_batch_size or self.batch_size
        if self.batch_size % mb:
            raise ConfigError(
                f"train.batch_size ({self.batch_size}) must be a multiple of train.micro_batch_size ({mb})"
            )
        bad = [s for s in self.checkpoint_steps if not 1 <= s <= (self.total_steps or s)]
        if bad:
            raise ConfigError(f"train.checkpoint_steps {bad} lie outside 1..{self.total_steps} (train.total_steps)")
        check_choices(self, "train.")


@dataclass
class EvalConfig:
    every: int = 0  # steps between evaluations; 0 = only at stage ends
    max_sequences: int = 64  # held-out sequences per domain (split in two halves: select / report)
    batch_size: int = 16
    domains: list[str] | None = None  # None = every domain of the run
    # Of Hugging Face runs (model.kind: hf), added later. initial: evaluate the pretrained model before step 1.
    # mc_tasks: local jsonl files of multiple-choice items scored by log-likelihood (hf/evaluate.py).
    # lm_eval_tasks: lm-evaluation-harness task names (needs `pip install 'replaylab[eval]'`): its own tasks
    # (their data must be in the Hugging Face cache), replaylab's examples (e.g. replaylab_basque_vocab) or tasks
    # in lm_eval_include, a folder of task YAML files (e.g. over a local jsonl).
    initial: bool = added_field(False)
    mc_tasks: list[str] = added_field(factory=list)
    mc_max_items: int | None = added_field(None)
    lm_eval_tasks: list[str] = added_field(factory=list)
    lm_eval_include: str | None = added_field(None)

    def validate(self) -> None:
        if self.every < 0:
            raise ConfigError(f"eval.every must be >= 0 (0 = at stage ends only), got {self.every}")
        if self.max_sequences < 2:
            raise ConfigError(
                f"eval.max_sequences must be >= 2 (it is split in select and report halves), got {self.max_sequences}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "replaylab"


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    model: ModelConfig | HFModelConfig = field(default_factory=ModelConfig)  # its `kind` names the implementation
    data: DataConfig = field(default_factory=DataConfig)
    stages: list[StageConfig] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Free-form record of how the run was made (strategy, rho, alpha, budget multiple, lr...): the
    # strategy builders fill it, analysis reads it from the manifest. Not used by the engine.
    meta: dict[str, Any] = field(default_factory=dict)
    # A run whose stage is planned at launch (replay fine-tuning of a Hugging Face model); stages then stay empty.
    finetune: FinetunePlanConfig | None = added_field(None)

    @classmethod
    def _merge_defaults(cls, data: dict) -> dict:
        data = with_kind_defaults(data)
        train = data.get("train")
        if data.get("finetune") is not None and (train is None or isinstance(train, dict)):
            data["train"] = {"total_steps": None, **(train or {})}  # the plan sets it
        return data

    def validate(self) -> None:
        if self.finetune is not None or model_kind(self.model) == HF:
            return validate_hf_run(self)
        if self.train.total_steps is None:
            raise ConfigError("train.total_steps is missing; give the run's length in optimizer steps")
        if not self.stages:
            raise ConfigError("stages is empty; a run needs at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"stage names must be unique, got {names}")
        for s in self.stages:
            for dom in s.mixture:
                if dom not in self.data.domains:
                    raise ConfigError(
                        f"stage {s.name!r} mixes domain {dom!r}, which data.domains does not define "
                        f"(defined: {', '.join(self.data.domains)})"
                    )
        if self.stages[0].lr.schedule == "continue":
            raise ConfigError(f"stage {self.stages[0].name!r}: the first stage cannot continue a previous LR schedule")
        for s in self.stages[1:]:
            if s.init != "scratch":
                raise ConfigError(f"stage {s.name!r}: only the first stage may set init")
        lengths = self.stage_steps()
        if min(lengths) < 1:
            raise ConfigError(
                f"stage lengths {lengths}: every stage needs at least one step; change the fractions or steps"
            )
        if sum(lengths) != self.train.total_steps:
            raise ConfigError(
                f"stage lengths {lengths} sum to {sum(lengths)} steps, but train.total_steps is "
                f"{self.train.total_steps}; make them agree"
            )

    def stage_starts(self) -> list[int]:
        """Global step at which each stage starts, plus total_steps at the end."""
        starts = [0]
        for n in self.stage_steps():
            starts.append(starts[-1] + n)
        return starts

    def stage_steps(self) -> list[int]:
        """Steps of each stage. Fractions are rounded to whole steps; the last stage with a fraction
        absorbs the rounding so the total is exact."""
        total = self.train.total_steps
        out: list[int] = []
        for s in self.stages:
            out.append(s.steps if s.steps is not None else max(1, round(s.fraction * total)))
        frac_idx = [i for i, s in enumerate(self.stages) if s.fraction is not None]
        if frac_idx:
            out[frac_idx[-1]] += total - sum(out)
        return out
