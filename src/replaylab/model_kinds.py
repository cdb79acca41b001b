"""What `RunConfig.model` may name, by its `kind`: our Transformer (`ModelConfig` with its size presets, kind
`transformer`, the default) or a pretrained Hugging Face causal LM (`HFModelConfig`, kind `hf`). The kind picks
the run setup and its train module (`RUN_SETUPS`); everything else about a run (data, stages, optimizer,
training, eval) is described by the same sections whatever the kind.

A Hugging Face run's defaults differ from ours in one place, `KIND_DEFAULTS` (applied when a config is read,
by `RunConfig._merge_defaults`): it fine-tunes a pretrained model, so it takes smaller batches, evaluates
fewer held-out sequences, evaluates the pretrained model before step 1 (forgetting is relative to it) and
does not write TensorBoard files unless asked.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Literal

from replaylab.config import added_field, check_choices, closest
from replaylab.errors import ConfigError

TRANSFORMER, HF = "transformer", "hf"

# Section defaults of an `hf` run where they differ from ours (a config's own values always win).
KIND_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    HF: {
        "train": {"batch_size": 8},
        "eval": {"max_sequences": 32, "batch_size": 8, "initial": True},
        "logging": {"tensorboard": False},
    },
}


# Each kind's run setup (what train/run.py's launch calls), named rather than imported: the engine knows no
# Hugging Face specifics, the HF bridge plugs in from above, and is imported only by a run of its kind.
RUN_SETUPS: dict[str, str] = {TRANSFORMER: "replaylab.train.run:TransformerRun", HF: "replaylab.hf.finetune:HFRun"}


def run_setup(kind: str) -> Any:
    """The run-setup class of model kind `kind` (RUN_SETUPS; a config's kind is checked when it is read)."""
    module, name = RUN_SETUPS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def model_kind(model: Any) -> str:
    """The kind of a model section (a config object or a raw mapping)."""
    kind = model.get("kind") if isinstance(model, dict) else getattr(model, "kind", None)
    return kind or TRANSFORMER


def with_kind_defaults(raw: dict) -> dict:
    """A raw RunConfig mapping with its model kind's section defaults filled in where it gives none."""
    for section, defaults in KIND_DEFAULTS.get(model_kind(raw.get("model") or {}), {}).items():
        given = raw.get(section)
        if given is None or isinstance(given, dict):
            raw[section] = {**defaults, **(given or {})}
    return raw


# Model presets. Tiny sizes are what 2-core CPUs can train (see shared CPU measurements); `150m` is
# the paper's "150m4k" Llama; larger ones follow common Llama shapes.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=128, n_layers=2, n_heads=4, d_ff=384),
    "mini": dict(d_model=192, n_layers=3, n_heads=6, d_ff=512),
    "small": dict(d_model=256, n_layers=4, n_heads=4, d_ff=768),
    "10m": dict(d_model=384, n_layers=6, n_heads=6, d_ff=1024),
    "25m": dict(d_model=512, n_layers=8, n_heads=8, d_ff=1408),
    "150m": dict(d_model=512, n_layers=6, n_heads=8, d_ff=1792, max_seq_len=4096),
    "300m": dict(d_model=768, n_layers=12, n_heads=12, d_ff=2688, max_seq_len=4096),
    "600m": dict(d_model=1024, n_layers=24, n_heads=16, d_ff=3584, max_seq_len=4096),
    "1b": dict(d_model=2048, n_layers=16, n_heads=16, n_kv_heads=8, d_ff=7168, max_seq_len=4096),
}


