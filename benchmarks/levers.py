"""The MFU levers that benchmarks/throughput.py tries at the paper's shapes, each a change to how our
model's step is built, and each able to say why it cannot run here (no GPU, a package missing, an old GPU).
throughput.py's docstring says what each contender measures; the packages travel as wheels to a GPU
machine (benchmarks/gpu_pack.sh).
"""

from __future__ import annotations

import torch

from replaylab.model import Transformer
from replaylab.train.loss import NextTokenLoss


def gpu_only(device: torch.device) -> str | None:
    return None if device.type == "cuda" else "a GPU lever (the step it speeds up is the GPU's)"


def cce_unavailable(device: torch.device) -> str | None:
    if gpu_only(device):
        return gpu_only(device)
    try:
        import cut_cross_entropy  # noqa: F401
    except ImportError as e:
        return f"cut-cross-entropy is not installed ({e}); pip install cut-cross-entropy"
    return None


def cce_loss(filter_eps):
    """A loss builder (model, autocast dtype) -> tokens (B, T+1) -> mean loss: the model body compiled, the output
    layer and cross-entropy in cut-cross-entropy's kernel, which never stores the logits."""

    def build(model: Transformer, dtype: torch.dtype | None):
        from cut_cross_entropy import linear_cross_entropy

        body = torch.compile(model.hidden)

        def loss(tokens):
            # The residual stream leaves the final norm in fp32 even under autocast; the output matmul runs
            # in the autocast dtype (as autocast's F.linear would), so both operands are cast to it.
            h = body(tokens[:, :-1])
            dt = dtype or h.dtype
            return linear_cross_entropy(h.to(dt), model.output_weight().to(dt), tokens[:, 1:], filter_eps=filter_eps)

        return loss

    return build


def fp8_unavailable(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "float8 matmuls need a CUDA GPU"
    if torch.cuda.get_device_capability(device) < (8, 9):
        capability = torch.cuda.get_device_capability(device)
        return f"float8 matmuls need compute capability 8.9+ (Ada, Hopper); this GPU has {capability}"
    try:
        import torchao.float8  # noqa: F401
    except ImportError as e:
        return f"torchao is not installed ({e}); pip install torchao"
    return None


def to_fp8(model: Transformer, head: bool) -> Transformer:
    """torchao float8 training on every linear layer whose dimensions allow it; `head`: the output layer too."""
    from torchao.float8 import convert_to_float8_training

    def keep(module, fqn):  # float8 matmuls need both dimensions divisible by 16
        ok = isinstance(module, torch.nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0
        return ok and (head or fqn != "lm_head")

    return convert_to_float8_training(model, module_filter_fn=keep)


def autotuned_loss(model: Transformer, dtype: torch.dtype | None):
    """The standard step loss compiled with inductor's matmul-template and fusion benchmarking."""
    return torch.compile(NextTokenLoss(model), mode="max-autotune-no-cudagraphs")
