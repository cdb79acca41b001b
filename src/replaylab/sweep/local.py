"""The worker loop and the local executor (N worker processes on this machine).

Workers coordinate only through the sweep folder (leases, manifests), so any mix of local workers,
Ray tasks and workers on other machines sharing the folder can run one sweep together. Each run goes
through the claim -> train -> release step of sweep/execute.py; `main` takes the step to train with
(sweep/torchrun.py's worker: a torchrun job per run instead of training in this process).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from replaylab.sweep.execute import (
    BUSY,
    LOST,
    SKIPPED,
    WAITING,
    execute_run,
    ordered_entries,
    terminal,
)
from replaylab.sweep.execute import (  # imported from here before the step had its own module
    _archive_failed_attempt as _archive_failed_attempt,
)
from replaylab.sweep.runstore import FAILED, RunStore

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


def worker_loop(
    sweep_dir: str | Path,
    *,
    retry_before: float | None = None,
    lease_ttl: float = 60.0,
    threads: int | None = None,
    poll: float = 0.5,
    only: list[str] | None = None,
    trainer=None,
) -> None:
    """Claim and train runs until every run of the sweep (or of `only`) is done or finally failed; `trainer`
    as for execute_run."""
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
            if execute_run(store, e, retry_before=retry_before, trainer=trainer) not in (BUSY, WAITING, SKIPPED, LOST):
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
    worker: tuple[str, ...] = ("-m", "replaylab.sweep.local"),
    worker_args: tuple[str, ...] = (),
    slot_env: list[dict[str, str]] | None = None,
) -> dict[str, int]:
    """Train the sweep with `workers` worker processes of `threads` torch threads each.

    A worker that dies is replaced while work remains; its run's lease goes stale and the run is taken
    over and resumed from its checkpoint. Returns the final status counts. `worker` is the worker's command
    after the interpreter (this module's `main`, or one that calls it with a train step of its own) and
    `worker_args` its extra arguments; worker slot i gets `slot_env[i]` on top of the environment (the torchrun
    backend: each slot's CUDA_VISIBLE_DEVICES); a replaced worker takes its slot."""
    store = RunStore(sweep_dir, lease_ttl=lease_ttl)
    ids = [e["run_id"] for e in store.plan()["runs"]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [
        sys.executable,
        *worker,
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
    cmd += [*worker_args, "--from-sweep"]
    unfinished = [r for r in ids if not terminal(store, r, retry_before)]

    def start(n: int) -> list[subprocess.Popen]:
        # Each worker in its own session: a Ctrl-C on the terminal reaches this process only, which passes it
        # on exactly once (a second signal would make a trainer stop without its checkpoint).
        held = {p.slot for p in procs if p.poll() is None}
        free = [i for i in range(workers) if i not in held][:n]
        started = []
        for i in free:
            extra = slot_env[i] if slot_env else {}
            started.append(subprocess.Popen(cmd, env={**env, **extra}, start_new_session=True))
            started[-1].slot = i
        return started

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


def main(argv: list[str] | None = None, *, trainer_for=None) -> int:
    """`python -m replaylab.sweep.local SWEEP_DIR`: one worker (also usable on another machine).
    `trainer_for(args)`: the worker's train step (execute_run's `trainer`; default: in this process)."""
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

    trainer = trainer_for(args) if trainer_for else None
    try:
        worker_loop(
            args.sweep_dir,
            retry_before=args.retry_before,
            lease_ttl=args.lease_ttl,
            threads=args.threads,
            poll=args.poll,
            trainer=trainer,
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
