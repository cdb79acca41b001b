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
                        setting): runtime.resolve_precision + compile, the loss compiled with the model on GPUs
                        and under bf16 autocast on CPUs (train/loss.py)
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

Where the time goes: `--profile KEYS` runs --steps more steps of those contenders under torch.profiler and
prints the operators with the most self CPU time (compiled graphs show as "CompiledFxGraph" entries).

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
import os
import statistics
import time
import warnings

import torch
from bench_common import machine, write_json  # benchmarks/ is on the path when this runs as a script
from bench_step import Contender, contenders, selected

from replaylab import runtime
from replaylab.config import from_dict
from replaylab.errors import one_line
from replaylab.model import Transformer, count_parameters, describe
from replaylab.runconfig import ModelConfig

# Dense bf16 peak FLOP/s by GPU name fragment (vendor datasheets, without sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}


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
    p.add_argument("--profile", default="", help="comma-separated contender keys to profile after timing")
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
    profile = {s.strip() for s in args.profile.split(",") if s.strip()}
    for c in runs:
        if c.key in profile and not c.name.endswith("#2"):
            record.setdefault("profile", {})[c.name] = profile_steps(c, batch, args.steps)
    write_json(args.json, record)
    if args.json:
        print(f"wrote {args.json}")


def profile_steps(c: Contender, batch: torch.Tensor, steps: int, top: int = 15) -> list[dict]:
    """`steps` more steps of `c` under torch.profiler: prints and returns the `top` operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            c.step(batch)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1
    print(f"\nprofile of {c.name}, {steps} steps: operator, self CPU ms per step, share, calls per step")
    rows = []
    for e in ops:
        row = {"op": e.key[:70], "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps, "calls": e.count / steps}
        rows.append({**row, "share": e.self_cpu_time_total / total})
        print(f"  {row['op']:<70} {row['self_ms_per_step']:9.1f} {rows[-1]['share']:6.1%} {row['calls']:6.1f}")
    return rows


if __name__ == "__main__":
    main()
