"""How a fine-tuning run compiles its Hugging Face model and how deterministic it is: regional compilation
(`hf.train_module.compile_layers`) against eager, and `replaylab finetune --compile / --no-deterministic`
end to end, on the HF tests' tiny world (tests/hf_world.py)."""

from __future__ import annotations

import json

import pytest
import torch
from hf_world import finetune_flags, make_config

from replaylab.hf.packing import TARGET


def test_regional_compile_matches_eager_and_compiles_one_graph_for_all_layers(hf_world):
    """compile_spec="regional" (hf.train_module.compile_layers): every decoder layer runs compiled, and two
    micro-steps give the eager module's losses and gradients (same weights, same tokens)."""
    from replaylab.hf.parallel import decoder_layers
    from replaylab.hf.train_module import HFCausalLMModule, build_model
    from replaylab.runconfig import OptimConfig

    cfg = make_config(hf_world)
    tokens = torch.randint(0, 500, (2, 33), generator=torch.Generator().manual_seed(0))
    runs = {}
    for spec in ("off", "regional"):
        torch.manual_seed(0)
        model = build_model(cfg, hf_world["model"], torch.device("cpu"))
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


def test_compile_and_determinism_choices_from_the_cli(hf_world, tmp_path):
    """`finetune --compile regional --no-deterministic` trains (on a CPU both are the default's kernels, so the
    losses agree with the default run's), records the choices in config.yaml, and is another run id."""
    from replaylab.cli import main

    common = ["finetune", *finetune_flags(hf_world, max_steps=3, lr=1e-3)]
    finals = {}
    for name, extra in (("default", []), ("chosen", ["--compile", "regional", "--no-deterministic"])):
        assert main(common + extra + ["--out", str(tmp_path / name)]) == 0
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        finals[name] = (manifest["config_hash"], manifest["final"][TARGET]["val_loss"])
    saved = (tmp_path / "chosen" / "config.yaml").read_text()
    assert "compile: regional" in saved and "deterministic: false" in saved
    assert finals["chosen"][0] != finals["default"][0]
    assert finals["chosen"][1] == pytest.approx(finals["default"][1], rel=1e-5)
