"""Experiments of `kind: finetune_hf`: a FinetuneConfig swept over any of its fields (replay_fraction
first of all), LRs per cell and seeds; each run calls `replaylab.hf.finetune.run_finetune`.

YAML form (see configs/finetune_hf_sweep.yaml and docs/finetune.md "Sweeping R"):

    name: smollm_eu
    kind: finetune_hf
    base: ft.yaml                 # a FinetuneConfig mapping, inline or a path relative to this file
    overrides: [threads=1]        # optional dotted overrides applied to the base
    grid: {replay_fraction: [0, 0.5, 0.75]}   # product over dotted FinetuneConfig fields (lora.r, ...)
    zip: {target_epochs: [1, 2], target.budget: [16, 8]}   # optional: zipped, then crossed with grid
    lrs: [3e-4, 1e-3]             # optional optim.lr values; the best is selected per cell on the val half
    seeds: [0, 1]

Each grid point x LR x seed is one run, identified by the content hash of its resolved FinetuneConfig.
Its `meta` carries what `replaylab results` reads before the run has a manifest (strategy, rho, the
domain names, lr) and `lr_group`: the hash of the config with optim.lr blanked, so runs differing
only in LR form one selection group.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from replaylab.config import apply_overrides, config_hash, from_dict, load_yaml, to_dict
from replaylab.errors import ConfigError
from replaylab.fingerprint import finetune_view, run_id
from replaylab.hf.config import read_finetune, section_types
from replaylab.runconfig import RunConfig
from replaylab.sweep.experiment import grid_cells

KIND = "finetune_hf"
# Axes with a dedicated key: listing them in grid/zip would silently fight with lrs/seeds.
_RESERVED = {"optim.lr": "list learning rates under lrs:", "seed": "list seeds under seeds:",
             "meta": "meta is filled by the sweep; sweep a config field instead"}


@dataclass
class HFExperiment:
    name: str
    base: Any  # a FinetuneConfig mapping or the path to one (relative to the experiment file)
    kind: str = KIND
    overrides: list[str] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    zip: dict[str, list[Any]] = field(default_factory=dict)
    lrs: list[float] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])

    def validate(self) -> None:
        if self.kind != KIND:
            raise ConfigError(f"experiment kind {self.kind!r} is unknown here; use kind: {KIND}")
        for where, axes in (("grid", self.grid), ("zip", self.zip)):
            for key, values in axes.items():
                check_axis(key, where)
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"{where} axis {key!r} is empty or not a list; give at least one value, "
                                      f"e.g. {key}: [0, 0.5]")
        both = sorted(set(self.grid) & set(self.zip))
        if both:
            raise ConfigError(f"axis {both[0]!r} is given under both grid and zip; keep it in one")
        lengths = {k: len(v) for k, v in self.zip.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"zip axes must have equal lengths, got {lengths}")
        if self.lrs is not None and not self.lrs:
            raise ConfigError("lrs is empty; list at least one optim.lr value or leave lrs out")
        if not self.seeds:
            raise ConfigError("experiment seeds is empty; give at least one seed, e.g. seeds: [0]")


@dataclass
class HFRun:
    run_id: str
    config: RunConfig
    coords: dict[str, Any]  # strategy, axis values (as resolved in the config), lr, seed


def is_hf_experiment(path: str | Path) -> bool:
    """True when the experiment YAML says `kind: finetune_hf` (schedule experiments have no kind)."""
    kind = load_yaml(path).get("kind")
    if kind not in (None, KIND):
        raise ConfigError(f"experiment kind {kind!r} is unknown; use kind: {KIND}, or leave kind out for a "
                          "schedule experiment (strategies:)")
    return kind == KIND


def check_axis(key: str, where: str = "grid") -> None:
    """Raise ConfigError unless `key` names a field of the fine-tuning form (dotted into nested sections)."""
    head = key.split(".")[0]
    for reserved, fix in _RESERVED.items():
        if key == reserved or (reserved == "meta" and head == "meta"):
            raise ConfigError(f"{where} axis {key!r} cannot be swept this way; {fix}")
    node: Any = section_types()  # the top level of the fine-tuning form: its keys and what each holds
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, (dict, frozenset)):
            fields = set(node)
        else:
            fields = {f.name for f in dataclasses.fields(node)} - {"epochs"}  # a pool's epochs are planned
        if part not in fields:
            owner = ".".join(parts[:i]) or "the fine-tuning config"
            raise ConfigError(f"{where} axis {key!r} is not a config field ({owner} has: {', '.join(sorted(fields))}); "
                              "fix the key")
        tp = node[part] if isinstance(node, dict) else float if isinstance(node, frozenset) else \
            _unwrap(typing.get_type_hints(node)[part])
        if typing.get_origin(tp) is dict:
            return  # a free-form mapping (e.g. target.options.glob): any sub-key is fine
        if i < len(parts) - 1 and not (dataclasses.is_dataclass(tp) or isinstance(tp, frozenset)):
            raise ConfigError(f"{where} axis {key!r}: {'.'.join(parts[:i + 1])} is a value, not a section; fix the key")
        node = tp


def _unwrap(tp: Any) -> Any:
    """`PoolConfig | None` -> PoolConfig (the optional replay pool is still a section)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1
    return args[0] if optional else tp


