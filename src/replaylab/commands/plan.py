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
    for col in ("strategy", "runs", "steps", "steps trained", "steps saved", "tokens", "FLOPs", "GPU-hours"):
        t.add_column(col, justify="left" if col == "strategy" else "right")
    for _, r in table.iterrows():
        t.add_row(str(r["strategy"]), f"{int(r['runs'])}", f"{int(r['steps']):,}", f"{int(r['steps_trained']):,}",
                  f"{int(r['steps_saved']):,}", f"{r['tokens']:.3g}", f"{r['flops']:.3g}", f"{r['gpu_hours']:.3g}")
    console.print(t)
    total = table.iloc[-1]
    if total["steps_saved"]:
        console.print(f"shared prefixes: {int(total['steps'])} -> {int(total['steps_trained'])} steps "
                      f"({total['steps'] / total['steps_trained']:.2f}x fewer; branch points every "
                      f"{doc['prefix_granularity']} steps)")
    if args.runs:
        for e in doc["runs"]:
            branch = f"  <- {e['branch']['parent']}@{e['branch']['step']}" if e["branch"] else ""
            console.print(f"{e['run_id']}  {e['coords']}{branch}")
    return 0
