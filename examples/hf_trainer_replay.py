"""Replay fine-tuning with Hugging Face Trainer: a ReplayMixture is the train_dataset.

    python examples/hf_trainer_replay.py                        # tiny random Llama on stdlib text, CPU
    torchrun --nproc_per_node 2 examples/hf_trainer_replay.py   # the same global batches, split over 2 processes

The lines that matter (everything else builds the tiny model and the text):

    mix = ReplayMixture(target_texts, replay_texts, tokenizer=model_dir, replay_fraction=0.5, budget=128,
                        epochs=2, seq_len=128, batch_size=8, rows="global")   # Trainer splits batches itself
    args = TrainingArguments(out, per_device_train_batch_size=4, gradient_accumulation_steps=2, num_train_epochs=1)
    Trainer(model=model, args=args, train_dataset=mix).train()

per_device_train_batch_size x gradient_accumulation_steps x processes must equal batch_size: every optimizer
step is then one mixture batch, with exactly its share of replay. The stream checks this (and the model's
positions) when the Trainer first reads it, and refuses a mismatch in one line. Resume with
`trainer.train(resume_from_checkpoint=True)`: the Trainer re-reads and drops the batches it already trained on,
or, with `ignore_data_skip=True`, the stream starts at the checkpoint's step. Both give the batches of an
uninterrupted run.
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
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

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
    args = TrainingArguments(
        num_train_epochs=1,  # one pass over the mixture = its num_steps steps
        **trainer_arguments(mix, os.path.join(workdir, "hf_trainer"), accumulation=accumulation, lr=lr, seed=seed),
    )
    model = AutoModelForCausalLM.from_pretrained(world["model"])
    trainer = Trainer(model=model, args=args, train_dataset=mix)  # checked against the mixture at its first read
    trainer.train()
    return trainer_summary(trainer, mix)


if __name__ == "__main__":
    run_from_command_line(main, __doc__)
