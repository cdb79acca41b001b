"""What the benchmarks share: the machine a measurement was taken on, and their JSON records, rewritten
after each phase so a run stopped by `timeout` leaves what it measured."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from replaylab import runtime
from replaylab.paths import atomic_write_text


def machine(device: torch.device) -> dict:
    """Versions, date, and the GPU's name or the CPU's model, cores, threads and native bf16; load average."""
    import transformers

    info = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
    }
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        names = (
            [
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ]
            if Path("/proc/cpuinfo").exists()
            else []
        )
        info.update(
            cpu=names[0] if names else platform.processor() or platform.machine(),
            cpus=os.cpu_count(),
            threads=torch.get_num_threads(),
            native_bf16=runtime.cpu_has_native_bf16(),
        )
    if hasattr(os, "getloadavg"):
        info["load_avg_start"] = os.getloadavg()
    return info


def write_json(path: str | None, record: dict) -> None:
    """Write `record` to `path` (nothing without one) atomically: a run killed mid-write leaves the previous
    version, never half of one."""
    if path:
        atomic_write_text(path, json.dumps(record, indent=1, default=str))
