"""`replaylab advise --model M --target T`: how much to replay while fine-tuning M on T, with an interval.

Plans a sweep sized to the time budget (a no-replay data-efficiency curve, replay at a few fractions, an LR
grid per cell, >= 2 seeds), trains it (resumable), and prints the answer; `--plan` stops after the plan.
Design and method: docs/advisor.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "how much generic data to replay while fine-tuning your model on your data: a sweep, an interval, a verdict"


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 0.25,0.5") from None


def _seeds(text: str) -> list[int]:
    """`3` = seeds 0, 1, 2; `0,5` = those seeds."""
    try:
        if "," in text:
            return [int(v) for v in text.split(",") if v.strip()]
        return list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed count (3) or a list of seeds (0,1,2)") from None


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0 minutes")
    return value


def _options(pairs: list[str], target_format: str | None) -> dict:
    from replaylab.config import parse_value
    from replaylab.errors import ConfigError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--target-option {pair!r} is not KEY=VALUE, e.g. --target-option glob=*.py")
        out[key] = parse_value(value)
    if target_format is not None:
        out["format"] = target_format
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    from replaylab.commands.sweep import add_backend_arguments

    p.add_argument(
        "--model",
        required=True,
        help="a Hugging Face id or folder, smollm2-135m, or preset:NAME (ours, "
        "pre-trained here on the replay corpus first)",
    )
    p.add_argument(
        "--target",
        required=True,
        help="target data, any source the data layer reads: a recipe (e.g. "
        "instructions), a .jsonl/.txt/.parquet file or folder, hf:org/name",
    )
    p.add_argument(
        "--target-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a data-layer option of the target source, passed through unchanged (e.g. glob=*.py; repeatable)",
    )
    p.add_argument(
        "--target-format",
        metavar="FORMAT",
        help="the target's record format, as replaylab finetune --target-format (= --target-option format=FORMAT: "
        "instruction data with completion-only loss, where the data layer reads it)",
    )
    p.add_argument("--replay", default="generic", help="generic replay data, same forms (default: generic)")
    p.add_argument("--lora", action="store_true", help="fine-tune LoRA adapters (HF models)")
    p.add_argument("--budget", type=int, help="unique target sequences N (default: all of the target)")
    p.add_argument("--epochs", type=float, help="passes over each budget (default: 16 presets, 2 HF models)")
    p.add_argument("--fractions", type=_floats, default=[0.25, 0.5, 0.75], help="replay fractions (0.25,0.5,0.75)")
    p.add_argument(
        "--replay-share",
        type=float,
        default=0.25,
        help="the share of N at which replay is measured (default 0.25: inside the curve N/8..N)",
    )
    p.add_argument("--lr", type=float, help="the LR grid's centre (default: 2e-3 presets, 3e-4 HF models)")
    p.add_argument("--lr-factors", type=_floats, default=[0.5, 1.0, 2.0], help="the LR grid around --lr (0.5,1,2)")
    p.add_argument(
        "--lr-extend",
        type=int,
        default=2,
        help="rounds that add the next LR past the grid's edge to a cell whose best LR sits there (default 2; 0 = off)",
    )
    p.add_argument("--seeds", type=_seeds, default=[0, 1], help="a count (2) or a list (0,1,2); at least 2")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: 128 presets, 256 HF models)")
    p.add_argument("--batch-size", type=int, help="sequences per step (default: 16 presets, 8 HF models)")
    p.add_argument("--tokenizer", default="default", help="presets: the tokenizer (default: the built-in one)")
    p.add_argument("--pretrain-steps", type=int, default=192, help="presets: pre-training steps (default 192)")
    p.add_argument("--pretrain-lr", type=float, default=3e-3, help="presets: pre-training peak LR (default 3e-3)")
    p.add_argument(
        "--eval-sequences", type=int, help="held-out sequences per domain, half select, half report (256 / 64)"
    )
    p.add_argument("--form", default="loglinear", help="law fitted to the no-replay curve (loglinear, paper, robust)")
    p.add_argument(
        "--mc-task",
        "--eval-task",
        dest="mc_task",
        action="append",
        default=[],
        metavar="FILE",
        help="forgetting on a task: a multiple-choice .jsonl scored by log-likelihood, as replaylab finetune "
        "--mc-task, on the base model, no replay and each R (repeatable; any model)",
    )
    p.add_argument(
        "--lm-eval-task",
        action="append",
        default=[],
        metavar="NAME",
        help="forgetting on an lm-evaluation-harness task, e.g. replaylab_basque_vocab (repeatable; Hugging Face "
        "models; needs replaylab[eval])",
    )
    p.add_argument(
        "--lm-eval-include", metavar="DIR", help="a folder of lm-eval task YAML files (e.g. over local jsonl)"
    )
    p.add_argument("--time-budget", type=_minutes, help="minutes: refuse a design that would not finish in time")
    p.add_argument("--plan", action="store_true", help="print the runs, tokens and estimated time; train nothing")
    add_backend_arguments(p)
    p.add_argument("--out", help="advice folder (default: advice/<model>-<target> under REPLAYLAB_HOME)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a replaylab advice folder that answers another question (its runs are deleted)",
    )


def main(args: argparse.Namespace) -> int:
    from replaylab.advisor import AdviceConfig, advise
    from replaylab.errors import ConfigError
    from replaylab.outputs import check_name
    from replaylab.paths import home

    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers} must be >= 1")
    config = AdviceConfig(
        model=args.model,
        target=args.target,
        replay=args.replay,
        target_options=_options(args.target_option, args.target_format),
        lora=args.lora,
        budget=args.budget,
        epochs=args.epochs,
        fractions=args.fractions,
        replay_share=args.replay_share,
        lr=args.lr,
        lr_factors=args.lr_factors,
        lr_extend=args.lr_extend,
        seeds=args.seeds,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        pretrain_steps=args.pretrain_steps,
        pretrain_lr=args.pretrain_lr,
        eval_sequences=args.eval_sequences,
        tokenizer=args.tokenizer,
        threads=args.threads,
        form=args.form,
        mc_tasks=args.mc_task,
        lm_eval_tasks=args.lm_eval_task,
        lm_eval_include=args.lm_eval_include,
    )
    if args.budget is not None and args.budget < 1:
        raise ConfigError(f"--budget {args.budget} must be >= 1 sequence")
    out = args.out
    if out is None:
        name = "-".join(Path(s.replace(":", "-")).name for s in (args.model, args.target))
        out = home() / "advice" / check_name(name[:128], "--out")
    result = advise(
        config,
        out,
        workers=args.workers,
        backend=args.backend,
        address=args.address,
        gpus_per_run=args.gpus_per_run,
        nproc_per_node=args.nproc_per_node,
        time_budget=args.time_budget * 60 if args.time_budget else None,
        plan_only=args.plan,
        overwrite=args.overwrite,
        retry=args.retry,
    )
    if args.plan:
        print(f"plan only: nothing trained; run without --plan to train into {out}")
        return 0
    print()
    print(result.verdict)
    print(f"run it: {result.command}")
    print(f"answer: {Path(out) / 'advice.md'}; report: {Path(out) / 'report' / 'report.html'}")
    return 0 if not result.missing else 1
