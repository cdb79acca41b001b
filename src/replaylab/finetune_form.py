"""The fine-tuning config form, read into the one run description.

A replay fine-tuning run of a pretrained Hugging Face causal LM is a `RunConfig` (runconfig.py) with
`model.kind: hf` and a `finetune` plan: the target pool (limited, repeated for `target_epochs`) is mixed with
generic replay data at token share `1 - replay_fraction` / `replay_fraction`, and the run is stretched so the
target exposure stays fixed: total steps = target steps / (1 - replay_fraction).

`replaylab finetune`, its `--config` files, `kind: finetune_hf` experiments and run folders written before the
RunConfig form existed use a flat form (`model: smollm2-135m`, `target: {source, budget}`, `optim: {lr, ...}`,
`log_every`, ...). `read_finetune` reads it (every key kept, messages in its own words); `FinetuneConfig(**fields)`
does the same from Python. Run ids do not change: `fingerprint.finetune_view` is the inverse.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from replaylab.config import from_dict, load_yaml, to_dict
from replaylab.errors import ConfigError
from replaylab.model_kinds import HF, LoraConfig
from replaylab.runconfig import DomainConfig, RunConfig

# Old key -> RunConfig path. The nested sections map key by key (`optim.lr` -> `finetune.lr.peak`).
_KEYS = {
    "name": "name",
    "seed": "seed",
    "model": "model.source",
    "trust_remote_code": "model.trust_remote_code",
    "replay_fraction": "finetune.replay_fraction",
    "target_epochs": "finetune.target_epochs",
    "max_steps": "finetune.max_steps",
    "seq_len": "data.seq_len",
    "packing": "data.packing",
    "batch_size": "train.batch_size",
    "micro_batch_size": "train.micro_batch_size",
    "lora": "model.lora",
    "precision": "train.precision",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "device": "train.device",
    "compile": "model.compile",
    "deterministic": "train.deterministic",
    "parallel": "model.parallel",
    "threads": "train.threads",
    "checkpoint_every": "train.checkpoint_every",
    "keep_checkpoints": "train.keep_checkpoints",
    "log_every": "train.log_every",
    "progress": "train.progress",
    "save_final": "model.save_final",
    "logging": "logging",
    "meta": "meta",
    "target": "data.domains.target",
    "replay": "data.domains.replay",
    "optim.lr": "finetune.lr.peak",
    "optim.schedule": "finetune.lr.schedule",
    "optim.warmup": "finetune.lr.warmup",
    "optim.final_lr": "finetune.lr.final",
    "optim.betas": "optim.betas",
    "optim.eps": "optim.eps",
    "optim.weight_decay": "optim.weight_decay",
    "optim.grad_clip": "optim.grad_clip",
    "eval": "eval",
}
_SECTIONS = {"optim": ("lr", "schedule", "warmup", "final_lr", "betas", "eps", "weight_decay", "grad_clip")}
_RUN_KEYS = ("data", "stages", "finetune", "train")  # only the RunConfig form has these


def is_finetune_form(raw: dict) -> bool:
    """Whether a raw config mapping is in the fine-tuning form (not the RunConfig form)."""
    return not any(k in raw for k in _RUN_KEYS) and not isinstance(raw.get("model"), dict)


def _put(out: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        out = out.setdefault(p, {})
    out[last] = value


def _in_old_words(message: str) -> str:
    """A RunConfig error message with the paths named as the fine-tuning form names them."""
    for old, new in sorted(_KEYS.items(), key=lambda kv: -len(kv[1])):
        message = message.replace(f"{new}.", f"\0{old}.").replace(new, old)
    return message.replace("\0", "").replace("data.domains.", "")


def to_run_form(raw: dict, where: str = "") -> dict:
    """A fine-tuning-form mapping (whole or partial: flags) as the RunConfig mapping it stands for, key by key.
    Unknown keys are ConfigErrors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of fields, got {raw!r}")
    known = sorted({k.split(".")[0] for k in _KEYS})
    out: dict[str, Any] = {}
    for key, value in copy.deepcopy(raw).items():
        if key not in known:
            raise ConfigError(
                f"unknown config field {where + '.' if where else ''}{key}; known fields here: {', '.join(known)}"
            )
        if key in _SECTIONS and not isinstance(value, dict):
            raise ConfigError(
                f"config field {key} is {value!r}, not a section; write it as a mapping, e.g. {key}: {{lr: 3e-4}}"
            )
        if key in _SECTIONS:
            for sub, v in value.items():
                if sub not in _SECTIONS[key]:
                    raise ConfigError(
                        f"unknown config field {key}.{sub}; known fields here: {', '.join(sorted(_SECTIONS[key]))}"
                    )
                _put(out, _KEYS[f"{key}.{sub}"], v)
        elif key in ("target", "replay") and isinstance(value, dict) and value.get("epochs") is not None:
            raise ConfigError(f"unknown config field {key}.epochs; known fields here: budget, options, source")
        else:
            _put(out, _KEYS[key], value)
    return out


