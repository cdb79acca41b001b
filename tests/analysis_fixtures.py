"""Sweep folders with known truth for the analysis tests: real manifest.json / sweep.json /
metrics.jsonl / config.yaml files in the documented format, losses drawn from a known law.

True law: L(x) = C + A / x^B per domain. A cell whose method is "worth" m times its budget gets loss
L(m * budget) + an LR penalty + seed noise, so every multiplier has a known true value.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TRUTH = {"code": (3.0, 0.5, 2.0), "math": (4.0, 0.4, 1.5)}  # A, B, C
REF_BUDGETS = (16, 32, 64, 128, 256)
LRS = (1e-3, 3e-3)
LR_PENALTY = {1e-3: 0.05, 3e-3: 0.0}  # 3e-3 is always the better LR
FT_WORTH = {0.0: 1.0, 0.5: 1.5, 0.75: 1.3}  # fine-tuning: effective-data factor per rho
MT_WORTH = {(0.0, 1.0): 1.0, (0.5, 1.0): 1.8, (0.75, 1.0): 1.4, (0.0, 0.5): 1.2, (0.5, 0.5): 2.5, (0.75, 0.5): 1.6}
BUDGET = 64


def true_loss(domain: str, x: float) -> float:
    A, B, C = TRUTH[domain]
    return C + A / x**B


def write_run(
    root: Path,
    run_id: str,
    *,
    meta: dict,
    seed: int,
    val: float,
    test: float,
    status: str = "done",
    generic: float = 4.0,
    total_steps: int = 40,
    boundary: int | None = None,
) -> dict:
    run = root / "runs" / run_id
    run.mkdir(parents=True, exist_ok=True)
    tgt, gen = meta["target_domain"], meta["generic_domain"]
    manifest = {
        "config_hash": run_id,
        "name": run_id,
        "seed": seed,
        "status": status,
        "meta": meta,
        "final": {
            tgt: {"val_loss": val, "test_loss": test, "val_bpb": val / 2, "test_bpb": test / 2},
            gen: {"val_loss": generic, "test_loss": generic, "val_bpb": 2.0, "test_bpb": 2.0},
        },
        "steps_done": total_steps,
        "error": None,
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    boundary = boundary or total_steps // 2
    stages = [
        {"name": "stage1", "steps": boundary, "mixture": {gen: 1.0}},
        {"name": "stage2", "steps": total_steps - boundary, "mixture": {tgt: 0.5, gen: 0.5}},
    ]
    config = {
        "name": run_id,
        "seed": seed,
        "train": {"total_steps": total_steps},
        "data": {"domains": {gen: {"source": "generic"}, tgt: {"source": tgt}}},
        "stages": stages,
        "meta": meta,
    }
    import yaml

    (run / "config.yaml").write_text(yaml.safe_dump(config))
    lines = []
    for step in range(0, total_steps + 1, 4):
        lines.append(
            {"type": "train", "step": step, "loss": 8.0 - 4.0 * step / total_steps, "lr": 1e-3, "tokens": step}
        )
    for step, stage in ((boundary, "stage1"), (total_steps, "stage2")):
        for dom, v in ((tgt, test + (1.0 if stage == "stage1" else 0.0)), (gen, generic)):
            lines.append({"type": "eval", "step": step, "stage": stage, "domain": dom, "val_loss": v, "test_loss": v})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return {"run_id": run_id, "config": {"seed": seed, "meta": meta}}


def make_sweep(
    root: Path,
    *,
    seeds=(0, 1, 2),
    noise: float = 0.01,
    domains=("code", "math"),
    rng_seed: int = 0,
    with_plan: bool = True,
) -> Path:
    """A sweep folder with reference, fine-tuning and mid-training runs at two LRs for each domain."""
    rng = np.random.default_rng(rng_seed)
    entries = []
    n = 0

    def add(meta: dict, worth_x: float, seed: int, lr: float, status: str = "done"):
        nonlocal n
        n += 1
        base = true_loss(meta["target_domain"], worth_x) + LR_PENALTY[lr]
        val, test = base + rng.normal(0, noise), base + rng.normal(0, noise)
        m = {**meta, "lr": lr, "lr_group": f"g{n // len(LRS)}"}
        entries.append(write_run(root, f"run{n:04d}", meta=m, seed=seed, val=val, test=test, status=status))

    for dom in domains:
        common = {"target_domain": dom, "generic_domain": "generic", "gamma": 0.01, "target_epochs": 8}
        for seed in seeds:
            for lr in LRS:
                for b in REF_BUDGETS:
                    add({**common, "strategy": "reference", "rho": None, "alpha": None, "budget": b}, b, seed, lr)
                for rho, w in FT_WORTH.items():
                    add(
                        {**common, "strategy": "finetune", "rho": rho, "alpha": 1.0, "budget": BUDGET},
                        BUDGET * w,
                        seed,
                        lr,
                    )
                for (rho, alpha), w in MT_WORTH.items():
                    add(
                        {**common, "strategy": "midtrain", "rho": rho, "alpha": alpha, "budget": BUDGET},
                        BUDGET * w,
                        seed,
                        lr,
                    )
    # A diverged run must be ignored, never chosen.
    entries.append(
        write_run(
            root,
            "diverged0",
            meta={
                "strategy": "finetune",
                "target_domain": domains[0],
                "generic_domain": "generic",
                "rho": 0.5,
                "alpha": 1.0,
                "budget": BUDGET,
                "target_epochs": 8,
                "lr": 1e-2,
            },
            seed=0,
            val=0.1,
            test=0.1,
            status="diverged",
        )
    )
    if with_plan:
        (root / "sweep.json").write_text(json.dumps({"runs": entries}))
    return root
