"""Property tests (issue 12): whatever a user writes in a run-config override, a config file or an
experiment grid, reading and expanding it ends in a config or a ReplaylabError, never another exception.
Nothing trains: configs are built, validated and expanded only."""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from replaylab.config import apply_overrides, from_dict, load_config
from replaylab.errors import ReplaylabError
from replaylab.runconfig import DomainConfig, RunConfig, StageConfig
from replaylab.sweep.experiment import expand, load_experiment

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

BASE = {
    "data": {
        "seq_len": 32,
        "domains": {"generic": {"source": "generic"}, "code": {"source": "code", "budget": 8, "epochs": 2}},
    },
    "train": {"total_steps": 100, "batch_size": 8},
    "stages": [
        {"name": "pretrain", "steps": 80, "mixture": {"generic": 1.0}},
        {
            "name": "finetune",
            "fraction": 0.2,
            "mixture": {"generic": 0.5, "code": 0.5},
            "optimizer": "reset",
            "lr": {"schedule": "cosine", "peak": "3e-4"},
        },
    ],
}


def _leaves(cls: type, prefix: str) -> list[tuple[str, type]]:
    """(dotted key, type) of every field of a dataclass config, nested sections included."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _leaves(tp, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", tp))
    return out


TYPED_KEYS = (
    _leaves(RunConfig, "")
    + [kt for i in (0, 1, 2) for kt in _leaves(StageConfig, f"stages.{i}.")]
    + [kt for d in ("code", "generic", "new") for kt in _leaves(DomainConfig, f"data.domains.{d}.")]
    + [
        ("stages.0.mixture.code", float),
        ("stages.1.mixture.generic", float),
        ("stages.-1.lr.peak", float),
        ("data.domains.code.options.x", str),
    ]
)
KEYS = [k for k, _ in TYPED_KEYS]

# What a user might type as a value: YAML scalars (numbers, the non-finite spellings, fractions,
# words), flow lists and mappings (duplicate keys included), and raw garbage.
NUMBERS = st.one_of(
    st.integers(0, 100),
    st.floats(0, 1),
    st.integers(-(10**6), 10**6),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
)
SPECIAL = st.sampled_from(
    [
        ".nan",
        ".inf",
        "-.inf",
        "nan",
        "inf",
        "-inf",
        "NaN",
        "1e999",
        "1/256",
        "1/0",
        "0/0",
        "3/4.5",
        "-1/2",
        "1 / 3",
        "3e-4",
        "1e-3",
        "true",
        "off",
        "null",
        "~",
        "",
        "[]",
        "{}",
        "{a: 1, a: 2}",
        "[1, [2, {b: .nan}]]",
        "2024-01-01",
        "!!binary aGk=",
        "!!set {a}",
        "&x [*x]",
        "'quoted'",
        "x: [1",
        "{",
        "- a\n- b",
        "\t",
        "\x00",
        "\ud800",
    ]
)
WORDS = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)


def _flow(value) -> str:
    return json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)


PLAIN = st.recursive(
    st.one_of(NUMBERS, WORDS, st.booleans(), st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(WORDS, inner, max_size=3)),
    max_leaves=6,
)
VALUE_TEXT = st.one_of(
    SPECIAL,
    WORDS,
    NUMBERS.map(_flow),
    PLAIN.map(lambda v: json.dumps(v, default=str)),
    st.lists(st.one_of(SPECIAL, NUMBERS.map(_flow)), max_size=3).map(lambda v: f"[{', '.join(v)}]"),
    st.tuples(st.sampled_from(["a", "b", "peak"]), SPECIAL, SPECIAL).map(
        lambda t: f"{{{t[0]}: {t[1] or 0}, {t[0]}: {t[2] or 0}}}"
    ),
)
# Values a field could well take, so that many inputs get past the first field to the whole config's checks.
SENSIBLE_TEXT = st.one_of(
    st.sampled_from(
        [
            "0",
            "1",
            "2",
            "8",
            "64",
            "0.5",
            "1e-3",
            "3e-4",
            "1/4",
            "true",
            "off",
            "cosine",
            "wsd",
            "continue",
            "reset",
            "scratch",
            "generic",
            "code",
            "[0.9, 0.95]",
            "{generic: 1.0}",
            "{code: 0.5, generic: 0.5}",
            "null",
        ]
    ),
    st.integers(0, 100).map(str),
    st.floats(0, 1).map(repr),
)
OVERRIDE = st.tuples(st.one_of(st.sampled_from(KEYS), WORDS), st.one_of(SENSIBLE_TEXT, VALUE_TEXT)).map("=".join)


def _typed_value(tp: type) -> st.SearchStrategy[str]:
    """Override text of the field's own kind (mostly in range), so whole-config checks get exercised too."""
    kinds = {tp, *typing.get_args(tp)}
    if float in kinds:
        return st.one_of(
            st.floats(0, 1).map(repr),
            st.sampled_from(["1/4", "3e-4", "0.5", "1", ".nan", "1/0", "1e308", "5e-324", "-0.0", "1" + "0" * 400]),
        )
    if bool in kinds:
        return st.sampled_from(["true", "false", "on"])
    if int in kinds:
        return st.one_of(st.integers(0, 100).map(str), st.sampled_from(["1e2", ".inf", "-1", "1" + "0" * 400, "2.5"]))
    if str in kinds:
        return st.sampled_from(
            [
                "cosine",
                "wsd",
                "continue",
                "reset",
                "carry",
                "scratch",
                "auto",
                "fp32",
                "off",
                "generic",
                "code",
                "tiny",
                "x",
            ]
        )
    return st.sampled_from(["{generic: 1.0}", "{code: 0.5, generic: 0.5}", "[0.9, 0.95]", "[]", "{}", "null"])


