"""manifest.json: what a run is, where it stands, and how it ended (docs/design.md has the schema).

The sweep layer skips runs whose status is `done`, retries `failed`/`diverged` only when asked, and
resumes `running` ones whose worker died; analysis reads `meta` and `final`. Written atomically.
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from replaylab.errors import DataError
from replaylab.paths import atomic_write_text

MANIFEST = "manifest.json"
STATUSES = ("running", "done", "failed", "diverged")
# What readers report for a run whose manifest exists but cannot be read (never written into one): not
# "pending", which would retrain or hide a run whose record is only damaged.
DAMAGED = "damaged"
_PACKAGES = ("replaylab", "torch", "numpy", "tokenizers", "safetensors", "transformers")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """The commit of the replaylab checkout in use (editable installs), else None."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def new_manifest(
    *,
    config_hash: str,
    name: str,
    seed: int,
    meta: dict,
    store_identities: dict[str, str],
    tokenizer_hash: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "config_hash": config_hash,
        "name": name,
        "seed": seed,
        "status": "running",
        "store_identities": store_identities,
        "tokenizer_hash": tokenizer_hash,
        "versions": versions(),
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "started": now(),
        "finished": None,
        "meta": meta,
        "final": {},
        "steps_done": 0,
        "error": None,
        **(extra or {}),
    }


def read_manifest(run_dir: Path | str) -> dict[str, Any] | None:
    """The run's manifest, or None when it has none. One that cannot be read (cut short by a full disk,
    edited by hand, another tool's file) is a DataError: guessing its status could retrain a finished run
    or skip a failed one. The one reader of manifests: the run store reports such a run as DAMAGED."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return None
    fix = (
        "it was cut short or edited: restore it, or delete it (replaylab train --resume then rebuilds it from "
        "the newest checkpoint) or the whole run folder"
    )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e.msg}: line {e.lineno} column {e.colno}); {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path} cannot be read ({getattr(e, 'strerror', None) or e}); {fix}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path} holds {type(manifest).__name__}, not a JSON object; {fix}")
    return manifest


def write_manifest(run_dir: Path | str, manifest: dict[str, Any]) -> None:
    assert manifest["status"] in STATUSES, manifest["status"]
    atomic_write_text(Path(run_dir) / MANIFEST, json.dumps(manifest, indent=1, default=str) + "\n")
