"""Issue 12, configs and inputs: every bad input is one line on stderr, exit status 2, no traceback,
and nothing left behind (no run folder, no report, no cache). Each case runs the real CLI in a
subprocess, from an empty working folder, with its own REPLAYLAB_HOME; nothing trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hang import HANG_S

# A valid tiny run config; the cases break one thing in it. "@/" is the folder of input files.
RUN = {
    "name": "bad-inputs",
    "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
    "data": {"tokenizer": "@/tok", "seq_len": 32, "domains": {"generic": {"source": "@/t.jsonl"}}},
    "stages": [{"name": "main", "steps": 4, "mixture": {"generic": 1.0}, "lr": {"peak": 3e-3}}],
    "train": {
        "total_steps": 4,
        "batch_size": 2,
        "precision": "fp32",
        "compile": "off",
        "threads": 1,
        "progress": "off",
    },
    "logging": {"tensorboard": False},
}
BASE = {k: v for k, v in RUN.items() if k != "stages"}
BASE = {
    **BASE,
    "data": {**BASE["data"], "domains": {"generic": {"source": "@/t.jsonl"}, "code": {"source": "@/t.jsonl"}}},
}
EXPERIMENT = {
    "name": "bad",
    "base": BASE,
    "target": "code",
    "target_fraction": "1/8",
    "seeds": [0],
    "strategies": [{"strategy": "finetune", "grid": {"rho": [0, 0.5]}, "args": {"epochs": 1}}],
}
HF_EXPERIMENT = {
    "name": "bad-hf",
    "kind": "finetune_hf",
    "seeds": [0],
    "base": {"model": "@/tiny", "target": {"source": "@/t.jsonl", "budget": 4}, "replay": None, "seq_len": 32},
}
FT = ["finetune", "--model", "@/tiny", "--target", "@/t.jsonl", "--replay", "none", "--seq-len", "32"]


def _yaml(obj) -> str:
    return yaml.safe_dump(obj, sort_keys=False)


def _exp(**changes) -> str:
    return _yaml({**EXPERIMENT, **changes})


def _strategy(**changes) -> str:
    return _exp(strategies=[{**EXPERIMENT["strategies"][0], **changes}])


def _hf(**changes) -> str:
    return _yaml({**HF_EXPERIMENT, **changes})


FILES: dict[str, str | bytes] = {
    "t.jsonl": "".join(json.dumps({"text": f"document {i}: some words to read"}) + "\n" for i in range(20)),
    "run.yaml": _yaml(RUN),
    "latin1.yaml": b"name: caf\xe9\nseed: 1\n",
    "syntax.yaml": "name: [unclosed\nseed: 1\n",
    "dup.yaml": "name: a\nseed: 1\nname: b\n",
    "dup_nested.yaml": _yaml(RUN).replace("  seq_len: 32\n", "  seq_len: 32\n  seq_len: 64\n"),
    "nan_file.yaml": _yaml(RUN) + "optim: {weight_decay: -.inf}\n",
    "exp_latin1.yaml": b"name: exp\xff\n",
    "exp_dup.yaml": _exp().replace("seeds:", "target: code\nseeds:"),
    "exp_base_dir.yaml": _exp(base="dir"),
    "exp_lr_nan.yaml": _strategy(lrs=[".nan"]).replace("'.nan'", ".nan"),
    "exp_fraction_inf.yaml": _exp(target_fraction=".inf").replace("'.inf'", ".inf"),
    "exp_fraction_zero.yaml": _exp(target_fraction="1/0"),
    "exp_grid_zero.yaml": _strategy(grid={"rho": ["1/2", "3/0"]}),
    "exp_args_text.yaml": _strategy(args={"epochs": "two/1"}),
    "hf_nan.yaml": _hf(grid={"optim.warmup": [".nan"]}).replace("'.nan'", ".nan"),
    "hf_zero.yaml": _hf(grid={"replay_fraction": ["1/0"]}),
    "ft_flat.yaml": "target: basque\n",
    "mc_broken.jsonl": '{"context": "2 + 2 =", "choices": ["4", "5"], "answer": 0}\n{"context": "cut',
    "afile": "not a folder\n",
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("inputs")
    for name, content in FILES.items():
        text = content.replace("@/", f"{root}/") if isinstance(content, str) else content
        (root / name).write_bytes(text.encode() if isinstance(text, str) else text)
    (root / "dir").mkdir()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        ["some words to read"] * 10,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    (root / "tok").mkdir()
    tok.save(str(root / "tok" / "tokenizer.json"))
    # A model folder whose config is all the checks before loading need (no weights: they must not load).
    (root / "tiny").mkdir()
    (root / "tiny" / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "vocab_size": 300,
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "max_position_embeddings": 64,
            }
        )
    )
    # A run folder to resume whose manifest.json was cut short, and one whose manifest is not an object.
    for name, manifest in (("cut", '{"config_hash": "ab12", "status": "runn'), ("list", "[1, 2]\n")):
        run = root / "runs" / name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(_yaml(RUN).replace("@/", f"{root}/"))
        (run / "manifest.json").write_text(manifest)
    return root


# (id, argv, what the message must say). Grouped by the classes.
CASES = [
    # 1. inputs that cannot be read
    ("train-config-is-folder", ["train", "@/dir"], "is a folder"),
    ("sweep-experiment-is-folder", ["sweep", "@/dir"], "is a folder"),
    ("plan-experiment-is-folder", ["plan", "@/dir"], "is a folder"),
    ("finetune-config-is-folder", ["finetune", "--config", "@/dir"], "is a folder"),
    ("plan-base-is-folder", ["plan", "@/exp_base_dir.yaml"], "is a folder"),
    ("train-not-utf8", ["train", "@/latin1.yaml"], "is not UTF-8 text (byte 0xe9 at line 1)"),
    ("plan-not-utf8", ["plan", "@/exp_latin1.yaml"], "is not UTF-8 text (byte 0xff at line 1)"),
    ("train-yaml-syntax", ["train", "@/syntax.yaml"], "is not valid YAML at line 2"),
    (
        "finetune-config-flat-section",
        ["finetune", "--config", "@/ft_flat.yaml", "--target", "@/t.jsonl"],
        "config field target is 'basque', not a section",
    ),
    ("resume-manifest-truncated", ["train", "--resume", "@/runs/cut"], "manifest.json is not valid JSON"),
    ("resume-manifest-not-object", ["train", "--resume", "@/runs/list"], "holds list, not a JSON object"),
    # 2. duplicate keys
    ("train-dup-key", ["train", "@/dup.yaml"], "key 'name' is given twice (lines 1 and 3)"),
    ("train-dup-nested-key", ["train", "@/dup_nested.yaml"], "key 'seq_len' is given twice"),
    ("plan-dup-key", ["plan", "@/exp_dup.yaml"], "key 'target' is given twice"),
    ("train-dup-override", ["train", "@/run.yaml", "model={d_model: 32, d_model: 64}"], "key 'd_model' is given twice"),
    ("finetune-dup-set", FT + ["--set", "lora={r: 1, r: 2}"], "key 'r' is given twice"),
    # 3. non-finite numbers, any float field, LRs included
    ("train-nan-lr", ["train", "@/run.yaml", "stages.0.lr.peak=.nan"], "stages[0].lr.peak: nan is not a finite"),
    ("train-inf-string", ["train", "@/run.yaml", "optim.eps=inf"], "optim.eps: 'inf' is not a finite"),
    ("train-neg-inf-file", ["train", "@/nan_file.yaml"], "optim.weight_decay: -inf is not a finite"),
    (
        "train-nan-int-field",
        ["train", "@/run.yaml", "train.total_steps=.nan"],
        "train.total_steps: nan is not a finite",
    ),
    ("train-nan-betas", ["train", "@/run.yaml", "optim.betas=[0.9, .nan]"], "optim.betas[1]: nan is not a finite"),
    ("finetune-nan-lr", FT + ["--lr", "nan"], "optim.lr: nan is not a finite"),
    ("finetune-inf-set", FT + ["--set", "target_epochs=.inf"], "target_epochs: inf is not a finite"),
    ("plan-nan-lrs", ["plan", "@/exp_lr_nan.yaml"], "lrs[0]: nan is not a finite"),
    ("plan-inf-target-fraction", ["plan", "@/exp_fraction_inf.yaml"], "target_fraction: inf is not a finite"),
    ("plan-hf-nan-grid", ["plan", "@/hf_nan.yaml"], "optim.warmup: nan is not a finite"),
    # 4. arithmetic in experiments
    ("plan-fraction-zero", ["plan", "@/exp_fraction_zero.yaml"], "target_fraction: '1/0' divides by zero"),
    ("plan-grid-zero", ["plan", "@/exp_grid_zero.yaml"], "strategy 'finetune' rho: '3/0' divides by zero"),
    ("plan-args-text", ["plan", "@/exp_args_text.yaml"], "strategy 'finetune' epochs: expected a number"),
    ("plan-hf-grid-zero", ["plan", "@/hf_zero.yaml"], "replay_fraction: '1/0' divides by zero"),
    # 5. analysis options
    (
        "analyze-level-above-1",
        ["analyze", "--reference", "@/r.csv", "--compare", "@/c.csv", "--level", "1.5"],
        "--level 1.5 is not a confidence level in (0, 1)",
    ),
    ("analyze-level-nan", ["analyze", "@/dir", "--level", "nan"], "--level nan is not a confidence level"),
    ("report-level-zero", ["report", "@/dir", "--out", "report", "--level", "0"], "--level 0.0 is not a confidence"),
    ("analyze-boot-zero", ["analyze", "@/dir", "--boot", "0"], "--boot 0 is too few bootstrap resamples"),
    # 6. sequence longer than the model's positions
    (
        "finetune-seq-len-too-long",
        FT + ["--seq-len", "128"],
        "seq_len 128 is longer than model '@/tiny' allows (max_position_embeddings 64); use --seq-len 64 or less",
    ),
    # 7. input files checked before the model loads and before the run folder exists
    ("finetune-target-missing", FT + ["--target", "@/missing.jsonl"], "corpus path '@/missing.jsonl' does not exist"),
    (
        "finetune-mc-task-missing",
        FT + ["--mc-task", "@/none.jsonl"],
        "multiple-choice task file '@/none.jsonl' does not",
    ),
    ("finetune-mc-task-broken", FT + ["--mc-task", "@/mc_broken.jsonl"], "mc_broken.jsonl:2: not valid JSON"),
    (
        "finetune-lm-eval-include-file",
        FT + ["--lm-eval-include", "@/t.jsonl", "--lm-eval-task", "x"],
        "eval.lm_eval_include '@/t.jsonl' is not a folder",
    ),
    # 8. REPLAYLAB_HOME that cannot be a folder
    ("home-is-a-file", ["data", "list"], "REPLAYLAB_HOME is '@/afile', which is a file, not a folder"),
    ("home-under-a-file", ["data", "list"], "REPLAYLAB_HOME is '@/afile/sub', which cannot be created"),
]


def _tree(root: Path) -> set[str]:
    """Every path under `root`, except the run-folder lock file (a lock is taken before the folder is read)."""
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.name != ".replaylab.lock"}


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(inputs, tmp_path, argv, expected, request):
    case = request.node.callspec.id
    at = lambda s: s.replace("@/", f"{inputs}/")  # noqa: E731
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    if case.startswith("home-"):
        home = Path(at(expected.split("'")[1]))
    before = _tree(inputs)
    env = {**os.environ, "REPLAYLAB_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "replaylab.cli", *map(at, argv)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    command = argv[0]
    assert "Traceback" not in p.stdout + p.stderr, p.stderr
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"replaylab {command}: error: "), lines[0]
    assert at(expected) in lines[0], lines[0]
    assert _tree(work) == set(), f"left behind in the working folder: {_tree(work)}"
    assert _tree(inputs) == before, f"changed among the inputs: {_tree(inputs) ^ before}"
    if not case.startswith("home-"):
        assert not [p for p in home.rglob("*") if p.is_file()], f"files written to REPLAYLAB_HOME: {_tree(home)}"
