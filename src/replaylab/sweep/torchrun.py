"""The torchrun backend: each run of a sweep is trained data-parallel by one `torchrun` job of N processes.

A sweep worker (sweep/local.py's, started as `python -m replaylab.sweep.torchrun worker`) claims a run as
every backend does (sweep/execute.py: lease, heartbeat, skip done, resume, failures recorded, shared-prefix
branching) and, as its "train this entry" step, launches the equivalent of

    torchrun --standalone --nproc_per_node N -m replaylab.sweep.torchrun rank SWEEP RUN_ID [--init-from CKPT]

(torch's launcher `torch.distributed.run`, which the `torchrun` script calls, run by `launch` below so that a
stop ends in an exit status instead of the launcher's traceback). Its ranks each call the `run_training` a
local worker calls, so a run gives the losses of `torchrun --nproc_per_node N -m replaylab.cli train` on its
config (gloo on CPU, one GPU per rank with NCCL; rank 0 writes the run folder). Several workers
(`--workers W`) train W runs at once, on disjoint CUDA_VISIBLE_DEVICES sets of N GPUs each on GPUs.

Signals: the worker passes a SIGINT/SIGTERM once to torchrun, which passes it once to every rank; each
saves its checkpoint and the job ends; a rerun resumes. A lost lease stops the job the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from replaylab.errors import ConfigError
from replaylab.sweep.execute import RunFailed
from replaylab.sweep.runstore import RunStore

MODULE = "replaylab.sweep.torchrun"  # its entry points (worker, launch, rank); not __name__, "__main__" there
CPU_NPROC = 2  # --nproc-per-node on CPU when not given: the smallest data-parallel job
# Seconds torchrun waits for its ranks to save their checkpoints after a signal before it kills them (its own
# default, 30 s, can be shorter than a large model's checkpoint); torch reads it from this variable.
SHUTDOWN_TIMEOUT_S = "600"


def check_launcher() -> None:
    """torchrun's launcher is torch.distributed.run; torch builds without torch.distributed have none."""
    import torch.distributed

    if not torch.distributed.is_available():
        raise ConfigError(
            "--backend torchrun needs torchrun (torch.distributed.run), which this torch build lacks "
            "(torch.distributed is not available); install a torch with distributed support or use --backend local"
        )


def visible_gpus() -> list[str]:
    """The CUDA devices this process sees, as CUDA_VISIBLE_DEVICES entries for the jobs' subsets."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def runs_on_gpu(store: RunStore) -> bool:
    """Whether the sweep's runs train on CUDA here: a GPU is visible and some run is not pinned to the CPU."""
    from replaylab.finetune_form import read_run_config

    if not visible_gpus():
        return False
    return any(read_run_config(e["config"]).train.device != "cpu" for e in store.plan()["runs"])


def job_slots(*, workers: int, nproc_per_node: int | None, gpus: list[str], on_gpu: bool) -> tuple[int, list]:
    """(N, one environment per worker slot). On GPUs each of the `workers` jobs gets its own N GPUs (default
    N: the visible GPUs shared out among the workers); more ranks than GPUs is refused. On CPU the ranks are
    gloo processes (default N: CPU_NPROC) and every slot has this environment."""
    if not on_gpu:
        return nproc_per_node or CPU_NPROC, [{} for _ in range(workers)]
    n = nproc_per_node or max(1, len(gpus) // workers)
    if workers * n > len(gpus):
        raise ConfigError(
            f"--workers {workers} x --nproc-per-node {n} = {workers * n} ranks but only {len(gpus)} CUDA GPU(s) "
            f"are visible, and each rank needs its own GPU; use --workers {max(1, len(gpus) // n)} or "
            f"--nproc-per-node {max(1, len(gpus) // workers)}, or pin the runs to the CPU (train.device: cpu)"
        )
    return n, [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * n : (i + 1) * n])} for i in range(workers)]


def check_shares(store: RunStore, n: int) -> None:
    """Each run of our Transformer splits its global batch into n equal shares of whole micro-batches
    (ddp.shard_rows): refused once, before any job, rather than as the same failure of every run. (A Hugging
    Face run sizes its micro-batches from the rank count itself.)"""
    from replaylab.finetune_form import read_run_config
    from replaylab.model_kinds import TRANSFORMER, model_kind
    from replaylab.train.ddp import DistInfo, shard_rows

    for entry in store.plan()["runs"]:
        config = read_run_config(entry["config"])
        if model_kind(config.model) != TRANSFORMER:
            continue
        batch, micro = config.train.batch_size, config.train.micro_batch_size or config.train.batch_size
        try:
            shard_rows(batch, micro, DistInfo(world_size=n))
        except ConfigError as e:
            raise ConfigError(f"--nproc-per-node {n}: run {entry['run_id']}: {e}") from None


def run_torchrun(
    sweep_dir: str | Path,
    *,
    workers: int = 1,
    threads: int = 1,
    nproc_per_node: int | None = None,
    retry_before: float | None = None,
    lease_ttl: float = 60.0,
    progress: bool | None = None,
) -> dict[str, int]:
    """Train the sweep's runs as torchrun jobs of `nproc_per_node` ranks of `threads` torch threads each,
    `workers` jobs at a time (local workers whose step is a torchrun job). Returns the final status counts."""
    from replaylab.sweep.local import run_local

    check_launcher()
    store = RunStore(sweep_dir, lease_ttl=lease_ttl)
    n, slots = job_slots(workers=workers, nproc_per_node=nproc_per_node, gpus=visible_gpus(), on_gpu=runs_on_gpu(store))
    check_shares(store, n)
    return run_local(
        sweep_dir,
        workers=workers,
        threads=threads,
        retry_before=retry_before,
        lease_ttl=lease_ttl,
        progress=progress,
        worker=("-m", MODULE, "worker"),
        worker_args=("--nproc-per-node", str(n)),
        slot_env=slots,
    )


