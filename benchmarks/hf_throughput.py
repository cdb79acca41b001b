"""Fine-tuning throughput: `replaylab finetune`'s training step vs Hugging Face `transformers.Trainer`.

Both train the same model, SmolLM2-135M's shape with random weights (a `LlamaConfig` with its numbers,
saved once to a temporary folder, so nothing is downloaded; `--layers` shrinks it for a CPU smoke run),
with full fine-tuning and with LoRA (replaylab finetune's default: r 8 on every linear layer), at the same
batch size, sequence length and precision, on random token ids:

    ours   the real code path, not a copy of it: `hf.train_module.build_model` + `HFCausalLMModule`, trained by
           the one Trainer's `Trainer.fit` (train/trainer.py: prefetched batch, micro-batches, loss / n_micro
           backward, float64 loss accumulator on the device, clip, the one host sync per step for the
           gradient-norm check, AdamW step) on a RunFolder in a temporary directory, with an in-memory
           sampler of random tokens in place of the token stores (and no eval sets: the end-of-run eval of
           nothing is outside the timed window anyway)
    hf     `transformers.Trainer` over the same `build_model` model (the same peft wrapping for LoRA), with
           TrainingArguments as a user would write them (bf16, fused AdamW on CUDA, clip 1.0, cosine LR with
           1% warmup, no logging, saving or eval), on a dataset of random token ids (labels = input_ids)

Contenders (--contenders, comma-separated, default ours,hf):

    ours           as `replaylab finetune` trains by default: deterministic (math attention on CUDA), the
                   whole model compiled with its loss on a GPU
    ours-fused     `finetune --no-deterministic`: the fused attention kernels (flash, memory-efficient,
                   cuDNN; not bit-reproducible on CUDA), so `ours-fused / ours` is what determinism costs
                   (on a CPU the two run the same kernels)
    ours-regional  `finetune --compile regional` (`hf.train_module.compile_layers`: each decoder layer
                   compiled, one graph for all, the loss eager): a far shorter compile; is the step as fast?
    hf           transformers.Trainer

Timing: hf_contenders.py (each step's begin and end, synchronized on CUDA; the median of ABBA trials).

A trial that raises (CUDA out of memory, a diverged run) is recorded as {"error": ...} and the rest go on;
the table leaves out a contender with no successful trial, and the ratios with it. --json is rewritten
(atomically: a temporary file in its folder, then os.replace) after every trial, with the summary of the
trials so far (a mode or contender with none yet is absent), so a run cut short by `timeout` leaves a valid
record of what it finished; trials_planned says how many a full run would have.

    python benchmarks/hf_throughput.py --device cpu --layers 2 --batch 4 --seq-len 128 --steps 6 --warmup-steps 2
    python benchmarks/hf_throughput.py --device cuda --batch 8 --seq-len 2048 --steps 20   # GPU: adds MFU
    python benchmarks/hf_throughput.py --device cuda --contenders ours,ours-fused,hf --json hf_bench.json

MFU (GPU only) = 6 x N x tokens/s / peak (--peak-tflops, default 989: H100/H200 dense bf16), N = the base
model's parameters (tied embedding counted once, adapters left out) for both modes. For LoRA the real work
is nearer 4 N per token (no weight gradients for the frozen base), so its MFU by this count flatters it.
Ours compiles as `replaylab finetune` does (model and loss together on a GPU, eager on a CPU: --compile
default; or auto/on/off); transformers.Trainer runs eager unless --hf-torch-compile (its torch_compile=True).
The compile trial and the first steps' recompiles fall in the untimed warm-up steps.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from bench_common import machine, write_json  # benchmarks/ is on the path when this runs as a script
from hf_contenders import SMOLLM2_135M, save_random_model, trial_hf, trial_ours

from replaylab import runtime
from replaylab.errors import one_line

LABELS = {
    "ours": "ours (HFCausalLMModule + Trainer.fit)",
    "ours-fused": "ours, fused attention (HFCausalLMModule + Trainer.fit)",
    "ours-regional": "ours, regional compile (HFCausalLMModule + Trainer.fit)",
    "hf": "transformers.Trainer",
}  # --contenders' names, and their rows in the table
# (summary key, numerator, denominator, printed as)
RATIOS = (
    ("ratio", "ours", "hf", "ours / transformers.Trainer"),
    ("ratio_fused", "ours-fused", "hf", "ours-fused / transformers.Trainer"),
    ("ratio_fused_ours", "ours-fused", "ours", "ours-fused / ours (what determinism costs)"),
    ("ratio_regional_ours", "ours-regional", "ours", "ours-regional / ours (regional vs whole-model compile)"),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 (auto: bf16 on GPUs and avx512_bf16 CPUs)")
    p.add_argument("--batch", type=int, default=8, help="sequences per optimizer step (no accumulation)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=20, help="timed steps per trial")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps at the start of each trial (>= 1)")
    p.add_argument("--trials", type=int, default=2, help="rounds of the contenders per mode, in ABBA order")
    p.add_argument("--layers", type=int, default=SMOLLM2_135M["num_hidden_layers"], help="shrink the model (CPU smoke)")
    p.add_argument("--modes", default="full,lora", help="comma-separated: full, lora")
    p.add_argument(
        "--contenders",
        default="ours,hf",
        help=f"comma-separated: {', '.join(LABELS)} (ours: finetune's deterministic mode; ours-fused: "
        "fused attention kernels; give both to measure them side by side in one run)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (CPU only)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="GPU peak bf16 TFLOP/s for MFU")
    p.add_argument("--json", help="write every trial's numbers to this file (rewritten after each trial)")
    p.add_argument(
        "--compile",
        default="default",
        choices=("default", "auto", "on", "off"),
        help="ours: default = what replaylab finetune does (compile on a GPU, not on a CPU)",
    )
    p.add_argument("--hf-torch-compile", action="store_true", help="transformers.Trainer with torch_compile=True")
    p.add_argument(
        "--fused-attention",
        action="store_true",
        help="ours with the fused attention kernels (not reproducible on CUDA) instead of finetune's "
        "deterministic math kernel; kept for old command lines: --contenders ours,ours-fused,hf "
        "measures both side by side in one run",
    )
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"full", "lora"}:
        p.error(f"--modes {args.modes!r}: give full, lora or full,lora")
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in contenders if c not in LABELS]
    if not contenders or unknown or len(set(contenders)) != len(contenders):
        p.error(
            f"--contenders {args.contenders!r}: "
            + (f"unknown {', '.join(unknown)}; " if unknown else "")
            + f"give distinct names from {', '.join(LABELS)}"
        )
    if args.fused_attention and {"ours", "ours-fused"} <= set(contenders):
        p.error("--fused-attention makes ours fused too: drop it to compare ours with ours-fused")
    if args.warmup_steps < 1 or args.steps < 1 or args.trials < 1:
        p.error("--warmup-steps, --steps and --trials must be >= 1 (the first step builds lazy state: never timed)")
    args.modes, args.contenders = modes, contenders
    return args


def summarize(trials: list[dict], args, peak: float | None) -> dict:
    """Per mode: each contender's median tokens/s (and MFU) over its successful trials so far, and the ratios
    between contenders; a mode or contender with no successful trial yet is left out (and ratios with it)."""
    summary = {}
    for mode in args.modes:
        rates = {}
        for name in args.contenders:
            mine = [t for t in trials if t["mode"] == mode and t["contender"] == name and "error" not in t]
            if mine:
                rates[name] = statistics.median(t["tokens_per_s"] for t in mine)
                mfu = 6 * mine[0]["base_params"] * rates[name] / peak if peak else None
                summary[f"{mode}/{name}"] = {"tokens_per_s": rates[name], "mfu": mfu, "trials": len(mine)}
        for key, top, bottom, _ in RATIOS:
            if top in rates and bottom in rates:
                summary[f"{mode}/{key}"] = rates[top] / rates[bottom]
    return summary


def main(argv=None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = runtime.resolve_device(args.device)
    if device.type == "cpu":
        runtime.set_threads(args.threads)
    dtype = runtime.resolve_precision(args.precision, device)
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    info = machine(device)
    tokens = args.batch * args.seq_len
    gpu = device.type == "cuda"
    peak = args.peak_tflops * 1e12 if gpu else None
    trials: list[dict] = []
    runners = {
        "ours": functools.partial(trial_ours, fused=args.fused_attention),
        "ours-fused": functools.partial(trial_ours, fused=True),
        "ours-regional": functools.partial(trial_ours, fused=args.fused_attention, regional=True),
        "hf": trial_hf,
    }
    width = max(map(len, args.contenders))

    def record() -> dict:
        if hasattr(os, "getloadavg"):
            info["load_avg_end"] = os.getloadavg()  # at this write: the end, for the last one
        return {
            "machine": info,
            "args": vars(args),
            "model": model_info,
            "precision": precision,
            "tokens_per_step": tokens,
            "peak_flops": peak,
            "summary": summarize(trials, args, peak),
            "trials_planned": len(args.modes) * args.trials * len(args.contenders),
            "trials": trials,
        }

    with tempfile.TemporaryDirectory(prefix="hf_bench_model.") as folder:
        model_info = save_random_model(Path(folder), args.layers)
        hw = info.get("gpu") or f"{info['cpu']}, {info['threads']} threads"
        print(
            f"SmolLM2-135M shape, {args.layers} layers, {model_info['params'] / 1e6:.1f}M params, random weights; "
            f"{hw}; {precision}; {args.batch} x {args.seq_len} = {tokens} tokens/step; torch {info['torch']}, "
            f"transformers {info['transformers']}",
            flush=True,
        )
        for mode in args.modes:
            for r in range(args.trials):
                # ABBA: drift (heat, other processes' load) hits every contender alike
                order = args.contenders if r % 2 == 0 else args.contenders[::-1]
                for name in order:
                    if gpu:
                        torch.cuda.reset_peak_memory_stats(device)
                    t0 = time.perf_counter()
                    try:
                        res = runners[name](args, mode, folder, device, dtype)
                    except Exception as e:  # e.g. CUDA out of memory: one failed trial should not lose the rest
                        res = {"error": one_line(e)}
                    if gpu:
                        res["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                    res.update(
                        mode=mode,
                        contender=name,
                        trial=r,
                        total_s=time.perf_counter() - t0,
                        threads=torch.get_num_threads(),
                    )  # (a library that changed it would show here)
                    trials.append(res)
                    head = f"  {mode:4s} trial {r} {name:{width}s}:"
                    if "error" in res:
                        print(f"{head} error: {res['error']} ({res['total_s']:.1f} s)", flush=True)
                    else:
                        print(
                            f"{head} {res['tokens_per_s']:,.0f} tokens/s "
                            f"(loss {res['mean_loss']:.4f}, {res['total_s']:.1f} s)",
                            flush=True,
                        )
                    gc.collect()  # (after a failed trial: frees what its traceback held)
                    if gpu:
                        torch.cuda.empty_cache()
                    if args.json:  # after every trial, so a run killed by `timeout` keeps what it finished
                        write_json(args.json, record())

    summary = summarize(trials, args, peak)
    print(
        "\n| mode | trainer | trainable params | median tokens/s | per trial | mean loss |" + (" MFU |" if peak else "")
    )
    print("|---|---|---|---|---|---|" + ("---|" if peak else ""))
    for mode in args.modes:
        for name in args.contenders:
            if f"{mode}/{name}" not in summary:
                continue  # no successful trial
            mine = [t for t in trials if t["mode"] == mode and t["contender"] == name]
            ok = [t for t in mine if "error" not in t]
            per = ", ".join("error" if "error" in t else f"{t['tokens_per_s']:,.0f}" for t in mine)
            entry = summary[f"{mode}/{name}"]
            print(
                f"| {mode} | {LABELS[name]} | {ok[0]['trainable_params'] / 1e6:.2f}M | {entry['tokens_per_s']:,.0f} "
                f"| {per} | {statistics.median(t['mean_loss'] for t in ok):.4f} |"
                + (f" {entry['mfu']:.1%} |" if peak else "")
            )
    print()
    for mode in args.modes:
        for key, _, _, text in RATIOS:
            if f"{mode}/{key}" in summary:
                print(f"{mode}: {text} = {summary[f'{mode}/{key}']:.2f}x")
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
