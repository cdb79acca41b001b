"""Replay fine-tuning with TRL's SFTTrainer (pip install 'replaylab[trl]': trl 1.16.0).

    python examples/trl_sft_replay.py                        # tiny random Llama on stdlib text, CPU

SFTTrainer accepts only `datasets` datasets: given a torch IterableDataset (a ReplayMixture itself) it raises
"TypeError: `train_dataset` must be a `Dataset` or `IterableDataset`". The closest working form is
`mix.as_hf_dataset()`, a `datasets.IterableDataset` over the same stream, with TRL's own preparation skipped
(the examples are already tokenized and packed) and max_steps given (a streaming dataset has no length):

    mix = ReplayMixture(target_texts, replay_texts, tokenizer=model_dir, replay_fraction=0.5, budget=128,
                        epochs=2, seq_len=128, batch_size=8, rows="global")
    args = SFTConfig(out, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=mix.num_steps,
                     dataset_kwargs={"skip_prepare_dataset": True})
    SFTTrainer(model=model, args=args, train_dataset=mix.as_hf_dataset(), processing_class=tokenizer).train()

TRL's collator keeps the given labels (= input_ids; the model shifts them), so the loss is over all seq_len
targets of every packed sequence, as in the engine; there is no padding (every example is seq_len + 1 ids).
"""

from __future__ import annotations

import os

from _common import default_workdir, run_from_command_line, tiny_world, trainer_arguments, trainer_summary


def main(
    *,
    workdir: str | None = None,
    replay_fraction: float = 0.5,
    budget: int = 128,
    epochs: float = 2.0,
    seq_len: int = 128,
    batch_size: int = 8,
    accumulation: int = 2,
    max_steps: int | None = None,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from trl import SFTConfig, SFTTrainer
    except ImportError:
        raise SystemExit("this example needs TRL: pip install 'replaylab[trl]'") from None
    from replaylab import ReplayMixture

    workdir = workdir or default_workdir()
    world = tiny_world(workdir)
    mix = ReplayMixture(
        world["target"],
        world["replay"],
        tokenizer=world["model"],
        replay_fraction=replay_fraction,
        budget=budget,
        epochs=epochs,
        seq_len=seq_len,
        batch_size=batch_size,
        max_steps=max_steps,
        seed=seed,
        rows="global",
    )
    args = SFTConfig(
        max_steps=mix.num_steps,
        **trainer_arguments(mix, os.path.join(workdir, "trl_sft"), accumulation=accumulation, lr=lr, seed=seed),
        bf16=torch.cuda.is_available(),  # TRL defaults to bf16; fp32 on a CPU
        dataset_kwargs={"skip_prepare_dataset": True},
    )  # already tokenized and packed
    model = AutoModelForCausalLM.from_pretrained(world["model"])
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=mix.as_hf_dataset(),
        processing_class=AutoTokenizer.from_pretrained(world["model"]),
    )  # checked against the mixture (global batch, steps, positions) when it first reads the stream
    trainer.train()
    return trainer_summary(trainer, mix)


if __name__ == "__main__":
    run_from_command_line(main, __doc__)
