"""`replaylab plan EXPERIMENT.yaml`: runs, steps, tokens, FLOPs and GPU-hours before anything runs."""

from __future__ import annotations

import argparse

HELP = "show an experiment's runs, steps, tokens, FLOPs, GPU-hours and shared-prefix savings"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment YAML (see configs/tiny_sweep.yaml)")
    p.add_argument("--gpu-tflops", type=float, default=989.0, help="peak GPU TFLOP/s (default: H100 dense bf16)")
    p.add_argument("--mfu", type=float, default=0.35, help="model FLOP utilization assumed (default 0.35)")
    p.add_argument("--runs", action="store_true", help="also list every run with its coordinates")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from replaylab.errors import ConfigError
    from replaylab.sweep.plan import plan_experiment

    if args.gpu_tflops <= 0 or not 0 < args.mfu <= 1:
        raise ConfigError(f"--gpu-tflops ({args.gpu_tflops}) must be > 0 and --mfu ({args.mfu}) in (0, 1]")
    table, doc = plan_experiment(args.experiment, gpu_tflops=args.gpu_tflops, mfu=args.mfu)
    console = Console()
    t = Table(title=f"{doc['name']}: {len(doc['runs'])} runs")
    hf = doc.get("kind") == "finetune_hf"  # no shared prefixes; FLOPs would need the model's shape
    first = "cell" if hf else "strategy"  # kind: finetune_hf rows are grid cells (axis values)
    cols = {
        first: None,
        "runs": None,
        "steps": ",",
        "steps trained": ",",
        "steps saved": ",",
        "tokens": ".3g",
        "FLOPs": ".3g",
        "GPU-hours": ".3g",
    }
    if hf:
        cols = {k: v for k, v in cols.items() if k in (first, "runs", "steps", "tokens")}
    for col in cols:
        t.add_column(col, justify="left" if col == first else "right")

    def num(x: float, fmt: str) -> str:  # NaN = unknown before the data is tokenized
        return "?" if x != x else format(int(x) if fmt == "," else x, fmt)

    names = {"steps trained": "steps_trained", "steps saved": "steps_saved", "FLOPs": "flops", "GPU-hours": "gpu_hours"}
    for _, r in table.iterrows():
        t.add_row(str(r[first]), f"{int(r['runs'])}", *(num(r[names.get(c, c)], f) for c, f in cols.items() if f))
    if not console.is_terminal:  # a file or pipe: never fold or elide numbers
        console.width = max(console.width, 120)
    console.print(t)
    if hf:
        console.print(
            "finetune_hf: runs = lrs x seeds per cell; steps are ? where target.budget is unset "
            "(every train sequence: known once tokenized)"
        )
    total = table.iloc[-1]
    if total["steps_saved"]:
        console.print(
            f"shared prefixes: {int(total['steps'])} -> {int(total['steps_trained'])} steps "
            f"({total['steps'] / total['steps_trained']:.2f}x fewer)"
        )
    if args.runs:
        for e in doc["runs"]:
            branch = f"  <- {e['branch']['parent']}@{e['branch']['step']}" if e["branch"] else ""
            console.print(f"{e['run_id']}  {e['coords']}{branch}")
    return 0
