"""An experiment: a base config, strategies with grid axes (product and zip), LRs per cell, seeds.

YAML form (see configs/tiny_sweep.yaml):

    name: tiny_sweep
    base: {...a run config without stages...}      # or a path to one, relative to this file
    overrides: [train.precision=fp32]              # dotted overrides applied to the base
    target: code                                   # defaults for every strategy's builder
    generic: generic
    target_fraction: 1/256
    seeds: [0, 1]
    strategies:
      - strategy: finetune
        grid: {multiplier: [1, 2, 4]}              # product over these axes
        zip: {epochs: [8, 16], budget_multiple: [2, 1]}   # zipped together, then crossed with grid
        lrs: [1e-3, 3e-3]                          # the tuned stage's peak LR; best is selected per cell
        args: {pretrain_lr: 3e-3}                  # fixed builder arguments

Each grid point x LR x seed becomes one run (a `RunConfig` from `replaylab.schedule`), identified by
its run id (`replaylab.fingerprint.run_id`: the content hash of its resolved config).

Replay fine-tuning of a Hugging Face model has a flat form, read into the same Experiment with one strategy,
`finetune_hf` (see configs/finetune_hf_sweep.yaml and docs/finetune.md "Sweeping R"):

    name: smollm_eu
    kind: finetune_hf
    base: ft.yaml                 # the fine-tuning form (replaylab finetune --config), inline or a path
    overrides: [threads=1]        # optional dotted overrides applied to the base
    grid: {replay_fraction: [0, 0.5, 0.75]}   # any dotted key of that form (lora.r, target.budget, ...)
    zip: {target_epochs: [1, 2], target.budget: [16, 8]}   # optional: zipped, then crossed with grid
    lrs: [3e-4, 1e-3]             # optional optim.lr values; the best is selected per cell on the val half
    seeds: [0, 1]

Its runs share no prefixes: each starts from the pretrained model, and runs differing in R draw different
batches from step 0.
"""

from __future__ import annotations

import inspect
import itertools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replaylab.config import apply_overrides, from_dict, load_yaml, parse_number
from replaylab.errors import ConfigError
from replaylab.fingerprint import run_id
from replaylab.runconfig import RunConfig

# An experiment is planned in memory, one RunConfig per run: a grid far beyond what any sweep trains (a typo'd
# axis, a generated list) would hang `plan` and `sweep` instead of being refused.
MAX_RUNS = 100_000


@dataclass
class StrategySpec:
    strategy: str
    grid: dict[str, list[Any]] = field(default_factory=dict)
    zip: dict[str, list[Any]] = field(default_factory=dict)
    lrs: list[float] | None = None
    seeds: list[int] | None = None  # None = the experiment's seeds
    args: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        from replaylab.schedule import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy {self.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}")
        lengths = {k: len(v) for k, v in self.zip.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"strategy {self.strategy!r}: zip axes must have equal lengths, got {lengths}")
        for k, v in {**self.grid, **self.zip}.items():
            if not v:
                raise ConfigError(f"strategy {self.strategy!r}: grid axis {k!r} is empty; give at least one value")
        both = set(self.grid) & set(self.zip) | (set(self.grid) | set(self.zip)) & set(self.args)
        if both:
            raise ConfigError(f"strategy {self.strategy!r}: {sorted(both)[0]!r} is given twice (grid, zip or args)")
        if "lr" in self.grid or "lr" in self.zip:
            raise ConfigError(f"strategy {self.strategy!r}: list learning rates under lrs:, not as a grid axis")
        if self.lrs is not None and not self.lrs:
            raise ConfigError(
                f"strategy {self.strategy!r}: lrs is empty; list at least one learning rate or leave lrs out"
            )
        if self.strategy == HF_KIND:  # its axes are keys of the fine-tuning form
            from replaylab.finetune_form import check_axis

            for where, axes in (("grid", self.grid), ("zip", self.zip)):
                for key in axes:
                    check_axis(key, where)

    def num_runs(self, default_seeds: list[int]) -> int:
        """Runs this strategy plans before duplicates are merged: grid product x zip length x LRs x seeds."""
        cells = math.prod(len(v) for v in self.grid.values()) * (len(next(iter(self.zip.values()))) if self.zip else 1)
        return cells * len(self.lrs or [None]) * len(self.seeds or default_seeds)


@dataclass
class Experiment:
    name: str
    base: Any  # a run-config mapping (without stages) or a path to one
    strategies: list[StrategySpec]
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: list[str] = field(default_factory=list)
    target: str | None = None
    generic: str = "generic"
    target_fraction: Any = 1 / 1024  # a number or "a/b"
    prefix_granularity: int = 1  # branch points at multiples of this many steps (1 = exactly where runs diverge)
    shared_prefixes: bool = True
    kind: str | None = None  # finetune_hf: the flat form of replay fine-tuning (see the module docstring)

    def validate(self) -> None:
        if not self.strategies:
            raise ConfigError("experiment has no strategies; list at least one under strategies:")
        if not self.seeds:
            raise ConfigError("experiment seeds is empty; give at least one seed, e.g. seeds: [0]")
        num_runs = sum(spec.num_runs(self.seeds) for spec in self.strategies)
        if num_runs > MAX_RUNS:
            raise ConfigError(
                f"experiment {self.name!r} plans {num_runs:,} runs, above the {MAX_RUNS:,} replaylab "
                "plans at once; shorten its grid, zip, lrs or seeds lists (or split it into experiments)"
            )


