"""ReplayMixture on instruction data: prompt/completion target records (the Python reference topics as Q/A),
pydoc prose as replay, the tiny session tokenizer. What is checked is measured on the yielded examples: the loss
weight each source gets per step, the target exposure in examples, resume and the split over processes, the model
seeing no attention across examples, and bad inputs refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from replaylab import ReplayMixture
from replaylab.errors import DataError
from replaylab.replay_rows import replay_loss

torch.set_num_threads(1)
L = 64


@pytest.fixture(scope="module", autouse=True)
def home(module_home) -> Path:
    """This module's own REPLAYLAB_HOME (conftest.module_home)."""
    return module_home


def mixture(pc_store, prose_store, **kw):
    args = dict(replay_fraction=0.5, seq_len=L, batch_size=8, epochs=2, loss_weights=True, seed=3)
    return ReplayMixture(pc_store, prose_store, **{**args, **kw})


def steps(mix):
    """The yielded examples grouped by optimizer step (lists of dicts)."""
    out, batch = [], []
    per = len(mix) // mix.num_steps
    for ex in mix:
        batch.append(ex)
        if len(batch) == per:
            out.append(batch)
            batch = []
    return out


def is_target(ex) -> bool:
    """A target row holds prompts (labels off the loss after position 0); a replay (text) row has none."""
    return bool((ex["labels"][1:] == -100).any())


@pytest.mark.parametrize("rho", [0.25, 0.5])
def test_replay_gets_loss_weight_R_every_step(pc_store, prose_store, rho):
    mix = mixture(pc_store, prose_store, replay_fraction=rho)
    assert mix.masked
    for s, batch in enumerate(steps(mix)):
        replay = sum(float(ex["loss_weights"].sum()) for ex in batch if not is_target(ex))
        target = sum(float(ex["loss_weights"].sum()) for ex in batch if is_target(ex))
        assert replay == pytest.approx(rho, abs=1e-6) and target == pytest.approx(1 - rho, abs=1e-6), s
        shares = mix.step_shares(s)
        assert shares["replay"]["loss_weight"] == pytest.approx(rho)
        # what a plain mean over labels would give instead: the loss-token share, not R
        on = {
            k: sum(int((ex["labels"][1:] != -100).sum()) for ex in batch if is_target(ex) == (k == "target"))
            for k in ("target", "replay")
        }
        assert shares["replay"]["loss_tokens"] == pytest.approx(on["replay"] / (on["replay"] + on["target"]))
        for ex in batch:  # weights sit exactly on the loss tokens
            assert torch.equal(ex["loss_weights"] > 0, ex["labels"] != -100)


def test_replay_loss_is_the_share_weighted_mean_of_each_source(pc_store, prose_store):
    from transformers import LlamaConfig, LlamaForCausalLM

    mix = mixture(pc_store, prose_store, replay_fraction=0.25)
    torch.manual_seed(0)
    vocab = pc_store.meta["vocab_size"]
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=128,
            use_cache=False,
        )
    ).eval()
    batch = steps(mix)[0]
    total = torch.zeros(())
    ce = {"target": [], "replay": []}
    with torch.no_grad():
        for half in (batch[:4], batch[4:]):  # two micro-batches, summed
            ids = torch.stack([e["input_ids"] for e in half])
            logits = model(input_ids=ids, position_ids=torch.stack([e["position_ids"] for e in half])).logits
            total += replay_loss(logits, ids, torch.stack([e["loss_weights"] for e in half]))
            per_token = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            for i, e in enumerate(half):
                ce["target" if is_target(e) else "replay"].append(per_token[i][e["labels"][1:] != -100])
    want = 0.75 * torch.cat(ce["target"]).mean() + 0.25 * torch.cat(ce["replay"]).mean()
    assert float(total) == pytest.approx(float(want), rel=1e-5)


def test_target_exposure_is_exact_in_examples_and_loss_tokens(pc_store, prose_store):
    mix = mixture(pc_store, prose_store, epochs=3)
    exp = mix.target_exposure()
    assert exp["draws_per_budget_row"] == [3]
    assert exp["example_draws"] == 3 * exp["budget_examples"]
    assert exp["loss_token_draws"] == 3 * exp["budget_loss_tokens"]
    # and counted on what is yielded: every target row's loss tokens, over the run
    yielded = sum(int((ex["labels"][1:] != -100).sum()) for ex in mix if is_target(ex))
    assert yielded == exp["loss_token_draws"]


