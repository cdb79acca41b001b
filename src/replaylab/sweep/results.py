"""`load_results(sweep_dir)`: one row per run (the columns analysis reads, docs/design.md).

LR selection, as the paper tunes: within each `lr_group` (runs that differ only in the tuned stage's
peak LR) the finished run with the lowest target loss on the *select* half (`target_val_loss`) gets
`selected = True`; the reported half (`target_test_loss`) is never used to choose.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from replaylab.sweep.runstore import RunStore

META_COLUMNS = ["strategy", "target_domain", "generic_domain", "rho", "alpha", "delta", "gamma", "budget",
                "budget_multiple", "target_epochs"]


def load_results(sweep_dir: str | Path) -> pd.DataFrame:
    store = RunStore(sweep_dir)
    rows = []
    for entry in store.plan()["runs"]:
        rid = entry["run_id"]
        manifest = store.manifest(rid) or {}
        meta = manifest.get("meta") or entry["config"].get("meta", {})
        row = {"run_id": rid, "status": store.status(rid)}
        row.update({k: meta.get(k) for k in META_COLUMNS})
        row.update(seed=entry["config"].get("seed"), lr=meta.get("lr"), lr_group=meta.get("lr_group"),
                   steps=manifest.get("steps_done", 0))
        final = manifest.get("final") or {}
        for role in ("target", "generic"):
            dom = meta.get(f"{role}_domain")
            for half in ("val", "test"):
                row[f"{role}_{half}_loss"] = final.get(dom, {}).get(f"{half}_loss")
        for dom, r in sorted(final.items()):
            row[f"val_loss.{dom}"] = r.get("val_loss")
            row[f"test_loss.{dom}"] = r.get("test_loss")
        if entry.get("kind") == "finetune_hf":
            # finetune_hf runs: final = {target, replay} (meta names them); also the swept axes (lora.r, ...)
            # and the realized replay token share
            row.update({k: v for k, v in entry.get("coords", {}).items() if k not in row})
            shares = manifest.get("realized_token_shares")
            row["replay_share"] = shares.get("replay", 0.0) if shares else None
        row["error"] = manifest.get("error")
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for col in ("target_val_loss", "target_test_loss", "generic_val_loss", "generic_test_loss"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["selected"] = False
    done = df[(df["status"] == "done") & df["target_val_loss"].notna()]
    if not done.empty:
        best = done.groupby(done["lr_group"].fillna(done["run_id"]))["target_val_loss"].idxmin()
        df.loc[best.values, "selected"] = True
    return df