def load_hf_experiment(path: str | Path) -> tuple[HFExperiment, dict]:
    """The experiment and its raw base FinetuneConfig mapping (overrides applied, base path resolved)."""
    path = Path(path)
    exp = from_dict(HFExperiment, load_yaml(path), "experiment")
    base = exp.base
    if isinstance(base, str):
        base = load_yaml(Path(base) if Path(base).is_absolute() else path.parent / base)
    if not isinstance(base, dict):
        raise ConfigError("experiment base must be a FinetuneConfig mapping or the path to one (e.g. base: ft.yaml)")
    return exp, apply_overrides(base, exp.overrides)


def _set(raw: dict, key: str, value: Any) -> None:
    node = raw
    *parents, last = key.split(".")
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}  # e.g. replay: null in the base, swept replay.budget
        node = node[p]
    node[last] = value


def _get(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part, None)
    return list(obj) if isinstance(obj, tuple) else obj


def expand_hf(exp: HFExperiment, base: dict) -> list[HFRun]:
    """Every run of the experiment, in a stable order (cell, lr, seed); identical configs appear once."""
    runs: dict[str, HFRun] = {}
    for cell in grid_cells(exp.grid, exp.zip):
        for lr in exp.lrs or [None]:
            for seed in exp.seeds:
                raw = copy.deepcopy(base)
                for key, value in cell.items():
                    _set(raw, key, value)
                if lr is not None:
                    _set(raw, "optim.lr", lr)
                raw["seed"] = seed
                raw.pop("meta", None)
                where = ", ".join(f"{k}={v}" for k, v in cell.items()) or "the base"
                try:
                    cfg = read_finetune(raw)
                except ConfigError as e:
                    raise ConfigError(f"experiment {exp.name!r} at {where}: {e}") from None
                # The LR group: this config with its LR blanked (meta is still empty here).
                view = finetune_view(cfg)  # the form the axes are named in
                cell_raw = to_dict(view, for_hash=True)
                cell_raw["optim"]["lr"] = None
                lr = cfg.finetune.lr.peak
                cfg.meta = {**(base.get("meta") or {}), "strategy": KIND, "target_domain": "target",
                            "generic_domain": "replay", "rho": cfg.finetune.replay_fraction, "lr": lr,
                            "lr_group": config_hash(cell_raw, 12)}
                rid = run_id(cfg)
                coords = {"strategy": KIND, **{k: _get(view, k) for k in cell}, "lr": lr, "seed": seed}
                runs.setdefault(rid, HFRun(rid, cfg, coords))
    return list(runs.values())


def build_hf_plan(exp: HFExperiment, base: dict) -> tuple[list[HFRun], dict[str, Any]]:
    """Runs and the sweep.json document. No shared prefixes: every fine-tuning run starts from the
    pretrained model, and runs differing in R draw different batches from step 0."""
    runs = expand_hf(exp, base)
    entries = [{"run_id": r.run_id, "kind": KIND, "coords": r.coords, "config": to_dict(r.config),
                "branch": None, "branch_steps": []} for r in runs]
    return runs, {"name": exp.name, "kind": KIND, "prefix_granularity": None, "runs": entries}


def planned_steps(cfg: RunConfig) -> int | None:
    """Total steps when the target budget is given (None = every train sequence: that needs the
    tokenized store, which planning never builds)."""
    from replaylab.hf.packing import plan_mix

    budget, p = cfg.data.domains["target"].budget, cfg.finetune
    if budget is None:
        return None
    return plan_mix(budget=budget, target_epochs=p.target_epochs, replay_fraction=p.replay_fraction,
                    batch_size=cfg.train.batch_size, max_steps=p.max_steps).total_steps


def estimate_hf(runs: list[HFRun]) -> pd.DataFrame:
    """One row per cell (axis values) plus a total: runs (LRs x seeds), steps, tokens. FLOPs and
    GPU-hours are left unknown (NaN): they need the model's shape, which would mean loading it."""
    rows = []
    for r in runs:
        label = " ".join(f"{k}={v}" for k, v in r.coords.items() if k not in ("strategy", "lr", "seed")) or KIND
        steps = planned_steps(r.config)
        tokens = steps * r.config.train.batch_size * r.config.data.seq_len if steps is not None else math.nan
        rows.append({"cell": label, "runs": 1, "steps": math.nan if steps is None else steps,
                     "steps_trained": math.nan if steps is None else steps, "tokens": tokens, "flops": math.nan})
    df = pd.DataFrame(rows, columns=["cell", "runs", "steps", "steps_trained", "tokens", "flops"])
    # min_count=1 / skipna=False: a sum over unknown steps stays unknown instead of becoming 0
    out = df.groupby("cell", sort=False).sum(numeric_only=True, min_count=1).reset_index()
    total = df.drop(columns="cell").sum(skipna=False).to_frame().T
    total.insert(0, "cell", "total")
    out = pd.concat([out, total], ignore_index=True)
    out["steps_saved"] = 0
    out["gpu_hours"] = math.nan
    return out
