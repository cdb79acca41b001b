"""Where a run's numbers go: metrics.jsonl (always), TensorBoard and W&B (when asked), a progress bar.

metrics.jsonl is append-only during a run. On resume it is first rewritten (atomically) to keep only
the records up to the resumed step, so a killed-and-resumed run leaves the same file as one that was
never interrupted (no duplicated steps, no half-written last line).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from replaylab.paths import atomic_write_text

METRICS = "metrics.jsonl"


def read_metrics(run_dir: Path | str) -> list[dict[str, Any]]:
    """All complete records of a run's metrics.jsonl (a torn last line is ignored)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    return out


def _json_line(record: dict[str, Any]) -> str:
    # NaN/inf are not JSON: write them as null so every line parses everywhere.
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(clean, separators=(",", ":"))


def truncate_metrics(run_dir: Path | str, step: int, prefix: list[dict[str, Any]] | None = None) -> None:
    """Keep the records with step <= `step` (from `prefix` if given, else the run's own file)."""
    records = read_metrics(run_dir) if prefix is None else prefix
    kept = [r for r in records if r.get("step", 0) <= step]
    atomic_write_text(Path(run_dir) / METRICS, "".join(_json_line(r) + "\n" for r in kept))


class RunLogger:
    """Writes records to metrics.jsonl and mirrors scalars to TensorBoard / W&B. Only rank 0 logs."""

    def __init__(self, run_dir: Path, *, config: Any, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self._file = None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self._file = open(Path(run_dir) / METRICS, "a", encoding="utf-8")
        if config.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=resume_step or None)
        if config.logging.wandb:
            try:
                import wandb
            except ImportError:
                print(
                    "replaylab: warning: logging.wandb is on but wandb is not installed "
                    "(pip install 'replaylab[wandb]'); logging to metrics.jsonl only",
                    file=sys.stderr,
                )
            else:
                from replaylab.config import to_dict

                self._wandb = wandb.init(
                    project=config.logging.wandb_project,
                    name=config.name,
                    config=to_dict(config),
                    dir=str(run_dir),
                    resume="allow",
                )

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(_json_line(record) + "\n")
        self._file.flush()
        step = record.get("step", 0)
        kind = record.get("type")
        if kind == "train":
            scalars = {f"train/{k}": record[k] for k in ("loss", "lr", "tok_per_s")}
        elif kind == "eval":
            scalars = {f"{k}/{record['domain']}": record[k] for k in ("val_loss", "test_loss", "val_bpb", "test_bpb")}
        elif kind == "data":
            scalars = {f"data/{k}/{record['domain']}": record[k] for k in ("tokens_seen", "epochs")}
        else:
            scalars = {}
        if self._tb is not None:
            for key, value in scalars.items():
                if value is not None:
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None and scalars:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


class Progress:
    """A rich progress bar with loss, tokens/s and ETA; silent when off or not on a terminal."""

    def __init__(self, mode: str, total: int, start: int, enabled: bool = True):
        on = mode == "on" or (mode == "auto" and sys.stderr.isatty())
        self._bar = None
        if not (on and enabled):
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task("train", total=total, completed=start, loss="-", tps="-")
        self._last = time.perf_counter()

    def update(self, step: int, loss: float | None = None, tok_per_s: float | None = None) -> None:
        if self._bar is None:
            return
        fields = {}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if tok_per_s is not None:
            fields["tps"] = f"{tok_per_s:,.0f}"
        self._bar.update(self._task, completed=step, **fields)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
