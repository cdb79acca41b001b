"""Running a sweep's runs: the claim -> train -> release step shared by every backend, the worker loop,
and the local executor (N worker processes on this machine).

Workers coordinate only through the sweep folder (leases, manifests), so any mix of local workers,
Ray tasks and workers on other machines sharing the folder can run one sweep together. A failing run
is recorded (status failed + error) and the worker moves on; failed/diverged runs are retried only
when the sweep is started with retry (and then once per sweep invocation).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from replaylab.sweep.runstore import FAILED, RunStore

BUSY, SKIPPED, WAITING, LOST = "busy", "skipped", "waiting", "lost"
_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class SweepInterrupted(Exception):
    """SIGINT/SIGTERM stopped a local sweep: every worker was asked once to stop, and the runs it was training
    saved a checkpoint. Rerunning the sweep continues (done runs are skipped, stopped ones resume).
    `exit_code` is 130 or 143; `counts` the status counts at the stop."""

    def __init__(self, signum: int, counts: dict[str, int]):
        self.signum, self.counts = signum, counts
        self.exit_code = _SIGNAL_EXIT.get(signum, 128 + signum)
        super().__init__(
            f"{signal.Signals(signum).name}: the sweep stopped, its running runs saved a checkpoint ("
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + ")"
        )


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
    ckpt = store.run_dir(branch["parent"]) / "checkpoints" / f"step_{branch['step']:07d}"
    if (ckpt / "state.json").exists():
        return "ready", ckpt
    parent = store.status(branch["parent"])
    if parent in ("done", *FAILED):
        return "alone", None  # the prefix checkpoint never came (or was pruned): train this run alone
    return "wait", None


def terminal(store: RunStore, run_id: str, retry_before: float | None) -> bool:
    status = store.status(run_id)
    return status == "done" or (status in FAILED and not _wants_retry(store, run_id, retry_before))


def execute_run(store: RunStore, entry: dict, *, retry_before: float | None = None) -> str:
    """Claim, train and release one run. Returns its final status, or busy / skipped / waiting."""
    from replaylab.train import TrainingInterrupted

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
        with lease.heartbeat(on_lost=lambda: os.kill(os.getpid(), signal.SIGTERM)):
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
                manifest = _train(entry, run_dir, init_from=None if has_ckpt else source)
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
    if manifest.get("status") != "failed":
        manifest.update(status="failed", error=f"{type(error).__name__}: {error}")
    manifest.setdefault("error", f"{type(error).__name__}: {error}")
    manifest["traceback"] = "".join(traceback.format_exception(type(error), error, error.__traceback__, limit=8))
    write_manifest(run_dir, manifest)


def ordered_entries(plan: dict) -> list[dict]:
    """Seed by seed (a sweep stopped early leaves whole replicates, not a little of every seed); within a
    seed, carriers of shared prefixes first (their children wait for them), then the rest in plan order."""
    carriers = {e["branch"]["parent"] for e in plan["runs"] if e.get("branch")}
    return sorted(
        plan["runs"],
        key=lambda e: (e["config"].get("seed") or 0, e["run_id"] not in carriers, e.get("branch") is not None),
    )


def worker_loop(
    sweep_dir: str | Path,
    *,
    retry_before: float | None = None,
    lease_ttl: float = 60.0,
    threads: int | None = None,
    poll: float = 0.5,
    only: list[str] | None = None,
) -> None:
    """Claim and train runs until every run of the sweep (or of `only`) is done or finally failed."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    store = RunStore(sweep_dir, lease_ttl=lease_ttl)
    entries = ordered_entries(store.plan())
    if only is not None:
        entries = [e for e in entries if e["run_id"] in set(only)]
    while True:
        open_entries = [e for e in entries if not terminal(store, e["run_id"], retry_before)]
        if not open_entries:
            return
        worked = False
        for e in open_entries:
            if execute_run(store, e, retry_before=retry_before) not in (BUSY, WAITING, SKIPPED, LOST):
                worked = True
                break  # rescan: a finished carrier may have released waiting children
        if not worked:
            time.sleep(poll)


def _counts(store: RunStore, ids: list[str]) -> dict[str, int]:
    out = {"done": 0, "running": 0, "failed": 0, "pending": 0}
    for rid in ids:
        s = store.status(rid)
        key = "failed" if s in FAILED else s if s in out else "pending"
        out[key] += 1
    return out


