"""Run tables in, selected cells out: loading (sweep folder or CSV), LR selection, and the cell table.

The input is the results table of docs/design.md (one row per run): `strategy`, `target_domain`,
`seed`, `target_test_loss` are required; `target_val_loss`, `lr`, `rho`, `alpha`, `budget`,
`target_epochs`, `status`, `run_id`, `generic_test_loss` are used when present. A *cell* is one
point of the experiment grid (domain, strategy, budget, epochs, rho, alpha); its runs differ only in
seed and LR. Per cell the LR with the lowest mean `target_val_loss` (the *select* half) over seeds is
chosen (`replaylab.sweep.results.select_lr`, the rule `replaylab results` marks `selected` with), and the
cell reports its seeds' `target_test_loss` (the *report* half) at that LR.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from replaylab.analysis.law import AnalysisError

REQUIRED = ("strategy", "target_domain", "seed", "target_test_loss")
CELL_KEYS = ["target_domain", "strategy", "budget", "target_epochs", "rho", "alpha"]
NUMERIC = (
    "budget",
    "target_epochs",
    "rho",
    "alpha",
    "seed",
    "lr",
    "target_val_loss",
    "target_test_loss",
    "generic_val_loss",
    "generic_test_loss",
)
STRATEGIES = ("reference", "finetune", "midtrain")
# `replaylab advise` runs (docs/advisor.md): fine-tuning without replay at several budgets is the model's own
# curve, read as the reference; at a budget where replay was measured, replay and no replay are the fine-tuning
# comparison (its no-replay runs are then both a curve point and the baseline).
ADVISE = "advise"
# CSV conveniences: short names accepted for the documented columns.
ALIASES = {
    "loss": "target_test_loss",
    "test_loss": "target_test_loss",
    "val_loss": "target_val_loss",
    "domain": "target_domain",
    "method": "strategy",
}


def load_sweep_table(sweep_dir: str | Path) -> pd.DataFrame:
    """The results table of a sweep folder (`replaylab.sweep.results.load_results`). Without a
    `sweep.json` (run folders copied by hand), the `runs/*/manifest.json` files are read directly."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise AnalysisError(f"sweep folder {str(root)!r} does not exist; give the folder `replaylab sweep` wrote")
    from replaylab.errors import DataError
    from replaylab.sweep.results import MANIFEST, load_results, scan_run_folders  # lazy: plain tables need neither

    if (root / "sweep.json").exists():
        return load_results(root)
    try:
        rows = scan_run_folders(root)
    except DataError as e:
        raise AnalysisError(f"{e}; if it is not a replaylab run's, move its folder out of {str(root)!r}") from None
    if rows.empty:
        raise AnalysisError(f"{str(root)!r} holds no sweep.json and no runs/*/{MANIFEST}; is it a sweep folder?")
    return rows


def load_csv_tables(reference_csv: str | Path, compare_csv: str | Path) -> pd.DataFrame:
    """Reference and comparison runs from two CSV files (any framework), as one results table.
    A reference file without a `strategy` column is taken as all reference runs."""
    frames = []
    for path, role in ((reference_csv, "reference"), (compare_csv, "compare")):
        path = Path(path)
        if not path.exists():
            raise AnalysisError(f"{role} CSV {str(path)!r} does not exist; check the path")
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise AnalysisError(f"{role} CSV {str(path)!r} cannot be read as CSV: {e}") from None
        df = df.rename(columns={k: v for k, v in ALIASES.items() if k in df.columns and v not in df.columns})
        if role == "reference" and "strategy" not in df.columns:
            df["strategy"] = "reference"
        if role == "compare" and "strategy" not in df.columns:
            raise AnalysisError(f"compare CSV {str(path)!r} has no strategy column; add one (finetune or midtrain)")
        for col, default in (("target_domain", "target"), ("seed", 0)):
            if col not in df.columns:
                df[col] = default
        df["run_id"] = [f"{path.stem}:{i + 2}" for i in range(len(df))]  # CSV line numbers, for messages
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Check the columns, keep finished runs, and coerce types. Raises AnalysisError on a bad table."""
    if df is None or df.empty:
        raise AnalysisError("the results table is empty; no runs have finished yet (see `replaylab results`)")
    df = df.rename(columns={k: v for k, v in ALIASES.items() if k in df.columns and v not in df.columns}).copy()
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise AnalysisError(
            f"the results table has no {missing[0]!r} column; the columns are documented in "
            f"docs/analysis.md (got: {', '.join(map(str, df.columns))})"
        )
    for col in CELL_KEYS + ["lr", "target_val_loss", "status", "run_id"]:
        if col not in df.columns:
            df[col] = np.nan
    for col in NUMERIC:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    df = _advise_as_paper(df)
    unknown = sorted(set(df["strategy"].dropna().astype(str)) - set(STRATEGIES))
    if unknown:
        raise AnalysisError(f"strategy {unknown[0]!r} is unknown; the strategy column takes {', '.join(STRATEGIES)}")
    done = df["status"].isna() | (df["status"] == "done")
    df = df[done & df["target_test_loss"].notna()].copy()
    if df.empty:
        raise AnalysisError("no finished run has a target_test_loss; wait for runs to finish or check the table")
    # Grid coordinates a strategy leaves open get the value that strategy implies: fine-tuning has
    # all target data in stage 2 (alpha = 1); rho = None means no replay.
    df.loc[df["strategy"] == "finetune", "alpha"] = df.loc[df["strategy"] == "finetune", "alpha"].fillna(1.0)
    df.loc[df["strategy"] != "reference", "rho"] = df.loc[df["strategy"] != "reference", "rho"].fillna(0.0)
    if (df["strategy"] == "midtrain").any():
        df.loc[df["strategy"] == "midtrain", "alpha"] = df.loc[df["strategy"] == "midtrain", "alpha"].fillna(1.0)
    ref = df[df["strategy"] == "reference"]
    if ref["budget"].isna().any():
        raise AnalysisError(
            f"reference run {ref.loc[ref['budget'].isna(), 'run_id'].iloc[0]!r} has no budget; "
            "reference runs need their unique target budget"
        )
    return df


def _advise_as_paper(df: pd.DataFrame) -> pd.DataFrame:
    """`advise` rows as the paper's strategies (see ADVISE)."""
    adv = df["strategy"] == ADVISE
    if not adv.any():
        return df
    runs = df[adv]
    rho = runs["rho"].fillna(0.0)
    curve = runs[rho == 0].assign(strategy="reference", rho=np.nan)
    replay_budgets = set(runs.loc[rho > 0, "budget"])
    compared = runs[(rho > 0) | runs["budget"].isin(replay_budgets)].assign(strategy="finetune", alpha=1.0)
    return pd.concat([df[~adv], curve, compared], ignore_index=True)


