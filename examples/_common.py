"""What the examples train on, built in seconds on a CPU: small real text and a tiny random Llama.

- target texts: Python standard-library source files (code), about `target_bytes` of them;
- replay texts: the English documentation topics shipped in `pydoc_data` (generic prose);
- a byte-level BPE (vocab 512) trained on both with `replaylab.data.tokenizer.train_tokenizer` (what
  `replaylab tokenizer train` runs), and a randomly initialised LlamaForCausalLM (2 layers of 256) saved with it
  as a Hugging Face model folder.

Random weights stand in for a pretrained model: the examples show the data path, not a result about replay.
"""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path


def stdlib_texts(target_bytes: int = 400_000) -> tuple[list[str], list[str]]:
    """(target texts, replay texts): stdlib .py files (sorted, deterministic on one interpreter) and pydoc topics."""
    from pydoc_data.topics import topics

    code, taken = [], 0
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = p.read_text(encoding="utf-8", errors="replace")
        if 2_000 <= len(text) <= 60_000:  # many mid-sized files: many documents
            code.append(text)
            taken += len(text)
        if taken >= target_bytes:
            break
    return code, [topics[name] for name in sorted(topics)]


def instruction_records() -> list[dict[str, str]]:
    """Question/answer records from the Python reference topics in `pydoc_data`: {"prompt": a question, "completion":
    the topic's first paragraphs}, one per topic (about 90), deterministic. Small real instruction data, offline."""
    from pydoc_data.topics import topics

    records = []
    for name in sorted(topics):
        paragraphs = [p for p in topics[name].split("\n\n") if p.strip()]
        records.append({"prompt": f"Explain the Python topic {name!r}.\n", "completion": "\n\n".join(paragraphs[:2])})
    return records


def tiny_world(folder: str | Path, *, hidden: int = 256, layers: int = 2, max_positions: int = 512) -> dict:
    """Texts, and a tiny random Llama with its own tokenizer in `folder/model` (reused when already there)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from replaylab.data.tokenizer import train_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target, replay = stdlib_texts()
    model = folder / "model"
    if not (model / "config.json").exists():
        build = Path(tempfile.mkdtemp(prefix=".build-", dir=folder))  # built aside, renamed into place
        sample = build / "tokenizer_sample.jsonl"
        sample.write_text("".join(json.dumps({"text": t}) + "\n" for t in target + replay))
        tok = train_tokenizer([str(sample)], vocab_size=512, out=build / "tokenizer", sample_bytes=400_000)
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=tok.vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=max_positions,
            eos_token_id=tok.eos_id,
            bos_token_id=tok.eos_id,
            pad_token_id=tok.eos_id,
            tie_word_embeddings=True,
        )
        LlamaForCausalLM(config).save_pretrained(build / "model")
        for name in ("tokenizer.json", "tokenizer_config.json"):  # the model's own tokenizer, as on the Hub
            (build / "model" / name).write_bytes((build / "tokenizer" / name).read_bytes())
        try:
            os.replace(build / "model", model)
        except OSError:  # another process of the same torchrun job renamed its identical copy first
            pass
        shutil.rmtree(build, ignore_errors=True)
    return {"target": target, "replay": replay, "model": str(model)}


def default_workdir() -> str:
    """Where the examples keep the tiny model and their outputs: $REPLAYLAB_HOME/examples (shared by the
    processes of a torchrun job, reused by later runs)."""
    from replaylab import paths

    return str(paths.home() / "examples")


def summarize(mix, steps: int, verbose: bool = True) -> dict:
    """The replay share of each global batch trained on, the run's shares and the target exposure (printed when
    verbose: on one process of several)."""
    counts = [mix.domain_counts(s) for s in range(steps)]
    shares = [c.get("replay", 0) / mix.batch_size for c in counts]
    drawn = sum(c["target"] for c in counts)
    out = {
        "steps": steps,
        "batch_replay_share_min": min(shares),
        "batch_replay_share_max": max(shares),
        "replay_share": sum(shares) / steps,
        "target_draws": drawn,
        "target_epochs": drawn / mix.plan.budget,
        "planned": mix.target_exposure(),
    }
    if not verbose:
        return out
    print(
        f"trained {steps} steps of {mix.batch_size} x {mix.seq_len} tokens; replay share per batch: "
        f"min {out['batch_replay_share_min']:.4f}, max {out['batch_replay_share_max']:.4f} (asked "
        f"{mix.replay_fraction:g}); over the run {out['replay_share']:.4f}"
    )
    print(
        f"target: {drawn} sequences drawn = {out['target_epochs']:.4g} passes over the budget of "
        f"{mix.plan.budget} (the full run: {mix.target_exposure()['draws']})"
    )
    return out


def instruction_summary(mix, steps: int, verbose: bool = True) -> dict:
    """Per trained step, the replay source's share of the rows, of the loss tokens and of the loss weight (what
    reaches the gradient), and the target's exposure in examples and completion tokens (printed when verbose)."""
    shares = [mix.step_shares(s)["replay"] for s in range(steps)]
    out = {
        "steps": steps,
        **{f"replay_{k}": [s[k] for s in shares] for k in ("rows", "loss_tokens", "loss_weight")},
        "exposure": mix.target_exposure(),
    }
    if verbose:
        for k in ("rows", "loss_tokens", "loss_weight"):
            v = out[f"replay_{k}"]
            print(f"replay share of the {k.replace('_', ' ')} per step: min {min(v):.4f}, max {max(v):.4f}")
        e = out["exposure"]
        print(
            f"target: {e['draws']} rows drawn, {e.get('example_draws')} examples and {e.get('loss_token_draws')} "
            f"completion tokens (budget {e['budget']} rows x {e['epochs']:g} epochs)"
        )
    return out


def run_from_command_line(main, doc: str, *, replay_fraction: float = 0.5, budget: int | None = 128) -> None:
    """The examples' shared command line: the replay fraction, target budget and epochs, a step cap, a workdir."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--replay-fraction", type=float, default=replay_fraction)
    p.add_argument("--budget", type=int, default=budget, help="unique target sequences (rows)")
    p.add_argument("--epochs", type=float, default=2.0, help="passes over the target budget")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument(
        "--workdir", default=None, help="where the tiny model and outputs go (default: $REPLAYLAB_HOME/examples)"
    )
    a = p.parse_args()
    main(workdir=a.workdir, replay_fraction=a.replay_fraction, budget=a.budget, epochs=a.epochs, max_steps=a.max_steps)


def trainer_summary(trainer, mix) -> dict:
    """After an HF (or TRL) Trainer's run: its logged losses, and `summarize` printed by the main process."""
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    main_process = trainer.is_world_process_zero()
    if main_process:
        print(f"{mix}\nloss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return {**summarize(mix, trainer.state.global_step, verbose=main_process), "losses": losses}


def trainer_arguments(mix, output_dir: str, *, accumulation: int, lr: float, seed: int) -> dict:
    """HF Trainer / TRL arguments that fit a `ReplayMixture` with rows="global": per-device batch x
    accumulation x processes = the mixture's global batch, so each optimizer step is one global batch."""
    import torch

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=mix.batch_size // (accumulation * processes),
        gradient_accumulation_steps=accumulation,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, mix.num_steps // 20),
        logging_steps=max(1, mix.num_steps // 8),
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
    )  # on a CPU, torchrun runs gloo DDP only with use_cpu
