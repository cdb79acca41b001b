"""`replaylab report SWEEP_DIR [--out DIR]`: a self-contained HTML (and Markdown) report with the
data-efficiency tables and the paper's figures."""

from __future__ import annotations

import argparse

HELP = "write an HTML + Markdown report of a sweep: law fits, multipliers with CIs, figures, loss curves"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from replaylab.commands.analyze import add_source_arguments

    add_source_arguments(p)
    p.add_argument("--out", help="report folder (default SWEEP_DIR/report; required with CSV input)")
    p.add_argument("--curves", type=int, default=6, help="loss-curve figures of headline runs (default 6; 0 = none)")
    p.add_argument("--overwrite", action="store_true", help="replace a replaylab report folder made from other runs")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from replaylab.analysis.law import AnalysisError
    from replaylab.analysis.report import write_report
    from replaylab.commands.analyze import load_analysis

    if args.out is None and not args.sweep_dir:
        raise AnalysisError("with --reference/--compare, give --out DIR for the report folder")
    import os

    from replaylab.outputs import claim_output

    if args.sweep_dir:
        identity = os.path.abspath(args.sweep_dir)
    else:
        identity = f"{os.path.abspath(args.reference)} + {os.path.abspath(args.compare)}"
    out = Path(args.out) if args.out else Path(args.sweep_dir) / "report"
    claim_output(out, "report", identity, overwrite=args.overwrite, describe="of other runs")  # before the analysis
    analysis, source = load_analysis(args)
    path = write_report(
        analysis,
        out,
        source=source,
        sweep_dir=args.sweep_dir,
        max_curves=args.curves,
        identity=identity,
        overwrite=args.overwrite,
    )
    print(f"wrote {path} (and report.md, analysis.json, summary.csv, figures/)")
    return 0
