"""Config machinery and run-config validation: field-named errors, overrides, YAML round trip."""

import pytest

from replaylab.config import apply_overrides, config_hash, dump_yaml, from_dict, load_config
from replaylab.errors import ConfigError
from replaylab.runconfig import ModelConfig, RunConfig

BASE = {
    "data": {"domains": {"generic": {"source": "generic"}, "code": {"source": "code", "budget": 64, "epochs": 16}}},
    "train": {"total_steps": 100, "batch_size": 16},
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


def test_builds_nested_config_and_round_trips_yaml(tmp_path):
    cfg = from_dict(RunConfig, BASE)
    assert cfg.stages[1].lr.peak == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string; we convert
    assert cfg.data.domains["code"].budget == 64
    assert cfg.stage_steps() == [80, 20]
    path = tmp_path / "run.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(RunConfig, path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)


def test_overrides_by_dotted_path_and_list_index(tmp_path):
    raw = apply_overrides(BASE, ["optim.weight_decay=0.0", "stages.1.lr.peak=1e-3", "seed=7"])
    cfg = from_dict(RunConfig, raw)
    assert cfg.optim.weight_decay == 0.0
    assert cfg.stages[1].lr.peak == pytest.approx(1e-3)
    assert cfg.seed == 7
    assert BASE["stages"][1]["lr"]["peak"] == "3e-4"  # the input is not mutated


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=abc", "train.batch_size"),
        ("optim.learning_rate=1", "unknown config field optim.learning_rate"),
        ("stages.5.lr.peak=1", "index 5 is out of range"),
        ("stages.0.mixture.generic=0.5", "sum to 0.5"),
        ("stages.0.steps=200", "at least one step"),
        ("stages.1.mixture.math=0.0", "domain 'math'"),
        ("model.preset=huge", "model.preset 'huge' is unknown"),
        ("train.precision=fp8", "train.precision 'fp8'"),
        ("stages.1.lr.schedule=step", "lr.schedule 'step'"),
        ("noequals", "is not KEY=VALUE"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        from_dict(RunConfig, apply_overrides(BASE, [override]))


def test_model_preset_fills_unset_fields_only():
    cfg = from_dict(ModelConfig, {"preset": "150m", "n_layers": 2})
    assert (cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.n_layers, cfg.max_seq_len) == (512, 1792, 8, 2, 4096)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(RunConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(RunConfig, bad)


def test_yaml_on_off_switches_stay_strings():
    cfg = from_dict(RunConfig, apply_overrides(BASE, ["train.compile=off", "train.progress=on"]))
    assert (cfg.train.compile, cfg.train.progress) == ("off", "on")


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.precision=fp16",
            "train.precision 'fp16' is unknown; did you mean bf16? choose one of auto, fp32, bf16",
        ),
        ("train.compile=no", None),  # YAML 1.1: no = false = off
        ("train.progress=maybe", "train.progress 'maybe' is unknown; choose one of auto, on, off"),
        ("stages.1.optimizer=keep", "stages[1].optimizer 'keep' is unknown; choose one of reset, carry"),
        (
            "stages.0.lr.schedule=step",
            "stages[0].lr.schedule 'step' is unknown; choose one of constant, cosine, wsd, linear, continue",
        ),
        (
            "optim.implementation=apex",
            "optim.implementation 'apex' is unknown; choose one of auto, fused, foreach, single",
        ),
    ],
)
def test_enumerated_fields_are_typed_choices(override, message):
    """Fields with a fixed set of values are Literal types: the error lists the values."""
    if message is None:
        assert from_dict(RunConfig, apply_overrides(BASE, [override])).train.compile == "off"
        return
    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, apply_overrides(BASE, [override]))
    assert str(e.value) == message


def test_choices_are_checked_for_configs_built_in_python_too():
    from replaylab.finetune_form import FinetuneConfig, read_finetune

    cfg = from_dict(RunConfig, BASE)
    cfg.train.device = "tpu"
    with pytest.raises(ConfigError, match="train.device 'tpu' is unknown; choose one of auto, cpu, cuda"):
        cfg.train.validate()
    with pytest.raises(ConfigError, match="^parallel 'zero3' is unknown; choose one of ddp, fsdp$"):
        FinetuneConfig(parallel="zero3")
    assert read_finetune({"progress": False}).train.progress == "off"
