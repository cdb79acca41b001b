"""The Hugging Face bridge: replay fine-tuning of pretrained causal LMs (docs/finetune.md).

    from replaylab.hf import FinetuneConfig, run_finetune
    manifest = run_finetune(FinetuneConfig(model="smollm2-135m", replay_fraction=0.5), "runs/ft")

A run is a RunConfig with `model.kind: hf` and a `finetune` plan; `FinetuneConfig(**fields)` (replaylab.finetune_form)
builds one from the fine-tuning form's fields (`replaylab finetune`'s flags and --config files). Modules: models
(resolve/load; offline-safe), smollm (the built-in model), packing (token-exact mixing over the data layer's stores
and the engine's sampler), train_module (the model as the one Trainer trains it), finetune (`HFRun`, the run setup
train/run.py picks for this kind, and its callbacks: initial eval, multiple choice, lm-eval, the final model),
evaluate (held-out losses, multiple choice).
"""

from __future__ import annotations

from typing import Any

__all__ = ["FinetuneConfig", "run_finetune", "plan_mix"]


def __getattr__(name: str) -> Any:  # lazy: importing replaylab.hf must not import torch/transformers
    if name == "FinetuneConfig":
        from replaylab.finetune_form import FinetuneConfig

        return FinetuneConfig
    if name == "run_finetune":
        from replaylab.hf.finetune import run_finetune

        return run_finetune
    if name == "plan_mix":
        from replaylab.hf.packing import plan_mix

        return plan_mix
    raise AttributeError(name)
