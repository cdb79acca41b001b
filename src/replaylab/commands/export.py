"""`replaylab export RUN_DIR --hf OUT [--step N]`: a run's checkpoint as a Hugging Face Llama folder.

OUT then loads with `transformers.AutoModelForCausalLM.from_pretrained(OUT)` (LlamaForCausalLM) and
`AutoTokenizer.from_pretrained(OUT)` (the run's tokenizer, with its EOS token).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from replaylab.errors import ReplaylabError

HELP = "export a run's checkpoint as a Hugging Face LlamaForCausalLM folder (model + tokenizer)"

_STEP_DIR = re.compile(r"^step_(\d+)$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (holding config.yaml and checkpoints/)")
    p.add_argument("--hf", required=True, metavar="OUT", help="output folder for the Hugging Face checkpoint")
    p.add_argument("--step", type=int, help="checkpoint step to export (default: the latest)")
    p.add_argument(
        "--overwrite",
        "--force",
        action="store_true",
        dest="overwrite",
        help="replace OUT if it is a replaylab export of another checkpoint (--force: the old name)",
    )


def available_steps(run_dir: Path) -> dict[int, Path]:
    """{step: checkpoint folder} for every checkpoint holding model weights."""
    root = run_dir / "checkpoints"
    found = {}
    for d in root.iterdir() if root.is_dir() else []:
        m = _STEP_DIR.match(d.name)
        if m and (d / "model.safetensors").is_file():
            found[int(m.group(1))] = d
    return dict(sorted(found.items()))


def export_run(run_dir: str | Path, out: str | Path, *, step: int | None = None, overwrite: bool = False) -> Path:
    from replaylab.config import load_config
    from replaylab.fingerprint import run_id
    from replaylab.hf_convert import export_hf
    from replaylab.outputs import claim_output
    from replaylab.runconfig import RunConfig
    from replaylab.train.checkpoint import load_model_weights

    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "config.yaml").is_file():
        what = "does not exist" if not run_dir.exists() else "has no config.yaml"
        raise ReplaylabError(f"run folder {str(run_dir)!r} {what}; give a folder written by `replaylab train`")
    steps = available_steps(run_dir)
    if not steps:
        raise ReplaylabError(
            f"run folder {str(run_dir)!r} has no checkpoints (checkpoints/step_N/model.safetensors); "
            "train it first or resume it so it saves one"
        )
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise ReplaylabError(
            f"--step {step} has no checkpoint in {str(run_dir)!r}; available steps: {', '.join(map(str, steps))}"
        )
    config = load_config(RunConfig, run_dir / "config.yaml")
    identity = f"{run_id(config)}@{step}"
    claim_output(out, "export", identity, overwrite=overwrite, option="--hf", describe="of another checkpoint")
    if config.model.vocab_size is None or config.model.max_seq_len is None:
        raise ReplaylabError(
            f"{str(run_dir / 'config.yaml')!r} has no resolved model.vocab_size/max_seq_len; "
            "it was not written by `replaylab train`"
        )
    from replaylab.data.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(config.data.tokenizer)
    state = load_model_weights(steps[step])  # sha256-checked: a truncated copy is refused, not exported
    return export_hf(
        state, config.model, tokenizer.path, out, eos_id=tokenizer.eos_id, identity=identity, overwrite=overwrite
    )


def main(args: argparse.Namespace) -> int:
    out = export_run(args.run_dir, args.hf, step=args.step, overwrite=args.overwrite)
    print(f"exported {args.run_dir} -> {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0
