"""`replaylab sweep EXPERIMENT.yaml`: train every run of an experiment not done yet."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from replaylab.errors import ConfigError

HELP = "train an experiment's runs (skip done ones; content-addressed run folders; local workers, Ray or torchrun)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment YAML (see configs/tiny_sweep.yaml)")
    p.add_argument("--out", help="sweep folder (default: sweeps/<experiment name> under REPLAYLAB_HOME)")
    add_backend_arguments(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a replaylab sweep folder of another experiment at --out (its runs are deleted)",
    )
    p.add_argument(
        "--lease-ttl",
        type=float,
        default=60.0,
        help="seconds without a heartbeat after which a run's claim expires (default 60)",
    )


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    """Where a sweep's runs train: local worker processes, Ray tasks or torchrun jobs (`sweep` and `advise`)."""
    p.add_argument("--workers", type=int, default=1, help="local worker processes; torchrun: jobs at once (default 1)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads per worker / Ray task / torchrun rank (default 1)"
    )
    p.add_argument(
        "--backend",
        default="local",
        help="local (worker processes), ray (Ray tasks), or torchrun (each run data-parallel on "
        "--nproc-per-node ranks) (default local)",
    )
    p.add_argument(
        "--nproc-per-node",
        type=int,
        help="torchrun: processes per run, one GPU each on GPUs (default: the visible GPUs / --workers; on CPU "
        "2 gloo processes)",
    )
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs each Ray task asks for")
    p.add_argument("--retry", action="store_true", help="retry runs that failed or diverged before")


def main(args: argparse.Namespace) -> int:
    from replaylab.paths import home
    from replaylab.sweep import run_sweep
    from replaylab.sweep.local import SweepInterrupted
    from replaylab.sweep.plan import experiment_name

    for flag, value in (("--workers", args.workers), ("--threads", args.threads)):
        if value < 1:
            raise ConfigError(f"{flag} {value} must be >= 1")
    out = args.out
    if out is None:
        out = home() / "sweeps" / experiment_name(args.experiment)
    try:
        counts = run_sweep(
            args.experiment,
            out,
            workers=args.workers,
            threads=args.threads,
            backend=args.backend,
            address=args.address,
            retry=args.retry,
            lease_ttl=args.lease_ttl,
            gpus_per_run=args.gpus_per_run,
            nproc_per_node=args.nproc_per_node,
            overwrite=args.overwrite,
        )
    except SweepInterrupted as e:  # one line for the whole sweep; the way on is the sweep itself, not one run
        print(
            f"replaylab sweep: {e}; continue with replaylab sweep {args.experiment} --out {out} (done runs are "
            "skipped, stopped ones resume)",
            file=sys.stderr,
        )
        return e.exit_code
    print(f"sweep {Path(out)}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0 if counts["failed"] == 0 and counts["pending"] == 0 and counts["running"] == 0 else 1
