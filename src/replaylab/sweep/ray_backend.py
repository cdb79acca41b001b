"""Ray backend: each run is a Ray task (CPU/GPU resources per run) calling the same claim -> train ->
release step as local workers (`replaylab.sweep.execute.execute_run`), so leases still guarantee that
no run trains twice, even with local workers on the same sweep folder. A run that branches off a
shared prefix is submitted with its carrier's task as a dependency. The sweep folder must be on a
filesystem every Ray node sees.
"""

from __future__ import annotations

import time
from pathlib import Path

from replaylab.errors import ConfigError


def _run_one(
    sweep_dir: str, run_id: str, retry_before: float | None, lease_ttl: float, threads: int, poll: float, *_deps: object
) -> str:
    import torch

    from replaylab.sweep.execute import BUSY, WAITING, execute_run, terminal
    from replaylab.sweep.runstore import RunStore

    torch.set_num_threads(threads)
    store = RunStore(sweep_dir, lease_ttl=lease_ttl)
    entry = next(e for e in store.plan()["runs"] if e["run_id"] == run_id)
    while True:
        result = execute_run(store, entry, retry_before=retry_before)
        if result not in (BUSY, WAITING) or terminal(store, run_id, retry_before):
            return store.status(run_id)
        time.sleep(poll)  # another worker holds it (or its prefix is not ready): wait for it


def run_ray(
    sweep_dir: str | Path,
    *,
    address: str | None = None,
    threads: int = 1,
    gpus: float = 0.0,
    retry_before: float | None = None,
    lease_ttl: float = 60.0,
    poll: float = 0.5,
) -> dict[str, int]:
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install 'replaylab[ray]'") from None
    from replaylab.sweep.execute import ordered_entries
    from replaylab.sweep.local import _counts
    from replaylab.sweep.runstore import RunStore

    store = RunStore(sweep_dir, lease_ttl=lease_ttl)
    started_here = False
    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads)}},
        )
        started_here = True
    try:
        task = ray.remote(_run_one).options(num_cpus=threads, num_gpus=gpus, max_retries=0)
        refs: dict[str, object] = {}
        for entry in ordered_entries(store.plan()):
            branch = entry.get("branch")
            deps = [refs[branch["parent"]]] if branch and branch["parent"] in refs else []
            refs[entry["run_id"]] = task.remote(
                str(Path(sweep_dir).resolve()), entry["run_id"], retry_before, lease_ttl, threads, poll, *deps
            )
        ray.get(list(refs.values()))
    finally:
        if started_here:
            ray.shutdown()
    return _counts(store, [e["run_id"] for e in store.plan()["runs"]])
