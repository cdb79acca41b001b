"""Where and how a model runs: device, precision, torch.compile, threads.

The defaults ("auto") pick the fastest settings that are correct on the machine at hand:
- CPU: bf16 autocast only when the CPU has native bf16 matmuls (avx512_bf16 or AMX); without them
  bf16 is emulated and slower than fp32. torch.compile whenever it works, eager otherwise (on our
  fp32-only 2-core machines it gains little or nothing for small models, see BENCHMARKS.md). Under
  bf16 autocast the compiled step takes the loss into the graph (train/loss.py), attends with written-out
  matmuls (`written_out_attention`) and steps a fused AdamW (train/optim.py): 1.5-2x over Hugging Face's
  compiled Llama on a 2-vCPU avx512_bf16 EPYC (BENCHMARKS.md).
- CUDA: bf16 autocast where the GPU supports it, compile, TF32 for the remaining fp32 matmuls.
  Attention runs SDPA's math kernel under the default train.deterministic=true (the fused kernels'
  backward is not bit-reproducible, see `deterministic_attention`); train.deterministic=false lets
  SDPA pick flash attention for bf16. (AdamW's fused kernels: optim.implementation, train/optim.py.)

Typical use in a training loop:

    device = resolve_device(cfg.train.device)
    dtype = resolve_precision(cfg.train.precision, device)
    model = Transformer(mcfg).to(device)
    step_model = maybe_compile(model, cfg.train.compile, example=batch[:, :-1], autocast_dtype=dtype)
    with autocast(device, dtype):
        logits = step_model(x)
    # save checkpoints from `model` (unwrap(step_model) is the same object): compiled wrappers
    # prefix parameter names with "_orig_mod.".
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from replaylab.errors import ConfigError, one_line


def resolve_device(spec: str = "auto") -> torch.device:
    """ "auto" = CUDA when available, else CPU; "cuda[:N]" errors clearly when there is no GPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device {spec!r} but no CUDA GPU is visible to torch; use train.device=cpu (or auto)"
            )
        # fp32 matmuls outside autocast (e.g. the fp32 logits' consumers) may use TF32 on Ampere+.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif spec != "cpu":
        raise ConfigError(f"train.device {spec!r} is unknown; choose auto, cpu or cuda")
    return torch.device(spec)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(spec: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for `spec` in {auto, fp32, bf16}, or None for plain fp32.

    Weights and optimizer state stay fp32 either way; autocast only runs matmuls in bf16 (our Transformer
    returns fp32 logits, and the loss upcasts a Hugging Face model's bf16 ones: train/loss.py)."""
    device = torch.device(device)
    if spec == "fp32":
        return None
    if spec not in ("auto", "bf16"):
        raise ConfigError(f"train.precision {spec!r} is unknown; choose auto, fp32 or bf16")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if spec == "bf16":
            raise ConfigError(
                "train.precision bf16 but this GPU has no bf16 support; use train.precision=fp32 (or auto)"
            )
        return None
    if cpu_has_native_bf16():
        return torch.bfloat16
    if spec == "bf16":
        warnings.warn(
            "train.precision=bf16 on a CPU without avx512_bf16/AMX: bf16 is emulated and slower than fp32", stacklevel=2
        )
        return torch.bfloat16
    return None


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """A context that runs the forward pass under `dtype` autocast; a no-op for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def deterministic_run(device: torch.device | str, deterministic: bool = True):
    """A context for a bit-reproducible run on `device` (`train.deterministic`; Hugging Face fine-tuning runs
    always): deterministic algorithms (cuBLAS workspace, no cuDNN autotuning; a warning where an op has no
    deterministic version) and attention's math kernel on CUDA (`deterministic_attention`). The previous
    settings are restored on exit."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    try:
        with deterministic_attention(device, deterministic):
            yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


def deterministic_attention(device: torch.device | str, deterministic: bool):
    """A context in which attention's backward is bit-reproducible on `device`.

    On CUDA the fused attention kernels (flash, memory-efficient, cuDNN) accumulate gradients with
    atomics: measured on an H200 at the 150m shapes, two identical backward passes differed by up to
    2.5e-5 with flash and with cuDNN, and agreed bit for bit with the math kernel alone. So a
    deterministic CUDA run uses the math kernel (slower, and it stores the T x T scores); set
    train.deterministic=false for the fused kernels' speed. CPU kernels are reproducible as they are."""
    if not deterministic or torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def written_out_attention(device: torch.device | str, dtype: torch.dtype | None, compile_spec: str) -> bool:
    """Whether our Transformer should attend with plain matmuls (model.written_out_causal_attention) instead of
    SDPA: on a CPU under bf16 autocast when compiling. There SDPA's CPU flash kernel, which inductor keeps as is,
    spent ~40% of the tiny preset's step in its backward; the written-out form, compiled, made the whole step
    ~1.5x faster on a 2-vCPU EPYC with avx512_bf16 (BENCHMARKS.md). fp32 CPU runs keep SDPA (and their recorded
    numbers), and GPUs keep their fused kernels."""
    return torch.device(device).type == "cpu" and dtype == torch.bfloat16 and compile_spec != "off"


def compile_unavailable_reason(device: torch.device | str = "cpu") -> str | None:
    """Why torch.compile cannot work here, or None if it should."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile (dynamo) is not supported on this Python/platform"
    if torch.device(device).type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler (g++/clang++) on PATH, which inductor needs for CPU kernels"
    return None


def unwrap(model: nn.Module) -> nn.Module:
    """The original module behind a torch.compile wrapper (whose state_dict keys carry '_orig_mod.')."""
    return getattr(model, "_orig_mod", model)


def maybe_compile(
    model: nn.Module,
    spec: str = "auto",
    *,
    example: torch.Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> nn.Module:
    """torch.compile(model) for spec "on"/"auto"; the model itself for "off" or when compile fails on "auto".

    compile is lazy: it only fails on the first call. Give `example` (an input batch, on the model's
    device) to trial one forward+backward now, so a failure falls back here instead of mid-run. The
    trial leaves the parameters untouched and clears the gradients it made. With "on", a failure is an
    error instead of a fallback."""
    if spec == "off":
        return model
    if spec not in ("auto", "on"):
        raise ConfigError(f"train.compile {spec!r} is unknown; choose auto, on or off")
    device = next(model.parameters()).device
    reason = compile_unavailable_reason(device)
    if reason is None:
        compiled = torch.compile(model)
        if example is None:
            return compiled

        def step() -> torch.Tensor:
            with autocast(device, autocast_dtype):
                return compiled(example).float().mean()

        reason = compile_trial(model, step)
        if reason is None:
            return compiled
    if spec == "on":
        raise ConfigError(
            f"train.compile=on but torch.compile does not work here ({reason}); use train.compile=auto or off"
        )
    warnings.warn(f"torch.compile unavailable, running eager: {reason}", stacklevel=2)
    return model


def compile_trial(model: nn.Module, step: Callable[[], torch.Tensor]) -> str | None:
    """Trial a compile now rather than mid-run (compile is lazy: it fails only on the first call): `step` runs
    a compiled forward and returns a scalar, whose backward this runs. Returns None if both worked, else why
    not (one line), after resetting dynamo. The parameters are untouched and the gradients made are cleared."""
    try:
        step().backward()
        return None
    except Exception as e:  # inductor/dynamo errors have many types; any of them means "cannot compile"
        torch._dynamo.reset()
        return one_line(e)
    finally:
        model.zero_grad(set_to_none=True)


def set_threads(n: int | None) -> int:
    """Set torch's intra-op thread count (None leaves it); returns the count now in effect.

    One thread per process is fastest for sweeps (one worker per core); a 2-thread process collapses
    when anything else uses a core (OpenMP oversubscription)."""
    if n is not None:
        if n < 1:
            raise ConfigError(f"train.threads must be >= 1, got {n}")
        torch.set_num_threads(n)
    return torch.get_num_threads()
