"""Checkpoints: everything needed to continue a run bit for bit, and nothing that needs unpickling.

A checkpoint is a folder `checkpoints/step_NNNNNNN/` holding
  model.safetensors   the model's tensors
  optim.safetensors   the optimizer's per-parameter tensors (AdamW moments and step counts)
  state.json          step, stage, kind, RNG states (as lists of ints), optimizer hyper-parameters,
                      sampler counters, and the sha256 of both tensor files
It is built under a temporary name and renamed into place (replaylab.paths.atomic_dir), so a crash
never leaves half a checkpoint; the sha256 catches later damage (a truncated copy, a bad disk), and
resume then falls back to the previous good checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from replaylab.errors import ReplaylabError
from replaylab.paths import atomic_dir, sha256_file

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d{7,})$")
FORMAT = 1


class CheckpointError(ReplaylabError):
    """A checkpoint folder is missing, incomplete or damaged."""


@dataclass
class Checkpoint:
    """A checkpoint loaded into memory (tensors on CPU)."""

    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    optim: dict[str, Any]  # a torch optimizer state_dict, ready for load_state_dict

    @property
    def step(self) -> int:
        return int(self.state["step"])


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:07d}"


def _flatten_optim(optim_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split a torch optimizer state_dict into tensors (for safetensors) and plain JSON data."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in optim_state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": optim_state["param_groups"], "scalars": scalars}


def _unflatten_optim(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = tensor
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> dict[str, list[int]]:
    """Torch RNG states as lists of ints (JSON-safe; no pickles)."""
    out = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, list[int]]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_checkpoint(
    run_dir: Path | str,
    *,
    step: int,
    stage: int,
    kind: str,
    model: dict[str, torch.Tensor],
    optim: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `checkpoints/step_<step>/` atomically. kind: stage_end | branch | periodic | signal. model, optim:
    a train module's `state_dict()` (the model's tensors, a torch optimizer state_dict)."""
    final = step_dir(Path(run_dir), step)
    model_tensors = {k: v.detach().cpu().contiguous() for k, v in model.items()}
    optim_tensors, optim_meta = _flatten_optim(optim)
    try:
        with atomic_dir(final) as tmp:
            save_file(model_tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            save_file(optim_tensors, str(tmp / "optim.safetensors"), metadata={"format": "pt"})
            state = {
                "format": FORMAT,
                "step": step,
                "stage": stage,
                "kind": kind,
                "rng": rng_state(),
                "optim": optim_meta,
                "sha256": {name: sha256_file(tmp / name) for name in ("model.safetensors", "optim.safetensors")},
                **(extra or {}),
            }
            (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
    except (SafetensorError, OSError) as e:  # a full disk, a file-size limit (ulimit -f), a read-only folder
        # safetensors reports the OS error inside its message ("Error while serializing: IoError(...)").
        reason = getattr(e, "strerror", None) or " ".join(str(e).split())
        raise CheckpointError(
            f"cannot write checkpoint {str(final)!r} ({reason}); nothing was kept of it: free space "
            "on that disk (or lift the file-size limit) and resume the run"
        ) from None
    return final


def list_checkpoints(run_dir: Path | str) -> list[Path]:
    """Checkpoint folders of a run, oldest first (temporary build folders are ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _read_state(path: Path, *, required: bool = True) -> dict[str, Any]:
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not required:
            return {}
        raise CheckpointError(
            f"checkpoint {str(path)!r} has no state.json; it is incomplete, use an earlier one"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: state.json is corrupt ({e}); use an earlier checkpoint"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: state.json holds no JSON object; use an earlier checkpoint")
    return state


def _load_tensors(path: Path, name: str, state: dict[str, Any], *, verify: bool) -> dict[str, torch.Tensor]:
    """One tensor file of a checkpoint, checked against the sha256 `state` records for it (when `verify`)."""
    file = path / name
    if not file.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {name}; it is incomplete, use an earlier one")
    if verify and sha256_file(file) != state.get("sha256", {}).get(name):
        raise CheckpointError(
            f"checkpoint {str(path)!r}: {name} does not match its recorded sha256 (truncated or damaged); "
            "use an earlier checkpoint"
        )
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: {name} cannot be read ({e}); use an earlier one") from None


def load_checkpoint(path: Path | str, *, verify: bool = True) -> Checkpoint:
    """Load a checkpoint folder; any damage raises CheckpointError naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {str(path)!r} does not exist; give a checkpoints/step_NNNNNNN folder")
    state = _read_state(path)
    tensors = {
        name: _load_tensors(path, name, state, verify=verify) for name in ("model.safetensors", "optim.safetensors")
    }
    optim = _unflatten_optim(tensors["optim.safetensors"], state["optim"])
    return Checkpoint(path=path, state=state, model=tensors["model.safetensors"], optim=optim)


def load_model_weights(path: Path | str) -> dict[str, torch.Tensor]:
    """A checkpoint's model tensors alone (for export), checked against their sha256 as `load_checkpoint`
    does; a checkpoint folder without state.json (written by hand) is read unchecked."""
    path = Path(path)
    state = _read_state(path, required=False)
    return _load_tensors(path, "model.safetensors", state, verify="sha256" in state)


def latest_good_checkpoint(run_dir: Path | str) -> Checkpoint | None:
    """The newest checkpoint that loads cleanly; damaged ones are reported and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path)
        except CheckpointError as e:
            print(f"replaylab: warning: skipping checkpoint: {e}", file=sys.stderr)
    return None


def resolve_checkpoint_path(spec: Path | str) -> Path:
    """A checkpoint folder, or a run folder (its newest checkpoint)."""
    path = Path(spec)
    if (path / "state.json").exists():
        return path
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(
            f"{str(path)!r} is neither a checkpoint folder (with state.json) nor a run folder with checkpoints/"
        )
    return found[-1]


def prune_checkpoints(run_dir: Path | str, keep: int) -> None:
    """Keep the newest `keep` periodic/signal checkpoints; stage-end and branch checkpoints are always kept."""
    periodic = []
    for path in list_checkpoints(run_dir):
        try:
            kind = json.loads((path / "state.json").read_text(encoding="utf-8")).get("kind")
        except (OSError, json.JSONDecodeError):
            kind = None  # damaged: not a stage end we must keep
        if kind not in ("stage_end", "branch"):
            periodic.append(path)
    for path in periodic[: max(0, len(periodic) - max(keep, 1))]:
        shutil.rmtree(path, ignore_errors=True)


def check_prefix(config: Any, checkpoint: Checkpoint) -> None:
    """Refuse to branch from `checkpoint` unless its run trained exactly what `config` would up to
    the checkpoint's step: the same settings outside the stages (`replaylab.fingerprint.prefix_settings`:
    model, data, optimizer, seed, eval...), the same sequences drawn per domain before every step, the same
    LR at every step and the same optimizer resets."""
    import numpy as np

    from replaylab.config import config_hash, load_config
    from replaylab.errors import ConfigError
    from replaylab.fingerprint import prefix_settings
    from replaylab.runconfig import RunConfig
    from replaylab.train.lr import lr_schedule
    from replaylab.train.mixture import plan_counts

    saved = checkpoint.path.parent.parent / "config.yaml"
    if not saved.exists():
        raise ConfigError(
            f"init_from {str(checkpoint.path)!r}: its run folder has no config.yaml, so the shared "
            "prefix cannot be checked; branch from a checkpoint inside a run folder"
        )
    other = load_config(RunConfig, saved)
    step = checkpoint.step
    where = f"init_from {str(checkpoint.path)!r}"
    if step > config.train.total_steps:
        raise ConfigError(f"{where} is at step {step}, past this run's {config.train.total_steps} steps")

    # Domain budgets are not in the settings: they decide the sequences drawn, checked below for drawn domains.
    a, b = prefix_settings(config), prefix_settings(other)
    for key in a:
        if a[key] != b.get(key):
            raise ConfigError(
                f"{where}: its run differs from this one in {key!r} "
                f"({config_hash(b.get(key))} vs {config_hash(a[key])}); it cannot seed this run"
            )
    counts = plan_counts(config)[: step + 1]
    if not np.array_equal(counts, plan_counts(other)[: step + 1]):
        raise ConfigError(f"{where}: its run drew different data before step {step}; it cannot seed this run")
    for j, name in enumerate(config.data.domains):
        if config.data.domains[name].budget != other.data.domains[name].budget and counts[-1, j] > 0:
            raise ConfigError(
                f"{where}: its run drew domain {name!r} from a different budget before step {step}; "
                "it cannot seed this run"
            )
    if step and not np.array_equal(lr_schedule(config)[:step], lr_schedule(other)[:step]):
        raise ConfigError(f"{where}: its run used different learning rates before step {step}; it cannot seed this run")

    def resets(c: Any) -> list[int]:
        return [
            s for i, s in enumerate(c.stage_starts()[:-1]) if i > 0 and c.stages[i].optimizer == "reset" and s < step
        ]

    # Equal stage starts before `step` = every step before it is in the same stage (same block seeds).
    starts_a = [s for s in config.stage_starts() if s < step]
    starts_b = [s for s in other.stage_starts() if s < step]
    if resets(config) != resets(other) or starts_a != starts_b:
        raise ConfigError(
            f"{where}: its run's stages or optimizer resets differ before step {step}; it cannot seed this run"
        )