def merge(base: dict, over: dict) -> dict:
    """`over` laid over `base`, section by section (a None in `over` replaces)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_finetune(raw: dict, where: str = "") -> RunConfig:
    """The RunConfig of a fine-tuning-form mapping (defaults: name finetune, model smollm2-135m, target basque,
    replay generic (evaluated; trained on only when replay_fraction > 0); model_kinds.KIND_DEFAULTS has the rest).
    Unknown keys and bad values are ConfigErrors, worded in this form's keys."""
    out = merge(
        {"name": "finetune", "model": {"kind": HF}, "finetune": {}, "data": {"domains": {}}}, to_run_form(raw, where)
    )
    given = out["data"]["domains"]
    out["data"]["domains"] = {
        "target": given.get("target", {"source": "basque"}),
        "replay": given.get("replay", {"source": "generic"}),
    }
    if out["data"]["domains"]["replay"] is None:  # `replay: null`: no replay pool
        del out["data"]["domains"]["replay"]
    try:
        return from_dict(RunConfig, out, where)
    except ConfigError as e:
        raise ConfigError(_in_old_words(str(e))) from None


def read_run_config(raw: dict, where: str = "") -> RunConfig:
    """A RunConfig from either form (a run folder's config.yaml, a `--config` file, a sweep entry)."""
    return read_finetune(raw, where) if is_finetune_form(raw) else from_dict(RunConfig, raw, where)


def load_run_config(path: str | Path) -> RunConfig:
    return read_run_config(load_yaml(path))


def section_types() -> dict[str, Any]:
    """The fine-tuning form's top-level keys and what each holds: a section's config type (its fields are the
    form's), the key names of the optim section, a mapping type, or a plain value (`str`) (for checking a sweep
    axis such as `lora.r`)."""
    from replaylab.runconfig import EvalConfig, LoggingConfig

    sections = {
        "target": DomainConfig,
        "replay": DomainConfig,
        "lora": LoraConfig,
        "eval": EvalConfig,
        "logging": LoggingConfig,
        "meta": dict[str, Any],
        "optim": frozenset(_SECTIONS["optim"]),
    }
    return {k: sections.get(k, str) for k in sorted({k.split(".")[0] for k in _KEYS})}


# Axes with a dedicated key: listing them in grid/zip would silently fight with lrs/seeds.
_RESERVED = {
    "optim.lr": "list learning rates under lrs:",
    "seed": "list seeds under seeds:",
    "meta": "meta is filled by the sweep; sweep a config field instead",
}


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
            raise ConfigError(
                f"{where} axis {key!r} is not a config field ({owner} has: {', '.join(sorted(fields))}); fix the key"
            )
        tp = (
            node[part]
            if isinstance(node, dict)
            else float
            if isinstance(node, frozenset)
            else _unwrap(typing.get_type_hints(node)[part])
        )
        if typing.get_origin(tp) is dict:
            return  # a free-form mapping (e.g. target.options.glob): any sub-key is fine
        if i < len(parts) - 1 and not (dataclasses.is_dataclass(tp) or isinstance(tp, frozenset)):
            raise ConfigError(
                f"{where} axis {key!r}: {'.'.join(parts[: i + 1])} is a value, not a section; fix the key"
            )
        node = tp


def _unwrap(tp: Any) -> Any:
    """`X | None` -> X (an optional section, e.g. the replay pool, is still a section)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1
    return args[0] if optional else tp


def FinetuneConfig(**fields: Any) -> RunConfig:  # noqa: N802 - the name the fine-tuning form always had
    """A replay fine-tuning RunConfig from the fine-tuning form's fields, e.g.
    `FinetuneConfig(model="smollm2-135m", replay_fraction=0.5)` (sections as mappings or config objects)."""
    return read_finetune(to_dict(fields))
