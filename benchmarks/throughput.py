"""Training throughput: replaylab's train step vs Hugging Face `LlamaForCausalLM` at the same shapes,
the cost of `train.deterministic` on CUDA, and the levers tried for more MFU.

Each contender runs the same step (forward, fp32 cross-entropy, backward, global-norm clip 1.0,
AdamW) on the same random tokens, under its own settings. Ours is the step `replaylab train` runs, through
its train module (train/module.py `TransformerModule`: the engine's AdamW with its parameter groups and
kernels, its global-norm clipping, `--micro-batch` sequences per forward pass as train.micro_batch_size),
so its number is what users get; HF's is torch's AdamW and clip_grad_norm_, as a Trainer of its own
would run. By key (`--only` takes keys, or prefixes of
the printed names):

    ours/auto           what `replaylab train` picks here with train.deterministic=false (the paper configs'
                        setting): runtime.resolve_precision + compile, loss compiled with the model on GPUs
    ours/deterministic  the same under runtime.deterministic_run (train.deterministic=true, the default):
                        deterministic algorithms, and attention's math kernel on CUDA
    ours/fp32 eager, ours/fp32 + compile, ours/bf16 + compile
    hf/*                LlamaForCausalLM (SDPA attention): fp32 eager, bf16 autocast eager, compile (fp32, bf16)

Levers (GPU; run only when named in --only or with --levers; skipped with the reason when they cannot run):

    ours/cce            the model body compiled, the loss by cut-cross-entropy's fused linear
                        cross-entropy kernel (`pip install cut-cross-entropy`; the logits are never stored);
                        its default gradient filter ("high": skips gradient blocks below bf16 precision)
    ours/cce-exact      the same with the filter off (exact gradients)
    ours/fp8            torchao float8 training (tensorwise scaling) on every linear layer, output layer
                        included, then as ours/auto (`pip install torchao`; Hopper or Ada GPUs)
    ours/fp8-body       the same with the output layer left in bf16
    ours/max-autotune   ours/auto compiled with mode="max-autotune-no-cudagraphs" (inductor benchmarks
                        matmul templates and fusions: a slow compile, minutes)

A lever for the optimizer step (CUDA graphs, a compiled AdamW) can gain at most the optimizer's share of
the step, so instead of a contender the run measures that share for ours/auto (--split-steps): the
time of clip + AdamW against forward + backward, synchronised, and what it is at --accumulate micro-batches
per optimizer step (the paper's 1024-sequence batch in micro-batches of 16 = 64).

Determinism: `--repeat KEYS` runs those contenders twice from the same weights, and afterwards compares
the two copies' losses at every step and their final parameters, bit for bit.

After warm-up (which includes compilation, reported separately), contenders are timed round-robin
for --rounds rounds of --steps steps, so load from other processes hits all of them alike; the
median round gives tokens/s. The ratio is ours/auto over the best HF setting. `--json` writes every
number, after each phase (write, then rename), so a run stopped by `timeout` leaves what it measured.

    python benchmarks/throughput.py --preset tiny --threads 2
    python benchmarks/throughput.py --preset 150m --seq-len 4096 --vocab 128256 --batch 16 --device cuda \
        --only ours/auto,ours/deterministic,ours/cce,ours/fp8 --repeat ours/auto,ours/deterministic  # GPU: adds MFU

MFU (GPU only) = model FLOPs per token x tokens/s / peak bf16 FLOP/s, with the PaLM count
6 N + 6 L T d (N = parameters doing matmuls, i.e. all but the input embedding; the attention term
is 12 L T d halved for the causal mask that flash attention skips). FP8 contenders are counted against
the same bf16 peak, so their MFU says how much of the bf16 machine they get.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import levers  # benchmarks/ is on the path when this runs as a script
import torch
from bench_common import machine, write_json

from replaylab import runtime
from replaylab.config import from_dict
from replaylab.errors import one_line
from replaylab.hf_convert import hf_config, to_hf_state_dict
from replaylab.model import Transformer, count_parameters, describe
from replaylab.runconfig import ModelConfig, OptimConfig
from replaylab.train.module import TransformerModule
from replaylab.train.optim import adamw_kwargs

# Dense bf16 peak FLOP/s by GPU name fragment (vendor datasheets, without sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}
LEVERS = ("ours/cce", "ours/cce-exact", "ours/fp8", "ours/fp8-body", "ours/max-autotune")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--batch", type=int, default=32, help="sequences per step")
    p.add_argument(
        "--micro-batch", type=int, help="sequences per forward pass of ours (train.micro_batch_size; default: --batch)"
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 = one sweep worker per core)")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per contender (after compiling)")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated contender keys (or name prefixes) to run (default: all but the levers)",
    )
    p.add_argument("--levers", action="store_true", help="also run every lever (see the docstring)")
    p.add_argument("--repeat", default="", help="comma-separated contender keys to run twice and compare bit for bit")
    p.add_argument(
        "--split-steps",
        type=int,
        default=5,
        help="steps of ours/auto timed in two parts (forward+backward, clip+AdamW); 0 = skip",
    )
    p.add_argument(
        "--accumulate",
        type=int,
        default=64,
        help="micro-batches per optimizer step for the optimizer-share estimate (paper: 1024 / 16)",
    )
    p.add_argument("--json", help="write every measurement here (after each phase)")
    p.add_argument(
        "--deadline",
        type=float,
        default=0,
        help="seconds after which no further contender is built and warmed: the timing rounds then run "
        "with those warmed (for a run under a time limit); 0 = none",
    )
    p.add_argument(
        "--emulated-bf16",
        action="store_true",
        help="also time bf16 on a CPU without avx512_bf16/AMX (emulated: 10-20x slower, off by default)",
    )
    p.add_argument("--peak-tflops", type=float, help="GPU peak bf16 TFLOP/s for MFU (default: from the GPU name)")
    args = p.parse_args(argv)
    if min(args.steps, args.rounds, args.warmup) < 1:
        p.error("--steps, --rounds and --warmup must be >= 1 (the first step compiles: never timed)")
    args.micro_batch = args.micro_batch or args.batch
    if args.micro_batch < 1 or args.batch % args.micro_batch:
        p.error(f"--batch {args.batch} must be a positive multiple of --micro-batch {args.micro_batch}")
    return args


LR = 1e-4  # every contender's constant learning rate


class Contender:
    """One setting's train step. Ours is the engine's train module as `replaylab train` builds it
    (TransformerModule: the loss from train.loss.build_step_loss, on a GPU compiled with the model; the engine's
    AdamW, parameter groups and clipping), stepped as train/trainer.py steps it: `micro` sequences per forward
    pass, each loss scaled by 1 / micro-batches before its backward. HF computes its own loss from `labels` (its
    fp32 upcast included), so compiling the model compiles the loss with it too. `context` is entered around
    every step (deterministic mode, say); `loss_fn(model, dtype)`, when given, builds the loss function that
    replaces ours (the levers)."""

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


def flops_per_token(cfg: ModelConfig, counts: dict, seq_len: int) -> int:
    # 6 per matmul weight (fwd + bwd) + causal attention scores and values.
    return 6 * (counts["total"] - cfg.vocab_size * cfg.d_model) + 6 * cfg.n_layers * seq_len * cfg.d_model


def main(argv=None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    device = runtime.resolve_device(args.device)
    if device.type == "cpu":
        runtime.set_threads(args.threads)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    repeat = {s.strip() for s in args.repeat.split(",") if s.strip()}
    # cuBLAS reads its workspace setting once, at its first use: set it before any contender when a
    # deterministic one will run (runtime.deterministic_run sets it too, but too late after other contenders).
    if "ours/deterministic" in only | repeat:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cfg = from_dict(ModelConfig, {"preset": args.preset, "vocab_size": args.vocab})
    cfg.max_seq_len = args.seq_len
    counts = count_parameters(Transformer(cfg))
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=gen).to(device)
    tokens = args.batch * args.seq_len
    info = machine(device)
    hw = info.get("gpu") or f"{info['cpu']}, {info['threads']} threads, native bf16: {info['native_bf16']}"
    print(
        f"{describe(cfg)}\n{hw}; torch {torch.__version__}; {args.batch} x {args.seq_len} = {tokens} tokens/step",
        flush=True,
    )
    peak = (
        (args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAK_BF16.items() if k in hw), None))
        if device.type == "cuda"
        else None
    )
    fpt = flops_per_token(cfg, counts, args.seq_len)
    record = {
        "machine": info,
        "args": vars(args),
        "model": describe(cfg),
        "tokens_per_step": tokens,
        "flops_per_token": fpt,
        "peak_flops": peak,
        "contenders": {},
        "skipped": {},
    }

    runs: list[Contender] = []
    began = time.perf_counter()
    for spec in contenders(cfg, device, batch, args.emulated_bf16, micro=args.micro_batch):
        if not selected(spec, only, args.levers):
            continue
        if args.deadline and time.perf_counter() - began > args.deadline:
            print(f"  skipped {spec.key}: past --deadline {args.deadline:g} s", flush=True)
            record["skipped"][spec.key] = "past the deadline"
            continue
        if spec.unavailable:
            print(f"  skipped {spec.key}: {spec.unavailable}", flush=True)
            record["skipped"][spec.key] = spec.unavailable
            continue
        for copy in range(2 if spec.key in repeat else 1):
            t0 = time.perf_counter()
            try:
                c = spec.make()  # ours trials its compile here (train.loss.build_step_loss): count it as warm-up
                if copy:
                    c.name += " #2"
                for _ in range(args.warmup):
                    c.step(batch)
            except Exception as e:  # out of memory, a lever's kernel failing: record it, go on with the others
                why = one_line(e)[:300]
                print(f"  failed {spec.key}: {why}", flush=True)
                record["skipped"][spec.key] = f"failed: {why}"
                break
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            c.warmup_s = time.perf_counter() - t0
            runs.append(c)
            print(f"  warmed {c.name}: {c.warmup_s:.1f} s (first loss {c.losses[0]:.4f})", flush=True)
    write_json(args.json, record)

    for _ in range(args.rounds):
        for c in runs:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                c.step(batch)
            c.rates.append(tokens * args.steps / (time.perf_counter() - t0))
    for c in runs:
        rate = statistics.median(c.rates)
        record["contenders"][c.name] = {
            "key": c.key,
            "tokens_per_s": rate,
            "rounds": c.rates,
            "warmup_s": c.warmup_s,
            "first_loss": c.losses[0],
            "mfu": fpt * rate / peak if peak else None,
        }
    write_json(args.json, record)

    print(
        f"\n| setting | tokens/s (median of {args.rounds}) | warm-up + compile s | first loss |"
        + (" MFU |" if peak else "")
    )
    print("|---|---|---|---|" + ("---|" if peak else ""))
    for c in runs:
        r = record["contenders"][c.name]
        mfu = f" {r['mfu']:.1%} |" if peak else ""
        print(f"| {c.name} | {r['tokens_per_s']:,.0f} | {c.warmup_s:.1f} | {c.losses[0]:.4f} |{mfu}")
    best_hf = max((c for c in runs if c.hf), key=lambda c: statistics.median(c.rates), default=None)
    auto = next((c for c in runs if c.key == "ours/auto"), None)
    if auto:
        base = statistics.median(auto.rates)
        for c in runs:
            if c.key != "ours/auto" and not c.hf and not c.name.endswith("#2"):
                print(f"{c.key} vs ours/auto: {statistics.median(c.rates) / base:.3f}x")
                record["contenders"][c.name]["vs_auto"] = statistics.median(c.rates) / base
    if best_hf and auto:
        ratio = statistics.median(auto.rates) / statistics.median(best_hf.rates)
        print(f"\nours/auto vs best HF ({best_hf.name}): {ratio:.2f}x")
        record["ours_auto_vs_best_hf"] = ratio

    # Bit-for-bit: each repeated contender's two copies took the same steps on the same tokens.
    for key in sorted(repeat):
        pair = [c for c in runs if c.key == key]
        if len(pair) == 2:
            a, b = pair
            same_losses = a.losses == b.losses
            diff = max(abs(x - y) for x, y in zip(a.losses, b.losses))
            same_params = a.checksum() == b.checksum()
            print(
                f"repeat {key}: {len(a.losses)} steps, losses {'bit-identical' if same_losses else 'DIFFER'} "
                f"(max |diff| {diff:.3g}), parameters {'bit-identical' if same_params else 'DIFFER'}"
            )
            record.setdefault("repeat", {})[key] = {
                "steps": len(a.losses),
                "losses_identical": same_losses,
                "max_loss_diff": diff,
                "params_identical": same_params,
            }

    # The optimizer's share of a step: the most that a faster optimizer step (CUDA graphs, compiled AdamW) can gain.
    if auto and args.split_steps:
        parts = [auto.split_step(batch) for _ in range(args.split_steps)]
        fb, opt = statistics.median(p[0] for p in parts), statistics.median(p[1] for p in parts)
        fb /= args.batch // args.micro_batch  # the step ran batch / micro-batch forward+backward passes
        at_batch = opt / (args.accumulate * fb + opt)
        print(
            f"optimizer step (clip + AdamW) of ours/auto: {opt * 1e3:.2f} ms vs {fb * 1e3:.1f} ms forward+backward "
            f"per micro-batch of {args.micro_batch}: {opt / (fb + opt):.2%} of a one-micro-batch step, "
            f"{at_batch:.3%} of a step of "
            f"{args.accumulate} micro-batches"
        )
        record["optimizer_share"] = {
            "forward_backward_s": fb,
            "optimizer_s": opt,
            "share_of_micro_step": opt / (fb + opt),
            "accumulate": args.accumulate,
            "share_at_accumulate": at_batch,
        }
    write_json(args.json, record)
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
