"""The train steps that benchmarks/throughput.py times, one `Contender` each: ours through the engine's own train
module (what `replaylab train` runs), Hugging Face `LlamaForCausalLM` as a Trainer of its own would step it,
and the levers (benchmarks/levers.py). `contenders` lists them for a shape and machine; throughput.py's
docstring says what each key measures."""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Callable

import levers  # benchmarks/ is on the path when this runs as a script
import torch

from replaylab import runtime
from replaylab.hf_convert import hf_config, to_hf_state_dict
from replaylab.model import Transformer
from replaylab.runconfig import ModelConfig, OptimConfig
from replaylab.train.module import TransformerModule
from replaylab.train.optim import adamw_kwargs

LEVERS = ("ours/cce", "ours/cce-exact", "ours/fp8", "ours/fp8-body", "ours/max-autotune")
LR = 1e-4  # every contender's constant learning rate


class Contender:
    """One setting's train step. Ours is the engine's train module as `replaylab train` builds it
    (TransformerModule: the loss from train.loss.build_step_loss, compiled with the model on a GPU or under
    bf16 autocast; the engine's AdamW, parameter groups and clipping), stepped as train/trainer.py steps it:
    `micro` sequences per forward pass, each loss scaled by 1 / micro-batches before its backward. HF computes its
    own loss from `labels` (its fp32 upcast included), so compiling the model compiles the loss with it too.
    `context` is entered around every step (deterministic mode, say); `loss_fn(model, dtype)`, when given, builds
    the loss function that replaces ours (the levers)."""

    def __init__(
        self,
        key,
        name,
        model,
        dtype,
        compile_,
        device,
        hf: bool,
        example: torch.Tensor,
        context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        loss_fn: Callable | None = None,
        micro: int | None = None,
    ):
        self.key, self.name, self.dtype, self.device, self.hf, self.context = key, name, dtype, device, hf, context
        self.model = model.to(device).train()
        self.micro = micro
        with self.context():
            if hf:
                self.opt = torch.optim.AdamW(
                    self.model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1, **adamw_kwargs("auto", device)
                )
                step_model = torch.compile(self.model) if compile_ else self.model
                # shift_labels: score all T next tokens, as ours does (labels alone would drop the last one)
                self.loss_fn = lambda t: (
                    step_model(
                        input_ids=t[:, :-1], labels=t[:, 1:], shift_labels=t[:, 1:].contiguous(), use_cache=False
                    ).loss
                )
            else:
                # OptimConfig's defaults are the paper's AdamW (betas 0.9/0.95, decay 0.1 on matrices, clip 1.0).
                spec = "on" if compile_ and loss_fn is None else "off"  # a lever compiles its own loss
                self.module = TransformerModule(
                    self.model,
                    OptimConfig(),
                    device=device,
                    dtype=dtype,
                    compile_spec=spec,
                    example=example[: micro or len(example)],
                )
                if loss_fn is not None:
                    self.module._loss = loss_fn(self.model, dtype)  # micro_loss still applies the autocast
        self.rates: list[float] = []
        self.losses: list[float] = []
        self.warmup_s = 0.0

    def step(self, batch: torch.Tensor, mark: Callable[[], None] = lambda: None) -> float:
        """One train step; `mark` is called before it, between forward+backward and clip+AdamW, and after."""
        with self.context():
            mark()
            if self.hf:
                with runtime.autocast(self.device, self.dtype):
                    loss = self.loss_fn(batch)
                loss.backward()
                mark()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            else:  # as train/trainer.py's step: micro-batches, the module's clip (and its one sync), its AdamW step
                mb = self.micro or batch.shape[0]
                n = batch.shape[0] // mb
                loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
                for m in range(n):
                    micro_loss = self.module.micro_loss(batch[m * mb : (m + 1) * mb])
                    (micro_loss / n).backward()
                    loss_sum += micro_loss.detach()
                mark()
                if not math.isfinite(float(self.module.clip_gradients(self.module.optim.grad_clip))):
                    raise RuntimeError(f"{self.name}: the gradient norm is not finite")
                self.module.optimizer_step(LR)
                loss = loss_sum / n
            mark()
        self.losses.append(float(loss))  # a host sync, so timings are honest on GPU too
        return self.losses[-1]

    def split_step(self, batch: torch.Tensor) -> tuple[float, float]:
        """One step timed in two synchronised parts: (forward + backward, clip + AdamW) in seconds."""
        times = []

        def mark() -> None:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

        self.step(batch, mark)
        return times[1] - times[0], times[2] - times[1]

    def checksum(self) -> str:
        """sha256 over the parameters' bytes, in order: equal checksums = bit-identical weights."""
        h = hashlib.sha256()
        for p in runtime.unwrap(self.model).parameters():
            h.update(p.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass
class Spec:
    key: str
    name: str
    make: Callable[[], Contender]
    unavailable: str | None = None  # why this contender cannot run here


def contenders(
    cfg: ModelConfig, device: torch.device, example: torch.Tensor, emulated_bf16: bool = False, micro: int | None = None
):
    from transformers import LlamaForCausalLM

    auto_dtype = runtime.resolve_precision("auto", device)
    no_compile = runtime.compile_unavailable_reason(device)
    compile_ok = no_compile is None
    bf16 = torch.bfloat16
    try_bf16 = device.type == "cuda" or runtime.cpu_has_native_bf16() or emulated_bf16
    det = lambda: runtime.deterministic_run(device, True)  # noqa: E731

    def ours(key, name, dtype, compile_, prepare=lambda m: m, unavailable=None, **kw):
        def make():
            torch.manual_seed(0)
            return Contender(
                key,
                name,
                prepare(Transformer(cfg)),
                dtype,
                compile_,
                device,
                hf=False,
                example=example,
                micro=micro,
                **kw,
            )

        return Spec(key, name, make, unavailable)

    def hf(key, dtype, compile_):
        def make():
            torch.manual_seed(0)
            ref = Transformer(cfg)
            model = LlamaForCausalLM._from_config(hf_config(cfg), attn_implementation="sdpa")
            model.load_state_dict(to_hf_state_dict(ref.state_dict(), cfg), strict=False)  # same weights
            return Contender(key, key, model, dtype, compile_, device, hf=True, example=example)

        return Spec(key, key, make)

    auto = f"{'bf16' if auto_dtype else 'fp32'}{' + compile' if compile_ok else ''}"
    yield ours("ours/auto", f"ours/auto ({auto})", auto_dtype, compile_ok)
    yield ours(
        "ours/deterministic",
        f"ours/deterministic ({auto}, math attention on CUDA)",
        auto_dtype,
        compile_ok,
        context=det,
    )
    yield ours("ours/fp32 eager", "ours/fp32 eager", None, False)
    if compile_ok and auto_dtype is None and try_bf16:
        yield ours("ours/bf16 + compile", "ours/bf16 + compile", bf16, True)
    if compile_ok and auto_dtype is not None:
        yield ours("ours/fp32 + compile", "ours/fp32 + compile", None, True)
    yield hf("hf/fp32 eager", None, False)
    if try_bf16:
        yield hf("hf/bf16 eager", bf16, False)
    if compile_ok:
        yield hf("hf/fp32 + compile", None, True)
        if try_bf16:
            yield hf("hf/bf16 + compile", bf16, True)

    # The levers (benchmarks/levers.py). Each says why it cannot run here rather than silently dropping out.
    for key, eps in (("ours/cce", "high"), ("ours/cce-exact", None)):
        yield ours(
            key,
            f"{key} ({auto}, cut-cross-entropy, filter_eps={eps})",
            auto_dtype,
            compile_ok,
            loss_fn=levers.cce_loss(eps),
            unavailable=levers.cce_unavailable(device) or no_compile,
        )
    for key, head in (("ours/fp8", True), ("ours/fp8-body", False)):
        yield ours(
            key,
            f"{key} (float8 {'all linears' if head else 'all but the output layer'} + compile)",
            auto_dtype,
            compile_ok,
            prepare=lambda m, head=head: levers.to_fp8(m, head),
            unavailable=levers.fp8_unavailable(device) or no_compile,
        )
    yield ours(
        "ours/max-autotune",
        f"ours/max-autotune ({auto}, mode=max-autotune-no-cudagraphs)",
        auto_dtype,
        compile_ok,
        loss_fn=levers.autotuned_loss,
        unavailable=levers.gpu_only(device) or no_compile,
    )


def selected(spec: Spec, only: set[str], with_levers: bool) -> bool:
    if only:
        return spec.key in only or any(spec.name.startswith(o) for o in only)
    return with_levers or spec.key not in LEVERS
