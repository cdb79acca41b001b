"""The sweep folder: content-addressed run folders, the sweep plan, and leases.

    SWEEP/experiment.yaml       the launcher's input, as given
    SWEEP/sweep.json            runs: id, grid coordinates, shared-prefix branch (parent, step)
    SWEEP/events.jsonl          claim / start / resume / finish / takeover records, one JSON per line
    SWEEP/runs/<config_hash>/   a run folder (docs/design.md) + lease.json while a worker holds it

A lease says "holder H trains this run until time T"; the holder renews it from a heartbeat thread.
Leases are read and written under an exclusive `flock` on the run's `lease.lock` (released by the OS if
the holder dies), so two workers never both take a run. A lease whose expiry has passed, or whose
holder process on this host is gone, is stale and may be taken over; the new holder resumes the run
from its latest checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from replaylab.config import dump_yaml
from replaylab.errors import ConfigError, DataError
from replaylab.outputs import write_marker
from replaylab.paths import atomic_write_text, pid_alive
from replaylab.train.manifest import DAMAGED, MANIFEST, read_manifest

LEASE = "lease.json"
PLAN = "sweep.json"
TERMINAL_OK = "done"
# Runs that ended without a result: skipped unless the sweep retries them (the failed attempt, a damaged
# manifest included, is then moved aside into attempt_N/, never deleted).
FAILED = ("failed", "diverged", DAMAGED)


class Lease:
    """A held claim on one run; renew it with `heartbeat()` while training."""

    def __init__(self, store: "RunStore", run_id: str, holder: str, took_over: dict | None):
        self.store, self.run_id, self.holder, self.took_over = store, run_id, holder, took_over
        self.lost = False

    def renew(self) -> bool:
        with self.store._locked(self.run_id):
            current = self.store.read_lease(self.run_id)
            if current is None or current.get("holder") != self.holder:
                self.lost = True
                return False
            self.store._write_lease(self.run_id, self.holder)
            return True

    def release(self) -> None:
        with self.store._locked(self.run_id):
            current = self.store.read_lease(self.run_id)
            if current is not None and current.get("holder") == self.holder:
                (self.store.run_dir(self.run_id) / LEASE).unlink()

    @contextmanager
    def heartbeat(self, on_lost: Callable[[], None] | None = None) -> Iterator["Lease"]:
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.store.lease_ttl / 3):
                if not self.renew():
                    # Another worker took the run over (we missed heartbeats: a paused or partitioned
                    # host). Stop training here: SIGTERM makes the engine checkpoint and raise.
                    self.store.event(self.run_id, "lease_lost", holder=self.holder)
                    if on_lost is not None:
                        on_lost()
                    return

        t = threading.Thread(target=beat, name=f"lease-{self.run_id}", daemon=True)
        t.start()
        try:
            yield self
        finally:
            stop.set()
            t.join()


class RunStore:
    def __init__(self, root: str | Path, *, lease_ttl: float = 60.0):
        self.root = Path(root)
        self.lease_ttl = float(lease_ttl)
        if self.lease_ttl <= 0:
            raise ConfigError(f"lease ttl {lease_ttl} must be > 0 seconds")

    # -- layout ---------------------------------------------------------------------------------------
    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def plan(self) -> dict[str, Any]:
        path = self.root / PLAN
        if not path.exists():
            raise ConfigError(f"{str(self.root)!r} is not a sweep folder (no {PLAN}); run `replaylab sweep` first")
        try:
            plan = json.loads(path.read_text(encoding="utf-8"))
            why = "" if _is_plan(plan) else f"JSON {type(plan).__name__}, not an object with a list of runs"
        except json.JSONDecodeError as e:
            why = f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        except UnicodeDecodeError:
            why = "not text"
        if why:
            raise DataError(
                f"{path} is not a sweep plan ({why}); it was cut short or edited: restore it, or rebuild "
                f"it with `replaylab sweep {self.root / 'experiment.yaml'} --out {self.root}` (finished "
                f"runs are kept, not retrained)"
            )
        return plan

    def write_plan(self, plan: dict[str, Any], experiment_text: str, configs: dict[str, Any]) -> None:
        """Write the sweep plan and each run's config.yaml (kept if present: a run folder is immutable)."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.root / "experiment.yaml", experiment_text)
        for rid, cfg in configs.items():
            path = self.run_dir(rid) / "config.yaml"
            if not path.exists():
                atomic_write_text(path, dump_yaml(cfg))
        atomic_write_text(self.root / PLAN, json.dumps(plan, indent=1, default=str) + "\n")

    # -- status ---------------------------------------------------------------------------------------
    def manifest_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / MANIFEST

    def manifest(self, run_id: str) -> dict[str, Any] | None:
        """The run's manifest, None before it has one; a DataError naming the file when it cannot be read
        (`replaylab.train.manifest.read_manifest`, the one reader)."""
        return read_manifest(self.run_dir(run_id))

    def status(self, run_id: str) -> str:
        """pending | running (leased) | done | failed | diverged | interrupted (started, no live lease) |
        damaged (a manifest that cannot be read: `manifest` says why)."""
        try:
            m = self.manifest(run_id)
        except DataError:
            return DAMAGED
        status = m.get("status") if m else None
        if status in (TERMINAL_OK, *FAILED):
            return status
        lease = self.read_lease(run_id)
        if lease is not None and not self._stale(lease):
            return "running"
        return "interrupted" if status == "running" else "pending"

    # -- leases ---------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self, run_id: str) -> Iterator[None]:
        d = self.run_dir(run_id)
        if not d.is_dir():
            d.parent.mkdir(parents=True, exist_ok=True)
            try:
                d.mkdir()
                write_marker(d, "run")  # a run folder of replaylab's (replaylab.outputs); the trainer adds its identity
            except FileExistsError:  # another worker made it first
                pass
        fd = os.open(d / "lease.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def read_lease(self, run_id: str) -> dict | None:
        try:
            return json.loads((self.run_dir(run_id) / LEASE).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _stale(self, lease: dict) -> bool:
        if lease.get("expires", 0) < time.time():
            return True
        return lease.get("host") == socket.gethostname() and not pid_alive(int(lease.get("pid", 0)))

    def _write_lease(self, run_id: str, holder: str) -> None:
        record = {
            "holder": holder,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "expires": time.time() + self.lease_ttl,
            "ttl": self.lease_ttl,
        }
        atomic_write_text(self.run_dir(run_id) / LEASE, json.dumps(record))

    def claim(self, run_id: str) -> Lease | None:
        """Take the run's lease if it is free or stale; None if another live worker holds it."""
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        with self._locked(run_id):
            current = self.read_lease(run_id)
            if current is not None and not self._stale(current):
                return None
            self._write_lease(run_id, holder)
        lease = Lease(self, run_id, holder, took_over=current)
        if current is not None:
            self.event(run_id, "takeover", previous=current.get("holder"))
        return lease

    # -- events ---------------------------------------------------------------------------------------
    def event(self, run_id: str, kind: str, **fields: Any) -> None:
        record = {"time": time.time(), "run_id": run_id, "event": kind, "pid": os.getpid(), **fields}
        line = (json.dumps(record, default=str) + "\n").encode()
        fd = os.open(self.root / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)  # one short O_APPEND write: lines from concurrent workers never interleave
        finally:
            os.close(fd)

    def events(self) -> list[dict]:
        path = self.root / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _is_plan(doc: Any) -> bool:
    """A sweep.json document: {"runs": [{"run_id": ..., ...}, ...], ...}."""
    runs = doc.get("runs") if isinstance(doc, dict) else None
    return isinstance(runs, list) and all(isinstance(e, dict) and isinstance(e.get("run_id"), str) for e in runs)
