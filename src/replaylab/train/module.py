"""Train modules: what the one Trainer (train/trainer.py) needs of a model, and our Transformer's.

A train module owns a model, its optimizer, and how a micro-batch becomes a loss; the Trainer owns the rest
of a run (folder, schedule, data, eval and checkpoint cadence, signals, divergence).

    micro_loss(tokens)        mean next-token loss (nats, fp32) of tokens (mb, T+1), ready for backward
    weighted_micro_loss(b)    instruction rows (train/loss_shares.py): sum of weight x next-token loss of
                              b = {tokens, positions, segments (mb, T+1), weights (mb, T)}, attention per document
    sync_gradients(dist)      average gradients over data-parallel ranks (a sharded model already has)
    clip_gradients(max_norm)  clip to a global L2 norm (0 = off); the norm before clipping, a 0-dim tensor
    optimizer_step(lr)        one AdamW step at `lr`, then clear the gradients
    reset_optimizer()         fresh AdamW state (a stage with `optimizer: reset`)
    state_dict()              {"model": tensors, "optim": AdamW state}: what a checkpoint holds (train/checkpoint.py)
    load_state_dict(state)    continue from such a state (a checkpoint's `model` and `optim`): the one restore path
    evaluate(sets, batch)     held-out losses (train/evaluate.py), the model left in train mode
    train()                   put the model in train mode

Implementations: `TransformerModule` (here) and `replaylab.hf.train_module.HFCausalLMModule` (a Hugging Face
causal LM: full fine-tuning, LoRA, FSDP).
"""

from __future__ import annotations

from typing import Protocol

import torch

from replaylab import runtime
from replaylab.runconfig import OptimConfig
from replaylab.train import ddp
from replaylab.train.evaluate import EvalSet, evaluate
from replaylab.train.loss import build_step_loss
from replaylab.train.loss_shares import weighted_loss
from replaylab.train.optim import build_optimizer, clip_gradients, set_lr


class TrainModule(Protocol):
    def micro_loss(self, tokens: torch.Tensor) -> torch.Tensor: ...
    def weighted_micro_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...
    def sync_gradients(self, dist: ddp.DistInfo) -> None: ...
    def clip_gradients(self, max_norm: float) -> torch.Tensor: ...
    def optimizer_step(self, lr: float) -> None: ...
    def reset_optimizer(self) -> None: ...
    def state_dict(self) -> dict[str, dict]: ...
    def load_state_dict(self, state: dict[str, dict]) -> None: ...
    def evaluate(self, sets: list[EvalSet], batch_size: int) -> dict[str, dict[str, float]]: ...
    def train(self) -> None: ...


class AdamWModule:
    """What every train module shares: `model` trained by the engine's AdamW (train/optim.py: parameter groups,
    fused/foreach kernels), gradients synced over ranks, clipped to a global norm. `dtype`: autocast dtype."""

    def __init__(self, model: torch.nn.Module, optim: OptimConfig, *, device: torch.device, dtype: torch.dtype | None):
        self.model, self.optim, self.device, self.dtype = model, optim, device, dtype
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(model, optim, device, dtype)

    def sync_gradients(self, dist: ddp.DistInfo) -> None:
        ddp.average_gradients(self.params, dist)

    def clip_gradients(self, max_norm: float) -> torch.Tensor:
        return clip_gradients(self.model, max_norm)

    def optimizer_step(self, lr: float) -> None:
        set_lr(self.optimizer, lr)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def reset_optimizer(self) -> None:
        self.optimizer = build_optimizer(self.model, self.optim, self.device, self.dtype)

    def train(self) -> None:
        self.model.train()


class TransformerModule(AdamWModule):
    """Our Llama-style Transformer (replaylab.model), compiled as `compile_spec` says (train/loss.py: with the
    loss fused on GPUs and under bf16 autocast; compiled on a bf16 CPU it attends with written-out matmuls,
    runtime.written_out_attention). `example` is a micro-batch (mb, T+1) on the device for the compile trial;
    a checkpoint's state is loaded afterwards (`load_state_dict`: the compile trial leaves the weights untouched)."""

    def __init__(
        self,
        model: torch.nn.Module,
        optim: OptimConfig,
        *,
        device: torch.device,
        dtype: torch.dtype | None,
        compile_spec: str,
        example: torch.Tensor,
    ):
        super().__init__(model, optim, device=device, dtype=dtype)
        model.write_out_attention(runtime.written_out_attention(device, dtype, compile_spec))
        self._loss = build_step_loss(model, compile_spec, example, dtype)

    def micro_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        with runtime.autocast(self.device, self.dtype):
            return self._loss(tokens)

    def weighted_micro_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        t = batch["tokens"]  # (mb, T+1); positions and segments likewise: the document mask (model.py)
        with runtime.autocast(self.device, self.dtype):
            logits = self.model(t[:, :-1], batch["positions"][:, :-1], batch["segments"][:, :-1])  # (mb, T, V)
        return weighted_loss(logits, t[:, 1:], batch["weights"])

    def state_dict(self) -> dict[str, dict]:
        return {"model": self.model.state_dict(), "optim": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optim"])

    def evaluate(self, sets: list[EvalSet], batch_size: int) -> dict[str, dict[str, float]]:
        return evaluate(self.model, sets, batch_size=batch_size, device=self.device, autocast_dtype=self.dtype)
