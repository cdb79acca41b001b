"""How a fine-tuning run compiles its Hugging Face model and how deterministic it is: regional compilation
(`hf.train_module.compile_layers`) against eager, and `replaylab finetune --compile / --no-deterministic`
end to end, on test_hf_finetune's tiny world."""

from __future__ import annotations

import json

import pytest
import torch
from test_hf_finetune import make_config, tiny_world

from replaylab.hf.packing import TARGET


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with tiny_world(tmp_path_factory.mktemp("hf_compile")) as w:
        yield w


def test_regional_compile_matches_eager_and_compiles_one_graph_for_all_layers(world):
    """compile_spec="regional" (hf.train_module.compile_layers): every decoder layer runs compiled, and two
    micro-steps give the eager module's losses and gradients (same weights, same tokens)."""
    from replaylab.hf.parallel import decoder_layers
    from replaylab.hf.train_module import HFCausalLMModule, build_model
    from replaylab.runconfig import OptimConfig

    cfg = make_config(world)
    tokens = torch.randint(0, 500, (2, 33), generator=torch.Generator().manual_seed(0))
    runs = {}
    for spec in ("off", "regional"):
        torch.manual_seed(0)
        model = build_model(cfg, world["model"], torch.device("cpu"))
        module = HFCausalLMModule(
            model, OptimConfig(), device=torch.device("cpu"), dtype=None, compile_spec=spec, example=tokens
        )
        layers = decoder_layers(model)
        assert len(layers) == 2 and all(
            (layer._compiled_call_impl is not None) == (spec == "regional") for layer in layers
        )
        losses = []
        for _ in range(2):
            loss = module.micro_loss(tokens)
            loss.backward()
            losses.append(loss.item())
        runs[spec] = (losses, [p.grad.clone() for p in model.parameters()])
    assert runs["regional"][0] == pytest.approx(runs["off"][0], rel=1e-6)
    for a, b in zip(runs["regional"][1], runs["off"][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_compile_and_determinism_choices_from_the_cli(world, tmp_path):
    """`finetune --compile regional --no-deterministic` trains (on a CPU both are the default's kernels, so the
    losses agree with the default run's), records the choices in config.yaml, and is another run id."""
    from replaylab.cli import main

    common = [
        "finetune",
        "--model",
        world["model"],
        "--target",
        world["code"],
        "--set",
        "target.options.glob=*.py",
        "--budget",
        "8",
        "--replay",
        world["prose"],
        "--replay-fraction",
        "0.5",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--max-steps",
        "3",
        "--lr",
        "1e-3",
        "--threads",
        "1",
        "--set",
        "eval.initial=false",
    ]
    finals = {}
    for name, extra in (("default", []), ("chosen", ["--compile", "regional", "--no-deterministic"])):
        assert main(common + extra + ["--out", str(tmp_path / name)]) == 0
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        finals[name] = (manifest["config_hash"], manifest["final"][TARGET]["val_loss"])
    saved = (tmp_path / "chosen" / "config.yaml").read_text()
    assert "compile: regional" in saved and "deterministic: false" in saved
    assert finals["chosen"][0] != finals["default"][0]
    assert finals["chosen"][1] == pytest.approx(finals["default"][1], rel=1e-5)
