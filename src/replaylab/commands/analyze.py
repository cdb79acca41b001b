"""`replaylab analyze SWEEP_DIR` or `replaylab analyze --reference REF.csv --compare CMP.csv`: fit each
domain's reference law and print effective data and data-efficiency multipliers (docs/analysis.md)."""

from __future__ import annotations

import argparse

HELP = "data-efficiency multipliers of a sweep (or of CSV tables): reference law, effective data, seed-bootstrap CIs"


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared with `replaylab report`: where the runs come from and how to fit them."""
    from replaylab.analysis.law import FORMS

    p.add_argument("sweep_dir", nargs="?", help="a folder written by replaylab sweep")
    p.add_argument("--reference", metavar="REF.csv", help="reference runs as CSV (instead of SWEEP_DIR)")
    p.add_argument("--compare", metavar="CMP.csv", help="fine-tuning / mid-training runs as CSV (with --reference)")
    p.add_argument(
        "--form",
        choices=FORMS,
        default="paper",
        help="reference law: paper (A/x^B+C as the paper fits it), loglinear (a - b ln x), robust "
        "(bounded power law); default paper",
    )
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples for CIs (default 1000)")
    p.add_argument("--level", type=float, default=0.95, help="CI level (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument(
        "--seeds",
        help="only these run seeds, e.g. 0,1 (a sweep still running: analyze the finished "
        "replicates; LR selection prefers LRs whose seeds all finished)",
    )


def load_analysis(args: argparse.Namespace):
    """(analysis, source description) from the parsed arguments."""
    from replaylab.analysis import analyze_runs, load_csv_tables, load_sweep_table
    from replaylab.analysis.law import AnalysisError

    # Checked up front: deep inside, a bad level only drops each interval with a note.
    if not 0 < args.level < 1:
        raise AnalysisError(f"--level {args.level} is not a confidence level in (0, 1); give e.g. --level 0.95")
    if args.boot < 10:  # the bootstrap's own floor (analysis/bootstrap.py)
        raise AnalysisError(
            f"--boot {args.boot} is too few bootstrap resamples for an interval; give at least 10 (default 1000)"
        )
    csv_given = args.reference is not None or args.compare is not None
    if csv_given and args.sweep_dir:
        raise AnalysisError("give either SWEEP_DIR or --reference/--compare CSV files, not both")
    if csv_given:
        if args.reference is None or args.compare is None:
            raise AnalysisError("--reference and --compare go together; give both CSV files")
        table, source = load_csv_tables(args.reference, args.compare), f"{args.reference} + {args.compare}"
    elif args.sweep_dir:
        table, source = load_sweep_table(args.sweep_dir), str(args.sweep_dir)
    else:
        raise AnalysisError("nothing to analyze; give SWEEP_DIR or --reference REF.csv --compare CMP.csv")
    if getattr(args, "seeds", None):
        try:
            keep = {int(s) for s in args.seeds.split(",") if s.strip()}
        except ValueError:
            raise AnalysisError(
                f"--seeds {args.seeds!r}: give run seeds as integers separated by commas, e.g. 0,1"
            ) from None
        table = table[table["seed"].isin(keep)]
        if table.empty:
            raise AnalysisError(f"--seeds {args.seeds}: no runs with these seeds")
        source += f" (seeds {','.join(map(str, sorted(keep)))})"
    return analyze_runs(table, form=args.form, n_boot=args.boot, level=args.level, seed=args.seed), source


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_source_arguments(p)
    p.add_argument("--cells", action="store_true", help="also print every cell (each rho / alpha) per domain")
    p.add_argument("--json", metavar="FILE", help="write the whole analysis as JSON")
    p.add_argument("--csv", metavar="FILE", help="write the headline table as CSV")
    p.add_argument("--overwrite", action="store_true", help="replace the --json / --csv files if they exist")


def _print_table(console, title: str, rows: list[dict[str, str]]) -> None:
    from rich.table import Table

    if not rows:
        return
    if not console.is_terminal:  # a file or pipe: never fold numbers, make the page as wide as the table
        console.width = max(console.width, sum(max(len(k), *(len(r[k]) for r in rows)) + 3 for k in rows[0]) + 1)
    table = Table(title=title, title_justify="left", show_lines=False)
    for key in rows[0]:
        table.add_column(key, overflow="fold")
    for r in rows:
        table.add_row(*r.values())
    console.print(table)


def main(args: argparse.Namespace) -> int:
    import json

    from replaylab.outputs import check_output_file
    from replaylab.paths import atomic_write_text

    for option, path in (("--json", args.json), ("--csv", args.csv)):
        if path:
            check_output_file(path, overwrite=args.overwrite, option=option)  # before the analysis, not after
    analysis, source = load_analysis(args)
    print_analysis(analysis, source, cells=args.cells)
    if args.json:
        atomic_write_text(args.json, json.dumps(analysis.to_dict(), indent=1, default=str) + "\n")
    if args.csv:
        atomic_write_text(args.csv, analysis.summary_frame().to_csv(index=False))
    return 0


def print_analysis(analysis, source: str, *, cells: bool = False) -> None:
    """The law fits, the headline multiplier table and (with `cells`) every cell, on the console."""
    from rich.console import Console

    from replaylab.analysis.report import SELECTION_NOTE, cell_rows, summary_rows

    console = Console()
    console.print(f"source: {source}   law form: {analysis.form}", soft_wrap=True)
    for name, dom in analysis.domains.items():
        law = dom.law.diagnostics.summary() if dom.law is not None and dom.law.diagnostics else "no reference law"
        console.print(f"[bold]{name}[/bold] reference law: {law}", highlight=False, soft_wrap=True)
        for note in dom.notes:
            console.print(f"  note: {note}", highlight=False, soft_wrap=True)
    for note in analysis.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    _print_noted_table(console, "Data-efficiency multipliers (report half)", summary_rows(analysis))
    console.print(SELECTION_NOTE, highlight=False, soft_wrap=True)
    if cells:
        for name in analysis.domains:
            _print_noted_table(console, f"{name}: cells at their chosen LR", cell_rows(analysis, name))


def _print_noted_table(console, title: str, rows: list[dict[str, str]]) -> None:
    """A table whose long `notes` column is printed under it, each row marked `n*` pointing to `*n: note`
    (a flag on a row must never be folded out of sight)."""
    notes = [(i + 1, r.pop("notes")) for i, r in enumerate(rows)]
    for (i, note), r in zip(notes, rows):
        r["#"] = str(i) + ("*" if note else "")
    _print_table(console, title, rows)
    for i, note in notes:
        if note:
            console.print(f"  *{i}: {note}", highlight=False, soft_wrap=True)
