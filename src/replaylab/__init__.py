"""replaylab: replaying generic pre-training data while fine-tuning, as a controlled environment.

Layout (data -> schedule -> train -> sweep -> analysis, plus the Hugging Face bridge):
  data/      corpus recipes, tokenizers, token stores
  schedule   the (rho, alpha, delta, gamma) solver and the paper's strategies
  model      Llama-style decoder, Hugging Face import/export
  train/     mixture sampler, trainer, LR schedules, checkpoints, evaluation
  sweep/     experiment grids, run store, local and Ray executors
  analysis/  reference scaling law, effective data, multipliers, figures, report
  hf/        replay fine-tuning of pretrained Hugging Face causal LMs
  replay     ReplayMixture: the engine's replay mixture as a dataset for HF Trainer, TRL, Accelerate, PyTorch
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["ReplayMixture", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: `import replaylab` must not import torch
    if name == "ReplayMixture":
        from replaylab.replay import ReplayMixture

        return ReplayMixture
    raise AttributeError(f"module 'replaylab' has no attribute {name!r}")