TYPED_OVERRIDE = st.sampled_from(TYPED_KEYS).flatmap(lambda kt: _typed_value(kt[1]).map(lambda v: f"{kt[0]}={v}"))


def _outcome(build) -> None:
    """Run `build`; a ReplaylabError is a fine answer to bad input, any other exception fails the test.
    The events show (with --hypothesis-show-statistics) how often inputs got all the way through."""
    try:
        build()
    except ReplaylabError as e:
        event(f"ReplaylabError ({type(e).__name__})")
    else:
        event("built")


@SETTINGS
@example(overrides=["train.total_steps=1" + "0" * 400])  # found by this test: an int beyond float range
@example(overrides=["model={d_model: 64, d_model: 32}", "stages.0.lr.peak=.nan", "optim.eps=inf"])
@given(
    overrides=st.lists(
        st.one_of(TYPED_OVERRIDE, TYPED_OVERRIDE, TYPED_OVERRIDE, OVERRIDE, WORDS), min_size=1, max_size=3
    )
)
def test_run_config_overrides_build_or_raise_replaylab_error(overrides):
    _outcome(lambda: from_dict(RunConfig, apply_overrides(BASE, overrides)).stage_steps())


def _nested(key: str, value: str) -> str:
    """The base config as YAML with `key` (dotted) set to the raw text `value` (a key the base cannot
    take, like stages.2.name, is written at the top level instead)."""
    try:
        raw = apply_overrides(BASE, [f"{key}=@@VALUE@@"])
    except ReplaylabError:
        raw = {**BASE, key: "@@VALUE@@"}
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True).replace("'@@VALUE@@'", value)


