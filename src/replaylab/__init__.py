"""replaylab: replaying generic pre-training data while fine-tuning, as a controlled environment.

Layout (data -> schedule -> train -> sweep -> analysis, plus the Hugging Face bridge):
  data/      corpus recipes, tokenizers, token stores
  schedule   the (rho, alpha, delta, gamma) solver and the paper's strategies
  model      Llama-style decoder, Hugging Face import/export
  train/     mixture sampler, trainer, LR schedules, checkpoints, evaluation
  sweep/     experiment grids, run store, local and Ray executors
  analysis/  reference scaling law, effective data, multipliers, figures, report
  hf/        replay fine-tuning of pretrained Hugging Face causal LMs
"""

__version__ = "0.1.0"