class TorchrunJobs:
    """A worker's "train this entry" step (execute_run's `trainer`): one torchrun job per run. Runs in the
    worker's main thread, where it can pass the worker's stop signals on to the job."""

    def __init__(self, sweep_dir: str | Path, *, nproc_per_node: int, threads: int = 1):
        self.sweep_dir, self.nproc, self.threads = Path(sweep_dir), nproc_per_node, threads
        self.proc: subprocess.Popen | None = None
        self.signals: list[int] = []  # stop signals this worker got while the job ran
        self.lost = False

    def lose(self) -> None:
        """The lease went to another worker (heartbeat thread): stop the job; its ranks save a checkpoint."""
        self.lost = True
        self._forward(signal.SIGTERM)

    def _forward(self, signum: int) -> None:
        # To torchrun only, never its process group: torchrun passes it once to each rank (a second
        # signal would stop a rank without its checkpoint).
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def _on_signal(self, signum, frame) -> None:
        if not self.signals:
            self._forward(signum)
        self.signals.append(signum)

    def train(self, entry: dict, run_dir: Path, *, init_from: Path | None) -> dict:
        from replaylab.train import TrainingInterrupted
        from replaylab.train.manifest import read_manifest

        self.signals, self.lost = [], False
        with tempfile.TemporaryDirectory(prefix="replaylab-torchrun-") as errors:
            cmd = [sys.executable, "-m", MODULE, "launch", "--standalone", "--nproc_per_node", str(self.nproc)]
            cmd += ["-m", MODULE, "rank", str(self.sweep_dir), entry["run_id"], "--threads", str(self.threads)]
            cmd += ["--errors", errors]
            if init_from is not None:
                cmd += ["--init-from", str(init_from)]
            env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
            env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT_S)
            main = threading.current_thread() is threading.main_thread()
            old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
            try:
                self.proc = subprocess.Popen(cmd, env=env)
                if self.signals or self.lost:  # a stop that came before the job existed
                    self._forward(self.signals[0] if self.signals else signal.SIGTERM)
                rc = self.proc.wait()
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
                self.proc = None
            failure = _rank_error(Path(errors))
        manifest = read_manifest(run_dir) or {}
        if self.signals or self.lost:
            signum = self.signals[0] if self.signals else signal.SIGTERM
            raise TrainingInterrupted(signum, manifest.get("steps_done", 0), run_dir)
        if rc == 0 and manifest:
            return manifest
        raise failure or RunFailed(
            f"torchrun exited with status {rc} and no rank reported an error (a rank was killed or crashed; "
            "its output is in the sweep's log)"
        )


def _rank_error(errors: Path) -> RunFailed | None:
    """The error a rank wrote (rank 0's first: the others may only have been stopped after it failed)."""
    for path in sorted(errors.glob("rank*.json"), key=lambda p: int(p.stem[4:])):
        record = json.loads(path.read_text(encoding="utf-8"))
        return RunFailed(record["error"], record["traceback"])
    return None


def worker(argv: list[str]) -> int:
    """`python -m replaylab.sweep.torchrun worker SWEEP_DIR --nproc-per-node N [worker options]`: a sweep
    worker (sweep/local.py) whose train step is a torchrun job of N processes per run."""
    from replaylab.sweep.local import main as worker_main

    p = argparse.ArgumentParser(prog="replaylab-torchrun-worker", add_help=False)
    p.add_argument("--nproc-per-node", type=int, required=True)
    ours, rest = p.parse_known_args(argv)
    return worker_main(
        rest,
        trainer_for=lambda args: TorchrunJobs(args.sweep_dir, nproc_per_node=ours.nproc_per_node, threads=args.threads),
    )


def launch(argv: list[str]) -> int:
    """torchrun with these arguments; a stop (the worker's signal, passed on once to every rank) or a failed
    rank (which wrote its error for the worker) ends in an exit status, not in the launcher's traceback."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except SignalException as e:
        return 128 + int(e.sigval)
    except ChildFailedError:
        return 1
    return 0


def rank(argv: list[str]) -> int:
    """One rank of a run's torchrun job: train the plan entry RUN_ID of SWEEP as a local worker would."""
    import traceback

    p = argparse.ArgumentParser(prog="replaylab-torchrun-rank")
    p.add_argument("sweep_dir")
    p.add_argument("run_id")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--errors", required=True, help="folder where a failing rank writes rank<R>.json")
    p.add_argument("--init-from", default=None)
    args = p.parse_args(argv)

    import torch

    from replaylab.sweep.execute import _train
    from replaylab.train import TrainingInterrupted

    torch.set_num_threads(args.threads)
    store = RunStore(args.sweep_dir)
    try:
        entry = next(e for e in store.plan()["runs"] if e["run_id"] == args.run_id)
        init_from = Path(args.init_from) if args.init_from else None
        _train(entry, store.run_dir(args.run_id), init_from=init_from)
    except TrainingInterrupted as e:  # checkpoint saved; the worker knows why it stopped the job
        return e.exit_code
    except BaseException as e:  # noqa: BLE001 - the worker records it in the run's manifest
        record = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)}
        rank = os.environ.get("RANK", "0")
        Path(args.errors, f"rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")
        return 130 if isinstance(e, KeyboardInterrupt) else 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit({"worker": worker, "launch": launch, "rank": rank}[sys.argv[1]](sys.argv[2:]))
    except KeyboardInterrupt:  # a stop before the handlers were installed: nothing was claimed yet
        sys.exit(130)
