"""The configuration of one replay fine-tuning run of a pretrained Hugging Face causal LM.

Replay semantics follow the paper's fine-tuning strategy: the target pool (limited, repeated for
`target_epochs`) is mixed with generic replay data at token share `1 - replay_fraction` /
`replay_fraction`, and the run is stretched so the target exposure stays fixed:
total steps = target steps / (1 - replay_fraction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from replaylab.config import added_field, check_choices
from replaylab.errors import ConfigError
from replaylab.runconfig import Device, LoggingConfig, Precision, Switch


@dataclass
class PoolConfig:
    """One data pool. source: what the data layer accepts (a recipe name such as `basque` or
    `generic`, a .jsonl/.txt/.parquet file or folder, or `hf:org/name[:config][@revision]`).
    budget: unique training sequences used from the pool (None = every training sequence)."""

    source: str
    budget: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.source:
            raise ConfigError("a pool source is empty; name a recipe (e.g. basque), a file or folder, or hf:org/name")
        if self.budget is not None and self.budget < 1:
            raise ConfigError(f"pool budget must be >= 1 sequence, got {self.budget}")


@dataclass
class LoraConfig:
    """LoRA adapters (peft). Only the adapters train; the base weights stay frozen."""

    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def validate(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must lie in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules is empty; name the linear layers to adapt, e.g. [q_proj, v_proj]")


@dataclass
class FTOptimConfig:
    """A fresh AdamW with its own schedule (the paper resets the optimizer for fine-tuning)."""

    lr: float = 3e-4
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # after warmup
    warmup: float = 0.01  # fraction of total steps
    final_lr: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1  # matrices only; norms, biases and embeddings are not decayed
    grad_clip: float = 1.0  # global norm; 0 = off

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        check_choices(self, "optim.")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"optim.warmup is a fraction of the run in [0, 1), got {self.warmup}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must lie in [0, 1), got {self.betas}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.final_lr < 0:
            raise ConfigError("optim.weight_decay, optim.grad_clip and optim.final_lr must be >= 0")


@dataclass
class FTEvalConfig:
    """Held-out evaluation. Each pool's first `max_sequences` validation sequences are split in two
    halves, `val` (select: LR and rho) and `test` (report), as the engine does.
    mc_tasks: local jsonl files of multiple-choice items scored by log-likelihood (see evaluate.py).
    lm_eval_tasks: lm-evaluation-harness task names (needs `pip install 'replaylab[eval]'`): its own
    tasks (their data must be in the Hugging Face cache: downloads are off while evaluating unless
    HF_DATASETS_OFFLINE=0), replaylab's examples (e.g. replaylab_basque_vocab) or tasks in
    lm_eval_include, a folder of task YAML files (e.g. over a local jsonl)."""

    every: int = 0  # steps between evaluations; 0 = only at the end (and at step 0)
    max_sequences: int = 32
    batch_size: int = 8
    initial: bool = True  # evaluate the pretrained model before step 1 (forgetting is relative to it)
    mc_tasks: list[str] = field(default_factory=list)
    mc_max_items: int | None = None
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_include: str | None = None

    def validate(self) -> None:
        if self.lm_eval_include is not None and not self.lm_eval_tasks:
            raise ConfigError(f"eval.lm_eval_include is {self.lm_eval_include!r} but eval.lm_eval_tasks is empty; "
                              "name the tasks to run from it in eval.lm_eval_tasks")
        if self.max_sequences < 2:
            raise ConfigError(f"eval.max_sequences must be >= 2 (it is split in val/test halves), got {self.max_sequences}")
        if self.every < 0:
            raise ConfigError(f"eval.every must be >= 0 (0 = at the end only), got {self.every}")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class FinetuneConfig:
    """model: a local folder, a Hugging Face hub id, or `smollm2-135m` (the built-in offline model).
    target_epochs: passes over the target budget. max_steps: a hard cap on total steps (a smoke
    test); a capped run no longer has the fixed target exposure and its manifest says so."""

    name: str = "finetune"
    seed: int = 0
    model: str = "smollm2-135m"
    trust_remote_code: bool = False
    target: PoolConfig = field(default_factory=lambda: PoolConfig(source="basque"))
    replay: PoolConfig | None = field(default_factory=lambda: PoolConfig(source="generic"))
    replay_fraction: float = 0.0
    target_epochs: float = 1.0
    seq_len: int = 256
    batch_size: int = 8  # sequences per optimizer step (global, across ranks)
    micro_batch_size: int | None = None  # sequences per forward pass; None = batch_size
    max_steps: int | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: FTOptimConfig = field(default_factory=FTOptimConfig)
    eval: FTEvalConfig = field(default_factory=FTEvalConfig)
    precision: Precision = "auto"  # auto: bf16 where the GPU (or CPU) runs it natively, else fp32
    gradient_checkpointing: bool = False
    device: Device = "auto"
    # auto: on a GPU the model and its loss compiled as one graph (eager if compiling fails), eager on a CPU;
    # regional: each decoder layer compiled (one graph for all: a compile of seconds, not minutes), any
    # device; off: eager. FSDP-sharded runs are eager. (Added later: hash-neutral at the default.)
    compile: Literal["auto", "regional", "off"] = added_field("auto")
    # true: bit-reproducible, resume included (CUDA attention runs its math kernel, as train.deterministic);
    # false: the fused attention kernels, faster on a GPU and not bit-reproducible there.
    deterministic: bool = added_field(True)
    # Under torchrun: ddp = every rank holds the whole model; fsdp = FSDP2 shards weights, gradients
    # and AdamW state over the ranks (hf/parallel.py), for models that do not fit one GPU.
    parallel: Literal["ddp", "fsdp"] = "ddp"
    threads: int | None = None
    checkpoint_every: int = 0  # steps; 0 = only at the end
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: Switch = "auto"
    save_final: bool = True  # write the fine-tuned model/ (or LoRA adapter/) folder at the end
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(tensorboard=False))
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not 0 <= self.replay_fraction < 1:
            raise ConfigError(
                f"replay_fraction must lie in [0, 1), got {self.replay_fraction}; it is the replay share of the tokens"
            )
        if self.replay_fraction > 0 and self.replay is None:
            raise ConfigError(f"replay_fraction is {self.replay_fraction} but no replay pool is set; give one "
                              "(replay: {source: ...})")
        if self.target_epochs <= 0:
            raise ConfigError(f"target_epochs must be > 0, got {self.target_epochs}")
        if self.seq_len < 8:
            raise ConfigError(f"seq_len must be >= 8, got {self.seq_len}")
        mb = self.micro_batch_size or self.batch_size
        if self.batch_size < 1 or mb < 1 or self.batch_size % mb:
            raise ConfigError(f"batch_size ({self.batch_size}) must be a positive multiple of micro_batch_size ({mb})")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        check_choices(self)
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ConfigError("checkpoint_every must be >= 0 and keep_checkpoints >= 1")
        for name in ("log_every", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