def _cell_label(row: pd.Series | dict) -> str:
    parts = [str(row["strategy"])]
    for key in ("rho", "alpha"):
        v = row.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and row["strategy"] != "reference":
            parts.append(f"{key}={v:g}")
    if row.get("budget") is not None and not pd.isna(row.get("budget")):
        parts.append(f"budget={row['budget']:g}")
    return " ".join(parts)


def select_cells(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Pick each cell's LR on the select half. Returns (cells, runs, notes):

    cells: one row per cell: CELL_KEYS, lr (chosen), n_lrs, n_seeds, seeds, val_loss (mean, select
      half, NaN if absent), test_loss (mean, report half), test_losses (list per seed), test_std,
      generic_test_loss (mean), label.
    runs: the chosen runs (one per cell and seed), for figures and per-seed tables.
    """
    from replaylab.sweep.results import DAMAGED, lr_key, select_lr

    notes: list[str] = []
    if df is not None and "status" in df.columns:  # damaged runs are left out: say which, and why
        for _, r in df[df["status"] == DAMAGED].iterrows():
            notes.append(f"run {r.get('run_id')} left out, its manifest is damaged: {r.get('error') or 'unreadable'}")
    df = normalize(df)
    cells, chosen_runs = [], []
    for key, g in df.groupby(CELL_KEYS, dropna=False, sort=True):
        info = dict(zip(CELL_KEYS, key))
        lrs = {float(lr): sub for lr, sub in g.groupby(lr_key(g["lr"]), sort=True)}
        label = _cell_label(info)
        if len(lrs) > 1 and g["target_val_loss"].isna().any():
            raise AnalysisError(
                f"cell {label!r} has runs at {len(lrs)} LRs but no target_val_loss for some; "
                "the LR is chosen on the select half, so give target_val_loss for every run"
            )
        best_lr = select_lr(g)  # the rule `replaylab results` marks `selected` with
        runs = lrs[best_lr]
        if runs["seed"].duplicated().any():
            dup = runs.loc[runs["seed"].duplicated(), "seed"].iloc[0]
            notes.append(
                f"cell {label!r}: several runs share seed {dup:g} at one LR; the best on the select half is kept"
            )
            runs = runs.sort_values("target_val_loss", na_position="last").drop_duplicates("seed")
        runs = runs.sort_values("seed")
        chosen_runs.append(runs)
        cells.append(
            {
                **info,
                "lr": None if best_lr == -1.0 else float(best_lr),
                "n_lrs": len(lrs),
                "n_seeds": len(runs),
                "seeds": [int(s) if not pd.isna(s) else None for s in runs["seed"]],
                "val_loss": float(runs["target_val_loss"].mean()),
                "test_loss": float(runs["target_test_loss"].mean()),
                "test_losses": [float(v) for v in runs["target_test_loss"]],
                "test_std": float(runs["target_test_loss"].std(ddof=1)) if len(runs) > 1 else float("nan"),
                "generic_test_loss": float(runs["generic_test_loss"].mean())
                if "generic_test_loss" in runs
                else float("nan"),
                "label": label,
            }
        )
    return pd.DataFrame(cells), pd.concat(chosen_runs, ignore_index=True), notes


def pick_best(cells: pd.DataFrame) -> tuple[pd.Series, str]:
    """The cell with the lowest select-half loss; without select-half losses, the report half is used and
    the returned note says so (a choice made on the reported numbers flatters them)."""
    if cells["val_loss"].notna().all():
        return cells.loc[cells["val_loss"].idxmin()], "chosen on the select half"
    return cells.loc[cells["test_loss"].idxmin()], "chosen on the REPORT half (no target_val_loss given): optimistic"
