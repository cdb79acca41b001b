"""FSDP (PyTorch FSDP2, `fully_shard`) for `replaylab finetune`: models that do not fit one GPU.

Data parallelism is the same as DDP's (`replaylab.train.ddp`): every rank builds the same global batch
and trains on its rows. What changes is where the model lives. DDP keeps the full weights, gradients
and AdamW moments on every rank; FSDP keeps 1/W of each and all-gathers one decoder layer at a time
for its forward and backward, then reduce-scatters (averages) that layer's gradients, so each rank's
optimizer steps its own shard.

Layout: one FSDP group per decoder layer (the classes a Hugging Face model lists in
`_no_split_modules`), then the root for the rest (embeddings, final norm, output head: tied input and
output embeddings stay in the one root group, which FSDP needs). Where bf16 is on, parameters are
gathered and computed in bf16 and gradients reduced in fp32; the sharded master weights and AdamW
state stay fp32 (this replaces autocast).

Checkpoints keep the engine's format (`replaylab.train.checkpoint`): the full trainable tensors and
an optimizer state indexed like `optimizer.state_dict()`, gathered onto rank 0's CPU. On resume every
rank reads the full tensors and keeps its shard, so a run resumes bit for bit in the same world size.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.distributed
from torch import nn

from replaylab.errors import ConfigError
from replaylab.train.checkpoint import CheckpointError

# Gathered onto rank 0's CPU only (other ranks get {}), so no GPU ever holds the whole model.
_ON_RANK0 = dict(full_state_dict=True, cpu_offload=True)


def use_fsdp(parallel: str, world_size: int, is_main: bool) -> bool:
    """Whether this run shards with FSDP. One process has nothing to shard across: it trains
    unsharded like a DDP run (with a one-line note), which is also what a 1-process FSDP run is."""
    if parallel != "fsdp":
        return False
    if world_size > 1:
        return True
    if is_main:
        print(
            "replaylab finetune: note: parallel=fsdp with one process trains unsharded; launch with "
            "torchrun --nproc_per_node N to shard the model over N processes",
            file=sys.stderr,
        )
    return False


def check_supported(lm_eval_tasks: list[str]) -> None:
    """Refuse, before any work, what cannot run sharded."""
    if lm_eval_tasks:
        # lm-eval drives the model from rank 0 alone; a sharded model needs every rank in each forward.
        raise ConfigError(
            f"eval.lm_eval_tasks {list(lm_eval_tasks)} cannot run under parallel=fsdp; drop them "
            "and evaluate the saved model/ (or adapter/) folder afterwards, or use parallel=ddp"
        )


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: a Hugging Face model's `_no_split_modules` classes
    (LlamaDecoderLayer, ...), else the children of its longest ModuleList."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if layers:
        return layers
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def shard(model: nn.Module, device: torch.device, world_size: int, dtype: torch.dtype | None) -> nn.Module:
    """Shard `model` (on CPU or `device`) in place over all ranks; its parameters become DTensors on
    `device`. Build the optimizer (and anything holding parameters) after this call."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    for layer in decoder_layers(model):  # bottom-up: a layer's parameters join its own group
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _names_by_group(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """Parameter names per optimizer group; flattened, their positions are the integer ids of
    `optimizer.state_dict()` (the engine's checkpoint format)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]


def full_model_state(model: nn.Module, *, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on rank 0's CPU, {} on other ranks; every rank must call it.
    trainable_only: leave out frozen parameters (a LoRA run's base weights)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(**_ON_RANK0, ignore_frozen_params=trainable_only)
    state = get_model_state_dict(model, options=options)
    # Gathering copies each name on its own; alias tied weights again (one Parameter under two names,
    # e.g. embed_tokens and lm_head) so save_pretrained drops the duplicate as for an unsharded model.
    owner: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if name in state:
            state[name] = state[owner.setdefault(id(p), name)]
    return state


def gather(model: nn.Module, optimizer: torch.optim.Optimizer, trainable: list[str]) -> tuple[dict, dict]:
    """(model, optimizer) state dicts in the checkpoint format, full on rank 0's CPU (empty elsewhere).
    Collective: every rank must call it. `trainable`: the names a checkpoint holds (tied weights once).
    Write them out before the next step: on CPU some tensors are the live ones, not copies."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    tensors = full_model_state(model, trainable_only=True)
    osd = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(**_ON_RANK0))
    if torch.distributed.get_rank() != 0:
        return {}, {}
    groups = _names_by_group(model, optimizer)
    index = {n: i for i, n in enumerate(n for g in groups for n in g)}
    param_groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [index[n] for n in names]}
        for g, names in zip(optimizer.param_groups, groups)
    ]
    indexed = {"state": {index[n]: st for n, st in osd["state"].items()}, "param_groups": param_groups}
    return {n: tensors[n] for n in trainable}, indexed


def load(
    model: nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], optim_state: dict[str, Any]
) -> None:
    """Load a checkpoint's full tensors and indexed optimizer state; each rank keeps its shard.
    Collective: every rank passes the same full state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    order = [n for g in _names_by_group(model, optimizer) for n in g]
    if set(tensors) != set(order):
        raise CheckpointError(
            "checkpoint tensors do not match this run's trainable parameters; "
            "it belongs to another configuration (LoRA vs full?)"
        )
    full = StateDictOptions(full_state_dict=True, strict=False)  # frozen base weights are not in checkpoints
    set_model_state_dict(model, dict(tensors), options=full)  # a copy: torch rewrites the dict it is given
    by_name = {
        "state": {order[int(i)]: dict(st) for i, st in optim_state["state"].items()},
        "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]} for g in optim_state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=full)
