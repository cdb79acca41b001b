"""Property tests for configs through the CLI (issue 20): random, mostly invalid override keys and values given to
`replaylab train` end in one line on stderr and exit status 2 (never a traceback, never a run folder for a bad
config), and random valid run configs survive the trip through YAML unchanged (same fields, same run id)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_config_fuzz import OVERRIDE, TYPED_OVERRIDE, WORDS

from replaylab.cli import main
from replaylab.config import config_hash, dump_yaml, from_dict, load_config
from replaylab.runconfig import MODEL_PRESETS, RunConfig

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# A run config whose tokenizer does not exist: a config that passes every check ends in the tokenizer's one-line
# DataError, so no example trains, and each one shows what the CLI prints for it.
RUN = {
    "name": "props",
    "data": {
        "tokenizer": "/nonexistent/tokenizer.json",
        "seq_len": 32,
        "domains": {
            "generic": {"source": "/nonexistent/t.jsonl"},
            "code": {"source": "/nonexistent/c.jsonl", "budget": 8, "epochs": 2},
        },
    },
    "train": {"total_steps": 100, "batch_size": 8, "threads": 1, "progress": "off"},
    "stages": [
        {"name": "pretrain", "steps": 80, "mixture": {"generic": 1.0}},
        {"name": "finetune", "fraction": 0.2, "mixture": {"generic": 0.5, "code": 0.5}},
    ],
    "logging": {"tensorboard": False},
}


@SETTINGS
@example(overrides=["eval.batch_size=0"])
@example(overrides=["train.log_every=0"])
@example(overrides=["data.budget_seed=-3"])
@example(
    overrides=[
        "meta={a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], c: &c [*b,*b,*b,*b,*b,"
        "*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}"
    ]
)
@given(
    overrides=st.lists(
        st.one_of(TYPED_OVERRIDE, TYPED_OVERRIDE, OVERRIDE, WORDS.map(lambda w: f"{w}=1")), min_size=1, max_size=3
    )
)
def test_train_overrides_end_in_one_line_exit_2(tmp_path_factory, overrides):
    work = tmp_path_factory.mktemp("work")
    config = work / "run.yaml"
    config.write_text(yaml.safe_dump(RUN, sort_keys=False))
    overrides = [o for o in overrides if not o.startswith("-")]  # an option, not an override, to argparse
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.chdir(work):
        code = main(["train", str(config), *overrides, "--out", "run"])
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("replaylab train: error: "), (code, lines)
    if "tokenizer" not in lines[0] and "/nonexistent/" not in lines[0]:  # refused as a config
        assert not (work / "run").exists()


SAFE_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-0123456789", min_size=1, max_size=12)
FRACTION = st.floats(0, 1, allow_nan=False, exclude_min=False).map(lambda x: round(x, 6))


@st.composite
def run_configs(draw) -> dict:
    """A valid raw run config: random model shape, domains, stages (mixtures that sum to 1) and settings."""
    heads = draw(st.sampled_from([1, 2, 4]))
    model = draw(
        st.one_of(
            st.builds(lambda p: {"preset": p}, st.sampled_from(sorted(MODEL_PRESETS))),
            st.builds(
                lambda h, m, layers, ff: {"d_model": 2 * h * m, "n_heads": h, "n_layers": layers, "d_ff": ff},
                st.just(heads),
                st.integers(1, 8),
                st.integers(1, 3),
                st.integers(1, 64),
            ),
        )
    )
    names = draw(st.lists(SAFE_NAME, min_size=1, max_size=3, unique=True))
    domains = {
        n: draw(
            st.one_of(
                st.just({"source": n}),
                st.builds(
                    lambda b, e: {"source": n, "budget": b, "epochs": e},
                    st.integers(1, 10**6),
                    st.floats(0.01, 100).map(lambda x: round(x, 4)),
                ),
            )
        )
        for n in names
    }
    steps = draw(st.lists(st.integers(1, 500), min_size=1, max_size=3))
    stages = []
    for i, n in enumerate(steps):
        w = draw(FRACTION) if len(names) > 1 else 1.0
        mixture = {names[0]: w, names[-1]: 1 - w} if len(names) > 1 else {names[0]: 1.0}
        stages.append(
            {
                "name": f"s{i}",
                "steps": n,
                "mixture": mixture,
                "lr": {
                    "schedule": draw(st.sampled_from(["constant", "cosine", "wsd", "linear"])),
                    "peak": draw(st.floats(0, 1)),
                    "warmup": draw(st.floats(0, 0.99)),
                },
                "optimizer": draw(st.sampled_from(["reset", "carry"])),
            }
        )
    return {
        "name": draw(SAFE_NAME),
        "seed": draw(st.integers(-(2**63), 2**63 - 1)),
        "model": model,
        "data": {
            "seq_len": draw(st.integers(8, 4096)),
            "domains": domains,
            "budget_seed": draw(st.integers(0, 2**63 - 1)),
        },
        "stages": stages,
        "train": {
            "total_steps": sum(steps),
            "batch_size": draw(st.sampled_from([1, 2, 8, 64])),
            "log_every": draw(st.integers(1, 100)),
            "checkpoint_every": draw(st.integers(0, 100)),
            "precision": draw(st.sampled_from(["auto", "fp32", "bf16"])),
        },
        "eval": {
            "every": draw(st.integers(0, 50)),
            "max_sequences": draw(st.integers(2, 512)),
            "batch_size": draw(st.integers(1, 64)),
        },
        "optim": {"eps": draw(st.floats(1e-12, 1e-3)), "weight_decay": draw(st.floats(0, 1))},
        "meta": draw(st.dictionaries(SAFE_NAME, st.one_of(st.integers(), st.floats(0, 1), SAFE_NAME), max_size=3)),
    }


@SETTINGS
@given(raw=run_configs())
def test_valid_configs_round_trip_through_yaml(tmp_path_factory, raw):
    cfg = from_dict(RunConfig, raw)
    path = Path(tmp_path_factory.mktemp("rt")) / "config.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(RunConfig, path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
