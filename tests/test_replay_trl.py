"""Instruction data through TRL's SFTTrainer and HF Trainer: completion-only labels and per-example positions reach
the model as the ReplayMixture made them, and what would be ignored or rewritten on the way (TRL options, a
collator that rebuilds positions or adds an attention mask) is refused in one line before the first step. Real
prompt/completion records (pydoc topics), a real tiny random Llama, the real TRL and Trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from instruction_fixtures import write_prompt_completion

from replaylab import ReplayMixture
from replaylab.errors import ConfigError

torch.set_num_threads(1)
L = 63  # seq_len: rows of 64 tokens


@pytest.fixture(scope="module", autouse=True)
def home(module_home) -> Path:
    """This module's own REPLAYLAB_HOME (conftest.module_home)."""
    return module_home


@pytest.fixture(scope="module")
def pc_store(tmp_path_factory, tiny_tokenizer):
    """The pydoc topics as prompt/completion records, in this module's own store (instruction_fixtures' session
    store is built under the session's home by the modules that import it)."""
    from replaylab.data.store import get_store

    corpus = write_prompt_completion(tmp_path_factory.mktemp("pc") / "topics_pc.jsonl")
    return get_store(str(corpus), tokenizer=tiny_tokenizer, options={"format": "prompt_completion"}, name="pc_trl")


@pytest.fixture(scope="module")
def llama(tmp_path_factory, tiny_tokenizer) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((Path(tiny_tokenizer) / name).read_bytes())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


def mixture(pc_store, prose_store, **kw) -> ReplayMixture:
    args = dict(replay_fraction=0.25, budget=8, epochs=1, seq_len=L, batch_size=4, rows="global")
    return ReplayMixture(pc_store, prose_store, **{**args, **kw})


def sft(llama, mix, out, *, collator=None, **kw):
    """TRL's SFTTrainer on the mixture's datasets form, recording every micro-batch it trains on."""
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen = []

    class Recording(trl.SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            seen.append({k: v.clone() for k, v in inputs.items() if torch.is_tensor(v)})
            return super().compute_loss(model, inputs, *args, **kwargs)

    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=mix.num_steps,
        learning_rate=1e-3,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    t = Recording(
        model=AutoModelForCausalLM.from_pretrained(llama),
        args=trl.SFTConfig(**{**base, **kw}),
        train_dataset=mix.as_hf_dataset(),
        processing_class=AutoTokenizer.from_pretrained(llama),
        data_collator=collator,
    )
    return t, seen


def refused(t, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as e:
        t.train()
    assert "\n" not in str(e.value) and t.state.global_step == 0


def test_trl_gets_completion_only_labels_and_per_example_positions(pc_store, prose_store, llama, tmp_path):
    """TRL's own collator drops the rows' position_ids and adds an all-ones attention_mask (packed examples would
    attend to each other): refused, naming the fix. With transformers' default_data_collator every micro-batch is
    the mixture's rows: labels -100 off the completions, positions restarting per example, no attention mask."""
    from transformers import default_data_collator

    mix = mixture(pc_store, prose_store)
    t, _ = sft(llama, mix, tmp_path)
    refused(t, r"drops the examples' position_ids; pass data_collator=transformers.default_data_collator")
    t, _ = sft(llama, mix, tmp_path, collator=default_data_collator)
    refused(t, "drops the examples' position_ids; set remove_unused_columns=False")  # TRL's column removal
    t, seen = sft(llama, mix, tmp_path, collator=default_data_collator, remove_unused_columns=False)
    t.train()
    rows = list(mix)
    assert t.state.global_step == mix.num_steps and len(seen) == 2 * mix.num_steps
    for key in ("input_ids", "labels", "position_ids"):
        assert torch.equal(torch.cat([b[key] for b in seen]), torch.stack([r[key] for r in rows]))
    assert all("attention_mask" not in b for b in seen)
    labels = torch.cat([b["labels"] for b in seen])
    positions = torch.cat([b["position_ids"] for b in seen])
    assert (labels == -100).any() and (labels != -100).any()  # completions only on the target rows
    assert ((positions[:, 1:] == 0).sum(dim=1) > 0).any()  # several examples in a row, each from position 0
    assert not t.model.config.use_cache  # a KV cache would let packed examples attend to each other


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"packing": True}, "packing=True would repack"),
        ({"padding_free": True}, "padding_free=True"),
        ({"completion_only_loss": False}, "completion_only_loss=False"),
        ({"assistant_only_loss": True}, "assistant_only_loss=True"),
        ({"dataset_text_field": "body"}, "dataset_text_field='body' is not read"),
        ({"max_length": 32}, "max_length 32 is shorter"),
    ],
)
def test_trl_options_that_would_be_ignored_are_refused(pc_store, prose_store, llama, tmp_path, kw, words):
    from transformers import default_data_collator

    mix = mixture(pc_store, prose_store, max_steps=1)
    try:
        t, _ = sft(llama, mix, tmp_path, collator=default_data_collator, **kw)
    except ValueError as e:  # TRL refuses some combinations itself, before training: not silent either
        assert "padding-free" in str(e) or "not conversational" in str(e)
        return
    refused(t, words)


def test_trl_completion_only_loss_on_a_text_target_is_refused(prose_store, llama, tmp_path, pc_store):
    from transformers import default_data_collator

    mix = ReplayMixture(prose_store, replay_fraction=0.0, budget=4, seq_len=L, batch_size=4, rows="global")
    t, _ = sft(llama, mix, tmp_path, collator=default_data_collator, completion_only_loss=True, max_steps=1)
    refused(t, "the target is text")


def test_hf_trainer_keeps_the_rows_as_they_are(pc_store, prose_store, llama, tmp_path):
    """HF Trainer's default collator keeps labels and positions; loss_weights need remove_unused_columns=False."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    mix = mixture(pc_store, prose_store, loss_weights=True)
    args = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        max_steps=1,
    )
    model = AutoModelForCausalLM.from_pretrained(llama)
    t = Trainer(model=model, args=TrainingArguments(**args), train_dataset=mix)
    refused(t, "drops the examples' loss_weights.*remove_unused_columns=False")
    t = Trainer(model=model, args=TrainingArguments(**args, remove_unused_columns=False), train_dataset=mix)
    refused(t, "ignores them; override compute_loss with replaylab.replay_rows.replay_loss")  # Llama takes **kwargs


@pytest.mark.parametrize("name", ["hf_trainer_instructions", "sft_replay_trl"])
def test_instruction_examples_run_a_few_steps(name, tmp_path):
    """The examples as a user runs them (a few steps): replay weighs exactly R in every step's loss while its share
    of the rows and of the loss tokens differs."""
    import importlib
    import sys

    if name == "sft_replay_trl":
        pytest.importorskip("trl")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    main = importlib.import_module(name).main
    out = main(workdir=str(tmp_path), seq_len=127, batch_size=4, max_steps=2)
    assert out["steps"] == 2 and len(out["losses"]) >= 1
    assert out["replay_loss_weight"] == pytest.approx([0.25, 0.25], abs=1e-6)
    assert out["exposure"]["example_draws"] > 0
