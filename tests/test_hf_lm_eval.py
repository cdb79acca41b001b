"""lm-evaluation-harness on the in-memory model, for real: a tiny random LlamaForCausalLM (real
transformers code, BPE tokenizer trained on real English prose), replaylab's shipped example task,
a user's task folder over a local jsonl, agreement with replaylab's own multiple-choice scorer, the
fine-tuning CLI end to end, and one-line errors (unknown task, hub data while offline). Also the
held-out losses of a Hugging Face model: the engine's evaluation, scored as before it was shared."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from hf_world import finetune_flags  # noqa: E402

from replaylab.errors import ConfigError  # noqa: E402
from replaylab.hf.evaluate import LM_EVAL_TASKS_DIR, evaluate_losses, load_mc_task, run_lm_eval, score_mc  # noqa: E402
from replaylab.train.evaluate import EvalSet  # noqa: E402

torch.set_num_threads(1)
BUILTIN = "replaylab_basque_vocab"


@pytest.fixture(scope="module")
def world(hf_world):
    """The HF tests' tiny world (tests/hf_world.py: REPLAYLAB_HOME, stdlib prose + code corpora, a tiny Llama
    folder), with the model and both tokenizers loaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from replaylab.data.tokenizer import load_tokenizer

    model_dir = hf_world["model"]
    return {
        **hf_world,
        "model_dir": model_dir,
        "model": AutoModelForCausalLM.from_pretrained(model_dir),
        "hf_tok": AutoTokenizer.from_pretrained(model_dir),
        "tok": load_tokenizer(model_dir),
    }


def ours(world, items: list[dict]) -> dict:
    return score_mc(world["model"], world["tok"], items, device=torch.device("cpu"), dtype=None)


def test_held_out_losses_are_the_engines_evaluation_of_the_hf_model(world):
    import math

    import numpy as np
    import torch.nn.functional as F

    model = world["model"]
    rng = np.random.default_rng(0)
    seqs = rng.integers(0, model.config.vocab_size, size=(5, 17), dtype=np.int64)
    sets = [EvalSet("target", seqs[:3], seqs[3:], bytes_per_token=3.5)]
    model.train()
    got = evaluate_losses(model, sets, batch_size=2, device=torch.device("cpu"), dtype=None)["target"]
    assert model.training  # the mode is handed back as it was
    # What hf/evaluate.py computed before it used the engine's evaluation: the same bits.
    with torch.no_grad():
        model.eval()
        for half, part in (("val", seqs[:3]), ("test", seqs[3:])):
            total = 0.0
            for i in range(0, len(part), 2):
                batch = torch.from_numpy(part[i : i + 2])
                logits = model(input_ids=batch[:, :-1], use_cache=False).logits
                total += float(
                    F.cross_entropy(
                        logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
                    ).double()
                )
            want = total / (len(part) * 16)
            assert got[f"{half}_loss"] == want
            assert got[f"{half}_bpb"] == pytest.approx(want / math.log(2) / 3.5, rel=1e-15)
    model.train()


def test_shipped_task_runs_and_agrees_with_our_scorer(world):
    model = world["model"]
    model.train()  # run_lm_eval puts the model in eval mode and must hand it back as it was
    res = run_lm_eval(model, world["hf_tok"], [BUILTIN], batch_size=8)[BUILTIN]
    assert model.training
    assert res["n"] == 20 and 0 <= res["acc"] <= 1 and 0 <= res["acc_norm"] <= 1
    assert 0 < res["acc_stderr"] < 0.2 and 0 < res["acc_norm_stderr"] < 0.2
    # The jsonl is also a replaylab --mc-task file: same items, same definitions (the text is ASCII,
    # so lm-eval's per-character acc_norm equals our per-byte one).
    mine = ours(world, load_mc_task(LM_EVAL_TASKS_DIR / "basque_vocab.jsonl"))
    assert mine["n"] == 20
    assert res["acc"] == pytest.approx(mine["acc"]) and res["acc_norm"] == pytest.approx(mine["acc_norm"])
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # offline only while evaluating
        assert var not in os.environ


def prose_items(docs: list[str], n: int) -> list[dict]:
    """Next-word questions cut from real docstrings: the true next word and three other words."""
    rng = random.Random(0)
    words = sorted({w for d in docs for w in d.split() if w.isalpha() and w.isascii()})
    items = []
    for d in docs:
        ws = d.split()
        if len(ws) < 9 or not all(w.isascii() for w in ws[:8]) or not ws[7].isalpha():
            continue
        choices = [ws[7]] + rng.sample([w for w in words if w != ws[7]], 3)
        rng.shuffle(choices)
        items.append({"context": " ".join(ws[:7]), "choices": [" " + c for c in choices], "answer": 0})
        if len(items) == n:
            break
    return items


