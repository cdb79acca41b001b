"""The training engine. `run_training(config, out_dir, *, resume=False, init_from=None) -> dict`.

Imported lazily so that `replaylab.train.mixture` / `lr` / `optim` load without torch's model stack."""

from __future__ import annotations

from typing import Any

__all__ = ["run_training", "TrainingInterrupted"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from replaylab.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'replaylab.train' has no attribute {name!r}")
