"""Sweeps: experiments expanded into content-addressed runs, trained by local workers or Ray tasks.

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
    progress: bool | None = None,
    overwrite: bool = False,
) -> dict[str, int]:
    """Prepare the sweep folder and train every run not done yet; returns status counts."""
    check_backend(backend, workers, threads)
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
        progress=progress,
    )


def check_backend(backend: str, workers: int, threads: int) -> None:
    if backend not in ("local", "ray"):
        raise ConfigError(f"backend {backend!r} is unknown; choose local or ray")
    if workers < 1 or threads < 1:
        raise ConfigError(f"workers ({workers}) and threads ({threads}) must be >= 1")


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
    progress: bool | None = None,
) -> dict[str, int]:
    """Train every run of a written sweep folder not done yet (local workers or Ray); returns status counts."""
    from replaylab.outputs import in_use

    with in_use(out, "sweep folder"):  # another sweep's --overwrite is refused while this one trains here
        if backend == "ray":
            from replaylab.sweep.ray_backend import run_ray

            return run_ray(
                out, address=address, threads=threads, gpus=gpus_per_run, retry_before=retry_before, lease_ttl=lease_ttl
            )
        from replaylab.sweep.local import run_local

        return run_local(
            out, workers=workers, threads=threads, retry_before=retry_before, lease_ttl=lease_ttl, progress=progress
        )
