"""The training engine: one Trainer (trainer.py) for every model, train modules (module.py: ours;
replaylab.hf.train_module: Hugging Face), and `run_training(config, out_dir, *, resume=False, init_from=None)
-> dict` (run.py: the one launch path, for every model kind).

Imported lazily so that `replaylab.train.mixture` / `lr` / `optim` load without torch's model stack."""

from __future__ import annotations

from typing import Any

__all__ = ["run_training", "TrainingInterrupted"]


def __getattr__(name: str) -> Any:
    if name == "run_training":
        from replaylab.train.run import run_training

        return run_training
    if name == "TrainingInterrupted":
        from replaylab.train.trainer import TrainingInterrupted

        return TrainingInterrupted
    raise AttributeError(f"module 'replaylab.train' has no attribute {name!r}")
