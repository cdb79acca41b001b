"""`replaylab finetune [--config YAML] [flags] [KEY=VALUE | --set KEY=VALUE ...]`: fine-tune a pretrained
Hugging Face causal LM on target data with generic replay."""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path

from replaylab.config import add_override_arguments, apply_overrides, from_dict, load_yaml
from replaylab.errors import ConfigError
from replaylab.runconfig import Precision

HELP = "fine-tune a pretrained Hugging Face causal LM on target data, replaying generic data"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        help="a fine-tuning config YAML file (or a RunConfig with model.kind: hf); the flags below override it",
    )
    p.add_argument("--model", help="a model folder, a hub id, or smollm2-135m (built in, offline; the default)")
    p.add_argument(
        "--target",
        help="target data: a recipe name (e.g. basque), a .jsonl/.txt/.parquet file or folder, or hf:org/name",
    )
    p.add_argument(
        "--target-format",
        choices=("text", "prompt_completion", "messages"),
        help="target records: plain text (default), prompt/completion pairs or chat messages (the model's chat "
        "template); the latter two train on completions / assistant turns only, whole examples per row",
    )
    p.add_argument(
        "--replay", help="generic replay data, same forms as --target (default: generic); 'none' = no replay pool"
    )
    p.add_argument(
        "--replay-fraction",
        "-R",
        type=float,
        help="replay token share R in [0, 1); total steps = target steps / (1 - R)",
    )
    p.add_argument("--budget", type=int, help="unique target sequences (default: every training sequence of --target)")
    p.add_argument("--epochs", type=float, help="passes over the target budget (default 1)")
    p.add_argument(
        "--max-steps", type=int, help="hard cap on total steps (a smoke test: breaks the fixed target exposure)"
    )
    p.add_argument("--lr", type=float, help="peak learning rate of the fresh AdamW (default 3e-4)")
    p.add_argument("--seq-len", type=int, help="tokens per packed sequence (default 256)")
    p.add_argument("--batch-size", type=int, help="sequences per optimizer step (default 8)")
    p.add_argument("--micro-batch-size", type=int, help="sequences per forward pass (gradient accumulation)")
    p.add_argument(
        "--lora", action="store_true", default=None, help="train LoRA adapters (peft) instead of all weights"
    )
    p.add_argument("--lora-r", type=int, help="LoRA rank (default 8)")
    p.add_argument(
        "--gradient-checkpointing", action="store_true", default=None, help="recompute activations to save memory"
    )
    p.add_argument("--precision", choices=typing.get_args(Precision), help="bf16 autocast where supported (auto)")
    p.add_argument(
        "--compile",
        choices=("auto", "regional", "off"),
        help="auto: the whole model and its loss on a GPU, eager on a CPU (default); regional: each "
        "decoder layer (a compile of seconds, not minutes); off: eager",
    )
    p.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bit-reproducible runs, resume included (default); --no-deterministic lets CUDA use the "
        "fused attention kernels: faster, not bit-reproducible",
    )
    p.add_argument(
        "--fsdp",
        action="store_const",
        const="fsdp",
        dest="parallel",
        help="under torchrun, shard the model, gradients and AdamW state over the processes (FSDP2) "
        "instead of a full copy per process (DDP): for models that do not fit one GPU",
    )
    p.add_argument("--trust-remote-code", action="store_true", default=None, help="allow a hub model's own Python code")
    p.add_argument("--mc-task", action="append", help="a multiple-choice .jsonl scored by log-likelihood (repeatable)")
    p.add_argument(
        "--lm-eval-task",
        action="append",
        metavar="NAME",
        help="an lm-evaluation-harness task run at the end, e.g. replaylab_basque_vocab (repeatable; "
        "needs replaylab[eval])",
    )
    p.add_argument(
        "--lm-eval-include", metavar="DIR", help="a folder of lm-eval task YAML files (e.g. over local jsonl)"
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch threads (default: leave as is)")
    p.add_argument(
        "--out",
        help="run folder (default: runs/<name>-<run id>: runs/finetune-<run id> unless the config "
        "names the run, as replaylab train)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint, with the config it holds (as "
        "replaylab train --resume RUN_DIR); `--resume --out RUN_DIR` with the run's flags works too",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a replaylab run folder at --out that holds another config (never a folder it did not make)",
    )
    add_override_arguments(p, "optim.warmup=0.05")


def _section(raw: dict, key: str, default: dict | None = None) -> dict:
    """raw[key] as the mapping the flags add to (made when missing); a config that gives it as a plain
    value (e.g. `target: basque`) is a ConfigError."""
    value = raw.get(key)
    if value is None:
        value = dict(default or {})
    if not isinstance(value, dict):
        raise ConfigError(
            f"config field {key} is {value!r}, not a section; write it as a mapping, e.g. "
            f"{key}: {{{'source: basque' if key in ('target', 'replay') else '...'}}}"
        )
    raw[key] = value
    return value


# The flags that describe the run (not where it goes or how it is launched): `--resume RUN_DIR` without any of
# them reads the run folder's config.yaml.
_RUN_FLAGS = (
    "config",
    "model",
    "target",
    "replay",
    "replay_fraction",
    "budget",
    "epochs",
    "max_steps",
    "lr",
    "seq_len",
    "batch_size",
    "micro_batch_size",
    "lora",
    "lora_r",
    "gradient_checkpointing",
    "precision",
    "compile",
    "deterministic",
    "parallel",
    "trust_remote_code",
    "mc_task",
    "lm_eval_task",
    "lm_eval_include",
    "seed",
    "threads",
    "overrides",
)


def resume_config(args: argparse.Namespace):
    """(config, run folder) of `--resume [RUN_DIR]`: RUN_DIR's own config.yaml when no flag describes the run,
    else the flags' config (the run folder then refuses one that differs from its own)."""
    from replaylab.finetune_form import load_run_config

    if args.resume and args.out and Path(args.resume) != Path(args.out):
        raise ConfigError(
            f"--resume {args.resume!r} and --out {args.out!r} name two folders; give the run folder "
            "once: replaylab finetune --resume RUN_DIR"
        )
    where = args.resume or args.out
    if not where:
        raise ConfigError("--resume needs the run folder: replaylab finetune --resume RUN_DIR")
    out = Path(where)
    if any(getattr(args, name, None) not in (None, []) for name in _RUN_FLAGS):  # --no-deterministic is False
        return build_config(args), out
    if not (out / "config.yaml").exists():
        raise ConfigError(
            f"--resume {where!r} is not a run folder (no config.yaml); give the --out of a replaylab finetune run"
        )
    return load_run_config(out / "config.yaml"), out


def build_config(args: argparse.Namespace):
    """The run's RunConfig from --config (the fine-tuning form, or a RunConfig of a Hugging Face model), the
    flags and the KEY=VALUE / --set overrides (in that order; overrides name the --config file's keys)."""
    from replaylab.finetune_form import is_finetune_form, merge, read_finetune, to_run_form
    from replaylab.runconfig import RunConfig

    given = load_yaml(args.config) if args.config else {}
    run_form = not is_finetune_form(given)
    raw = {} if run_form else given  # the flags, in the fine-tuning form's words
    flags = {
        "model": args.model,
        "replay_fraction": args.replay_fraction,
        "target_epochs": args.epochs,
        "max_steps": args.max_steps,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "micro_batch_size": args.micro_batch_size,
        "gradient_checkpointing": args.gradient_checkpointing,
        "precision": args.precision,
        "trust_remote_code": args.trust_remote_code,
        "seed": args.seed,
        "threads": args.threads,
        "parallel": args.parallel,
        "compile": args.compile,
        "deterministic": args.deterministic,
    }
    raw.update({k: v for k, v in flags.items() if v is not None})
    if args.target is not None:
        _section(raw, "target")["source"] = args.target
    if args.budget is not None:
        _section(raw, "target", None if run_form else {"source": "basque"})["budget"] = args.budget
    if getattr(args, "target_format", None) is not None:
        target = _section(raw, "target", None if run_form else {"source": "basque"})
        target["options"] = {**(target.get("options") or {}), "format": args.target_format}
    if args.replay is not None:
        if args.replay == "none":
            raw["replay"] = None
        else:
            _section(raw, "replay")["source"] = args.replay
    if args.lr is not None:
        _section(raw, "optim")["lr"] = args.lr
    if args.lora or args.lora_r is not None:
        _section(raw, "lora")["enabled"] = True
        if args.lora_r is not None:
            raw["lora"]["r"] = args.lora_r
    if args.mc_task:
        _section(raw, "eval")["mc_tasks"] = list(args.mc_task)
    if args.lm_eval_task:
        _section(raw, "eval")["lm_eval_tasks"] = list(args.lm_eval_task)
    if args.lm_eval_include is not None:
        _section(raw, "eval")["lm_eval_include"] = args.lm_eval_include
    if not run_form:
        return read_finetune(apply_overrides(raw, args.overrides))
    merged = merge(given, to_run_form(raw))
    domains = (merged.get("data") or {}).get("domains") or {}
    for name in [n for n, d in domains.items() if d is None]:  # --replay none
        del domains[name]
    return from_dict(RunConfig, apply_overrides(merged, args.overrides))


def main(args: argparse.Namespace) -> int:
    # before the heavy imports: a bad override fails at once
    if args.resume is not None:
        config, out = resume_config(args)
    else:
        config = build_config(args)
        out = Path(args.out) if args.out else None

    from replaylab.hf.finetune import run_finetune
    from replaylab.train import TrainingInterrupted
    from replaylab.train.run_folder import default_run_dir

    out = out or default_run_dir(config)  # the one default-output rule, as replaylab train's

    try:
        manifest = run_finetune(config, out, resume=args.resume is not None, overwrite=args.overwrite)
    except TrainingInterrupted as e:
        print(f"replaylab finetune: {e}", file=sys.stderr)
        return e.exit_code
    if not manifest:  # a non-zero rank under torchrun
        return 0
    if manifest.get("status") == "diverged":
        print(f"replaylab finetune: error: {manifest.get('error')}", file=sys.stderr)
        return 1
    shares = manifest.get("realized_token_shares", {})
    print(f"run folder: {out}")
    print(
        f"steps: {manifest['plan']['total_steps']}  realized token shares: "
        + ", ".join(f"{k} {v:.4f}" for k, v in shares.items())
    )
    for phase in ("initial", "final"):
        losses = manifest.get(phase, {})
        losses = losses.get("losses", losses) if phase == "initial" else losses
        for dom, rec in losses.items():
            print(f"{phase:7s} {dom:6s} val_loss {rec['val_loss']:.4f}  test_loss {rec['test_loss']:.4f}")
    if manifest.get("mc"):
        print("multiple choice: " + json.dumps(manifest["mc"]))
    return 0
