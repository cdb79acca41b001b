"""A sweep's results table (one row per run, the columns of docs/design.md) and the LR selection that
`replaylab results` and `replaylab analyze` share.

`run_row` turns a run's manifest into its row: `load_results` calls it for every run of sweep.json, and
`replaylab.analysis.tables` for bare run folders (no sweep.json). Manifests are read by
`replaylab.train.manifest.read_manifest` alone; a run whose manifest cannot be read gets status
`damaged` and, in `error`, the file and why (never `pending`).

LR selection (`select_lr`), as the paper tunes: within a cell (runs that differ only in the tuned LR
and the seed) the LR with the lowest mean target loss over seeds on the *select* half
(`target_val_loss`) is chosen; an LR whose seeds did not all finish only wins when no LR finished them
all. The report half (`target_test_loss`) is never used to choose. In this table a cell is
`replaylab.fingerprint.lr_cell` of the run's planned config, and `selected = True` marks the cell's
runs at the chosen LR (one per seed); analysis groups its cells by their grid columns instead
(`replaylab.analysis.tables.CELL_KEYS`), with the same rule.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from replaylab.errors import DataError
from replaylab.fingerprint import lr_cell
from replaylab.sweep.runstore import RunStore
from replaylab.train.manifest import DAMAGED, MANIFEST, read_manifest

META_COLUMNS = [
    "strategy",
    "target_domain",
    "generic_domain",
    "rho",
    "alpha",
    "delta",
    "gamma",
    "budget",
    "budget_multiple",
    "target_epochs",
]
LOSS_COLUMNS = ["target_val_loss", "target_test_loss", "generic_val_loss", "generic_test_loss"]
_NO_LR = -1.0  # the LR key of runs that record none: they count as one LR


def run_row(run_id: str, manifest: dict, *, entry: dict | None = None, status: str | None = None) -> dict:
    """One run's table row from its manifest (empty while the run has not started) and, in a sweep, its
    sweep.json entry (the planned config: meta and seed before the manifest exists). `status`: the run
    store's view (leases); default the manifest's."""
    config = (entry or {}).get("config") or {}
    meta = manifest.get("meta") or config.get("meta") or {}
    row = {"run_id": run_id, "status": status or manifest.get("status")}
    row.update({k: meta.get(k) for k in META_COLUMNS})
    row.update(
        seed=config.get("seed", manifest.get("seed")),
        lr=meta.get("lr"),
        lr_group=meta.get("lr_group"),
        steps=manifest.get("steps_done", 0),
    )
    final = manifest.get("final") or {}
    for role in ("target", "generic"):
        dom = meta.get(f"{role}_domain")
        for half in ("val", "test"):
            row[f"{role}_{half}_loss"] = final.get(dom, {}).get(f"{half}_loss")
    for dom, r in sorted(final.items()):
        row[f"val_loss.{dom}"] = r.get("val_loss")
        row[f"test_loss.{dom}"] = r.get("test_loss")
    if (entry or {}).get("kind") == "finetune_hf":
        # finetune_hf runs: final = {target, replay} (meta names them); also the swept axes (lora.r, ...)
        # and the realized replay token share
        row.update({k: v for k, v in entry.get("coords", {}).items() if k not in row})
        shares = manifest.get("realized_token_shares")
        row["replay_share"] = shares.get("replay", 0.0) if shares else None
    row["error"] = manifest.get("error")
    return row


def lr_key(lrs: pd.Series) -> pd.Series:
    """The LR column as selection keys: runs without an LR share one key."""
    return pd.to_numeric(lrs, errors="coerce").fillna(_NO_LR)


def select_lr(runs: pd.DataFrame) -> float:
    """The LR key (see `lr_key`) chosen among one cell's finished runs (columns lr, seed,
    target_val_loss): the lowest mean target_val_loss over seeds, preferring LRs that finished every
    seed any LR finished. Ties go to the smaller LR."""
    per_lr = {lr: sub for lr, sub in runs.groupby(lr_key(runs["lr"]), sort=True)}
    full = max(sub["seed"].nunique() for sub in per_lr.values())
    score = {lr: (sub["seed"].nunique() < full, sub["target_val_loss"].mean()) for lr, sub in per_lr.items()}
    return min(score, key=lambda lr: score[lr])


def _stored_row(store: RunStore, entry: dict) -> dict:
    try:
        manifest = store.manifest(entry["run_id"]) or {}
    except DataError as e:  # its planned coordinates still show which cell lost a run
        error = f"{e}; in a sweep, `replaylab sweep --retry` moves the damaged attempt aside and trains the run again"
        return {**run_row(entry["run_id"], {}, entry=entry, status=DAMAGED), "error": error}
    return run_row(entry["run_id"], manifest, entry=entry, status=store.status(entry["run_id"]))


def load_results(sweep_dir: str | Path) -> pd.DataFrame:
    store = RunStore(sweep_dir)
    entries = store.plan()["runs"]
    df = pd.DataFrame([_stored_row(store, e) for e in entries])
    if df.empty:
        return df
    for col in LOSS_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    cells = pd.Series([lr_cell(e.get("config") or {}) for e in entries], index=df.index)
    df["selected"] = False
    done = df[(df["status"] == "done") & df["target_val_loss"].notna()]
    for _, runs in done.groupby(cells[done.index], sort=False):
        best = runs.index[lr_key(runs["lr"]) == select_lr(runs)]
        df.loc[best, "selected"] = True
    return df


def scan_run_folders(root: str | Path) -> pd.DataFrame:
    """Rows of the run folders under `root` (runs/*/ or */), for run folders copied without their sweep.json;
    empty when there are none. Without a plan naming the runs, a manifest that cannot be read may not be a
    run's at all, so it is a DataError naming the file rather than a damaged row."""
    root = Path(root)
    paths = sorted((root / "runs").glob(f"*/{MANIFEST}")) or sorted(root.glob(f"*/{MANIFEST}"))
    return pd.DataFrame([run_row(p.parent.name, read_manifest(p.parent) or {}) for p in paths])