@SETTINGS
@given(
    text=st.one_of(
        VALUE_TEXT,
        PLAIN.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
        *[
            st.sampled_from(TYPED_KEYS).flatmap(
                lambda kt: st.one_of(_typed_value(kt[1]), VALUE_TEXT).map(lambda v: _nested(kt[0], v))
            )
        ]
        * 3,
    )
)
def test_run_config_file_loads_or_raises_replaylab_error(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    _outcome(lambda: load_config(RunConfig, path))


# Experiment grids: the strategy builders' arguments with values of every kind.
AXES = {
    "reference": ["budget_multiple", "epochs", "target_fraction", "warmup", "schedule"],
    "finetune": ["rho", "multiplier", "budget_multiple", "epochs", "pretrain_lr", "init"],
    "midtrain": ["rho", "alpha", "epochs", "decay", "target"],
}
SENSIBLE = st.one_of(
    st.sampled_from([0, 0.5, 1, 2, 4, 0.25, "1/2", "1/4", "3e-3", "1e-3", "code", "generic"]),
    st.floats(0, 1),
    st.integers(1, 8),
)
EXTREME = st.sampled_from([1.7976931348623157e308, 1e300, 5e-324, 1e-300, -0.0, 2**64, 10**400, 0.999999999, 1 - 1e-12])
GRID_VALUE = st.one_of(
    SENSIBLE, SENSIBLE, SENSIBLE, EXTREME, SPECIAL, NUMBERS, WORDS, st.none(), st.lists(NUMBERS, max_size=2)
)
EXP_BASE = {
    "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
    "data": {"seq_len": 32, "domains": {"generic": {"source": "generic"}, "code": {"source": "code"}}},
    "train": {"total_steps": 1024, "batch_size": 8},
}
# The base's run shape (None = EXP_BASE's), which the builders read before anything else.
SHAPE_VALUE = st.one_of(
    st.none(), EXTREME, SPECIAL, NUMBERS, WORDS, st.sampled_from([0, 1, 2, 2**62, 2**63, 2.5, "64"])
)


def _base(total_steps=None, batch_size=None) -> dict:
    """EXP_BASE with train.total_steps / train.batch_size replaced where given."""
    train = {
        **EXP_BASE["train"],
        **{k: v for k, v in (("total_steps", total_steps), ("batch_size", batch_size)) if v is not None},
    }
    return {**EXP_BASE, "train": train}


@st.composite
def experiments(draw) -> dict:
    strategy = draw(st.sampled_from(sorted(AXES)))
    axes = draw(st.lists(st.sampled_from(AXES[strategy]), min_size=1, max_size=2, unique=True))
    spec = {"strategy": strategy, "grid": {a: draw(st.lists(GRID_VALUE, min_size=1, max_size=2)) for a in axes}}
    if strategy == "finetune" and "rho" not in axes and "multiplier" not in axes:
        spec["args"] = {"rho": draw(st.one_of(st.just(0.5), GRID_VALUE))}
    if draw(st.booleans()):
        spec["lrs"] = draw(st.lists(GRID_VALUE, min_size=1, max_size=2))
    base = draw(st.one_of(st.just(EXP_BASE), st.builds(_base, SHAPE_VALUE, SHAPE_VALUE)))
    return {
        "name": "fuzz",
        "base": base,
        "target": "code",
        "seeds": [0],
        "strategies": [spec],
        "target_fraction": draw(st.one_of(st.just("1/256"), st.just(0.004), GRID_VALUE)),
    }


def _exp(strategy: str, grid: dict, base: dict = EXP_BASE, **args) -> dict:
    return {
        "name": "fuzz",
        "base": base,
        "target": "code",
        "seeds": [0],
        "target_fraction": "1/256",
        "strategies": [{"strategy": strategy, "grid": grid, "args": args}],
    }


@SETTINGS
@example(exp=_exp("reference", {"budget_multiple": [1.7976931348623157e308]}))  # found by this test: overflow
@example(exp=_exp("finetune", {"epochs": [1e-300]}, rho=0.5))  # found by this test: realized rho = 1
@example(exp=_exp("midtrain", {"rho": ["1/0", "0/0"]}))
@example(exp=_exp("reference", {"epochs": [1e300, 5e-324]}, budget_multiple=1e300))
@example(exp=_exp("finetune", {"multiplier": [1.7976931348623157e308, 1e300]}))
@example(exp=_exp("reference", {}, base=_base(total_steps="abc")))  # the base's run shape, read unchecked before
@example(exp=_exp("midtrain", {}, base=_base(total_steps=".nan", batch_size=2**64)))
@example(exp=_exp("finetune", {}, base=_base(batch_size=2**60), rho=0.5, target_fraction=2**-70))  # rho rounds to 1
@given(exp=experiments())
def test_experiment_grid_expands_or_raises_replaylab_error(tmp_path, exp):
    path = tmp_path / "exp.yaml"
    text = yaml.safe_dump(exp, sort_keys=False, allow_unicode=True)
    # Unquote the special spellings so YAML reads .nan, 1e999, !!binary ... as a user would have written them.
    for s in ("'.nan'", "'.inf'", "'-.inf'", "'1e999'", "'~'", "'!!set {a}'", "'!!binary aGk='", "'&x [*x]'"):
        text = text.replace(s, s[1:-1])
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    _outcome(lambda: expand(*load_experiment(path)))