@dataclass
class PlannedRun:
    run_id: str
    config: RunConfig
    coords: dict[str, Any]  # strategy, grid coordinates, lr, seed


def _number(value: Any, where: str) -> Any:
    """A number from YAML through `parse_number` ("1/1024", "3e-4": a string in YAML 1.1): a zero
    denominator, nan or text is an error naming the value. A YAML number is kept as written (8 stays
    an int): the resolved config, and so the run id, must not change."""
    number = parse_number(value, where)
    return value if isinstance(value, (int, float)) else number


def _numbers(builder: Any, args: dict[str, Any], where: str) -> dict[str, Any]:
    """The builder's float arguments read with `_number`; None and other arguments pass as given."""
    hints = typing.get_type_hints(builder)

    def is_float(name: str) -> bool:
        tp = hints.get(name)
        return tp is float or float in typing.get_args(tp)

    return {k: _number(v, f"{where} {k}") if v is not None and is_float(k) else v for k, v in args.items()}


HF_KIND = "finetune_hf"
_HF_KEYS = ("name", "kind", "base", "overrides", "grid", "zip", "lrs", "seeds")


def _hf_form(raw: dict) -> dict:
    """A `kind: finetune_hf` experiment as an Experiment mapping: one finetune_hf strategy, no shared prefixes."""
    unknown = sorted(set(raw) - set(_HF_KEYS), key=str)
    if unknown:
        raise ConfigError(
            f"unknown config field experiment.{unknown[0]}; known fields here: {', '.join(sorted(_HF_KEYS))}"
        )
    spec = {"strategy": HF_KIND, **{k: raw[k] for k in ("grid", "zip", "lrs") if k in raw}}
    return {
        **{k: raw[k] for k in ("name", "kind", "base", "overrides", "seeds") if k in raw},
        "strategies": [spec],
        "shared_prefixes": False,
    }


def load_experiment(path: str | Path) -> tuple[Experiment, dict]:
    """The experiment and its raw base config (overrides applied, paths resolved)."""
    path = Path(path)
    raw = load_yaml(path)
    kind = raw.get("kind")
    if kind not in (None, HF_KIND):
        raise ConfigError(
            f"experiment kind {kind!r} is unknown; use kind: {HF_KIND}, or leave kind out for a "
            "schedule experiment (strategies:)"
        )
    if kind == HF_KIND:
        raw = _hf_form(raw)
    exp = from_dict(Experiment, raw, "experiment") if raw else from_dict(Experiment, {}, "experiment")
    base = exp.base
    if isinstance(base, str):
        base = load_yaml((path.parent / base) if not Path(base).is_absolute() else base)
    if not isinstance(base, dict):
        raise ConfigError("experiment base must be a run-config mapping or the path to one")
    base = apply_overrides(base, exp.overrides)
    return exp, base


def grid_cells(grid: dict[str, list[Any]], zipped: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The product over `grid`'s axes, each crossed with the zipped axes taken together (one cell each)."""
    keys = list(grid)
    product = [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]
    n = len(next(iter(zipped.values()))) if zipped else 1
    rows = [{k: v[i] for k, v in zipped.items()} for i in range(n)]
    return [{**g, **z} for g in product for z in rows]


def expand(exp: Experiment, base: dict) -> list[PlannedRun]:
    """Every run of the experiment, in a stable order; identical configs appear once."""
    from replaylab.schedule import STRATEGIES

    runs: dict[str, PlannedRun] = {}
    defaults = {
        "target": exp.target,
        "generic": exp.generic,
        "target_fraction": _number(exp.target_fraction, "experiment target_fraction"),
    }
    for spec in exp.strategies:
        builder = STRATEGIES[spec.strategy]
        takes = inspect.signature(builder).parameters
        shared = {k: v for k, v in defaults.items() if k in takes}  # finetune_hf names its own pools
        axis_values = getattr(builder, "axis_values", None)  # coordinates as the config holds them
        for cell in grid_cells(spec.grid, spec.zip):
            args = _numbers(builder, {**spec.args, **cell}, f"strategy {spec.strategy!r}")
            for lr in spec.lrs or [None]:
                for seed in spec.seeds or exp.seeds:
                    kwargs = {**shared, **args, "seed": seed}
                    if lr is not None:
                        kwargs["lr"] = lr  # spec.lrs are floats already (parse_number via from_dict)
                    try:
                        cfg = builder(base, **kwargs)
                    except TypeError as e:
                        raise ConfigError(f"strategy {spec.strategy!r}: {e}; check the grid/args names") from None
                    except ConfigError as e:
                        at = ", ".join(f"{k}={v}" for k, v in cell.items()) or "its defaults"
                        raise ConfigError(f"strategy {spec.strategy!r} at {at}: {e}") from None
                    rid = run_id(cfg)
                    values = axis_values(cfg, cell) if axis_values else cell
                    coords = {"strategy": spec.strategy, **values, "lr": cfg.meta["lr"], "seed": seed}
                    runs.setdefault(rid, PlannedRun(rid, cfg, coords))
    return list(runs.values())


def prefix_granularity(exp: Experiment, runs: list[PlannedRun]) -> int:
    if exp.prefix_granularity < 1:
        raise ConfigError(f"prefix_granularity={exp.prefix_granularity} must be >= 1 step")
    return exp.prefix_granularity
