"""FSDP2 for `replaylab finetune` on CPU (gloo; `device: cpu`, so also on a machine with one GPU) and
on two GPUs (NCCL, where two are visible), on the tiny random Llama of test_hf_finetune (real
transformers code, real text): 2 sharded ranks match 1 process, checkpoints keep the engine's format
and resume bit for bit, LoRA shards too, and the gathered model/ and adapter/ folders load."""

from __future__ import annotations

import json

import pytest
import torch
from hf_world import RANK_DEVICES, finetune_flags, make_config, read_losses, torchrun_two_ranks

from replaylab.config import dump_yaml
from replaylab.errors import ConfigError
from replaylab.hf.packing import REPLAY, TARGET

torch.set_num_threads(1)


@pytest.fixture
def one_rank_group(tmp_path):
    """A 1-process gloo group, so FSDP can shard in this process (over a mesh of one)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _adamw(model):
    from replaylab.runconfig import OptimConfig
    from replaylab.train.optim import param_groups

    return torch.optim.AdamW(param_groups(model, OptimConfig(weight_decay=0.1)), lr=1e-2, betas=(0.9, 0.95))


def _step(model, optimizer, x):
    loss = torch.nn.functional.cross_entropy(model(input_ids=x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 0.5)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_sharded_state_round_trips_in_the_checkpoint_format(hf_world, one_rank_group, tmp_path):
    """Sharded and plain models take the same step; the gathered state has the plain model's names
    and optimizer.state_dict() layout, and loads back into a fresh sharded model exactly."""
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    from replaylab.hf import parallel
    from replaylab.train import checkpoint as ckpt

    def fresh(sharded: bool):
        model = AutoModelForCausalLM.from_pretrained(hf_world["model"])
        if sharded:
            parallel.shard(model, torch.device("cpu"), 1, None)
        return model, _adamw(model)

    assert [type(m).__name__ for m in parallel.decoder_layers(fresh(False)[0])] == ["LlamaDecoderLayer"] * 2
    x = torch.randint(0, 512, (2, 17), generator=torch.Generator().manual_seed(0))
    plain, plain_opt = fresh(False)
    model, opt = fresh(True)
    assert parallel.is_sharded(model) and all(isinstance(p, DTensor) for p in model.parameters())
    for m, o in ((plain, plain_opt), (model, opt)):
        _step(m, o, x)
    names = [n for n, _ in plain.named_parameters()]  # the tied head is listed once
    tensors, optim = parallel.gather(model, opt, names)
    assert list(tensors) == names
    for n, p in plain.named_parameters():
        torch.testing.assert_close(tensors[n], p.detach(), rtol=0, atol=1e-6)
    want = plain_opt.state_dict()
    assert optim["param_groups"] == want["param_groups"] and optim["state"].keys() == want["state"].keys()
    for i, st in want["state"].items():
        for key, value in st.items():
            torch.testing.assert_close(optim["state"][i][key], value, rtol=0, atol=1e-6)

    # Through the checkpoint files, as a resume reads them, into a fresh sharded model.
    path = ckpt.save_checkpoint(tmp_path, step=1, stage=0, kind="periodic", model=tensors, optim=optim)
    found = ckpt.load_checkpoint(path)
    again, again_opt = fresh(True)
    parallel.load(again, again_opt, found.model, found.optim)
    for m, o in ((model, opt), (again, again_opt)):
        _step(m, o, x)
    a = parallel.gather(model, opt, names)[0]
    b = parallel.gather(again, again_opt, names)[0]
    assert all(torch.equal(a[n], b[n]) for n in names)  # the resumed sharded model steps bit for bit
    with pytest.raises(ConfigError, match="cannot run under parallel=fsdp"):
        parallel.check_supported(["xcopa_eu"])


def test_fsdp_flag_and_one_process_fallback(hf_world, tmp_path, capsys):
    from replaylab.cli import main

    flags = finetune_flags(hf_world, replay_fraction=None, max_steps=2)
    rc = main(["finetune", *flags, "--fsdp", "--out", str(tmp_path / "run")])
    assert rc == 0
    assert "parallel=fsdp with one process trains unsharded" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "done"
    with pytest.raises(ConfigError, match="parallel 'zero3' is unknown; choose one of ddp, fsdp"):
        make_config(hf_world, parallel="zero3")


# Run under torchrun: one process group for several runs (torchrun and the imports cost ~10 s each).
DRIVER = """
import json, shutil, sys
from pathlib import Path
from replaylab.finetune_form import load_run_config
from replaylab.hf.finetune import run_finetune
from replaylab.runtime import deterministic_attention
from replaylab.train import ddp

