"""How a `ReplayMixture` joins a Hugging Face Trainer (HF Trainer, TRL's SFTTrainer): the optional callback, the
join when a Trainer first reads the stream (checks by `hf.guards`, then the stream placed where the Trainer resumes
reading), and the `datasets` view for stacks that take only `datasets` datasets. replay.py holds the stream itself.
"""

from __future__ import annotations

from typing import Any

from replaylab.hf import guards
from replaylab.replay_rows import masked_examples, replay_loss


def trainer_callback(mix: Any):
    """A transformers TrainerCallback that joins `mix` to the Trainer when training begins (ReplayMixture.
    trainer_callback says what that checks and where it places the stream)."""
    from transformers import TrainerCallback

    class ReplayMixtureCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            join_trainer(mix, args, state, model)

    return ReplayMixtureCallback()


def join_reading_trainer(mix: Any) -> None:
    """Join the Trainer whose training loop is reading `mix` now, if any (found on the call stack by hf.guards)."""
    trainer = guards.reading_trainer(mix)
    if trainer is None:
        return
    join_trainer(mix, trainer.args, trainer.state, trainer.model)
    if mix.masked:  # labels, positions and weights must reach the model as they are
        examples = masked_examples(mix, 0, (0, min(2, mix.batch_size)))
        if trainer.train_dataset is not mix:  # the datasets form (as_hf_dataset) yields int lists
            examples = [{k: v.tolist() for k, v in e.items()} for e in examples]
        guards.check_collator(mix, trainer, examples)


def join_trainer(mix: Any, args: Any, state: Any, model: Any) -> None:
    """Check a Trainer that trains on `mix` and place the stream where the Trainer resumes reading."""
    guards.check_trainer(mix, args, state, model)
    if mix.masked and getattr(getattr(model, "config", None), "use_cache", False):
        # With a KV cache transformers ignores packed position_ids and lets examples attend to each other
        # (tests/test_document_packing.py); training never uses the cache.
        model.config.use_cache = False
    mix.load_state_dict({"step": state.global_step if args.ignore_data_skip else 0})


def weighted_compute_loss(trainer: Any, model: Any, inputs: dict, return_outputs: bool = False):
    """A Trainer's `compute_loss` on ReplayMixture rows made with `loss_weights=True`: `replay_loss` of this
    micro-batch, times the number of processes (the Trainer averages gradients over them; replay_loss is each
    process's part of one step objective). Give the Trainer subclass `loss_is_scaled_for_ga = True` too: the
    micro-batches' losses are summed, never averaged, so the replay source weighs exactly R per step."""
    weights = inputs.pop("loss_weights")  # (b, seq_len + 1): 0 off the loss, w_source / N_source on it
    inputs.pop("labels")  # the weights leave out what the labels leave out
    outputs = model(**inputs)  # input_ids, position_ids (per example), no attention_mask
    loss = replay_loss(outputs.logits, inputs["input_ids"], weights) * trainer.accelerator.num_processes
    return (loss, outputs) if return_outputs else loss


def as_hf_dataset(mix: Any):
    """`mix` as a `datasets.IterableDataset` of int lists that iterates `mix` when read."""
    import datasets

    def examples():
        for example in mix:
            yield {k: v.tolist() for k, v in example.items()}

    view = datasets.IterableDataset.from_generator(examples)
    view.replay_mixture = mix  # so that a Trainer reading it as its eval_dataset is told apart (hf.guards)
    own_set_epoch = view.set_epoch

    def set_epoch(epoch: int) -> None:  # Accelerate calls it in the main process, before any worker starts
        mix.set_epoch(epoch)
        own_set_epoch(epoch)

    view.set_epoch = set_epoch
    return view
