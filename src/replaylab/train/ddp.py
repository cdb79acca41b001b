"""Data parallelism under `torchrun`: gloo on CPU, NCCL on GPU.

The run's device setting picks the backend: on CUDA each rank takes GPU LOCAL_RANK and joins with NCCL,
so `--nproc_per_node` may not exceed the GPUs visible on the node (two ranks on one GPU crash NCCL);
`setup` refuses that with a ConfigError on every rank before touching the GPU. Several ranks on one
machine without enough GPUs run on CPU with gloo: set the device to cpu (`train.device=cpu`,
`replaylab finetune --set device=cpu`).

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


def check_gpu_count(*, local_world_size: int, num_visible_gpus: int) -> None:
    """One GPU per rank: torchrun's processes on this node (LOCAL_WORLD_SIZE) must not outnumber the
    visible GPUs, or two ranks would share a GPU and NCCL fails (a crash, not a message)."""
    if local_world_size > num_visible_gpus:
        raise ConfigError(
            f"torchrun started {local_world_size} processes on this node (--nproc_per_node {local_world_size}) "
            f"but only {num_visible_gpus} CUDA GPU(s) are visible, and each process needs its own GPU; use "
            f"--nproc_per_node {num_visible_gpus} or fewer, or, to run {local_world_size} processes on CPU with "
            f"gloo, set the device to cpu (replaylab train: train.device=cpu; replaylab finetune: --set device=cpu)"
        )


def setup(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else single process.
    On CUDA, rank LOCAL_RANK takes GPU LOCAL_RANK (NCCL); elsewhere the group is gloo. A node with more
    ranks than visible GPUs is refused (check_gpu_count) before any GPU or process-group work."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_kind == "cuda":
        # torchrun sets LOCAL_WORLD_SIZE; another launcher may not, and then this rank needs GPU `local`.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(local + 1)))
        check_gpu_count(local_world_size=local_world, num_visible_gpus=torch.cuda.device_count())
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