root, device = Path(sys.argv[1]), sys.argv[2]
info = ddp.setup(device)  # the group the runs join: gloo on CPU; NCCL with GPU LOCAL_RANK on CUDA
full, lora = (load_run_config(root / f"{n}.yaml") for n in ("full", "lora"))
with deterministic_attention(device, True):  # CUDA: the math kernel, so the resume is bit for bit
    run_finetune(full, root / "two_full")
    run_finetune(lora, root / "two_lora")
    if info.is_main:  # pretend the full run died after its step-5 checkpoint
        res = root / "resumed"
        shutil.copytree(root / "two_full", res)
        shutil.rmtree(res / "model")
        shutil.rmtree(res / "checkpoints" / "step_0000010")
        manifest = json.loads((res / "manifest.json").read_text())
        (res / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    ddp.barrier(info)
    run_finetune(full, root / "resumed", resume=True)
ddp.teardown(info)
"""


@pytest.mark.slow
@pytest.mark.parametrize(("device", "pin", "tol"), RANK_DEVICES)
def test_two_fsdp_ranks_match_one_process_and_resume_bit_for_bit(device, pin, tol, hf_world, tmp_path):
    """2 ranks (gloo on CPU, NCCL on two GPUs) shard the tiny Llama and train on halves of each global
    batch: losses, final weights and checkpoints match the 1-process run (float rounding), full and LoRA;
    a sharded run resumed from its step-5 checkpoint matches the straight sharded run bit for bit."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from replaylab.hf.finetune import run_finetune

    # 12 steps; a clip that binds at every step, so the global gradient norm across shards must be right
    full = make_config(hf_world, eval__initial=False, parallel="fsdp", checkpoint_every=5, optim__grad_clip=0.1, **pin)
    lora = make_config(
        hf_world,
        eval__initial=False,
        parallel="fsdp",
        replay_fraction=0.0,
        lora__enabled=True,
        lora__r=4,
        micro_batch_size=1,
        gradient_checkpointing=True,
        **pin,
    )  # 2 micro per rank
    for name, cfg in (("full", full), ("lora", lora)):
        (tmp_path / f"{name}.yaml").write_text(dump_yaml(cfg))
        run_finetune(cfg, tmp_path / f"one_{name}")  # one process: the unsharded fallback
    (tmp_path / "driver.py").write_text(DRIVER)
    torchrun_two_ranks(str(tmp_path / "driver.py"), str(tmp_path), device)

    for name in ("full", "lora"):
        one, two = tmp_path / f"one_{name}", tmp_path / f"two_{name}"
        assert read_losses(two) == pytest.approx(read_losses(one), abs=tol)
        m1, m2 = (json.loads((r / "manifest.json").read_text()) for r in (one, two))
        assert m2["status"] == "done" and set(m2["final"]) == {TARGET, REPLAY}
        for dom in m1["final"]:
            assert m2["final"][dom]["test_loss"] == pytest.approx(m1["final"][dom]["test_loss"], abs=tol)

    # Checkpoints: the same tensors, names and optimizer layout as the unsharded run's.
    for file in ("model.safetensors", "optim.safetensors"):
        a, b = (
            load_file(str(r / "checkpoints" / "step_0000005" / file))
            for r in (tmp_path / "one_full", tmp_path / "two_full")
        )
        assert a.keys() == b.keys()
        assert all(torch.allclose(a[k], b[k], atol=tol) for k in a)
    # The final folders were written from the gathered state and load as plain HF model / adapter.
    a, b = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in ("one_full", "two_full"))
    assert a.keys() == b.keys()  # the tied lm_head is dropped as in an unsharded save
    assert all(torch.allclose(a[k], b[k], atol=tol) for k in a)
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "two_full" / "model"))
    a, b = (load_file(str(tmp_path / r / "adapter" / "adapter_model.safetensors")) for r in ("one_lora", "two_lora"))
    assert a.keys() == b.keys() and all("lora_" in k for k in a)
    assert all(torch.allclose(a[k], b[k], atol=tol) for k in a)

    resumed, straight = tmp_path / "resumed", tmp_path / "two_full"
    assert read_losses(resumed) == read_losses(straight)
    finals = [json.loads((r / "manifest.json").read_text())["final"] for r in (resumed, straight)]
    assert finals[0] == finals[1]
    a, b = (load_file(str(r / "model" / "model.safetensors")) for r in (resumed, straight))
    assert all(torch.equal(a[k], b[k]) for k in a)