def relabel(world, items: list[dict], metric: str) -> list[dict]:
    """Each item's answer set to the choice our scorer ranks first by `metric` (acc: summed
    log-likelihood; acc_norm: per byte)."""
    out = []
    for item in items:
        best = [j for j in range(len(item["choices"])) if ours(world, [{**item, "answer": j}])[metric] == 1.0]
        assert len(best) == 1
        out.append({**item, "answer": best[0]})
    return out


def write_task(folder: Path, name: str, items: list[dict]) -> None:
    """A user's lm-eval task over a local jsonl in replaylab's format (docs/finetune.md's form)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(it) + "\n" for it in items))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files: {{test: {data}}}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: answer\n"
        'target_delimiter: ""\nmetric_list: [{metric: acc}, {metric: acc_norm}]\n'
    )


def test_local_task_folder_agrees_item_by_item(world, tmp_path):
    items = prose_items(world["docs"], 12)
    assert len(items) == 12
    write_task(tmp_path / "tasks", "prose_by_sum", relabel(world, items, "acc"))
    write_task(tmp_path / "tasks", "prose_by_byte", relabel(world, items, "acc_norm"))
    res = run_lm_eval(
        world["model"],
        world["hf_tok"],
        ["prose_by_sum", "prose_by_byte"],
        batch_size=4,
        include=str(tmp_path / "tasks"),
    )
    # Every answer is our scorer's pick, so lm-eval scores 1.0 only if it picks the same choice on every item.
    assert res["prose_by_sum"]["acc"] == 1.0 and res["prose_by_sum"]["n"] == 12
    assert res["prose_by_byte"]["acc_norm"] == 1.0 and res["prose_by_byte"]["n"] == 12


def test_finetune_cli_runs_lm_eval_tasks_into_the_manifest(world, tmp_path, capsys):
    from replaylab.cli import main

    out = tmp_path / "run"
    flags = finetune_flags(world, model=world["model_dir"], max_steps=2, sets=("save_final=false",))
    rc = main(["finetune", *flags, "--lm-eval-task", BUILTIN, "--out", str(out)])
    assert rc == 0
    mc = json.loads((out / "manifest.json").read_text())["mc"]
    assert mc[BUILTIN]["n"] == 20 and 0 <= mc[BUILTIN]["acc"] <= 1
    assert BUILTIN in capsys.readouterr().out

    # A missing include folder stops the run before training, on one line.
    assert (
        main(
            [
                "finetune",
                "--model",
                world["model_dir"],
                "--lm-eval-task",
                "x",
                "--lm-eval-include",
                str(tmp_path / "nope"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a folder" in err and not (tmp_path / "x" / "manifest.json").exists()


def test_missing_package_is_a_config_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` sees where it is not installed
    with pytest.raises(ConfigError, match=r"pip install lm-eval.*replaylab\[eval\]"):
        run_lm_eval(None, None, [BUILTIN], batch_size=1)


def test_include_without_tasks_is_a_config_error():
    from replaylab.finetune_form import read_finetune

    with pytest.raises(ConfigError, match="eval.lm_eval_tasks is empty"):
        read_finetune({"eval": {"lm_eval_include": "tasks/"}})


@pytest.mark.slow  # indexes lm-eval's ~15k own task YAMLs: ~20 s of CPU
def test_unknown_task_and_offline_hub_task_are_one_line_errors(world, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError) as e:
        run_lm_eval(world["model"], world["hf_tok"], ["replaylab_basque_vocb"], batch_size=8)
    msg = str(e.value)
    assert "\n" not in msg and "'replaylab_basque_vocb' is unknown" in msg
    assert f"did you mean {BUILTIN}" in msg and str(LM_EVAL_TASKS_DIR) in msg and "lm-eval ls tasks" in msg
    # One of lm-eval's own tasks: its data is on the hub, and downloads are off while evaluating.
    with pytest.raises(ConfigError) as e:
        run_lm_eval(world["model"], world["hf_tok"], ["xcopa_eu"], batch_size=8)
    msg = str(e.value)
    assert "\n" not in msg and "'xcopa_eu': its data could not be loaded" in msg and "HF_DATASETS_OFFLINE=0" in msg
    assert "HF_HUB_OFFLINE" not in os.environ