def run_local(
    sweep_dir: str | Path,
    *,
    workers: int = 1,
    threads: int = 1,
    retry_before: float | None = None,
    lease_ttl: float = 60.0,
    poll: float = 0.5,
    max_restarts: int | None = None,
    progress: bool | None = None,
) -> dict[str, int]:
    """Train the sweep with `workers` worker processes of `threads` torch threads each.

    A worker that dies is replaced while work remains; its run's lease goes stale and the run is taken
    over and resumed from its checkpoint. Returns the final status counts."""
    store = RunStore(sweep_dir, lease_ttl=lease_ttl)
    ids = [e["run_id"] for e in store.plan()["runs"]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [
        sys.executable,
        "-m",
        "replaylab.sweep.local",
        str(sweep_dir),
        "--threads",
        str(threads),
        "--lease-ttl",
        str(lease_ttl),
        "--poll",
        str(poll),
    ]
    if retry_before is not None:
        cmd += ["--retry-before", repr(retry_before)]
    cmd += ["--from-sweep"]
    unfinished = [r for r in ids if not terminal(store, r, retry_before)]

    def start(n: int) -> list[subprocess.Popen]:
        # Each worker in its own session: a Ctrl-C on the terminal reaches this process only, which passes it
        # on exactly once (a second signal would make a trainer stop without its checkpoint).
        return [subprocess.Popen(cmd, env=env, start_new_session=True) for _ in range(n)]

    stop: list[int] = []  # the signals received, in order

    def forward(signum, frame):
        stop.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    procs: list[subprocess.Popen] = []
    old = {s: signal.signal(s, forward) for s in _SIGNAL_EXIT} if _main_thread() else {}
    try:
        if not stop:  # no more workers than open runs, and none when all is done (a worker costs a torch import)
            procs.extend(start(min(workers, len(unfinished))))
        _supervise(
            store,
            ids,
            procs,
            start,
            stop,
            workers=workers,
            retry_before=retry_before,
            poll=poll,
            max_restarts=max_restarts,
            progress=progress,
        )
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if stop:
        raise SweepInterrupted(stop[0], _counts(store, ids))
    return _counts(store, ids)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _supervise(
    store: RunStore,
    ids: list[str],
    procs: list,
    start,
    stop: list[int],
    *,
    workers: int,
    retry_before: float | None,
    poll: float,
    max_restarts: int | None,
    progress: bool | None,
) -> None:
    """Watch the workers (`procs`, changed in place) until every run is terminal, restarting those that die, or,
    once a stop signal came, until every worker has exited."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    restarts = 0
    limit = max_restarts if max_restarts is not None else 3 * workers
    show = sys.stderr.isatty() if progress is None else progress
    with Progress(
        TextColumn("sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        disable=not show,
        transient=False,
    ) as bar:
        task = bar.add_task("", total=len(ids))
        while True:
            c = _counts(store, ids)
            bar.update(
                task,
                completed=c["done"] + c["failed"],
                description=f"done {c['done']}  running {c['running']}  failed {c['failed']}",
            )
            alive = [p for p in procs if p.poll() is None]
            if stop:
                if not alive:
                    break
            elif not alive:
                unfinished = [r for r in ids if not terminal(store, r, retry_before)]
                if not unfinished or restarts >= limit:
                    break
                procs[:] = start(min(workers, len(unfinished)))
                restarts += len(procs)
                continue
            elif any(p.returncode not in (None, 0) for p in procs) and restarts < limit:
                dead = [p for p in procs if p.returncode not in (None, 0)]
                procs[:] = [p for p in procs if p not in dead] + start(len(dead))
                restarts += len(dead)
            time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    """`python -m replaylab.sweep.local SWEEP_DIR`: one worker (also usable on another machine)."""
    p = argparse.ArgumentParser(prog="replaylab-sweep-worker")
    p.add_argument("sweep_dir")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lease-ttl", type=float, default=60.0)
    p.add_argument("--poll", type=float, default=0.5)
    p.add_argument("--retry-before", type=float, default=None)
    p.add_argument("--from-sweep", action="store_true", help=argparse.SUPPRESS)  # `replaylab sweep` reports stops
    args = p.parse_args(argv)

    got: list[int] = []

    def stop(signum, frame):
        # Outside the trainer's loop (between runs, loading data, the final evaluation); inside it, the trainer's
        # own handler checkpoints first. A KeyboardInterrupt, unlike SystemExit, leaves a started run `running`,
        # so the next sweep resumes it instead of counting it failed.
        got.append(signum)
        raise KeyboardInterrupt

    for s in _SIGNAL_EXIT:
        signal.signal(s, stop)
    from replaylab.train import TrainingInterrupted

    try:
        worker_loop(
            args.sweep_dir,
            retry_before=args.retry_before,
            lease_ttl=args.lease_ttl,
            threads=args.threads,
            poll=args.poll,
        )
    except (TrainingInterrupted, KeyboardInterrupt) as e:  # a rerun of the sweep (or this worker) continues
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signum = getattr(e, "signum", None) or (got[0] if got else signal.SIGINT)
        if not args.from_sweep:  # `replaylab sweep` says it once for all its workers
            print(
                f"replaylab-sweep-worker: {signal.Signals(signum).name}: stopped; continue with python -m "
                f"replaylab.sweep.local {args.sweep_dir} or by rerunning the sweep (done runs are skipped)",
                file=sys.stderr,
            )
        return _SIGNAL_EXIT.get(signum, 128 + signum)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # a stop before the handlers were installed: nothing was claimed yet
        sys.exit(130)
