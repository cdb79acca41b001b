"""The contenders of hf_throughput.py, one trial each: ours (`hf.train_module.build_model` + `HFCausalLMModule`
trained by the one Trainer's `Trainer.fit`) and transformers.Trainer, on the same model and random tokens.

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
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from replaylab import runtime
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
        self.stores: dict = {}  # no store read as rows: the Trainer takes the text path (train/loss_shares.py)

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
