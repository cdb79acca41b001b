"""`replaylab demo`: the quick mini experiment on the built-in data, from nothing to a report.

Builds the default data (cached after the first time), runs the demo sweep (reference law points and
fine-tuning with and without replay, on the instructions target) on local workers, then prints the
data-efficiency table and writes the HTML report. The experiment is `replaylab/experiments/demo.yaml`.
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

HELP = "the quick mini experiment: build the built-in data, train a small sweep, print multipliers, write a report"


def demo_experiment() -> Path:
    return Path(str(resources.files("replaylab") / "experiments" / "demo.yaml"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="sweep folder (default: demo under $REPLAYLAB_HOME/sweeps)")
    p.add_argument("--experiment", help="run this experiment YAML instead of the built-in demo")
    p.add_argument("--workers", type=int, default=2, help="local worker processes, one thread each (default 2)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a replaylab sweep folder of another experiment at --out (its runs are deleted)",
    )


def _data(experiment: Path) -> tuple[dict[str, str], str]:
    """{domain: source} and the tokenizer spec of the experiment's base config."""
    from replaylab.sweep.experiment import load_experiment

    _, base = load_experiment(experiment)
    data = base.get("data", {})
    return {name: d["source"] for name, d in data.get("domains", {}).items()}, data.get("tokenizer", "default")


def main(args: argparse.Namespace) -> int:
    from replaylab.analysis import analyze_runs, load_sweep_table
    from replaylab.analysis.report import write_report
    from replaylab.commands.analyze import print_analysis
    from replaylab.data.store import get_store
    from replaylab.errors import ConfigError
    from replaylab.outputs import claim_output
    from replaylab.paths import home
    from replaylab.sweep import run_sweep
    from replaylab.sweep.plan import experiment_name

    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers} must be >= 1")
    experiment = Path(args.experiment) if args.experiment else demo_experiment()
    out = Path(args.out) if args.out else home() / "sweeps" / "demo"
    claim_output(out, "sweep", experiment_name(experiment), overwrite=args.overwrite)  # before building data
    t0 = time.time()

    print("[1/3] data: building the built-in corpora, tokenizer and token stores (cached after the first time)")
    domains, tokenizer = _data(experiment)
    for name, source in domains.items():
        store = get_store(source, tokenizer=tokenizer)
        print(f"      {name}: {store.num_tokens('train'):,} training tokens  ({store.path})")
    t_data = time.time() - t0

    print(f"[2/3] sweep: training {experiment.name} with {args.workers} worker(s) into {out}")
    counts = run_sweep(experiment, out, workers=args.workers, threads=1, backend="local", overwrite=args.overwrite)
    print("      " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    t_sweep = time.time() - t0 - t_data

    print("[3/3] analysis: reference law, effective data, multipliers")
    analysis = analyze_runs(load_sweep_table(out), form="paper", n_boot=1000, level=0.95, seed=0)
    print_analysis(analysis, str(out), cells=True)
    report = write_report(analysis, out / "report", source=str(out), sweep_dir=out)
    print(f"report: {report}")
    print(f"time: data {t_data:.0f} s, training {t_sweep:.0f} s, total {time.time() - t0:.0f} s")
    return 0 if counts.get("failed", 0) == 0 else 1