def test_resume_and_two_processes_see_the_rows_of_one_run(pc_store, prose_store):
    full = [ex for batch in steps(mixture(pc_store, prose_store)) for ex in batch]
    resumed = mixture(pc_store, prose_store)
    resumed.load_state_dict({"step": 3})
    tail = list(resumed)
    assert len(tail) == len(full) - 3 * 8
    for a, b in zip(tail, full[3 * 8 :]):
        assert all(torch.equal(a[k], b[k]) for k in a)
    ranks = [steps(mixture(pc_store, prose_store, rank=r, world_size=2)) for r in (0, 1)]
    joined = [ex for s in range(len(ranks[0])) for r in (0, 1) for ex in ranks[r][s]]
    assert len(joined) == len(full)
    for a, b in zip(joined, full):  # rank r holds rows [4r, 4r + 4) of every global batch, weights included
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_rows_are_examples_whole_with_positions_per_example(pc_store, prose_store):
    mix = mixture(pc_store, prose_store, packing="padded", loss_weights=False)
    for ex in mix:
        assert set(ex) == {"input_ids", "labels", "position_ids"}  # padding-free: no attention_mask
        if is_target(ex):  # one example then padding: positions restart exactly once
            assert int((ex["position_ids"][1:] == 0).sum()) <= 1


def test_records_in_memory_and_the_callback(pc_store, prose_store, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerState, TrainingArguments

    records = [{"prompt": f"Q{i}: what is {i} + {i}?\n", "completion": f"{2 * i}"} for i in range(200)]
    mix = ReplayMixture(
        records,
        prose_store,
        format="prompt_completion",
        tokenizer=pc_store.tokenizer(),
        options={"val_docs": 0},
        replay_fraction=0.5,
        seq_len=L,
        batch_size=4,
    )
    assert mix.stores["target"].meta["instructions"]["format"] == "prompt_completion"
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=512,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=128,
        )
    )
    assert model.config.use_cache
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=4, use_cpu=True, report_to=[])
    mix.trainer_callback().on_train_begin(args, TrainerState(max_steps=mix.num_steps), None, model=model)
    assert not model.config.use_cache  # a KV cache would let packed examples attend to each other


def test_bad_inputs_are_one_line(pc_store, prose_store):
    with pytest.raises(DataError, match="holds prompt_completion records, not messages") as e:
        mixture(pc_store, prose_store, format="messages")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="packing is 'tight'"):
        mixture(pc_store, prose_store, packing="tight")
    with pytest.raises(DataError, match="record 0 has no field 'completion'"):
        ReplayMixture(
            [{"prompt": "x"}],
            prose_store,
            format="prompt_completion",
            tokenizer=pc_store.tokenizer(),
            replay_fraction=0.5,
            seq_len=L,
            batch_size=4,
        )


def test_the_engine_refuses_a_raw_instruction_store(pc_store, prose_store):
    from replaylab.config import from_dict
    from replaylab.runconfig import RunConfig
    from replaylab.train.mixture import MixtureSampler

    cfg = from_dict(
        RunConfig,
        {
            "name": "x",
            "model": {"kind": "hf"},
            "data": {"seq_len": L, "domains": {"target": {"source": str(pc_store.path)}}},
            "train": {"batch_size": 4},
            "stages": [{"name": "ft", "steps": 2, "mixture": {"target": 1.0}}],
        },
    )
    with pytest.raises(DataError, match="loss mask; read it as whole examples per row"):
        MixtureSampler(cfg, {"target": pc_store})


def test_held_out_examples_score_completions_only(pc_store, prose_store):
    mix = mixture(pc_store, prose_store)
    target = mix.eval_examples("target")
    on = sum(int((ex["labels"][1:] != -100).sum()) for ex in target)
    assert on == int(mix.stores["target"].loss_counts("val", L).sum()) > 0
    assert all(set(ex) == {"input_ids", "labels", "position_ids"} for ex in target)
    replay = mix.eval_examples("replay", max_rows=3)
    assert len(replay) == 3 and all(bool((ex["labels"] != -100).all()) for ex in replay)
    with pytest.raises(DataError, match="no 'generic' source"):
        mix.eval_examples("generic")
