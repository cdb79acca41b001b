"""`replaylab results SWEEP_DIR [--csv FILE]`: one row per run, pandas-readable."""

from __future__ import annotations

import argparse

HELP = "tabulate a sweep's runs: strategy, rho, alpha, budget, seed, LR, final per-domain losses, status"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep_dir", help="a folder written by replaylab sweep")
    p.add_argument("--csv", help="write the full table to this CSV file (a new file, or --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace the --csv file if it exists")


def main(args: argparse.Namespace) -> int:
    from replaylab.outputs import check_output_file
    from replaylab.paths import atomic_write_text
    from replaylab.sweep.results import load_results

    if args.csv:
        check_output_file(args.csv, overwrite=args.overwrite, option="--csv")
    df = load_results(args.sweep_dir)
    if args.csv:
        atomic_write_text(args.csv, df.to_csv(index=False))
    cols = [
        c
        for c in (
            "run_id",
            "status",
            "strategy",
            "target_domain",
            "rho",
            "alpha",
            "budget",
            "seed",
            "lr",
            "selected",
            "target_test_loss",
            "generic_test_loss",
        )
        if c in df.columns
    ]
    if "target_domain" in cols and df["target_domain"].nunique(dropna=False) < 2:
        cols.remove("target_domain")  # one target: the column says nothing
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.max_columns", 20):
        print(df[cols].to_string(index=False) if not df.empty else "no runs")
    if "status" in df.columns:
        for _, r in df[df["status"] == "damaged"].iterrows():  # the file and the fix, not only a status word
            print(f"damaged: run {r['run_id']}: {r['error']}")
    return 0
