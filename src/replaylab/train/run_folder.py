"""A run folder's lifecycle, for every kind of run (engine and Hugging Face): check what the folder holds,
lock it, write config.yaml + manifest, record how the run ended.

    config.yaml      the resolved config (a RunConfig; a Hugging Face run's as planned, or in the fine-tuning
                     form of runs written before it was a RunConfig: finetune_form.py reads both)
    manifest.json    status running | done | failed | diverged, identities, steps_done, final losses
    metrics.jsonl    train / eval / data records (train/logging.py)
    checkpoints/     train/checkpoint.py
    .replaylab.json  the output-path marker (replaylab.outputs), .replaylab.lock the writer's lock

A folder may receive a run when it is new, or when it holds the same run (`replaylab.fingerprint.
run_identity`: bookkeeping such as log and checkpoint intervals may differ); another run's folder only
with `overwrite`, and never a folder replaylab did not create. Rank 0 of a torchrun job holds the lock
for the whole run, so a second trainer is refused with one line naming the holder.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from replaylab.config import dump_yaml
from replaylab.errors import ConfigError
from replaylab.finetune_form import load_run_config
from replaylab.fingerprint import run_id, run_identity
from replaylab.outputs import OutputError, claim_output, folder_lock, read_marker, remove_ours, write_marker
from replaylab.paths import atomic_write_text
from replaylab.train import ddp
from replaylab.train.manifest import now, read_manifest, write_manifest


def default_run_dir(config: Any) -> Path:
    """Where `replaylab train` and `replaylab finetune` put a run given no --out: runs/<name>-<run id>. The name
    keeps it readable; the id (fingerprint.run_id) makes the folder the run's own: the same config finds its
    folder again (a finished run is not trained twice) and another config never lands in it."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", config.name).strip("-") or "run"
    return Path("runs") / f"{name}-{run_id(config)}"


def _same_run(mine: Any, theirs: Any) -> bool:
    # The identity ignores key order, but the order of data.domains is the sampler's tie-break order.
    order = [list(c.data.domains) for c in (mine, theirs)]
    return run_identity(mine) == run_identity(theirs) and order[0] == order[1]


class RunFolder:
    """The folder `path` of one run of `config` (a RunConfig). `resume_hint` is the command
    that continues it (for messages)."""

    def __init__(
        self,
        path: Path | str,
        config: Any,
        *,
        resume: bool,
        overwrite: bool,
        dist: ddp.DistInfo,
        device: torch.device,
        held: ExitStack,
        resume_hint: str,
    ):
        self.path, self.config = Path(path), config
        self.resume, self.overwrite = resume, overwrite
        self.dist, self.device, self.held = dist, device, held
        self.resume_hint = resume_hint
        self.manifest: dict[str, Any] | None = None  # rank 0's, once written

    # -- before anything is built -------------------------------------------------------------------
    def prepare(self) -> dict | None:
        """Lock an existing folder, then check it. Returns the manifest of the run to continue (None: start
        fresh); a folder holding another run is replaced with `overwrite` (by rank 0) or refused. A folder that
        may not hold a run is refused before the lock, which would leave a lock file in it."""
        claim_output(self.path, "run")
        if self.path.is_dir():
            self.lock()
        return self._check()

    def _check(self) -> dict | None:
        path = self.path
        claim_output(path, "run")  # new, or a run folder of ours: which run it holds is config.yaml's to say
        saved = path / "config.yaml"
        if not saved.exists():
            if not self.resume and ((path / "manifest.json").exists() or (path / "checkpoints").exists()):
                raise ConfigError(f"--out {str(path)!r} holds a damaged run (no config.yaml); choose another --out")
            return None
        other = load_run_config(saved)
        manifest = read_manifest(path) or {}  # a damaged manifest is an error before anything else
        if not _same_run(self.config, other):
            if self.overwrite:
                if self.dist.is_main:
                    remove_ours(path, "run")
                return None
            raise ConfigError(
                f"--out {str(path)!r} already holds a different run (config {run_identity(other)}, "
                f"this one {run_identity(self.config)}); choose another --out, continue that run with "
                f"{self.resume_hint}, or pass --overwrite"
            )
        if not self.resume and manifest.get("status") != "done":
            raise ConfigError(
                f"--out {str(path)!r} already holds this run (status {manifest.get('status')}, "
                f"{manifest.get('steps_done', 0)} steps done); continue it with {self.resume_hint}"
            )
        return manifest

    def lock(self) -> None:
        """Rank 0 holds the folder's lock until the run ends; every rank stops if another process holds it.
        Taking it again is a no-op (replaylab.outputs.folder_lock is reentrant)."""
        error = None
        if self.dist.is_main:
            try:
                self.held.enter_context(folder_lock(self.path, "run folder"))
            except OutputError as e:
                error = e
        if ddp.any_flag(error is not None, self.dist, self.device):
            raise error or OutputError(f"run folder {str(self.path)!r} is being written by another process")

    # -- once the run is built ----------------------------------------------------------------------
    def create(self, manifest: dict[str, Any], existing: dict | None) -> dict | None:
        """Lock (a new folder is locked only now: a config error leaves nothing behind), check again under the
        lock, then write marker, config.yaml and manifest (rank 0). Returns an already finished run's manifest,
        if another process finished it meanwhile."""
        self.lock()
        if existing is None:
            again = self._check()
            if again is not None and again.get("status") == "done":
                return again
            if again is not None:
                raise OutputError(
                    f"run folder {str(self.path)!r} was started by another process meanwhile; choose another --out"
                )
        if self.dist.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            if (read_marker(self.path) or {}).get("identity") is None:
                write_marker(self.path, "run", run_identity(self.config))
            atomic_write_text(self.path / "config.yaml", dump_yaml(self.config))
            if existing:
                manifest["started"] = existing.get("started", manifest["started"])
            self.manifest = manifest
            write_manifest(self.path, manifest)
        ddp.barrier(self.dist)
        return None

    def update(self, **fields: Any) -> None:
        """Record `fields` in the manifest (rank 0)."""
        if self.manifest is not None:
            self.manifest.update(fields)
            write_manifest(self.path, self.manifest)

    def ended(self, status: str, **fields: Any) -> None:
        self.update(status=status, finished=now(), **fields)
