"""`replaylab train CONFIG [--out RUN_DIR] [KEY=VALUE | --set KEY=VALUE ...]` and `replaylab train --resume RUN_DIR`.

Exit status: 0 done, 1 diverged (NaN/inf loss; the manifest says so), 2 a user mistake,
130/143 stopped by SIGINT/SIGTERM after saving a checkpoint (resume with --resume).
Under `torchrun --nproc_per_node N` the same command trains data-parallel; rank 0 writes the run folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from replaylab.config import add_override_arguments
from replaylab.errors import ConfigError

HELP = "train one run (a list of stages) into a run folder, or resume one"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="run config YAML (see docs/training.md)")
    add_override_arguments(p, "stages.1.lr.peak=3e-4")
    p.add_argument("--out", help="run folder (default: runs/<config name>-<run id>, as replaylab finetune)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest good checkpoint")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a replaylab run folder at --out that holds another config (never a folder it did not make)",
    )
    p.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start from the full training state of another run's checkpoint (a shared prefix)",
    )


def main(args: argparse.Namespace) -> int:
    from replaylab.config import apply_overrides, from_dict, load_yaml
    from replaylab.finetune_form import load_run_config
    from replaylab.runconfig import RunConfig
    from replaylab.train import TrainingInterrupted, run_training
    from replaylab.train.run_folder import default_run_dir

    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("--resume RUN_DIR takes no CONFIG or overrides: the run folder's config.yaml is used")
        out = Path(args.resume)
        if args.out and Path(args.out).resolve() != out.resolve():
            raise ConfigError(
                f"--resume {str(out)!r} continues that run in its own folder; --out {args.out!r} "
                "cannot move it: drop --out (or copy the run folder there and resume the copy)"
            )
        if not (out / "config.yaml").exists():
            raise ConfigError(f"--resume {str(out)!r} is not a run folder (no config.yaml); give the --out of a run")
        config = load_run_config(out / "config.yaml")  # any kind of run, fine-tuning form included
    else:
        if not args.config:
            raise ConfigError("give a run config YAML (replaylab train CONFIG) or --resume RUN_DIR")
        if "=" in args.config and not Path(args.config).exists():
            raise ConfigError(
                f"{args.config!r} looks like an override; the config file comes first: "
                "replaylab train CONFIG KEY=VALUE ..."
            )
        raw = load_yaml(args.config)
        keys = [k for k in ("strategies", "base", "grid") if k in raw]
        if keys or raw.get("kind") == "finetune_hf":
            raise ConfigError(
                f"{args.config!r} is an experiment (it has {', '.join(keys) or 'kind: finetune_hf'}), "
                f"not a run config; list its runs with replaylab plan {args.config}, train them with "
                f"replaylab sweep {args.config}"
            )
        config = from_dict(RunConfig, apply_overrides(raw, args.overrides))  # the YAML read once
        out = Path(args.out) if args.out else default_run_dir(config)
    try:
        manifest = run_training(
            config, out, resume=bool(args.resume), init_from=args.init_from, overwrite=args.overwrite
        )
    except TrainingInterrupted as e:
        print(f"replaylab train: {e}", file=sys.stderr)
        return e.exit_code
    if manifest.get("status") == "diverged":
        print(f"replaylab train: error: {manifest.get('error')}", file=sys.stderr)
        return 1
    final = manifest.get("final", {})
    losses = ", ".join(f"{d} {r['test_loss']:.4f}" for d, r in final.items())
    print(f"replaylab train: done, {manifest.get('steps_done')} steps in {out}; test loss: {losses}")
    return 0
