"""Instruction tuning with replay under Hugging Face Trainer: prompt/completion records as the target, generic text
as replay, loss on completions only, and replay's weight in every step's loss exactly R.

    python examples/hf_trainer_instructions.py        # tiny random Llama, pydoc Q/A records + stdlib code, CPU

The lines that matter:

    mix = ReplayMixture(records, replay_texts, tokenizer=model_dir, format="prompt_completion", replay_fraction=0.25,
                        seq_len=255, batch_size=8, rows="global", loss_weights=True)
    args = TrainingArguments(out, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             remove_unused_columns=False)        # keep loss_weights for compute_loss
    ReplayLossTrainer(model=model, args=args, train_dataset=mix).train()

Each example row holds whole examples (packed per document): labels are -100 on prompts, position_ids restart per
example and there is no attention_mask, so no example attends to another (transformers' padding-free convention;
the stream turns the model's KV cache off when the Trainer first reads it). `loss_weights` give each token the
weight that makes the replay rows weigh exactly R in each optimizer step, whatever their count of loss tokens;
`replay_loss` sums them, so the Trainer must neither average over micro-batches (`loss_is_scaled_for_ga`) nor
over processes (DDP averages gradients: multiply by the process count). The stream checks the Trainer when it first
reads it: global batch, steps, positions, and that labels, positions and weights reach the loss unchanged.
"""

from __future__ import annotations

import os

from _common import (
    default_workdir,
    instruction_records,
    instruction_summary,
    run_from_command_line,
    tiny_world,
    trainer_arguments,
)


def main(
    *,
    workdir: str | None = None,
    replay_fraction: float = 0.25,
    budget: int | None = None,
    epochs: float = 2.0,
    seq_len: int = 255,
    batch_size: int = 8,
    accumulation: int = 2,
    max_steps: int | None = None,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict:
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from replaylab import ReplayMixture
    from replaylab.replay_trainer import weighted_compute_loss

    class ReplayLossTrainer(Trainer):
        """The step's loss: replay_loss summed over micro-batches and processes (replay weighs exactly R)."""

        loss_is_scaled_for_ga = True  # replay_loss is already this micro-batch's part of the step's loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return weighted_compute_loss(self, model, inputs, return_outputs)

    workdir = workdir or default_workdir()
    world = tiny_world(workdir)
    mix = ReplayMixture(
        instruction_records(),
        world["target"],  # stdlib Python source, standing in for generic pre-training text
        tokenizer=world["model"],
        format="prompt_completion",  # loss on completions only; replay keeps full loss
        replay_fraction=replay_fraction,
        budget=budget,
        epochs=epochs,
        seq_len=seq_len,
        batch_size=batch_size,
        max_steps=max_steps,
        seed=seed,
        rows="global",
        loss_weights=True,
    )
    args = TrainingArguments(
        num_train_epochs=1,
        remove_unused_columns=False,  # loss_weights are not an argument of the model's forward
        **trainer_arguments(mix, os.path.join(workdir, "hf_instructions"), accumulation=accumulation, lr=lr, seed=seed),
    )
    model = AutoModelForCausalLM.from_pretrained(world["model"])
    trainer = ReplayLossTrainer(model=model, args=args, train_dataset=mix)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    main_process = trainer.is_world_process_zero()
    if main_process:
        print(f"{mix}\nweighted loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return {**instruction_summary(mix, trainer.state.global_step, verbose=main_process), "losses": losses}


if __name__ == "__main__":
    run_from_command_line(main, __doc__, replay_fraction=0.25, budget=None)
