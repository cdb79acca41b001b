"""What a ReplayMixture refuses or makes exact when HF Trainer, TRL or a DataLoader reads it (issue 23's "also
found" list): a Trainer whose global batch is not the mixture's is refused before it trains, with or without
`mix.trainer_callback()`; a model with fewer positions than an example's tokens is refused in one line (a tiny
random Llama and GPT-2 from transformers configs); DataLoader workers read the exact stream; torchrun on a CPU
without use_cpu=True is told the fix; a replay fraction whose plan explodes is refused with its bound. Real stores
of real text, real transformers models and the real Trainer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hang import HANG_S

from replaylab import ReplayMixture
from replaylab.errors import ConfigError
from replaylab.runconfig import MAX_STEPS

torch.set_num_threads(1)
L = 32  # seq_len: each example holds L + 1 tokens
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module", autouse=True)
def home(module_home) -> Path:
    """This module's own REPLAYLAB_HOME (conftest.module_home)."""
    return module_home


def save_model(folder: Path, config, tokenizer: str) -> str:
    """A random causal LM built from a transformers config, saved with the test tokenizer."""
    from transformers import AutoModelForCausalLM

    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((Path(tokenizer) / name).read_bytes())
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def llama(tmp_path_factory, tiny_tokenizer) -> str:
    """A tiny random Llama with 128 positions."""
    from transformers import LlamaConfig

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
    return save_model(tmp_path_factory.mktemp("llama"), config, tiny_tokenizer)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, tiny_tokenizer) -> str:
    """A tiny random GPT-2 with 128 positions (`n_positions`: learned position embeddings)."""
    from transformers import GPT2Config

    config = GPT2Config(vocab_size=512, n_positions=128, n_embd=32, n_layer=2, n_head=4)
    return save_model(tmp_path_factory.mktemp("gpt2"), config, tiny_tokenizer)


def mixture(code_store, prose_store, **kw) -> ReplayMixture:
    args = dict(replay_fraction=0.5, budget=8, epochs=1, seq_len=L, batch_size=4, rows="global")
    return ReplayMixture(code_store, prose_store, **{**args, **kw})


def rows_of(mix) -> torch.Tensor:
    return torch.stack([ex["input_ids"] for ex in mix])


def trainer(model_dir, dataset, out, *, callbacks=(), **kw):
    """A real HF Trainer (no callback unless given) that records the rows of every micro-batch it trains on."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    seen = []

    class Recording(Trainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            seen.append(inputs["input_ids"].clone())
            return super().compute_loss(model, inputs, *args, **kwargs)

    args = dict(
        output_dir=str(out),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_train_epochs=1,
        learning_rate=1e-3,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
    )
    t = Recording(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=TrainingArguments(**{**args, **kw}),
        train_dataset=dataset,
        callbacks=list(callbacks),
    )
    return t, seen


def refused(t, words: str) -> str:
    """The Trainer stops with a one-line ConfigError naming `words`, before its first optimizer step."""
    with pytest.raises(ConfigError, match=words) as e:
        t.train()
    assert "\n" not in str(e.value) and t.state.global_step == 0
    return str(e.value)


# ---- the batch guard, without the callback ----------------------------------------------------------------
def test_a_trainer_whose_batch_is_not_the_mixtures_is_refused_without_the_callback(
    code_store, prose_store, llama, tmp_path
):
    """The issue's case: the mixture is planned for global batches of 16, the Trainer takes 8 per device and
    accumulates 1. Without the check it trained twice the steps with per-step replay shares from 0.125 to 0.875."""
    mix = mixture(code_store, prose_store, budget=32, batch_size=16)
    t, seen = trainer(llama, mix, tmp_path, per_device_train_batch_size=8, gradient_accumulation_steps=1)
    message = refused(t, "global batch")
    assert "per_device_train_batch_size 8 x gradient_accumulation_steps 1 x world_size 1 = 8" in message
    assert "batch_size is 16" in message and seen == []
    # the same through TRL's form (a datasets.IterableDataset over the stream)
    t, seen = trainer(
        llama,
        mix.as_hf_dataset(),
        tmp_path,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        max_steps=mix.num_steps,
    )
    refused(t, "global batch")
    for dataset in (mix, mix.as_hf_dataset()):  # DataLoader workers: checked in the main process, before they start
        kw = dict(per_device_train_batch_size=8, gradient_accumulation_steps=1, dataloader_num_workers=2)
        t, seen = trainer(llama, dataset, tmp_path, max_steps=mix.num_steps, **kw)
        refused(t, "global batch")
    # more steps than the mixture holds: num_train_epochs=3 would read the stream three times
    t, _ = trainer(llama, mixture(code_store, prose_store), tmp_path, num_train_epochs=3)
    refused(t, "num_train_epochs=1")


def test_without_the_callback_a_matching_trainer_trains_the_stream_and_resumes_exactly(
    code_store, prose_store, llama, tmp_path
):
    """No callback: the stream checks the Trainer and places itself at its first read. With ignore_data_skip=True a
    resumed Trainer needs the stream at the checkpoint's step; it gets it without the callback too."""
    from transformers import TrainerCallback

    mix = mixture(code_store, prose_store)
    full = rows_of(mix)
    t, seen = trainer(llama, mix, tmp_path / "a")
    t.train()
    assert t.state.global_step == mix.num_steps == 4 and torch.equal(torch.cat(seen), full)

    class StopAt3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 3

    run = dict(save_strategy="steps", save_steps=3, ignore_data_skip=True)
    t, head = trainer(llama, mixture(code_store, prose_store), tmp_path / "b", callbacks=[StopAt3()], **run)
    t.train()
    t, tail = trainer(llama, mixture(code_store, prose_store), tmp_path / "b", **run)
    t.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))
    assert t.state.global_step == 4 and torch.equal(torch.cat(head + tail), full)


