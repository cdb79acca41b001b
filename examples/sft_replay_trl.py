"""Instruction tuning with replay under TRL's SFTTrainer (pip install 'replaylab[trl]'): prompt/completion records as
the target, generic text as replay, loss on completions only, and replay's weight in every step's loss exactly R.

    python examples/sft_replay_trl.py        # tiny random Llama, pydoc Q/A records + stdlib code, CPU

The lines that matter:

    mix = ReplayMixture(records, replay_texts, tokenizer=model_dir, format="prompt_completion", replay_fraction=0.25,
                        seq_len=255, batch_size=8, rows="global", loss_weights=True)
    args = SFTConfig(out, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=mix.num_steps,
                     remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})
    ReplayLossSFTTrainer(model=model, args=args, train_dataset=mix.as_hf_dataset(), processing_class=tokenizer,
                         data_collator=default_data_collator).train()

Why each setting: SFTTrainer takes only `datasets` datasets (`as_hf_dataset()`, the same stream) and a streaming
dataset has no length (`max_steps`). The rows are tokenized and packed per document already: TRL's preparation is
skipped, and its own packing, padding_free, dataset_text_field or a max_length shorter than the rows would be
ignored or would rewrite them, so the stream refuses them. TRL's collator rebuilds position_ids per row and adds an
all-ones attention_mask (packed examples would attend to each other) and its column removal drops position_ids and
loss_weights: `default_data_collator` and `remove_unused_columns=False` keep the rows as they are, and the stream
checks that they do when the trainer first reads it. The labels are already -100 on prompts, which is what
`completion_only_loss` asks for. The loss is `replay_loss` (see examples/hf_trainer_instructions.py).
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
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator

    try:
        from trl import SFTConfig, SFTTrainer
    except ImportError:
        raise SystemExit("this example needs TRL: pip install 'replaylab[trl]'") from None
    from replaylab import ReplayMixture
    from replaylab.replay_trainer import weighted_compute_loss

    class ReplayLossSFTTrainer(SFTTrainer):
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
    args = SFTConfig(
        max_steps=mix.num_steps,
        remove_unused_columns=False,  # TRL would drop position_ids and loss_weights
        dataset_kwargs={"skip_prepare_dataset": True},  # tokenized and packed already
        bf16=torch.cuda.is_available(),  # TRL defaults to bf16; fp32 on a CPU
        **trainer_arguments(
            mix, os.path.join(workdir, "trl_instructions"), accumulation=accumulation, lr=lr, seed=seed
        ),
    )
    trainer = ReplayLossSFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(world["model"]),
        args=args,
        train_dataset=mix.as_hf_dataset(),
        processing_class=AutoTokenizer.from_pretrained(world["model"]),
        data_collator=default_data_collator,  # keeps labels, position_ids and loss_weights as they are
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    main_process = trainer.is_world_process_zero()
    if main_process:
        print(f"{mix}\nweighted loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return {**instruction_summary(mix, trainer.state.global_step, verbose=main_process), "losses": losses}


if __name__ == "__main__":
    run_from_command_line(main, __doc__, replay_fraction=0.25, budget=None)
