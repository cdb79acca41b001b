"""Data parallelism under `torchrun`: gloo on CPU, NCCL on GPU.

The sampler yields the same global batch on every rank (it is a pure function of the step); rank r
trains on rows [r*B/W, (r+1)*B/W). After the micro-batches, gradients are summed with one all-reduce
over a flat buffer and divided by W, so every rank holds the gradient of the global-batch mean loss
and takes the same optimizer step. We do this by hand rather than with DistributedDataParallel: it
is a few lines, works the same with or without torch.compile, and keeps gradient accumulation plain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from replaylab.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    initialized_here = False
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
        initialized_here = True
    return DistInfo(rank=rank, world_size=world, local_rank=local, initialized_here=initialized_here)


def shard_rows(batch_size: int, micro_batch_size: int, info: DistInfo) -> tuple[int, int]:
    """Rows [lo, hi) of the global batch that this rank trains on; each rank's share must split
    into whole micro-batches so every rank runs the same number of forward passes."""
    if batch_size % info.world_size:
        raise ConfigError(
            f"train.batch_size ({batch_size}) must be divisible by the number of processes ({info.world_size})"
        )
    per_rank = batch_size // info.world_size
    if per_rank % micro_batch_size:
        raise ConfigError(
            f"each of {info.world_size} processes gets {per_rank} sequences, not a multiple of "
            f"train.micro_batch_size ({micro_batch_size}); choose a micro_batch_size that divides {per_rank}"
        )
    return info.rank * per_rank, (info.rank + 1) * per_rank


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """All-reduce (mean) the gradients of `params` through one flat buffer."""
    if not info.active:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def mean_scalar(value: float, info: DistInfo, device: torch.device) -> float:
    if not info.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / info.world_size


def any_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if it is true on any (so all ranks stop at the same step)."""
    if not info.active:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
