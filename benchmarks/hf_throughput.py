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

Timing. A thin proxy around our module marks a step's begin (its first micro_loss) and end (after
optimizer_step); a TrainerCallback marks HF's (on_step_begin / on_step_end). On CUDA each mark calls
torch.cuda.synchronize(): both loops already sync once per step (ours for the gradient-norm check, HF's
for its nan/inf loss filter), so this costs them ~nothing. A trial is one run of --warmup-steps +
--steps steps; its tokens/s is --steps x batch x seq_len over the time from the end of the last warm-up
step to the end of the last step (everything each loop does per step, data loading included). Trials
alternate between the contenders in ABBA order (even rounds in the --contenders order, odd rounds reversed)
for --trials rounds, each from freshly built models with the same initial weights, so load from other
processes hits all alike; the table gives the median trial. Tokens per step = batch x seq_len: both run
the model on seq_len input tokens (ours scores seq_len targets from seq_len + 1 tokens, HF seq_len - 1
after its internal shift).

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
import dataclasses
import functools
import gc
import os
import statistics
import tempfile
import time
import warnings
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from bench_common import machine, write_json  # benchmarks/ is on the path when this runs as a script

from replaylab import runtime
from replaylab.errors import one_line
from replaylab.finetune_form import FinetuneConfig
from replaylab.hf.packing import TARGET, plan_mix, sampler_config
from replaylab.hf.train_module import HFCausalLMModule, build_model, compile_spec
from replaylab.train.ddp import DistInfo
from replaylab.train.run_folder import RunFolder
from replaylab.train.trainer import Trainer

# HuggingFaceTB/SmolLM2-135M's config.json (the numbers that set the compute).
SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=0,
    eos_token_id=0,
)
LR = 3e-4  # a fine-tuning run's default peak (runconfig.FINETUNE_PEAK), for both
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


class StepClock:
    """Begin and end times of each step; on CUDA, synchronized so they bracket the GPU's work."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.begins: list[float] = []
        self.ends: list[float] = []

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def begin(self) -> None:
        self.begins.append(self._now())

    def end(self) -> None:
        self.ends.append(self._now())

    def result(self, warmup: int, tokens_per_step: int) -> dict:
        timed = len(self.ends) - warmup
        assert timed >= 1 and len(self.begins) == len(self.ends), (len(self.begins), len(self.ends))
        window = self.ends[-1] - self.ends[warmup - 1]
        return {
            "tokens_per_s": timed * tokens_per_step / window,
            "window_s": window,
            "step_s": [b - a for a, b in zip(self.ends[warmup - 1 :], self.ends[warmup:])],  # end to end
            "step_compute_s": [e - b for b, e in zip(self.begins[warmup:], self.ends[warmup:])],
        }  # begin to end


class TimedModule:
    """Our train module as the Trainer sees it, with the step's begin (first micro_loss) and end (after the
    optimizer step) marked on `clock`; every other call goes straight to the module."""

    def __init__(self, module: HFCausalLMModule, clock: StepClock):
        self.module, self.clock = module, clock
        self.in_step = False
        self.losses: list[torch.Tensor] = []  # brought to the host after the run, not during it

    def micro_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.in_step:
            self.clock.begin()
            self.in_step = True
        loss = self.module.micro_loss(tokens)
        self.losses.append(loss.detach())
        return loss

    def optimizer_step(self, lr: float) -> None:
        self.module.optimizer_step(lr)
        self.clock.end()
        self.in_step = False

    def __getattr__(self, name):
        return getattr(self.module, name)


class RandomSampler:
    """What the Trainer asks of a MixtureSampler, over random token ids: batch(step) is (tokens int64
    (B, T+1), domain index (B,)), a pure function of the step; one domain, `target`."""

    def __init__(self, *, batch: int, seq_len: int, vocab: int, seed: int = 0):
        self.batch_size, self.seq_len, self.vocab, self.seed = batch, seq_len, vocab, seed

    def batch(self, step: int, rows: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = rows if rows is not None else (0, self.batch_size)
        rng = np.random.default_rng([self.seed, step])
        tokens = rng.integers(0, self.vocab, (self.batch_size, self.seq_len + 1), dtype=np.int64)
        return tokens[lo:hi], np.zeros(hi - lo, dtype=np.int16)

    def counts_before(self, step: int) -> dict[str, int]:
        return {TARGET: step * self.batch_size}

    def tokens_seen(self, step: int) -> dict[str, int]:
        return {TARGET: step * self.batch_size * self.seq_len}

    def epochs(self, step: int) -> dict[str, float]:
        return {TARGET: 0.0}


def save_random_model(folder: Path, layers: int) -> dict:
    """SmolLM2-135M's architecture with `layers` layers and random weights (seed 0), saved to `folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**{**SMOLLM2_135M, "num_hidden_layers": layers})
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    return {"params": sum(p.numel() for p in model.parameters()), **config.to_diff_dict()}


def finetune_config(args, mode: str, total_steps: int):
    """The RunConfig `replaylab finetune` would get for this shape (no data, no eval, no saving)."""
    return FinetuneConfig(
        seq_len=args.seq_len,
        batch_size=args.batch,
        max_steps=total_steps,
        replay=None,
        lora={"enabled": mode == "lora"},
        optim={"lr": LR},
        precision=args.precision,
        device=args.device,
        log_every=10**9,
        progress="off",
        save_final=False,
    )


