"""The tiny world of the Hugging Face tests (shared by tests/test_hf_*.py and test_pinned_numbers.py): real text
cut from the interpreter's standard library, a BPE tokenizer trained on it and a tiny random Llama folder; the
fine-tuning config and `replaylab finetune` flags those tests start from, and a run's logged losses."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from hang import HANG_S

from replaylab.finetune_form import read_finetune
from replaylab.runconfig import RunConfig


def write_tiny_world(root: Path) -> dict:
    """Under `root`: a target corpus (stdlib Python source), a replay corpus (stdlib docstrings: English prose),
    and a tiny Llama folder whose tokenizer was trained on both; `home` is the REPLAYLAB_HOME its stores go to
    (conftest's `hf_world` sets it while a test module runs). Built once per test session (a few seconds)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = root / "code"
    code.mkdir()
    for name in [
        "textwrap",
        "heapq",
        "bisect",
        "fnmatch",
        "glob",
        "shlex",
        "colorsys",
        "calendar",
        "csv",
        "difflib",
        "fractions",
        "getopt",
        "gettext",
        "graphlib",
        "keyword",
        "numbers",
        "operator",
        "pprint",
        "queue",
        "random",
        "sched",
        "secrets",
        "selectors",
        "statistics",
        "string",
        "stringprep",
    ]:
        shutil.copy(stdlib / f"{name}.py", code / f"{name}.py")
    import argparse
    import collections
    import email
    import json as js
    import logging
    import pathlib
    import unittest
    import urllib.parse
    import zipfile

    docs = []
    for mod in (argparse, collections, email, js, logging, pathlib, unittest, urllib.parse, zipfile, inspect):
        for _, obj in inspect.getmembers(mod):
            if inspect.ismodule(obj):  # which submodules a package holds depends on what the process imported
                continue
            d = inspect.getdoc(obj)
            if d and len(d) > 200 and d not in docs:
                docs.append(d)
    prose = root / "prose.jsonl"
    prose.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = docs + [p.read_text() for p in sorted(code.glob("*.py"))]
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=512, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    model_dir = root / "tiny-llama"
    model_dir.mkdir()
    tok.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "model_max_length": 1024}
        )
    )
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=0,
        bos_token_id=0,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    return {
        "root": root,
        "home": root / "home",
        "code": str(code),
        "prose": str(prose),
        "docs": docs,
        "model": str(model_dir),
    }


def make_config(world, **kw) -> RunConfig:
    raw = {
        "model": world["model"],
        "target": {"source": world["code"], "budget": 12, "options": {"glob": "*.py"}},
        "replay": {"source": world["prose"]},
        "replay_fraction": 0.5,
        "target_epochs": 2.0,
        "seq_len": 32,
        "batch_size": 4,
        "optim": {"lr": 1e-2, "warmup": 0.1},
        "eval": {"max_sequences": 8, "initial": True},
        "log_every": 1,
        "progress": "off",
        "threads": 1,
    }
    for key, value in kw.items():
        node = raw
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return read_finetune(raw)


def finetune_flags(
    world,
    *,
    max_steps: int,
    replay_fraction: float | None = 0.5,
    lr: float | None = None,
    sets: tuple = (),
    model: str | None = None,
) -> list[str]:
    """`replaylab finetune` flags for a tiny run on the world: its Llama (or `model`), its Python files as the
    target (budget 8), its prose as the replay pool (`replay_fraction` None: no pool), 4 x 32-token batches,
    one thread, no initial eval; `sets`: more `--set KEY=VALUE` overrides."""
    flags = ["--model", model or world["model"], "--target", world["code"], "--set", "target.options.glob=*.py"]
    flags += ["--budget", "8"]
    if replay_fraction is None:
        flags += ["--replay", "none"]
    else:
        flags += ["--replay", world["prose"], "--replay-fraction", str(replay_fraction)]
    flags += ["--seq-len", "32", "--batch-size", "4", "--max-steps", str(max_steps)]
    if lr is not None:
        flags += ["--lr", str(lr)]
    flags += ["--threads", "1", "--set", "eval.initial=false"]
    for item in sets:
        flags += ["--set", item]
    return flags


def read_losses(run: Path) -> list[float]:
    return [
        r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"
    ]


# Multi-rank variants (test_hf_finetune's DDP, test_hf_fsdp's FSDP): gloo ranks pin device=cpu, so they stay on CPU on a
# machine with one GPU too (two ranks on one GPU crash NCCL); NCCL ranks need a GPU each. Values:
# (device, the config pinned for it, tolerance of the 2-rank run against 1 process). Precision is
# pinned to fp32: auto means bf16 on CUDA and on CPUs with native bf16 (AMX, avx512_bf16), whose
# rounding differs with the batch split far beyond these tolerances (measured: 3.6e-2 in the losses).
# CUDA's fp32 matmuls use TF32, hence its looser tolerance.
TWO_GPUS = pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="NCCL variant: needs 2 visible CUDA GPUs, one per torchrun rank"
)
RANK_DEVICES = [
    pytest.param("cpu", {"device": "cpu", "precision": "fp32"}, 1e-4, id="cpu-gloo"),
    pytest.param("cuda", {"device": "cuda", "precision": "fp32"}, 1e-3, id="cuda-nccl", marks=TWO_GPUS),
]


def torchrun_two_ranks(*args: str, timeout: float = HANG_S) -> None:
    """`python -m torch.distributed.run --standalone --nproc_per_node 2 ARGS` (one thread per rank): the
    multi-rank variants' launch."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)