# ---- positions ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "seq_len", "field"),
    [("llama", 256, "max_position_embeddings 128"), ("gpt2", 128, "128")],
    ids=["llama-128-positions-on-256", "gpt2-128-positions-on-128"],
)
def test_an_example_longer_than_the_models_positions_is_refused(
    code_store, prose_store, llama, gpt2, tmp_path, model, seq_len, field
):
    """Llama (rotary positions) trained silently on rows longer than its positions; GPT-2 (learned positions)
    died with a raw IndexError. An example holds seq_len + 1 tokens, so seq_len 128 needs 129 positions."""
    folder = {"llama": llama, "gpt2": gpt2}[model]
    mix = mixture(code_store, prose_store, seq_len=seq_len)
    t, _ = trainer(folder, mix, tmp_path)
    message = refused(t, f"seq_len {seq_len}")
    assert field in message and "seq_len <= 127" in message
    t, _ = trainer(folder, mix, tmp_path, callbacks=[mix.trainer_callback()])  # the callback checks the same
    refused(t, f"seq_len {seq_len}")
    ok = mixture(code_store, prose_store, seq_len=127, budget=4, batch_size=4, max_steps=1)
    t, _ = trainer(folder, ok, tmp_path)
    t.train()  # 128 tokens on 128 positions: fits
    assert t.state.global_step == 1


def test_replaylab_finetune_checks_positions_by_their_equivalent_names(gpt2):
    """The fine-tuning path feeds seq_len tokens (inputs seq[:-1]); GPT-2 names its positions n_positions."""
    from replaylab.hf.models import check_seq_len

    check_seq_len("gpt2", gpt2, 128)
    with pytest.raises(ConfigError, match="seq_len 129 is longer than model 'gpt2' allows") as e:
        check_seq_len("gpt2", gpt2, 129)
    assert "128" in str(e.value) and "\n" not in str(e.value)


# ---- DataLoader workers ------------------------------------------------------------------------------------
def test_several_dataloader_workers_read_the_exact_stream(code_store, prose_store, llama, tmp_path):
    """Only worker 0 reads the one ordered stream; the others stop at once, and the DataLoader then returns worker
    0's batches in order: the batches of num_workers=0, under a plain DataLoader, HF Trainer and TRL's form."""
    mix = mixture(code_store, prose_store, rows="rank")
    full = rows_of(mix)
    loader = torch.utils.data.DataLoader(mix, batch_size=2, num_workers=2)
    assert torch.equal(torch.cat([b["input_ids"] for b in loader]), full)
    gmix = mixture(code_store, prose_store)
    t, seen = trainer(llama, gmix, tmp_path, dataloader_num_workers=2)
    t.train()
    assert t.state.global_step == gmix.num_steps and torch.equal(torch.cat(seen), full)
    hf = gmix.as_hf_dataset()
    t, seen = trainer(llama, hf, tmp_path, dataloader_num_workers=2, max_steps=gmix.num_steps)
    t.train()
    assert torch.equal(torch.cat(seen), full)