def n_params(model: torch.nn.Module) -> tuple[int, int]:
    """(base parameters, trainable parameters) of a model (LoRA adapters are not base parameters)."""
    named = list(model.named_parameters())  # a tied weight is listed once
    return (sum(p.numel() for n, p in named if "lora_" not in n), sum(p.numel() for _, p in named if p.requires_grad))


def trial_ours(
    args, mode: str, folder: str, device: torch.device, dtype, *, fused: bool, regional: bool = False
) -> dict:
    total = args.warmup_steps + args.steps
    cfg = finetune_config(args, mode, total)
    plan = plan_mix(
        budget=args.batch * total, target_epochs=1.0, replay_fraction=0.0, batch_size=args.batch, max_steps=total
    )
    scfg = sampler_config(cfg, plan, tokenizer="random")  # the one-stage RunConfig finetune trains
    # The run's own settings, as `replaylab finetune --compile regional --no-deterministic` would set them.
    cfg.model.compile = "regional" if regional else cfg.model.compile
    cfg.train.deterministic = not fused
    spec = compile_spec(cfg.model.compile, device, False) if args.compile == "default" or regional else args.compile
    label = f"ours{'-regional' if regional else ''}{'-fused' if fused else ''}/{mode}"
    # As run_finetune does: the model is built and its compile trialled inside the engine's deterministic mode
    # (math attention on CUDA; unless `fused`), so the trial's graphs are the ones the steps run (dynamo
    # guards on the deterministic-algorithms setting: a trial outside it would recompile at the first step).
    with (
        tempfile.TemporaryDirectory(prefix="hf_bench_run.") as run_dir,
        ExitStack() as held,
        runtime.deterministic_run(device, cfg.train.deterministic),
    ):
        t0 = time.perf_counter()
        model = build_model(cfg, folder, device)
        clock = StepClock(device)
        sampler = RandomSampler(batch=args.batch, seq_len=args.seq_len, vocab=SMOLLM2_135M["vocab_size"])
        rows = (0, scfg.train.micro_batch_size or scfg.train.batch_size)
        example = torch.from_numpy(sampler.batch(0, rows=rows)[0]).to(device)
        module = TimedModule(
            HFCausalLMModule(model, scfg.optim, device=device, dtype=dtype, example=example, compile_spec=spec), clock
        )
        build_s = time.perf_counter() - t0
        run = RunFolder(
            run_dir,
            cfg,
            resume=False,
            overwrite=False,
            dist=DistInfo(),
            device=device,
            held=held,
            resume_hint="(benchmark)",
        )
        with Trainer(
            config=scfg,
            module=module,
            sampler=sampler,
            eval_sets=[],
            folder=run,
            start=0,
            rows=rows,
            logger_config=cfg,
            checkpoint_at_end=False,
        ) as trainer:
            if trainer.fit() is None:
                raise RuntimeError(f"{label}: the run diverged: {trainer.diverged}")
    loss = float(torch.stack(module.losses).float().mean())
    base, trainable = n_params(model)
    return {
        "build_s": build_s,
        "mean_loss": loss,
        "base_params": base,
        "trainable_params": trainable,
        **clock.result(args.warmup_steps, args.batch * args.seq_len),
    }


def trial_hf(args, mode: str, folder: str, device: torch.device, dtype) -> dict:
    from transformers import PrinterCallback, TrainerCallback, TrainingArguments
    from transformers import Trainer as HFTrainer

    class Clock(TrainerCallback):
        def __init__(self, clock: StepClock):
            self.clock = clock

        def on_step_begin(self, args, state, control, **kwargs):
            self.clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            self.clock.end()

    class RandomTokens(torch.utils.data.Dataset):
        def __init__(self, n: int):
            gen = torch.Generator().manual_seed(1)
            self.ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (n, args.seq_len), generator=gen)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "labels": self.ids[i]}  # the model shifts the labels itself

    total = args.warmup_steps + args.steps
    cfg = finetune_config(args, mode, total)
    t0 = time.perf_counter()
    model = build_model(cfg, folder, device)  # the same model (and adapters) as ours
    clock = StepClock(device)
    # transformers 5 took warmup_ratio into warmup_steps (a float < 1 is a ratio); older ones have both
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    warmup = {"warmup_ratio": 0.01} if "warmup_ratio" in fields else {"warmup_steps": 0.01}
    with tempfile.TemporaryDirectory(prefix="hf_bench_trainer.") as out_dir:
        targs = TrainingArguments(
            output_dir=out_dir,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            bf16=dtype == torch.bfloat16,
            max_steps=total,
            logging_steps=10**9,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
            disable_tqdm=True,
            optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch",
            max_grad_norm=1.0,
            learning_rate=LR,
            lr_scheduler_type="cosine",
            adam_beta2=0.95,
            weight_decay=0.1,
            seed=0,
            use_cpu=device.type == "cpu",
            torch_compile=args.hf_torch_compile,
            **warmup,
        )
        trainer = HFTrainer(
            model=model, args=targs, train_dataset=RandomTokens(args.batch * total), callbacks=[Clock(clock)]
        )
        trainer.remove_callback(PrinterCallback)  # it prints the end-of-run metrics (disable_tqdm adds it)
        build_s = time.perf_counter() - t0
        out = trainer.train()
    base, trainable = n_params(model)
    return {
        "build_s": build_s,
        "mean_loss": out.training_loss,
        "base_params": base,
        "trainable_params": trainable,
        **clock.result(args.warmup_steps, args.batch * args.seq_len),
    }


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
