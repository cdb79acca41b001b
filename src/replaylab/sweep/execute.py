"""The claim -> train -> release step shared by every backend (local workers, Ray tasks, torchrun jobs).

`execute_run` claims one run's lease, trains it through a pluggable step (`InProcess` here; a torchrun job
in sweep/torchrun.py) while a heartbeat renews the lease, records the result and releases the lease.
A failing run is recorded (status failed + error) and the caller moves on; failed/diverged runs are retried
only when the sweep is started with retry (and then once per sweep invocation).
"""

from __future__ import annotations

import os
import shutil
import signal
import traceback
from pathlib import Path

from replaylab.sweep.runstore import FAILED, RunStore

BUSY, SKIPPED, WAITING, LOST = "busy", "skipped", "waiting", "lost"


class RunFailed(Exception):
    """A run trained by other processes (a torchrun job) failed there: `str` is their `Type: message`,
    `child_traceback` their traceback, recorded in the manifest as an in-process failure would be."""

    def __init__(self, message: str, child_traceback: str = ""):
        super().__init__(message)
        self.child_traceback = child_traceback


class InProcess:
    """The "train this entry" step of local workers and Ray tasks: train in this process. A lost lease
    stops it as a SIGTERM would (the trainer saves a checkpoint; the new holder resumes from it). Other
    steps (sweep/torchrun.py) have the same two methods."""

    def train(self, entry: dict, run_dir: Path, *, init_from: Path | None) -> dict:
        return _train(entry, run_dir, init_from=init_from)

    def lose(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def _archive_failed_attempt(run_dir: Path) -> None:
    """Move a failed attempt's files into attempt_N/ so a retry starts clean and nothing is lost."""
    n = 1
    while (run_dir / f"attempt_{n}").exists():
        n += 1
    dest = run_dir / f"attempt_{n}"
    dest.mkdir()
    for p in run_dir.iterdir():
        if p.name not in ("lease.json", "lease.lock") and not p.name.startswith(("attempt_", ".")):
            shutil.move(str(p), dest / p.name)


def _wants_retry(store: RunStore, run_id: str, retry_before: float | None) -> bool:
    """A failed run is retried when its failure predates this sweep invocation (so never twice per sweep)."""
    if retry_before is None:
        return False
    path = store.manifest_path(run_id)
    return path.exists() and path.stat().st_mtime < retry_before


def branch_source(store: RunStore, entry: dict) -> tuple[str, Path | None]:
    """For a run that branches off a shared prefix: ('ready', checkpoint) / ('wait', None) / ('alone', None)."""
    branch = entry.get("branch")
    if not branch:
        return "alone", None
    from replaylab.train.checkpoint import step_dir

    ckpt = step_dir(store.run_dir(branch["parent"]), branch["step"])
    if (ckpt / "state.json").exists():
        return "ready", ckpt
    parent = store.status(branch["parent"])
    if parent in ("done", *FAILED):
        return "alone", None  # the prefix checkpoint never came (or was pruned): train this run alone
    return "wait", None


def terminal(store: RunStore, run_id: str, retry_before: float | None) -> bool:
    status = store.status(run_id)
    return status == "done" or (status in FAILED and not _wants_retry(store, run_id, retry_before))


def execute_run(store: RunStore, entry: dict, *, retry_before: float | None = None, trainer=None) -> str:
    """Claim, train and release one run. Returns its final status, or busy / skipped / waiting.
    `trainer` trains the claimed run (default InProcess; sweep/torchrun.py: a torchrun job)."""
    from replaylab.train import TrainingInterrupted

    trainer = trainer or InProcess()
    rid = entry["run_id"]
    if terminal(store, rid, retry_before):
        return SKIPPED
    source_kind, source = branch_source(store, entry)
    if source_kind == "wait":
        return WAITING
    lease = store.claim(rid)
    if lease is None:
        return BUSY
    try:
        with lease.heartbeat(on_lost=trainer.lose):
            status = store.status(rid)  # someone may have finished it between our look and our claim
            if status == "done" or (status in FAILED and not _wants_retry(store, rid, retry_before)):
                return SKIPPED
            run_dir = store.run_dir(rid)
            if status in FAILED:
                _archive_failed_attempt(run_dir)
                store.event(rid, "retry")
            has_ckpt = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
            if has_ckpt:
                store.event(rid, "resume", took_over=bool(lease.took_over))
            else:
                store.event(rid, "start", init_from=str(source) if source else None)
            try:
                manifest = trainer.train(entry, run_dir, init_from=None if has_ckpt else source)
                status = manifest.get("status", "done")
            except TrainingInterrupted:
                if lease.lost:
                    return LOST  # the new holder resumes it; this worker goes on with other runs
                store.event(rid, "interrupted")
                raise
            except Exception as e:  # noqa: BLE001 - one failing run must never stop the sweep
                status = "failed"
                _record_failure(store, rid, e)
            store.event(rid, "finish", status=status)
            return status
    finally:
        lease.release()


def _train(entry: dict, run_dir: Path, *, init_from: Path | None) -> dict:
    """Train (or resume) one plan entry, of any kind (run_training picks the model's setup); raises a
    TrainingInterrupted on SIGTERM. A fine-tuning entry of a sweep planned before it was a RunConfig is read
    from its own form."""
    from replaylab.finetune_form import read_run_config
    from replaylab.train import run_training

    return run_training(read_run_config(entry["config"]), run_dir, resume=True, init_from=init_from)


def _record_failure(store: RunStore, rid: str, error: BaseException) -> None:
    """The engine records failures it sees; this covers errors before it wrote a manifest. A manifest that
    cannot be read (cut short, edited) is replaced by a fresh record: its DataError must not hide `error`."""
    from replaylab.errors import DataError
    from replaylab.train.manifest import read_manifest, write_manifest

    run_dir = store.run_dir(rid)
    try:
        manifest = read_manifest(run_dir)
    except DataError:
        manifest = None
    manifest = manifest or {"config_hash": rid, "status": "failed", "meta": {}, "final": {}}
    text = str(error) if isinstance(error, RunFailed) else f"{type(error).__name__}: {error}"
    if manifest.get("status") != "failed":
        manifest.update(status="failed", error=text)
    manifest.setdefault("error", text)
    manifest["traceback"] = (
        error.child_traceback
        if isinstance(error, RunFailed)
        else "".join(traceback.format_exception(type(error), error, error.__traceback__, limit=8))
    )
    write_manifest(run_dir, manifest)


def ordered_entries(plan: dict) -> list[dict]:
    """Seed by seed (a sweep stopped early leaves whole replicates, not a little of every seed); within a
    seed, carriers of shared prefixes first (their children wait for them), then the rest in plan order."""
    carriers = {e["branch"]["parent"] for e in plan["runs"] if e.get("branch")}
    return sorted(
        plan["runs"],
        key=lambda e: (e["config"].get("seed") or 0, e["run_id"] not in carriers, e.get("branch") is not None),
    )
