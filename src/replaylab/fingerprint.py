"""A run's fingerprint: what names it, what it may change and stay the same run, which runs can share a
training prefix, and which runs differ only in their learning rate.

- `run_id(config)`: the content hash of the config as planned (every field, bookkeeping included). A
  sweep's run folder is `SWEEP/runs/<run_id>/`; a manifest's `config_hash` is that of the config the run
  trained (the engine's is resolved: vocab size filled in, a carrier's branch steps).
- `run_identity(config)`: the same hash with the `BOOKKEEPING` fields removed. Two configs with one
  identity are one run: a resumed run (or a carrier re-planned with other branch steps) may change how
  often it checkpoints and logs.
- `prefix_settings(config)` / `prefix_signature(config)`: everything outside the stage list that decides
  a run's steps and what it records over them. Runs sharing a prefix must agree on it (the planner groups
  by the signature, `replaylab.sweep.prefix`; the engine refuses an `init_from` that differs,
  `replaylab.train.checkpoint.check_prefix`); the stages are then compared step by step.
- `lr_cell(config)`: runs that differ only in the tuned LR and the seed: the unit of LR selection
  (`replaylab.sweep.results.select_lr`).
- `mixture_id(...)`: a `replaylab.ReplayMixture`'s identity (its saved positions are refused by another one).
- `lr_group(raw)`: the `meta.lr_group` the strategy builders write. It is part of every run id, so it
  keeps its original rule (see its docstring) and LR selection does not use it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from replaylab.config import config_hash, to_dict
from replaylab.runconfig import lr_span_stages

# Fields that do not change what a run computes: where and how often it checkpoints, logs and shows
# progress. Run configs hold them under `train`, fine-tuning configs (replaylab.hf) at the top level.
BOOKKEEPING = ("checkpoint_every", "keep_checkpoints", "checkpoint_steps", "log_every", "progress")

# Outside the stage list, what does not decide the steps of a shared prefix: names and records, and how
# the run is logged. `eval` does, except `eval.every`: over the shared prefix a branched run's
# metrics.jsonl is the carrier's records (train.trainer._prefix_records), re-picked at the child's own
# log and eval steps. So the settings that decide what an eval record *says* (eval.max_sequences,
# batch_size, domains) must agree, or the child would show losses it never computes alone; those that
# decide only *when* records are written (log_every, eval.every) may differ, like the bookkeeping. The
# records are re-picked, not recomputed: a step where the child evaluates and the carrier did not has none.
# (sweep.prefix used to keep eval.every, train.checkpoint.check_prefix ignored all of eval.)
_PREFIX_FREE = ("name", "meta", "logging", "stages")


def finetune_view(config: Any) -> dict:
    """What a replay fine-tuning run (a RunConfig with a `finetune` plan) hashes as: the mapping its config had
    before it was a RunConfig (finetune_form.py reads that form), key for key and in that order, so the ids of
    existing run folders, sweeps, LR groups and cells stay. Settings that form could not express are added
    under `extra` only when they differ from their defaults (a run that sets them never had an old id)."""
    m, d, p, o, t, e = config.model, config.data, config.finetune, config.optim, config.train, config.eval

    def pool(dom: Any) -> dict[str, Any] | None:
        return None if dom is None else {"source": dom.source, "budget": dom.budget, "options": to_dict(dom.options)}

    view = {
        "name": config.name,
        "seed": config.seed,
        "model": m.source,
        "trust_remote_code": m.trust_remote_code,
        "target": pool(d.domains["target"]),
        "replay": pool(d.domains.get("replay")),
        "replay_fraction": p.replay_fraction,
        "target_epochs": p.target_epochs,
        "seq_len": d.seq_len,
        "batch_size": t.batch_size,
        "micro_batch_size": t.micro_batch_size,
        "max_steps": p.max_steps,
        "lora": to_dict(m.lora),
        "optim": {
            "lr": p.lr.peak,
            "schedule": p.lr.schedule,
            "warmup": p.lr.warmup,
            "final_lr": p.lr.final,
            "betas": list(o.betas),
            "eps": o.eps,
            "weight_decay": o.weight_decay,
            "grad_clip": o.grad_clip,
        },
        "eval": {
            "every": e.every,
            "max_sequences": e.max_sequences,
            "batch_size": e.batch_size,
            "initial": e.initial,
            "mc_tasks": list(e.mc_tasks),
            "mc_max_items": e.mc_max_items,
            "lm_eval_tasks": list(e.lm_eval_tasks),
            "lm_eval_include": e.lm_eval_include,
        },
        "precision": t.precision,
        "gradient_checkpointing": m.gradient_checkpointing,
        "device": t.device,
        "compile": m.compile,
        "deterministic": t.deterministic,
        "parallel": m.parallel,
        "threads": t.threads,
        "checkpoint_every": t.checkpoint_every,
        "keep_checkpoints": t.keep_checkpoints,
        "log_every": t.log_every,
        "progress": t.progress,
        "save_final": m.save_final,
        "logging": to_dict(config.logging),
        "meta": to_dict(config.meta),
    }
    if view["compile"] == "auto":  # added to that form later: left out at their defaults (config.added_field)
        del view["compile"]
    if view["deterministic"] is True:
        del view["deterministic"]
    extra = {
        f"{section}.{name}": value
        for section, obj, names in _FINETUNE_EXTRA
        for name in names
        if (value := getattr(getattr(config, obj), name)) != _default(obj, name)
    }
    for name, dom in d.domains.items():
        if dom.epochs is not None:
            extra[f"data.domains.{name}.epochs"] = dom.epochs
    if p.lr.decay != _default("finetune", "decay"):
        extra["finetune.lr.decay"] = p.lr.decay
    if extra:
        view["extra"] = to_dict(extra)
    return view


# RunConfig settings a fine-tuning config of the old form could not hold: (section, attribute, fields).
_FINETUNE_EXTRA = (
    ("optim", "optim", ("decay_norms", "decay_embeddings", "implementation")),
    ("train", "train", ("mixture_block", "compile", "checkpoint_steps")),
    ("data", "data", ("tokenizer", "budget_seed", "val_sequences")),
    ("eval", "eval", ("domains",)),
)


def _default(section: str, name: str) -> Any:
    from replaylab import runconfig

    if section == "finetune":
        return getattr(runconfig.FinetunePlanConfig().lr, name)
    cls = {
        "optim": runconfig.OptimConfig,
        "train": runconfig.TrainConfig,
        "data": runconfig.DataConfig,
        "eval": runconfig.EvalConfig,
    }[section]
    return getattr(cls(), name)


def _hashed(config: Any) -> Any:
    """What a config hashes as: itself, or a planned fine-tuning run's `finetune_view`. A mapping in the RunConfig
    form (a sweep.json entry) is read first, so it hashes as its config does (`added_field`s at their defaults are
    left out of an object's hash, not out of its mapping); one in the fine-tuning form hashes as it is."""
    if isinstance(config, dict):
        from replaylab.config import from_dict
        from replaylab.errors import ConfigError
        from replaylab.finetune_form import is_finetune_form
        from replaylab.runconfig import RunConfig

        if is_finetune_form(config):
            return config
        try:
            config = from_dict(RunConfig, config)
        except ConfigError:
            return config
    return finetune_view(config) if getattr(config, "finetune", None) is not None else config


def run_id(config: Any) -> str:
    """A run's id: the content hash of its config as planned (see `config_hash` on key order)."""
    return config_hash(_hashed(config))


def _without_bookkeeping(config: Any) -> dict:
    raw = to_dict(_hashed(config), for_hash=True)  # a new nest of dicts and lists, also from a dict
    for section in (raw, raw.get("train")):
        if isinstance(section, dict):
            for f in BOOKKEEPING:
                section.pop(f, None)
    return raw


def run_identity(config: Any) -> str:
    """The content hash of a run config (engine or fine-tuning) with the bookkeeping fields removed:
    equal identities = the same run."""
    return config_hash(_without_bookkeeping(config))


def prefix_settings(config: Any) -> dict:
    """Everything outside the stage list that decides a run's training and its records up to any step,
    by section. Left out: `_PREFIX_FREE`, the bookkeeping, `eval.every`, `train.total_steps` (it enters
    through the per-step LR and stage layout) and each domain's budget and epochs (they matter only from
    the first step that draws the domain: compared per step). Added: the order of the domains (the
    columns of the per-step counts) and stage 1's init."""
    raw = _without_bookkeeping(config)
    for key in _PREFIX_FREE:
        raw.pop(key, None)
    raw["train"].pop("total_steps", None)
    raw["eval"].pop("every", None)
    for dom in raw["data"]["domains"].values():
        dom.pop("budget", None)
        dom.pop("epochs", None)
    raw["domain_order"] = list(config.data.domains)
    raw["init"] = config.stages[0].init
    return raw


def prefix_signature(config: Any) -> str:
    """`prefix_settings` as one canonical string: runs can share a prefix only when theirs are equal."""
    return json.dumps(prefix_settings(config), sort_keys=True, default=str)


def _lr_curves(stages: list[dict]) -> list[list[int]]:
    """Stage indices per LR curve: a stage and the `continue` stages after it (train.lr's spans)."""
    return lr_span_stages([(stage.get("lr") or {}).get("schedule") for stage in stages])


def _tuned_curve(stages: list[dict], lr: Any) -> list[int]:
    """The stages of the tuned LR curve: the last curve whose first stage's peak is `meta.lr` (the
    builders tune the run's last curve; a fine-tuning pre-training at the same peak is not it)."""
    tuned = [c for c in _lr_curves(stages) if lr is not None and (stages[c[0]].get("lr") or {}).get("peak") == lr]
    return tuned[-1] if tuned else []


def lr_cell(config: Any) -> str:
    """The hash of a run config (engine or fine-tuning) with the tuned LR and the seed blanked, and the
    name (it spells the LR) and the bookkeeping left out: runs that differ only in LR and seed share it.
    The tuned LR is `meta.lr`: every stage of its curve (a mid-training `continue` stage copies the
    peak), or `optim.lr` of a fine-tuning config. `meta` counts without its `lr` and `lr_group`."""
    raw = _without_bookkeeping(config)  # a carrier's planned config has its branch steps as checkpoint_steps
    meta = raw.pop("meta", None) or {}
    raw.pop("name", None)
    raw["seed"] = None
    if "stages" in raw:
        for i in _tuned_curve(raw["stages"], meta.get("lr")):
            raw["stages"][i]["lr"]["peak"] = None
    elif isinstance(raw.get("optim"), dict) and "lr" in raw["optim"]:
        raw["optim"]["lr"] = None
    raw["meta"] = {k: v for k, v in meta.items() if k not in ("lr", "lr_group")}
    return config_hash(raw, 12)


def lr_group(raw: Any) -> str:
    """`meta.lr_group` of a strategy builder's config (a raw mapping, key order as built): its hash with
    `name` and `meta` left out and the peak of the tuned curve's first stage blanked. A mid-training
    run's `continue` stage keeps its copy of the peak, so mid-training runs at two LRs get two groups:
    the field is part of every run id, so it keeps this rule; `lr_cell` is the corrected cell.
    A planned fine-tuning run (a RunConfig with a `finetune` plan, its meta still empty) keeps the rule it was
    first recorded with: its `finetune_view` with `optim.lr` blanked (name and the empty meta included)."""
    if getattr(raw, "finetune", None) is not None:
        cell = to_dict(finetune_view(raw), for_hash=True)
        cell["optim"]["lr"] = None
        return config_hash(cell, 12)
    cell = copy.deepcopy(raw)
    meta = cell.pop("meta", None) or {}
    cell.pop("name", None)
    curve = _tuned_curve(cell["stages"], meta.get("lr"))
    if curve:
        cell["stages"][curve[0]]["lr"]["peak"] = None
    return config_hash(cell, 12)


def mixture_id(
    *, store_identities: dict[str, Any], plan: dict[str, Any], seed: int, seq_len: int, batch_size: int
) -> str:
    """A `replaylab.ReplayMixture`'s identity: its stores' identities, its plan (hf.packing.MixPlan as a
    mapping), seed, seq_len and batch_size. The mixture's saved position carries it, so a state saved by
    another mixture is refused. (Its own rule, sorted keys, as first recorded: saved states keep loading.)"""
    blob = json.dumps(
        {"stores": store_identities, "plan": plan, "seed": seed, "seq_len": seq_len, "batch_size": batch_size},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
