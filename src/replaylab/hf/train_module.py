"""The train module of a pretrained Hugging Face causal LM (train/module.py says what a train module is):
full fine-tuning, LoRA adapters (peft), or FSDP2 sharding under torchrun (hf/parallel.py).

Checkpoints hold only what trains (every weight, or the adapters) with its AdamW state, in the engine's
checkpoint format; a sharded model gathers the full tensors onto rank 0 first.
"""

from __future__ import annotations

import warnings

import torch

from replaylab.errors import ConfigError
from replaylab.hf import evaluate as ev
from replaylab.hf import parallel
from replaylab.hf.models import load_model
from replaylab.runconfig import OptimConfig, RunConfig
from replaylab.runtime import autocast, compile_trial
from replaylab.train import checkpoint as ckpt
from replaylab.train import ddp
from replaylab.train.evaluate import EvalSet
from replaylab.train.loss import build_step_loss, next_token_loss
from replaylab.train.loss_shares import weighted_loss
from replaylab.train.module import AdamWModule


class Trainable(torch.nn.Module):
    """What checkpoints hold: only the parameters that train (all of them, or the LoRA adapters)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def state_dict(self, *args, **kwargs):  # noqa: D401 - HFCausalLMModule.state_dict's tensors
        return {n: p for n, p in self.named}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        names = {n for n, _ in self.named}
        if set(tensors) != names:
            raise ckpt.CheckpointError(
                "checkpoint tensors do not match this run's trainable parameters; "
                "it belongs to another configuration (LoRA vs full?)"
            )
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(tensors[n])


def build_model(cfg: RunConfig, folder: str, device: torch.device) -> torch.nn.Module:
    """The pretrained model of `folder`, with LoRA adapters when `cfg.model.lora.enabled`, on `device`."""
    torch.manual_seed(cfg.seed)  # LoRA's A matrices are random: same seed, same adapters
    m = cfg.model
    model = load_model(folder, trust_remote_code=m.trust_remote_code)
    model.config.use_cache = False
    if m.gradient_checkpointing:
        # transformers 5 renamed it; both recompute each layer's activations in the backward pass
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if m.lora.enabled:
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            from peft import LoraConfig as PeftLora
            from peft import get_peft_model
        except ImportError:
            raise ConfigError("lora needs peft: pip install 'replaylab[hf]'") from None
        lc = m.lora
        model = get_peft_model(
            model,
            PeftLora(
                r=lc.r,
                lora_alpha=lc.alpha,
                lora_dropout=lc.dropout,
                target_modules=list(lc.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
        if m.gradient_checkpointing:
            model.enable_input_require_grads()
    return model.to(device)


class LMLogits(torch.nn.Module):
    """A causal LM as the engine's loss sees a model: tokens (B, T) -> logits (B, T, V), no KV cache."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ev.lm_logits(self.model, x)


def compile_spec(choice: str, device: torch.device, sharded: bool) -> str:
    """What a fine-tuning run compiles for model.compile = `choice` (HFCausalLMModule's compile_spec).
    auto: model and loss together on a GPU (as the engine does: the fp32 logits of the 49k-token vocabulary
    are never stored), nothing on a CPU (compiling takes longer than a small run); regional: each decoder
    layer (`compile_layers`); off: nothing. An FSDP-sharded model runs eager whatever the choice."""
    if sharded or choice == "off":
        return "off"
    if choice == "regional":
        return "regional"
    return "auto" if device.type == "cuda" else "off"


