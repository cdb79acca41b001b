"""Sweeps: experiments expanded into content-addressed runs, trained by local workers, Ray tasks or torchrun jobs.

`prepare_sweep(experiment, out)` writes the sweep folder; `run_sweep(...)` prepares and trains it.
Layout and contracts: docs/design.md and docs/sweeps.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from replaylab.errors import ConfigError


def prepare_sweep(experiment: str | Path, out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Expand the experiment and write SWEEP/experiment.yaml + sweep.json; returns the plan document.

    `out` is new, or a sweep folder of the same experiment (by name: a re-planned grid continues there), or,
    with `overwrite`, a sweep folder of another experiment, which is replaced (replaylab.outputs)."""
    from replaylab.sweep.plan import load_plan

    _, _, doc = load_plan(experiment)  # schedule experiments, or kind: finetune_hf
    write_sweep(out, doc, Path(experiment).read_text(encoding="utf-8"), overwrite=overwrite)
    return doc


def write_sweep(out: str | Path, doc: dict[str, Any], experiment_text: str, *, overwrite: bool = False) -> None:
    """Write a plan document (`plan.plan_document`) and its launcher's input into the sweep folder `out`,
    under the output-path policy: new, the same experiment (by name), or another one with `overwrite`."""
    from replaylab.outputs import claim_output, folder_lock, read_marker, remove_ours, write_marker
    from replaylab.sweep.runstore import RunStore

    out = Path(out)
    theirs = (read_marker(out) or {}).get("identity") if out.is_dir() else None
    if claim_output(out, "sweep", doc["name"], overwrite=overwrite, describe=f"experiment {theirs!r}") == "replace":
        remove_ours(out, "sweep")
    store = RunStore(out)
    with folder_lock(out, "sweep folder", wait=True):  # sweeps started at once on one folder write the plan in turn
        if read_marker(out) is None:
            write_marker(out, "sweep", doc["name"])
        store.write_plan(doc, experiment_text, {})


def run_sweep(
    experiment: str | Path,
    out: str | Path,
    *,
    workers: int = 1,
    threads: int = 1,
    backend: str = "local",
    address: str | None = None,
    retry: bool = False,
    lease_ttl: float = 60.0,
    gpus_per_run: float = 0.0,
    nproc_per_node: int | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
) -> dict[str, int]:
    """Prepare the sweep folder and train every run not done yet; returns status counts. backend "torchrun":
    each run is one torchrun job of `nproc_per_node` ranks (sweep/torchrun.py; None: the visible GPUs shared
    out among the workers, else 2 gloo processes)."""
    check_backend(backend, workers, threads, nproc_per_node)
    retry_before = time.time() if retry else None
    prepare_sweep(experiment, out, overwrite=overwrite)
    return train_sweep(
        out,
        workers=workers,
        threads=threads,
        backend=backend,
        address=address,
        retry_before=retry_before,
        lease_ttl=lease_ttl,
        gpus_per_run=gpus_per_run,
        nproc_per_node=nproc_per_node,
        progress=progress,
    )


BACKENDS = ("local", "ray", "torchrun")


def check_backend(backend: str, workers: int, threads: int, nproc_per_node: int | None = None) -> None:
    """The checks that need no plan (the torchrun backend's GPU count needs one: sweep/torchrun.py)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if workers < 1 or threads < 1:
        raise ConfigError(f"workers ({workers}) and threads ({threads}) must be >= 1")
    if nproc_per_node is not None:
        if backend != "torchrun":
            raise ConfigError(f"--nproc-per-node is for --backend torchrun, not {backend}; drop it or add that")
        if nproc_per_node < 1:
            raise ConfigError(f"--nproc-per-node {nproc_per_node} must be >= 1 (processes per run)")
    if backend == "torchrun":
        from replaylab.sweep.torchrun import check_launcher

        check_launcher()


def describe_backend(backend: str, workers: int, threads: int, nproc_per_node: int | None = None) -> str:
    """One line saying where a sweep's runs will train (`advise` prints it with its plan)."""
    if backend == "torchrun":
        from replaylab.sweep.torchrun import CPU_NPROC, visible_gpus

        gpus = visible_gpus()
        n = nproc_per_node or (max(1, len(gpus) // workers) if gpus else CPU_NPROC)
        ranks = "one GPU each" if gpus else f"gloo, {threads} thread(s) each"
        return (
            f"backend torchrun: each run is one torchrun job of {n} processes ({ranks}), {workers} job(s) at a "
            "time (the time estimate is of one process per run)"
        )
    if backend == "ray":
        return f"backend ray: each run is a Ray task of {threads} thread(s)"
    return f"backend local: {workers} worker process(es) of {threads} thread(s)"


def train_sweep(
    out: str | Path,
    *,
    workers: int = 1,
    threads: int = 1,
    backend: str = "local",
    address: str | None = None,
    retry_before: float | None = None,
    lease_ttl: float = 60.0,
    gpus_per_run: float = 0.0,
    nproc_per_node: int | None = None,
    progress: bool | None = None,
) -> dict[str, int]:
    """Train every run of a written sweep folder not done yet (local workers, Ray or torchrun jobs); returns
    status counts."""
    from replaylab.outputs import in_use

    with in_use(out, "sweep folder"):  # another sweep's --overwrite is refused while this one trains here
        if backend == "ray":
            from replaylab.sweep.ray_backend import run_ray

            return run_ray(
                out, address=address, threads=threads, gpus=gpus_per_run, retry_before=retry_before, lease_ttl=lease_ttl
            )
        if backend == "torchrun":
            from replaylab.sweep.torchrun import run_torchrun

            return run_torchrun(
                out,
                workers=workers,
                threads=threads,
                nproc_per_node=nproc_per_node,
                retry_before=retry_before,
                lease_ttl=lease_ttl,
                progress=progress,
            )
        from replaylab.sweep.local import run_local

        return run_local(
            out, workers=workers, threads=threads, retry_before=retry_before, lease_ttl=lease_ttl, progress=progress
        )
