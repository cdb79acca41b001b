"""The training objective: next-token cross-entropy (`next_token_loss`, also what held-out evaluation
scores), and what torch.compile gets to see of it.

At the paper's shapes the output layer dominates memory: a micro-batch of 16 x 4096 tokens over the
Llama-3 vocabulary (128,256) has 34 GB of fp32 logits, and eager cross-entropy keeps as much again
for its log-softmax and for the logits' gradient. Measured on an H200 (139 GB), compiling the model
alone ran out of memory at micro-batch 16 (BENCHMARKS.md). Compiling the model together with its loss
lets inductor fuse the upcast, the log-sum-exp and the gradient into the output projection's
neighbours, so the fp32 logits are never stored.

On a CPU under bf16 autocast (CPUs with avx512_bf16 or AMX) the loss is compiled with the model too, for
speed: inductor fuses the logits' upcast, log-softmax and gradient into a few loops instead of eager
cross-entropy's passes over fp32 logits, the largest tensor of a small model's step. Measured on a 2-vCPU
EPYC with avx512_bf16 (BENCHMARKS.md) this made the engine's step 1.3-1.5x faster than with the loss outside,
and faster than Hugging Face's compiled Llama. The last bits of such runs' losses changed with it. In fp32
(CPUs without native bf16, e.g. AVX2 only) the loss stays outside the compiled graph: there it gained
nothing measurable, and keeping the kernels as they were keeps those runs bit-identical to runs recorded
before this existed.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from replaylab import runtime


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy in nats of logits (B, T, V) against targets (B, T), computed in fp32 (bf16 logits
    are upcast first; upcasting before or after flattening gives the same bits). reduction: "mean"
    (training) or "sum" (evaluation, which accumulates over batches itself)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


class NextTokenLoss(nn.Module):
    """model(tokens[:, :-1]) scored against tokens[:, 1:]: mean cross-entropy in nats (fp32)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # tokens (B, T+1) -> scalar
        return next_token_loss(self.model(tokens[:, :-1]), tokens[:, 1:])  # logits (B, T, V)


def fuse_loss_by_default(device: torch.device, autocast_dtype: torch.dtype | None) -> bool:
    """Compile the loss with the model on GPUs and on CPUs under bf16 autocast, not in fp32 on a CPU (see the
    module docstring)."""
    return device.type == "cuda" or autocast_dtype == torch.bfloat16


def build_step_loss(
    model: nn.Module,
    compile_spec: str,
    example: torch.Tensor,
    autocast_dtype: torch.dtype | None,
    fuse: bool | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function tokens (B, T+1) -> mean loss that trains `model`, compiled as `compile_spec` says.

    fuse: compile model and loss as one graph (None: `fuse_loss_by_default`). `example` is a micro-batch
    of tokens (B, T+1) on the model's device, used to trial the compile (runtime.maybe_compile)."""
    device = next(model.parameters()).device
    fuse = fuse_loss_by_default(device, autocast_dtype) if fuse is None else fuse
    if fuse:
        return runtime.maybe_compile(NextTokenLoss(model), compile_spec, example=example, autocast_dtype=autocast_dtype)
    return NextTokenLoss(
        runtime.maybe_compile(model, compile_spec, example=example[:, :-1], autocast_dtype=autocast_dtype)
    )