@dataclass
class ModelConfig:
    """Our Llama-style decoder (replaylab.model.Transformer), the default kind. `preset` fills every field
    not given explicitly."""

    kind: Literal["transformer"] = added_field("transformer")
    preset: str | None = None
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None  # None = n_heads (multi-head); fewer = grouped-query attention
    d_ff: int = 384  # SwiGLU hidden size
    vocab_size: int | None = None  # None = the tokenizer's vocabulary size
    max_seq_len: int | None = None  # None = data.seq_len
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02

    @classmethod
    def _merge_defaults(cls, data: dict) -> dict:
        preset = data.get("preset")
        if preset is None:
            return data
        if not isinstance(preset, str) or preset not in MODEL_PRESETS:
            raise ConfigError(
                f"model.preset {preset!r} is unknown; {closest(preset, MODEL_PRESETS)}choose one of "
                f"{', '.join(MODEL_PRESETS)}"
            )
        return {**MODEL_PRESETS[preset], **data}

    def validate(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "d_ff"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"model head size d_model/n_heads = {self.d_model // self.n_heads} must be even for RoPE")
        for name in ("n_kv_heads", "vocab_size", "max_seq_len"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}; or leave it unset (null)")
        for name in ("rope_theta", "norm_eps", "init_std"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be > 0, got {getattr(self, name)}")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ConfigError(f"model.n_heads ({self.n_heads}) must be divisible by model.n_kv_heads ({kv})")


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
class HFModelConfig:
    """A pretrained Hugging Face causal LM. source: a local folder, a hub id, or `smollm2-135m` (the built-in
    offline model); its own tokenizer packs the data.
    compile: auto = on a GPU the model and its loss compiled as one graph (eager if compiling fails), eager on
    a CPU; regional = each decoder layer compiled (one graph for all: seconds, not minutes), any device; off =
    eager. FSDP-sharded runs are eager.
    parallel: under torchrun, ddp = every rank holds the whole model; fsdp = FSDP2 shards weights, gradients
    and AdamW state over the ranks (hf/parallel.py), for models that do not fit one GPU.
    save_final: write the fine-tuned model/ (or LoRA adapter/) folder at the end."""

    kind: Literal["hf"] = HF
    source: str = "smollm2-135m"
    trust_remote_code: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False
    compile: Literal["auto", "regional", "off"] = "auto"
    parallel: Literal["ddp", "fsdp"] = "ddp"
    save_final: bool = True

    def validate(self) -> None:
        if not self.source:
            raise ConfigError("model.source is empty; name a model folder, a hub id or smollm2-135m")
        check_choices(self, "model.")


def validate_hf_run(config: Any) -> None:
    """A Hugging Face run: as planned (a `finetune` plan, no stages yet) or as laid out for the Trainer."""
    if model_kind(config.model) != HF:
        raise ConfigError(
            "finetune (the replay fine-tuning plan) needs a Hugging Face model; set model.kind: hf and model.source"
        )
    ev, plan, domains = config.eval, config.finetune, config.data.domains
    if ev.lm_eval_include is not None and not ev.lm_eval_tasks:
        raise ConfigError(
            f"eval.lm_eval_include is {ev.lm_eval_include!r} but eval.lm_eval_tasks is empty; "
            "name the tasks to run from it in eval.lm_eval_tasks"
        )
    # eval's and train's own numbers are checked by EvalConfig.validate and TrainConfig.validate
    if plan is None:  # laid out (hf.packing.sampler_config): the engine's rules
        if not config.stages or config.train.total_steps is None:
            raise ConfigError("a Hugging Face run needs a finetune plan (or its stages and train.total_steps)")
        return
    if config.stages or config.train.total_steps is not None:
        raise ConfigError("stages and train.total_steps are planned from finetune at launch; leave them out")
    extra = [d for d in domains if d not in ("target", "replay")]
    if "target" not in domains or extra:
        raise ConfigError(
            f"a finetune plan mixes domains target and replay, got {', '.join(domains) or 'none'}; "
            "name them data.domains.target and data.domains.replay"
        )
    if domains["target"].epochs is not None:
        raise ConfigError("data.domains.target.epochs is planned (finetune.target_epochs); leave it out")
    if plan.replay_fraction > 0 and "replay" not in domains:
        raise ConfigError(
            f"replay_fraction is {plan.replay_fraction} but no replay pool is set; give one "
            "(data.domains.replay: {source: ...})"
        )