# ---- torchrun on a CPU without use_cpu=True ----------------------------------------------------------------
TORCHRUN_SCRIPT = """
import sys
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
from replaylab import ReplayMixture
from replaylab.errors import ReplaylabError

target, replay, model, out = sys.argv[1:]
mix = ReplayMixture(target, replay, replay_fraction=0.5, budget=8, seq_len=32, batch_size=8, rows="global")
args = TrainingArguments(out, per_device_train_batch_size=2, gradient_accumulation_steps=2, report_to=[],
                         num_train_epochs=1, save_strategy="no", disable_tqdm=True)  # no use_cpu=True
try:
    Trainer(model=AutoModelForCausalLM.from_pretrained(model), args=args, train_dataset=mix).train()
except ReplaylabError as e:
    print("REFUSED:", e)
    sys.exit(2)
"""


@pytest.mark.slow
def test_torchrun_on_a_cpu_without_use_cpu_is_told_the_fix(code_store, prose_store, llama, tmp_path):
    """Two torchrun processes on a CPU: without use_cpu=True each Trainer runs alone (world_size 1) and would train
    the whole stream; the refusal names the fix."""
    if torch.cuda.is_available():
        pytest.skip("on a CUDA machine the Trainer forms DDP without use_cpu")
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(TORCHRUN_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    argv = [str(code_store.path), str(prose_store.path), llama, str(tmp_path / "out")]
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_S,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("REFUSED:")]
    assert run.returncode != 0 and len(lines) == 2, run.stdout + run.stderr[-3000:]
    assert all("use_cpu=True" in line and "2 processes" in line for line in lines)


# ---- a replay fraction whose plan explodes -----------------------------------------------------------------
@pytest.mark.parametrize("max_steps", [None, 20], ids=["uncapped", "capped"])
def test_a_replay_fraction_whose_plan_explodes_is_refused_with_its_bound(code_store, prose_store, max_steps):
    """R = 0.9999999 stretches 4 target steps to 40,000,001. Capped by max_steps the run held no target at all
    (the target's share of each batch was 1e-7), so the cap is no fix: the bound on R is."""
    with pytest.raises(ConfigError) as e:
        mixture(code_store, prose_store, replay_fraction=0.9999999, budget=64, batch_size=16, max_steps=max_steps)
    message = str(e.value)
    assert "replay_fraction 0.9999999" in message and "40,000,001 steps" in message and "\n" not in message
    assert f"{MAX_STEPS:,}" in message and "replay_fraction <= 0.999996" in message
    bound = 0.999996  # the bound it names fits: ceil(64 / (16 x 4e-6)) = 1,000,000 steps
    assert mixture(code_store, prose_store, replay_fraction=bound, budget=64, batch_size=16, max_steps=2).plan
    assert mixture(code_store, prose_store, replay_fraction=0.99, budget=64, batch_size=16).num_steps == 400


# ---- the comparison table's per-batch rule -----------------------------------------------------------------
def test_each_batch_holds_the_floor_or_ceiling_of_the_runs_replay_rows_per_step(code_store, prose_store):
    """docs/integrations.md: R = 0.25, batch 16, 512 target draws need 42.7 steps at 12 target rows each; the run
    takes 43, so its 43 x 16 - 512 = 176 replay rows spread as 4 per batch and 5 in 4 batches (not R x 16 = 4).
    Rows are classified by looking their tokens up in the target store, not by asking the sampler."""
    mix = mixture(code_store, prose_store, replay_fraction=0.25, budget=256, epochs=2, batch_size=16)
    targets = {s.tobytes() for s in code_store.sequences("train", L, np.arange(code_store.num_sequences("train", L)))}
    rows = rows_of(mix).numpy()
    replay = np.array([r.tobytes() not in targets for r in rows]).reshape(mix.num_steps, 16).sum(axis=1)
    assert mix.num_steps == 43 and replay.sum() == 43 * 16 - 512 == 176
    assert dict(zip(*np.unique(replay, return_counts=True))) == {4: 39, 5: 4}
    quota = replay.sum() / mix.num_steps  # floor or ceiling of it, and the running count within one row
    assert set(replay.tolist()) <= {np.floor(quota), np.ceil(quota)}
    assert np.abs(np.cumsum(replay) - quota * np.arange(1, mix.num_steps + 1)).max() < 1
    assert [mix.domain_counts(s).get("replay", 0) for s in range(mix.num_steps)] == replay.tolist()
