"""replaylab.ReplayMixture: the engine's replay mixture as a dataset for HF Trainer, TRL, Accelerate and plain
PyTorch. Real stores of real text (stdlib code as the target, pydoc prose as replay), a real tiny random Llama,
the real HF Trainer and TRL, two real gloo processes. Shares and exposure are measured on what the dataset
yields, by recognising each sequence in the stores, not read back from the sampler."""

from __future__ import annotations

import importlib
import os
import socket
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from replaylab import ReplayMixture
from replaylab.errors import ConfigError, DataError, ReplaylabError

torch.set_num_threads(1)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
L = 32  # seq_len of most tests: small, so the budgets below fit many times over


@pytest.fixture(scope="module", autouse=True)
def home(module_home) -> Path:
    """This module's own REPLAYLAB_HOME (conftest.module_home)."""
    return module_home


@pytest.fixture(scope="module")
def llama(tmp_path_factory, tiny_tokenizer) -> str:
    """A tiny random LlamaForCausalLM with the test tokenizer, saved as a Hugging Face folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((Path(tiny_tokenizer) / name).read_bytes())
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=512,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=True,
        )
    ).save_pretrained(folder)
    return str(folder)


def mixture(code_store, prose_store, **kw) -> ReplayMixture:
    args = dict(replay_fraction=0.25, budget=24, epochs=2, seq_len=L, batch_size=8)
    return ReplayMixture(code_store, prose_store, **{**args, **kw})


def rows_of(mix) -> torch.Tensor:
    return torch.stack([ex["input_ids"] for ex in mix])


def keys(tokens) -> list[bytes]:
    return [np.asarray(t, dtype=np.int64).tobytes() for t in tokens]


# ---- the mixture it yields -----------------------------------------------------------------------------
@pytest.mark.parametrize(("rho", "epochs"), [(0.25, 2), (0.5, 3), (0.75, 1), (0.0, 2)])
def test_every_batch_holds_its_exact_share_and_the_target_is_seen_budget_x_epochs(code_store, prose_store, rho, epochs):
    budget, batch = 24, 8
    mix = mixture(code_store, prose_store, replay_fraction=rho, epochs=epochs)
    examples = list(mix)
    assert len(examples) == len(mix) == mix.num_steps * batch
    for ex in examples:  # packed: seq_len + 1 ids, labels = input_ids (the model shifts), no padding
        assert ex["input_ids"].shape == (L + 1,) and ex["input_ids"].dtype == torch.long
        assert torch.equal(ex["labels"], ex["input_ids"]) and bool((ex["attention_mask"] == 1).all())
    rows = keys(ex["input_ids"].numpy() for ex in examples)
    targets = set(keys(code_store.sequences("train", L, np.arange(code_store.num_sequences("train", L)))))
    budget_rows = keys(code_store.sequences("train", L, code_store.budget_indices(L, budget, 0)))
    is_target = np.array([r in targets for r in rows]).reshape(mix.num_steps, batch)
    # R x batch is a whole number here: every global batch holds exactly that many replay sequences
    assert ((~is_target).sum(axis=1) == rho * batch).all()
    # the target: exactly the budget, each sequence exactly `epochs` times, one full pass before the next
    drawn = [r for r, t in zip(rows, is_target.reshape(-1)) if t]
    assert Counter(drawn) == {r: epochs for r in budget_rows}
    assert set(drawn[:budget]) == set(budget_rows)
    assert mix.target_exposure() == {"budget": budget, "draws": budget * epochs, "epochs": epochs}
    assert mix.num_steps == budget * epochs / (batch * (1 - rho))  # replay stretches the run


def test_it_is_the_stream_replaylab_finetune_trains_on(code_store, prose_store, tiny_tokenizer):
    """The same plan, RunConfig and MixtureSampler that `replaylab finetune` builds (as finetune.py built them before
    the shared builder existed: plan_mix, sampler_config, MixtureSampler)."""
    from replaylab.finetune_form import read_finetune
    from replaylab.hf.packing import open_stores, plan_mix, sampler_config
    from replaylab.train.mixture import MixtureSampler

    cfg = read_finetune(
        {
            "model": "unused",
            "target": {"source": str(code_store.path), "budget": 40},
            "replay": {"source": str(prose_store.path)},
            "replay_fraction": 0.3,
            "target_epochs": 1.5,
            "seq_len": L,
            "batch_size": 8,
            "seed": 7,
        }
    )
    plan = plan_mix(budget=40, target_epochs=1.5, replay_fraction=0.3, batch_size=8)
    sampler = MixtureSampler(sampler_config(cfg, plan, tiny_tokenizer), open_stores(cfg, tiny_tokenizer))
    expected = np.concatenate([sampler.batch(s)[0] for s in range(plan.total_steps)])
    mix = mixture(code_store, prose_store, replay_fraction=0.3, budget=40, epochs=1.5, seed=7)
    assert mix.num_steps == plan.total_steps
    assert np.array_equal(rows_of(mix).numpy(), expected)


def test_the_hf_loss_on_an_example_is_the_engines_loss(code_store, prose_store, llama):
    """input_ids = labels = the whole seq_len + 1 sequence: HF's internal shift scores exactly the engine's targets
    (inputs seq[:-1], targets seq[1:]); seq[:-1] as both would drop the last target."""
    from transformers import AutoModelForCausalLM

    from replaylab.hf.train_module import HFCausalLMModule
    from replaylab.runconfig import OptimConfig

    model = AutoModelForCausalLM.from_pretrained(llama)
    batch = torch.utils.data.default_collate(list(mixture(code_store, prose_store))[:8])
    hf_loss = model(**batch).loss
    engine = HFCausalLMModule(model, OptimConfig(), device=torch.device("cpu"), dtype=None)
    assert hf_loss.item() == pytest.approx(engine.micro_loss(batch["input_ids"]).item(), rel=1e-6)
    short = batch["input_ids"][:, :-1]
    assert model(input_ids=short, labels=short).loss.item() != pytest.approx(hf_loss.item(), rel=1e-6)


def test_state_dict_resumes_a_plain_loop_mid_step(code_store, prose_store):
    full = rows_of(mixture(code_store, prose_store))
    first = mixture(code_store, prose_store)
    it = iter(first)
    head = [next(it)["input_ids"] for _ in range(13)]  # step 1, row 5
    state = first.state_dict()
    assert state["step"] == 1 and state["row"] == 5
    again = mixture(code_store, prose_store)
    again.load_state_dict(state)
    assert torch.equal(torch.cat([torch.stack(head), rows_of(again)]), full)
    again.load_state_dict({"step": 4})  # by step (what a Trainer checkpoint knows)
    assert torch.equal(rows_of(again), full[4 * 8 :])
    assert len(again) == len(full)  # len() is the full pass, wherever the stream resumes


# ---- HF Trainer: planning, resume -------------------------------------------------------------------------
def train_hf(llama, mix, out, *, stop=None, resume=None, skip=False):
    """HF Trainer over `mix` (per-device 2 x accumulation 2 x 1 process = batch 4); returns the input rows of every
    micro-batch it trained on, its losses and its state."""
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    seen = []

    class Recording(Trainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            seen.append(inputs["input_ids"].clone())
            return super().compute_loss(model, inputs, *args, **kwargs)

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == stop

    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_train_epochs=1,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="steps",
        save_steps=3,
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        ignore_data_skip=skip,
    )
    trainer = Recording(
        model=AutoModelForCausalLM.from_pretrained(llama),
        args=args,
        train_dataset=mix,
        callbacks=[mix.trainer_callback()] + ([StopAt()] if stop else []),
    )
    trainer.train(resume_from_checkpoint=resume)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return torch.cat(seen), losses, trainer.state


@pytest.fixture(scope="module")
def uninterrupted(code_store, prose_store, llama, tmp_path_factory):
    mix = mixture(code_store, prose_store, batch_size=4, budget=12, epochs=1, rows="global")
    rows, losses, state = train_hf(llama, mix, tmp_path_factory.mktemp("hf_full"))
    assert state.max_steps == state.global_step == mix.num_steps == 4  # len() -> exactly the mixture's steps
    assert torch.equal(rows, rows_of(mix))
    return rows, losses


@pytest.mark.parametrize("ignore_data_skip", [False, True], ids=["trainer-skips", "callback-jumps"])
def test_a_resumed_trainer_sees_the_batches_of_an_uninterrupted_one(
    code_store, prose_store, llama, tmp_path, uninterrupted, ignore_data_skip
):
    mix = mixture(code_store, prose_store, batch_size=4, budget=12, epochs=1, rows="global")
    head, _, state = train_hf(llama, mix, tmp_path, stop=3)
    assert state.global_step == 3 and (tmp_path / "checkpoint-3").is_dir()
    fresh = mixture(code_store, prose_store, batch_size=4, budget=12, epochs=1, rows="global")
    tail, losses, state = train_hf(llama, fresh, tmp_path, resume=str(tmp_path / "checkpoint-3"), skip=ignore_data_skip)
    assert state.global_step == 4
    assert torch.equal(torch.cat([head, tail]), uninterrupted[0])
    assert losses[-1] == pytest.approx(uninterrupted[1][-1], rel=1e-5)  # and the same training


def test_the_callback_refuses_a_trainer_that_does_not_match(code_store, prose_store, llama, tmp_path):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    mix = mixture(code_store, prose_store, batch_size=4, budget=12, epochs=1, rows="global")
    model = AutoModelForCausalLM.from_pretrained(llama)
    for kw, words in [
        ({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}, "global batch"),
        (
            {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "num_train_epochs": 3},
            "num_train_epochs=1",
        ),
    ]:
        args = TrainingArguments(
            output_dir=str(tmp_path),
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
            save_strategy="no",
            **{"num_train_epochs": 1, **kw},
        )
        with pytest.raises(ConfigError, match=words):
            Trainer(model=model, args=args, train_dataset=mix, callbacks=[mix.trainer_callback()]).train()


# ---- two processes ----------------------------------------------------------------------------------------
def _rank_worker(rank: int, world: int, port: int, stores: tuple[str, str], llama: str, out: str) -> None:
    """One gloo process: a plain DataLoader (rows="rank", rank from torch.distributed) and an HF Trainer
    (rows="global", Accelerate splits the batches)."""
    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    kw = dict(replay_fraction=0.25, budget=24, epochs=2, seq_len=L, batch_size=8)
    mix = ReplayMixture(*stores, **kw)
    plain = torch.cat([b["input_ids"] for b in torch.utils.data.DataLoader(mix, batch_size=2)])
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    seen = []

    class Recording(Trainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            seen.append(inputs["input_ids"].clone())
            return super().compute_loss(model, inputs, *args, **kwargs)

    gmix = ReplayMixture(*stores, rows="global", **kw)
    args = TrainingArguments(
        output_dir=f"{out}/trainer",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_train_epochs=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
    )
    Recording(
        model=AutoModelForCausalLM.from_pretrained(llama),
        args=args,
        train_dataset=gmix,
        callbacks=[gmix.trainer_callback()],
    ).train()
    torch.save({"plain": plain, "trainer": torch.cat(seen)}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_together_see_exactly_the_single_process_batches(code_store, prose_store, llama, tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stores = (str(code_store.path), str(prose_store.path))
    mp.spawn(_rank_worker, args=(2, port, stores, llama, str(tmp_path)), nprocs=2)
    single = mixture(code_store, prose_store)
    full = rows_of(single).reshape(single.num_steps, 8, L + 1)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # plain loop: rank r trains the contiguous rows [4r, 4r + 4) of every global batch
    plain = torch.cat([r["plain"].reshape(single.num_steps, 4, L + 1) for r in ranks], dim=1)
    assert torch.equal(plain, full)
    # explicit rank / world_size give the same rows without torch.distributed
    explicit = [rows_of(mixture(code_store, prose_store, rank=r, world_size=2)) for r in range(2)]
    assert all(torch.equal(e, r["plain"]) for e, r in zip(explicit, ranks))
    # HF Trainer under Accelerate: micro-batch j of rank r = rows [4j + 2r, 4j + 2r + 2) of the global batch
    trainer = torch.stack([r["trainer"].reshape(single.num_steps, 2, 2, L + 1) for r in ranks], dim=2)
    assert torch.equal(trainer.reshape(single.num_steps, 8, L + 1), full)


# ---- inputs and errors ------------------------------------------------------------------------------------
def test_texts_datasets_and_tokenizer_objects_go_through_the_data_layer(tiny_tokenizer, home):
    from pydoc_data.topics import topics

    import datasets
    from transformers import PreTrainedTokenizerFast

    texts = [topics[k] for k in sorted(topics)]
    target, replay = texts[::2], texts[1::2]
    kw = dict(replay_fraction=0.5, budget=16, epochs=2, seq_len=L, batch_size=4)
    from_lists = ReplayMixture(target, replay, tokenizer=tiny_tokenizer, **kw)
    again = ReplayMixture(list(target), replay, tokenizer=tiny_tokenizer, **kw)
    assert again.stores["target"].path == from_lists.stores["target"].path  # cached like any store
    assert from_lists.stores["target"].path.parent == home / "stores"
    from_datasets = ReplayMixture(
        datasets.Dataset.from_dict({"body": target}),
        datasets.Dataset.from_dict({"body": replay}),
        tokenizer=tiny_tokenizer,
        text_field="body",
        **kw,
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_file=str(Path(tiny_tokenizer) / "tokenizer.json"), eos_token="<|endoftext|>"
    )
    from_object = ReplayMixture(target, replay, tokenizer=hf_tok, **kw)
    from_store = ReplayMixture(from_lists.stores["target"].path, from_lists.stores["replay"].path.name, **kw)
    expected = rows_of(from_lists)
    for other in (from_datasets, from_object, from_store):
        assert torch.equal(rows_of(other), expected)
    pure = ReplayMixture(target, tokenizer=tiny_tokenizer, **{**kw, "replay_fraction": 0.0})
    assert pure.realized_shares() == {"target": 1.0}


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"replay_fraction": 1.0}, "replay_fraction is 1.0"),
        ({"replay_fraction": "0.5"}, "replay_fraction is '0.5'"),
        ({"seq_len": 4}, "seq_len is 4"),
        ({"batch_size": 0}, "batch_size is 0"),
        ({"budget": 0}, "budget is 0"),
        ({"budget": 10**9}, "exceeds"),
        ({"epochs": 0}, "epochs is 0"),
        ({"epochs": float("inf")}, "epochs is inf"),
        ({"max_steps": 0}, "max_steps is 0"),
        ({"seed": 1.5}, "seed is 1.5"),
        ({"replay": None}, "replay is None"),
        ({"target": None}, "target is None"),
        ({"target": 123}, "target is a int"),
        ({"target": ["some text"]}, "pass tokenizer="),
        ({"target": "no-such-store"}, "no token store"),
        ({"tokenizer": object()}, "tokenizer is a object"),
        ({"rows": "both"}, "rows is 'both'"),
        ({"rank": 0}, "give both or neither"),
        ({"rank": 2, "world_size": 2}, "out of range"),
        ({"rank": 0, "world_size": 3}, "does not split over 3"),
        ({"rank": 0, "world_size": 2, "rows": "global"}, "rows='global'"),
    ],
)
def test_bad_arguments_are_one_line_errors(code_store, prose_store, kw, words):
    args = {"target": code_store, "replay": prose_store, **kw}
    with pytest.raises(ReplaylabError, match=words) as e:
        mixture(args.pop("target"), args.pop("replay"), **args)
    assert "\n" not in str(e.value)


def test_bad_states_and_loaders_are_refused(code_store, prose_store, tiny_tokenizer):
    mix = mixture(code_store, prose_store)
    for state, words in [
        ({"step": 10**6}, "past the end"),
        ({"step": 0, "mixture": "other"}, "another mixture"),
        ("step 3", "load_state_dict takes"),
        ({"step": -1}, "state step is -1"),
    ]:
        with pytest.raises(ConfigError, match=words) as e:
            mix.load_state_dict(state)
        assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="no field 'text'"):
        ReplayMixture([{"body": "x"}], tokenizer=tiny_tokenizer, replay_fraction=0, seq_len=L, batch_size=4)


# ---- the examples -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def example_dir(tmp_path_factory) -> str:
    sys.path.insert(0, str(EXAMPLES))
    return str(tmp_path_factory.mktemp("examples"))  # one tiny model for the three examples


@pytest.mark.parametrize("name", ["hf_trainer_replay", "plain_pytorch_replay", "trl_sft_replay"])
def test_example_runs_a_few_steps(name, example_dir):
    if name == "trl_sft_replay":
        pytest.importorskip("trl")
    main = importlib.import_module(name).main
    out = main(workdir=example_dir, replay_fraction=0.5, budget=16, epochs=1, seq_len=32, batch_size=4, max_steps=3)
    assert out["steps"] == 3 and len(out["losses"]) >= 1
    assert out["batch_replay_share_min"] == out["batch_replay_share_max"] == 0.5
    assert out["target_draws"] == 6