def compile_layers(model: torch.nn.Module, example: torch.Tensor, dtype: torch.dtype | None) -> bool:
    """Regional compilation: each decoder layer (`parallel.decoder_layers`) compiled, the rest eager.

    The layers share one forward and one shape, and dynamo takes their parameters as graph inputs, so it
    compiles one graph for all of them. On a 2-core CPU with a cold compile cache (BENCHMARKS.md), building
    SmolLM2-135M's 30 layers with the compile trial took 4.4 s this way against 56 s as one whole-model graph
    (LoRA: 7.9 s against 73 s), with the same losses. What it gives up: the loss is not compiled with the
    output layer, so the fp32 logits are stored; whether the step is as fast on a GPU is measured by
    benchmarks/hf_throughput.py's ours-regional (not yet: so `compile: auto`, finetune's default, compiles
    the whole model on a GPU, and `compile: regional` is the user's choice). Trialled
    on `example` (a micro-batch (mb, T+1)) like `runtime.maybe_compile`; if that fails the layers are left
    eager with a warning. Returns whether they are compiled."""
    layers = parallel.decoder_layers(model)
    if not layers:
        warnings.warn(
            "regional compile: this model declares no decoder layers (_no_split_modules); running eager", stacklevel=2
        )
        return False
    for layer in layers:
        layer.compile()

    def step() -> torch.Tensor:
        with autocast(example.device, dtype):
            logits = ev.lm_logits(model, example[:, :-1])
        return next_token_loss(logits, example[:, 1:])

    reason = compile_trial(model, step)
    if reason is None:
        return True
    for layer in layers:
        layer._compiled_call_impl = None  # what nn.Module.compile set: back to the eager forward
    warnings.warn(f"regional compile failed, running eager: {reason}", stacklevel=2)
    return False


class HFCausalLMModule(AdamWModule):
    """`model` (built by `build_model`, already sharded for FSDP) trained with the engine's AdamW. `dtype`:
    bf16 autocast, or None (fp32, or FSDP's own mixed precision). compile_spec: as `train.compile` (auto falls
    back to eager if compiling fails), or "regional" (`compile_layers`: each decoder layer, a much shorter
    compile); `example`, a micro-batch (mb, T+1) on the device, trials it."""

    def __init__(
        self,
        model: torch.nn.Module,
        optim: OptimConfig,
        *,
        device: torch.device,
        dtype: torch.dtype | None,
        compile_spec: str = "off",
        example: torch.Tensor | None = None,
    ):
        super().__init__(model, optim, device=device, dtype=dtype)
        self.trainable = Trainable(model)  # after sharding: the optimizer must hold the sharded parameters
        self.sharded = parallel.is_sharded(model)
        self._loss = None
        if compile_spec == "regional" and example is not None:
            compile_layers(model, example, dtype)  # micro_loss's eager path then runs the compiled layers
        elif compile_spec != "off" and example is not None:
            self._loss = build_step_loss(LMLogits(model), compile_spec, example, dtype, fuse=True)

    def micro_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        if self._loss is not None:  # compiled with the loss
            with autocast(self.device, self.dtype):
                return self._loss(tokens)
        x, y = tokens[:, :-1], tokens[:, 1:]  # (b, L) each
        with autocast(self.device, self.dtype):
            logits = ev.lm_logits(self.model, x)  # (b, L, V)
        return next_token_loss(logits, y)

    def weighted_micro_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Instruction rows: padding-free position_ids (no attention_mask, no KV cache), so transformers' attention
        stays inside each example (tests/test_document_packing.py); sum of weight x token loss."""
        t = batch["tokens"]
        with autocast(self.device, self.dtype):
            logits = self.model(input_ids=t[:, :-1], position_ids=batch["positions"][:, :-1], use_cache=False).logits
        return weighted_loss(logits, t[:, 1:], batch["weights"])

    def sync_gradients(self, dist: ddp.DistInfo) -> None:
        if not self.sharded:  # FSDP averaged (reduce-scattered) each layer's gradients in the backward pass
            super().sync_gradients(dist)  # (clipping on FSDP's DTensor shards still takes the global norm)

    def state_dict(self) -> dict[str, dict]:
        """The trainable tensors and AdamW state; sharded: every rank takes part in gathering the full tensors
        onto rank 0 (empty elsewhere)."""
        if self.sharded:
            model, optim = parallel.gather(self.model, self.optimizer, [n for n, _ in self.trainable.named])
            return {"model": model, "optim": optim}
        return {"model": self.trainable.state_dict(), "optim": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        if self.sharded:
            parallel.load(self.model, self.optimizer, state["model"], state["optim"])
        else:
            self.trainable.load(state["model"])
            self.optimizer.load_state_dict(state["optim"])

    def evaluate(self, sets: list[EvalSet], batch_size: int) -> dict[str, dict[str, float]]:
        return ev.evaluate_losses(self.model, sets, batch_size=batch_size, device=self.device, dtype=self.dtype)
