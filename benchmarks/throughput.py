"""Training throughput: replaylab's train step vs Hugging Face `LlamaForCausalLM` at the same shapes.

Each contender runs the same step (forward, fp32 cross-entropy, backward, global-norm clip 1.0,
AdamW) on the same random tokens, under its own settings:

    ours/auto      what `replaylab train` picks here (runtime.resolve_precision + maybe_compile)
    ours/*         fp32 eager, fp32 compile, bf16 autocast + compile
    hf/*           LlamaForCausalLM (SDPA attention): fp32 eager, bf16 autocast eager, compile (fp32 and bf16)

After warm-up (which includes compilation, reported separately), contenders are timed round-robin
for --rounds rounds of --steps steps, so load from other processes hits all of them alike; the
median round gives tokens/s. The ratio is ours/auto over the best HF setting.

    python benchmarks/throughput.py --preset tiny --threads 2
    python benchmarks/throughput.py --preset 150m --seq-len 4096 --vocab 128256 --batch 4   # GPU: adds MFU

MFU (GPU only) = model FLOPs per token x tokens/s / peak bf16 FLOP/s, with the PaLM count
6 N + 6 L T d (N = parameters doing matmuls, i.e. all but the input embedding; the attention term
is 12 L T d halved for the causal mask that flash attention skips).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import torch

from replaylab import runtime
from replaylab.config import from_dict
from replaylab.hf_convert import hf_config, to_hf_state_dict
from replaylab.model import Transformer, count_parameters, describe
from replaylab.runconfig import ModelConfig
from replaylab.train.loss import build_step_loss
from replaylab.train.optim import adamw_kwargs

# Dense bf16 peak FLOP/s by GPU name fragment (vendor datasheets, without sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--batch", type=int, default=32, help="sequences per step")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 = one sweep worker per core)")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per contender (after compiling)")
    p.add_argument("--only", default="", help="comma-separated contender names to run (default: all)")
    p.add_argument("--emulated-bf16", action="store_true",
                   help="also time bf16 on a CPU without avx512_bf16/AMX (emulated: 10-20x slower, off by default)")
    p.add_argument("--peak-tflops", type=float, help="GPU peak bf16 TFLOP/s for MFU (default: from the GPU name)")
    return p.parse_args(argv)


class Contender:
    """One setting's train step. Ours is built like `replaylab train` builds it (train.loss.build_step_loss:
    on a GPU the loss is compiled with the model). HF computes its own loss from `labels` (its fp32
    upcast included), so compiling the model compiles the loss with it too."""

    def __init__(self, name, model, dtype, compile_, device, hf: bool, example: torch.Tensor):
        self.name, self.dtype, self.device, self.hf = name, dtype, device, hf
        self.model = model.to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                     **adamw_kwargs("auto", device))
        if hf:
            step_model = torch.compile(self.model) if compile_ else self.model
            # shift_labels: score all T next tokens, as ours does (labels alone would drop the last one)
            self.loss_fn = lambda t: step_model(input_ids=t[:, :-1], labels=t[:, 1:],
                                                shift_labels=t[:, 1:].contiguous(), use_cache=False).loss
        else:
            self.loss_fn = build_step_loss(self.model, "on" if compile_ else "off", example, dtype)
        self.rates: list[float] = []
        self.warmup_s = 0.0
        self.first_loss = float("nan")

    def step(self, batch: torch.Tensor) -> float:
        with runtime.autocast(self.device, self.dtype):
            loss = self.loss_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()  # a host sync, so timings are honest on GPU too


def contenders(cfg: ModelConfig, device: torch.device, example: torch.Tensor, emulated_bf16: bool = False):
    from transformers import LlamaForCausalLM

    auto_dtype = runtime.resolve_precision("auto", device)
    compile_ok = runtime.compile_unavailable_reason(device) is None
    bf16 = torch.bfloat16
    try_bf16 = device.type == "cuda" or runtime.cpu_has_native_bf16() or emulated_bf16

    def ours(name, dtype, compile_):
        torch.manual_seed(0)
        return name, lambda: Contender(name, Transformer(cfg), dtype, compile_, device, hf=False, example=example)

    def hf(name, dtype, compile_):
        def make():
            torch.manual_seed(0)
            ref = Transformer(cfg)
            model = LlamaForCausalLM._from_config(hf_config(cfg), attn_implementation="sdpa")
            model.load_state_dict(to_hf_state_dict(ref.state_dict(), cfg), strict=False)  # same weights
            return Contender(name, model, dtype, compile_, device, hf=True, example=example)
        return name, make

    auto_name = f"ours/auto ({'bf16' if auto_dtype else 'fp32'}{' + compile' if compile_ok else ''})"
    yield ours(auto_name, auto_dtype, compile_ok)
    yield ours("ours/fp32 eager", None, False)
    if compile_ok and auto_dtype is None and try_bf16:
        yield ours("ours/bf16 + compile", bf16, True)
    if compile_ok and auto_dtype is not None:
        yield ours("ours/fp32 + compile", None, True)
    yield hf("hf/fp32 eager", None, False)
    if try_bf16:
        yield hf("hf/bf16 eager", bf16, False)
    if compile_ok:
        yield hf("hf/fp32 + compile", None, True)
        if try_bf16:
            yield hf("hf/bf16 + compile", bf16, True)


def main(argv=None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    device = runtime.resolve_device(args.device)
    if device.type == "cpu":
        runtime.set_threads(args.threads)
    cfg = from_dict(ModelConfig, {"preset": args.preset, "vocab_size": args.vocab})
    cfg.max_seq_len = args.seq_len
    counts = count_parameters(Transformer(cfg))
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=gen).to(device)
    tokens = args.batch * args.seq_len
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"native bf16: {runtime.cpu_has_native_bf16()}")
    print(f"{describe(cfg)}\n{hw}; torch {torch.__version__}; {args.batch} x {args.seq_len} = {tokens} tokens/step")

    only = {s.strip() for s in args.only.split(",") if s.strip()}
    runs = []
    for name, make in contenders(cfg, device, batch, args.emulated_bf16):
        if only and not any(name.startswith(o) for o in only):
            continue
        t0 = time.perf_counter()
        c = make()  # ours trials its compile here (train.loss.build_step_loss): count it as warm-up
        for i in range(args.warmup):
            loss = c.step(batch)
            if i == 0:
                c.first_loss = loss  # same weights and tokens: every contender should agree here
        c.warmup_s = time.perf_counter() - t0
        runs.append(c)
        print(f"  warmed {c.name}: {c.warmup_s:.1f} s", flush=True)
    for _ in range(args.rounds):
        for c in runs:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                c.step(batch)
            c.rates.append(tokens * args.steps / (time.perf_counter() - t0))

    peak = (args.peak_tflops * 1e12 if args.peak_tflops else
            next((v for k, v in PEAK_BF16.items() if k in hw), None)) if device.type == "cuda" else None
    # FLOPs per trained token: 6 per matmul weight (fwd + bwd) + causal attention scores and values.
    matmul_params = counts["total"] - cfg.vocab_size * cfg.d_model
    flops_per_token = 6 * matmul_params + 6 * cfg.n_layers * args.seq_len * cfg.d_model
    best_hf = max((c for c in runs if c.hf), key=lambda c: statistics.median(c.rates), default=None)
    ours_auto = next((c for c in runs if c.name.startswith("ours/auto")), None)
    print(f"\n| setting | tokens/s (median of {args.rounds}) | warm-up + compile s | first loss |" + (" MFU |" if peak else ""))
    print("|---|---|---|---|" + ("---|" if peak else ""))
    for c in runs:
        rate = statistics.median(c.rates)
        mfu = f" {flops_per_token * rate / peak:.1%} |" if peak else ""
        print(f"| {c.name} | {rate:,.0f} | {c.warmup_s:.1f} | {c.first_loss:.4f} |{mfu}")
    if best_hf and ours_auto:
        ratio = statistics.median(ours_auto.rates) / statistics.median(best_hf.rates)
        print(f"\nours/auto vs best HF ({best_hf.name}): {ratio:.2f}x")


if __name__ == "__main__":
    main()
