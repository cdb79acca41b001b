"""Optimizer policy: AdamW as in the paper, weight decay on matrices only, global-norm clipping.

Parameter groups (AdamW's `weight_decay` is applied per group):
- `decay`: matrices, i.e. parameters with 2+ dimensions that are not embeddings. The untied output
  head (`lm_head`) is a Linear matrix like any other projection, so it IS decayed: the paper exempts
  only norms and embeddings, and an untied head is neither.
- `no_decay`: embeddings (every nn.Embedding weight, and any parameter that *is* one of them, such as
  a tied output head: tied weights are one Parameter object), norm gains and biases, plus anything
  1-D. `decay_embeddings` / `decay_norms` move embeddings / norm parameters into `decay`.
Group names are stable ("decay", then "no_decay"; empty groups left out), so optimizer state dicts
of the same model always line up.

The stage policy `reset` means a brand new optimizer from `build_optimizer` (moments zero, step count
restarting at 0); `carry` keeps the object.
"""

from __future__ import annotations

import torch
from torch import nn

from replaylab.errors import ConfigError
from replaylab.runconfig import OptimConfig


def _is_norm(module: nn.Module) -> bool:
    # Covers nn.LayerNorm / nn.RMSNorm / GroupNorm / BatchNorm* and hand-written or HF norms
    # (LlamaRMSNorm) alike: they are all named after what they are.
    return "norm" in type(module).__name__.lower()


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """AdamW parameter groups for `model` under `cfg`: [{"name", "params", "weight_decay"}, ...]."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    norms = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # shared (tied) parameters are listed once
        if not p.requires_grad:
            continue
        if id(p) in embeddings:
            wd = cfg.decay_embeddings
        elif id(p) in norms:
            wd = cfg.decay_norms
        else:
            wd = p.ndim >= 2
        (decay if wd else no_decay).append(p)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": cfg.weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def adamw_kwargs(implementation: str, device: torch.device | str, dtype: torch.dtype | None = None) -> dict:
    """torch.optim.AdamW keyword arguments for optim.implementation in {auto, fused, foreach, single}; `dtype`
    is the run's autocast dtype (None: fp32).

    auto = fused on CUDA (one kernel for all parameters) and on a CPU under bf16 autocast (one vectorized pass
    per parameter: ~10-15% of the tiny preset's step on a 2-vCPU avx512_bf16 EPYC, issue 22, where CPU foreach
    runs a loop of per-tensor ops), foreach on an fp32 CPU (kept so that those runs keep their recorded
    numbers)."""
    if implementation == "auto":
        fused = torch.device(device).type == "cuda" or dtype == torch.bfloat16
        implementation = "fused" if fused else "foreach"
    if implementation == "fused":
        return {"fused": True}
    if implementation == "foreach":
        return {"foreach": True, "fused": False}
    return {"foreach": False, "fused": False}


def build_optimizer(
    model: nn.Module, optim_cfg: OptimConfig, device: torch.device | str, dtype: torch.dtype | None = None
) -> torch.optim.AdamW:
    """A fresh AdamW over `model` (also what a stage with `optimizer: reset` gets), its kernels picked for `device`
    and the autocast `dtype` (`adamw_kwargs`). The LR starts at 0: the trainer sets it each step with `set_lr`."""
    device = torch.device(device)
    groups = param_groups(model, optim_cfg)
    if not groups:
        raise ConfigError("the model has no trainable parameters; nothing for the optimizer to train")
    kwargs = adamw_kwargs(optim_cfg.implementation, device, dtype)
    try:
        return torch.optim.AdamW(
            groups,
            lr=0.0,
            betas=tuple(optim_cfg.betas),
            eps=optim_cfg.eps,
            weight_decay=optim_cfg.weight_decay,
            **kwargs,
        )
    except (RuntimeError, ValueError) as e:
        if kwargs.get("fused") or kwargs.get("foreach"):
            raise ConfigError(
                f"optim.implementation {optim_cfg.implementation!r} is not supported here ({e}); "
                "use optim.implementation=single or auto"
            ) from None
        raise


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the LR of every parameter group (the schedule is computed outside, see train.lr)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip gradients to global L2 norm `max_norm` (0 = off) and return the norm before clipping, a 0-dim
    tensor on the gradients' device (no host sync; inf or nan when gradients are not finite: the trainer
    decides what divergence means)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    elif hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        norm = torch.nn.utils.get_total_norm(grads)
    else:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))  # scales by exactly 1
    return norm
