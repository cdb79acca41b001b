"""What a replay run must agree with before it trains, checked where the facts meet: the plan's length (a replay
fraction near 1), the model's positions (an example's tokens), and a Hugging Face Trainer reading a `ReplayMixture`
(its global batch, processes and planned steps).

A Trainer is checked when it first reads the stream, whether or not the user passed `mix.trainer_callback()`: the
stream finds the Trainer that is reading it on the call stack. Accelerate (under HF Trainer and TRL) calls the
dataset's `set_epoch` from the Trainer's epoch loop in the main process before any DataLoader worker starts, and the
stream's own first `__iter__` runs there too when there are no workers. So a mismatched Trainer is refused before its
first batch, and the stream is placed for a resume before the workers copy it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from replaylab.errors import ConfigError
from replaylab.finetune_plan import plan_mix
from replaylab.hf.models import max_positions


# ---- the plan ------------------------------------------------------------------------------------------------
def check_replay_stretch(*, budget: int, target_epochs: float, replay_fraction: float, batch_size: int) -> None:
    """Refuse a replay fraction that stretches the run past MAX_STEPS, naming the largest one that fits: the
    planner's own rule (finetune_plan.plan_mix), asked before anything is built. Capped at one step, so that only
    the stretch is judged here (a long pure-target plan is the launch's to cap with max_steps)."""
    plan_mix(
        budget=budget, target_epochs=target_epochs, replay_fraction=replay_fraction, batch_size=batch_size, max_steps=1
    )


# ---- the model's positions -----------------------------------------------------------------------------------
def check_example_positions(model: Any, seq_len: int) -> None:
    """Refuse a model with fewer positions than a ReplayMixture example's seq_len + 1 tokens: learned positions
    (GPT-2) fail with an IndexError, rotary ones (Llama) train silently past what the model was made for."""
    found = max_positions(getattr(getattr(model, "module", model), "config", None))
    if found is not None and seq_len + 1 > found[0]:
        limit, field = found
        raise ConfigError(
            f"seq_len {seq_len}: each example is seq_len + 1 = {seq_len + 1} tokens, but the model has {limit} "
            f"positions ({field} {limit}); create the ReplayMixture with seq_len <= {limit - 1}"
        )


# ---- a Hugging Face Trainer reading the stream ---------------------------------------------------------------
def reading_trainer(mix: Any) -> Any | None:
    """The transformers Trainer (TRL's SFTTrainer is one) whose training loop is reading `mix` now, found on the call
    stack; None outside a Trainer, in a DataLoader worker, or when the Trainer reads `mix` as its eval_dataset."""
    module = sys.modules.get("transformers.trainer")
    if module is None:  # transformers' Trainer was never imported: no Trainer can be reading
        return None
    frame = sys._getframe(1)
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, module.Trainer):
            evals = getattr(obj, "eval_dataset", None)  # TRL's SFTTrainer may not set it
            evals = evals.values() if isinstance(evals, dict) else [evals]
            reading_for_eval = any(e is mix or getattr(e, "replay_mixture", None) is mix for e in evals)
            return obj if getattr(obj, "is_in_train", False) and not reading_for_eval else None
        frame = frame.f_back
    return None


def check_trainer(mix: Any, args: Any, state: Any, model: Any = None) -> None:
    """Refuse a Trainer that would not train one mixture batch per optimizer step, or more steps than the mixture
    holds, or a model too short for its examples (one line each, before the first batch)."""
    b, g, w = args.per_device_train_batch_size, args.gradient_accumulation_steps, args.world_size
    launched = int(os.environ.get("WORLD_SIZE", "1"))  # what torchrun / accelerate launch started
    if launched != w:
        fix = (
            "launch so that they form one job"
            if _cuda()
            else "on a CPU, pass use_cpu=True to TrainingArguments (DDP over gloo)"
        )
        raise ConfigError(
            f"the launcher started {launched} processes but the Trainer runs as world_size {w}, so each process "
            f"would train every batch alone; {fix}"
        )
    if b * g * w != mix.batch_size:
        raise ConfigError(
            f"the Trainer's global batch is per_device_train_batch_size {b} x gradient_accumulation_steps {g} x "
            f"world_size {w} = {b * g * w} sequences, but the ReplayMixture's batch_size is {mix.batch_size}; "
            "make them equal so each optimizer step is one mixture batch"
        )
    if mix.rows == "rank" and w > 1:
        raise ConfigError(
            "HF Trainer splits each global batch over its processes itself; create the ReplayMixture with rows='global'"
        )
    if state.max_steps > mix.num_steps:
        raise ConfigError(
            f"the Trainer plans {state.max_steps} steps but the mixture holds {mix.num_steps}; leave max_steps=-1 "
            "and num_train_epochs=1 (the passes over the target are the mixture's epochs)"
        )
    if model is not None:
        check_example_positions(model, mix.seq_len)
    check_trl_options(mix, args)


# ---- TRL's options and a Trainer's collator ------------------------------------------------------------------
def check_trl_options(mix: Any, args: Any) -> None:
    """Refuse the SFTConfig options that would be ignored on a ReplayMixture's rows (tokenized, packed per document,
    labels already completion-only or full): each would otherwise be dropped without a word."""
    if not hasattr(args, "completion_only_loss"):  # not TRL's SFTConfig
        return
    fmt = (mix.stores["target"].meta.get("instructions") or {}).get("format", "text")
    fix = "leave it at its default"
    if args.packing:
        raise ConfigError(
            "SFTConfig packing=True would repack rows that the ReplayMixture has packed already (whole examples per "
            "row, positions per example, the replay share exact per step); leave packing=False"
        )
    if getattr(args, "padding_free", False):
        raise ConfigError(
            "SFTConfig padding_free=True makes TRL's collator number positions per row, not per packed example, so "
            "the examples would attend to each other; leave padding_free=False (the rows are padding-free already)"
        )
    if args.completion_only_loss and fmt == "text":
        raise ConfigError(
            "SFTConfig completion_only_loss=True, but the target is text: its rows carry loss on every token and have "
            "no completions; build the target with format='prompt_completion' (or 'messages'), or "
            "set completion_only_loss=None"
        )
    if args.completion_only_loss is False and fmt != "text":
        raise ConfigError(
            f"SFTConfig completion_only_loss=False, but the target's {fmt} rows carry loss on completions only (their "
            "labels are -100 on prompts); build the target with format='text' for loss on every token, or set "
            "completion_only_loss=None"
        )
    if getattr(args, "assistant_only_loss", False) and fmt != "messages":
        raise ConfigError(
            f"SFTConfig assistant_only_loss=True, but the target is {fmt}, not chat messages; build it with "
            "format='messages' (loss on assistant turns), or set assistant_only_loss=False"
        )
    if getattr(args, "dataset_text_field", "text") != "text":
        raise ConfigError(
            f"SFTConfig dataset_text_field={args.dataset_text_field!r} is not read: the rows are tokenized already; "
            f"give the text field to the ReplayMixture (text_field=) and {fix}"
        )
    max_length = getattr(args, "max_length", None)
    if max_length is not None and max_length < mix.seq_len + 1:
        raise ConfigError(
            f"SFTConfig max_length {max_length} is shorter than the mixture's rows (seq_len + 1 = {mix.seq_len + 1} "
            f"tokens), which TRL does not cut; set max_length=None or create the ReplayMixture with seq_len <= "
            f"{max_length - 1}"
        )


def check_collator(mix: Any, trainer: Any, examples: list[dict]) -> None:
    """The examples must reach the model as they are: labels (-100 off the loss), per-example position_ids with no
    attention_mask (the padding-free convention: no attention across packed examples) and loss_weights, which the
    Trainer's loss must then use. `examples`: a few rows in the form the Trainer reads them. Refused: a collator that
    drops, rewrites or adds to them (TRL's default collator drops the positions and adds an all-ones attention_mask),
    the Trainer's removal of unused columns (TRL removes position_ids), and loss_weights under the model's own loss."""
    import torch

    name = type(trainer.data_collator).__name__
    fix = "pass data_collator=transformers.default_data_collator (it keeps the examples as they are)"
    stages = [(trainer.data_collator, fix)]
    remove_columns = getattr(trainer, "_get_collator_with_removed_columns", None)
    if remove_columns is not None and getattr(trainer.args, "remove_unused_columns", False):
        stages.append(
            (remove_columns(trainer.data_collator, description="training"), "set remove_unused_columns=False")
        )
    for collate, how in stages:
        batch = collate(examples)
        for key in ("labels", "position_ids", "loss_weights"):
            if key not in examples[0]:
                continue
            want = torch.stack([torch.as_tensor(e[key]) for e in examples])
            got = batch.get(key)
            if got is None:
                raise ConfigError(f"the Trainer's data collator ({name}) drops the examples' {key}; {how}")
            if got.shape != want.shape or not torch.equal(got.to(want.dtype), want):
                raise ConfigError(f"the Trainer's data collator ({name}) rewrites the examples' {key}; {fix}")
        if "position_ids" in examples[0] and "attention_mask" in batch:
            raise ConfigError(
                f"the Trainer's data collator ({name}) adds an attention_mask, under which the model lets packed "
                f"examples attend to each other; {fix}"
            )
    if "loss_weights" in examples[0] and _computes_the_models_loss(trainer):
        raise ConfigError(
            "the mixture gives loss_weights but the Trainer trains on the model's own loss (a mean over the label "
            "tokens), which ignores them; override compute_loss with replaylab.replay_rows.replay_loss "
            "(examples/hf_trainer_instructions.py), or create the ReplayMixture without loss_weights"
        )


def _computes_the_models_loss(trainer: Any) -> bool:
    """Whether the Trainer's loss is its library's own (transformers' or TRL's compute_loss, no compute_loss_func)."""
    if getattr(trainer, "compute_loss_func", None) is not None:
        return False
    owner = next(c for c in type(trainer).__mro__ if "compute_loss" in vars(c))
    return owner.__module__.split(".")[0] in ("transformers", "trl")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
