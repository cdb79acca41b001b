"""Fine-tune a pretrained Hugging Face causal LM on a target pool with generic replay.

`run_finetune(config, out_dir, resume=False) -> manifest` is what `replaylab finetune` and the sweep
executor (`kind: finetune_hf`) call. The run folder mirrors the engine's: config.yaml, manifest.json
(status, plan, realized token shares, initial and final losses), metrics.jsonl, checkpoints/ (the
trainable tensors + AdamW state in safetensors, JSON state), and the final weights in `model/`
(full fine-tuning) or `adapter/` (LoRA).

A step: the engine's sampler yields the global batch (a pure function of seed and step); under
`torchrun` each rank trains its rows and gradients are averaged (`replaylab.train.ddp`), or, with
`parallel: fsdp`, the model, gradients and AdamW state are sharded over the ranks (`hf/parallel.py`).
AdamW is fresh, with its own warmup + cosine/linear schedule (a pure function of the step, so
resuming needs no scheduler state).
"""

from __future__ import annotations

import math
import signal
import time
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from replaylab.config import config_hash, dump_yaml, load_config
from replaylab.errors import ConfigError
from replaylab.fingerprint import run_id, run_identity
from replaylab.hf import evaluate as ev
from replaylab.hf import parallel
from replaylab.hf.config import FinetuneConfig
from replaylab.hf.models import check_seq_len, load_model, resolve_model
from replaylab.hf.packing import REPLAY, TARGET, open_stores, plan_mix, sampler_config, target_budget
from replaylab.outputs import OutputError, claim_output, read_marker, remove_ours, write_marker
from replaylab.paths import atomic_write_text
from replaylab.runconfig import OptimConfig
from replaylab.runtime import autocast, resolve_device, resolve_precision, set_threads
from replaylab.train import checkpoint as ckpt
from replaylab.train import ddp
from replaylab.train.evaluate import build_eval_sets
from replaylab.train.logging import Progress, RunLogger, truncate_metrics
from replaylab.train.manifest import new_manifest, now, read_manifest, write_manifest
from replaylab.train.mixture import MixtureSampler
from replaylab.train.optim import param_groups
from replaylab.train.trainer import TrainingInterrupted, lock_run_dir

KIND = "finetune_hf"


def lr_at(step: int, total: int, cfg: FinetuneConfig) -> float:
    """LR of optimizer step `step` (0-based): linear warmup to the peak, then cosine/linear/constant
    decay towards `final_lr` (reached just after the last step, so no step is wasted at LR 0)."""
    o = cfg.optim
    warm = int(round(o.warmup * total))
    if step < warm:
        return o.lr * (step + 1) / warm
    if o.schedule == "constant":
        return o.lr
    frac = (step - warm) / max(1, total - warm)  # the first step after warmup runs at the peak
    shape = 0.5 * (1 + math.cos(math.pi * frac)) if o.schedule == "cosine" else 1 - frac
    return o.final_lr + (o.lr - o.final_lr) * shape


class _Trainable(torch.nn.Module):
    """What checkpoints hold: only the parameters that train (all of them, or the LoRA adapters)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def state_dict(self, *args, **kwargs):  # noqa: D401 - the checkpoint writer calls this
        return {n: p for n, p in self.named}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        names = {n for n, _ in self.named}
        if set(tensors) != names:
            raise ckpt.CheckpointError("checkpoint tensors do not match this run's trainable parameters; "
                                       "it belongs to another configuration (LoRA vs full?)")
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(tensors[n])


def build_model(cfg: FinetuneConfig, folder: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)  # LoRA's A matrices are random: same seed, same adapters
    model = load_model(folder, trust_remote_code=cfg.trust_remote_code)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        # transformers 5 renamed it; both recompute each layer's activations in the backward pass
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            from peft import LoraConfig as PeftLora, get_peft_model
        except ImportError:
            raise ConfigError("lora needs peft: pip install 'replaylab[hf]'") from None
        lc = cfg.lora
        model = get_peft_model(model, PeftLora(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                               target_modules=list(lc.target_modules), task_type="CAUSAL_LM"))
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
    return model.to(device)


@contextmanager
def _closing(progress):
    try:
        yield progress
    finally:
        progress.close()


class FinetuneInterrupted(TrainingInterrupted):
    """SIGINT/SIGTERM stopped the run after a checkpoint (the sweep treats it like an engine run's)."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        super().__init__(signum, step, run_dir)
        self.args = (f"{signal.Signals(signum).name} at step {step}: checkpoint saved; continue with "
                     f"replaylab finetune --resume --out {run_dir} (same config)",)


@contextmanager
def _stop_on_signals():
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the next step boundary and stops."""
    flag: dict[str, int | None] = {"signum": None}
    old = {}

    def handler(signum, frame):
        if flag["signum"] is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        flag["signum"] = signum

    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread (e.g. a Ray worker thread): no handlers, no flag
        pass
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _check_inputs(cfg: FinetuneConfig) -> None:
    """Fail fast on every input the run names, before the model loads and before the run folder exists:
    the corpora, the multiple-choice files, the model's config (seq_len within its positions), the
    lm-eval tasks (slowest: last). Every rank checks, so all stop together."""
    from replaylab.data.corpus import check_source

    for pool in (cfg.target, cfg.replay):
        if pool is not None:
            check_source(pool.source)
    for task in cfg.eval.mc_tasks:
        ev.load_mc_task(task, cfg.eval.mc_max_items)
    check_seq_len(cfg.model, resolve_model(cfg.model, trust_remote_code=cfg.trust_remote_code), cfg.seq_len,
                  trust_remote_code=cfg.trust_remote_code)
    if cfg.eval.lm_eval_tasks:
        ev.check_lm_eval(cfg.eval.lm_eval_tasks, cfg.eval.lm_eval_include)


def _prepare(cfg: FinetuneConfig, out: Path, resume: bool, overwrite: bool = False, remove: bool = False) -> dict | None:
    """Check the folder (replaylab.outputs: a new path or a run folder of ours); return the existing manifest
    when resuming (None = start fresh). With `overwrite`, a run of another config is replaced (when `remove`)."""
    claim_output(out, "run")  # new, or a run folder of ours: which run it holds is config.yaml's to say
    manifest = read_manifest(out)
    if manifest is None:
        return None
    saved = out / "config.yaml"
    if saved.exists() and run_identity(load_config(FinetuneConfig, saved)) != run_identity(cfg):
        if overwrite:
            if remove:
                remove_ours(out, "run")
            return None
        raise ConfigError(f"run folder {str(out)!r} holds a different config; use another --out, or pass --overwrite "
                          "to replace it")
    if not resume and manifest.get("status") != "done":
        raise ConfigError(f"run folder {str(out)!r} already holds a run ({manifest.get('status')}); "
                          "pass --resume to continue it, or choose another --out")
    return manifest


def run_finetune(config: FinetuneConfig, out_dir: Path | str, resume: bool = False,
                 overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) one replay fine-tuning run; returns the final manifest. The run folder is locked while
    the run trains (a second trainer is refused); `overwrite` replaces a run folder of another config."""
    config.validate()
    _check_inputs(config)
    out = Path(out_dir)
    old = _prepare(config, out, resume, overwrite)
    if old is not None and old.get("status") == "done":
        return old
    set_threads(config.threads)
    device = resolve_device(config.device)
    dist = ddp.setup(device.type)
    try:
        with ExitStack() as held:
            if out.is_dir():  # lock it before reading it again: another trainer may hold it
                lock_run_dir(out, dist, device, held)
                old = _prepare(config, out, resume, overwrite, remove=dist.is_main)
                ddp.barrier(dist)
            return _run(config, out, old, device, dist, held)
    finally:
        ddp.teardown(dist)


def _run(cfg: FinetuneConfig, out: Path, old: dict | None, device: torch.device, dist,
         held: ExitStack) -> dict[str, Any]:
    from replaylab.data.tokenizer import load_tokenizer

    fsdp = parallel.use_fsdp(cfg.parallel, dist.world_size, dist.is_main)
    if fsdp:
        parallel.check_supported(cfg.eval.lm_eval_tasks)
    folder = resolve_model(cfg.model, trust_remote_code=cfg.trust_remote_code)
    tokenizer = load_tokenizer(folder)  # the model's own tokenizer packs the data
    stores = open_stores(cfg, tokenizer)
    plan = plan_mix(budget=target_budget(cfg, stores[TARGET]), target_epochs=cfg.target_epochs,
                    replay_fraction=cfg.replay_fraction, batch_size=cfg.batch_size, max_steps=cfg.max_steps)
    scfg = sampler_config(cfg, plan, str(tokenizer.path))
    sampler = MixtureSampler(scfg, stores)
    shares = sampler.realized_shares(0)
    eval_sets = build_eval_sets(scfg, stores)
    dtype = resolve_precision(cfg.precision, device)
    if fsdp:
        # Load on CPU; sharding moves one layer at a time to the device, so no GPU holds the whole model.
        model = parallel.shard(build_model(cfg, folder, torch.device("cpu")), device, dist.world_size, dtype)
        dtype = None  # FSDP's mixed-precision policy already computes in bf16: no autocast on top
    else:
        model = build_model(cfg, folder, device)
    trainable = _Trainable(model)  # after sharding: the optimizer must hold the sharded parameters
    optimizer = torch.optim.AdamW(param_groups(model, OptimConfig(weight_decay=cfg.optim.weight_decay)), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    micro = cfg.micro_batch_size or max(1, cfg.batch_size // dist.world_size)  # default: no accumulation
    lo, hi = ddp.shard_rows(cfg.batch_size, micro, dist)
    main = dist.is_main

    start = 0
    found = ckpt.latest_good_checkpoint(out) if old is not None else None
    if found is not None:
        if fsdp:
            parallel.load(model, optimizer, found.model, found.optim)
        else:
            trainable.load(found.model)
            optimizer.load_state_dict(found.optim)
        ckpt.set_rng_state(found.state["rng"])
        start = found.step
    meta = {"strategy": KIND, "target_domain": TARGET, "generic_domain": REPLAY, "rho": cfg.replay_fraction,
            "target_source": cfg.target.source, "replay_source": cfg.replay.source if cfg.replay else None,
            "budget": plan.budget, "target_epochs": plan.target_epochs, "lr": cfg.optim.lr,
            "model": cfg.model, "lora": cfg.lora.enabled, **cfg.meta}
    lock_run_dir(out, dist, device, held)  # a no-op where this process holds it already
    if old is None and read_manifest(out) is not None:
        raise OutputError(f"run folder {str(out)!r} was started by another process meanwhile; choose another --out")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if (read_marker(out) or {}).get("identity") is None:
            write_marker(out, "run", config_hash(cfg))
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
        if old is not None:  # drop what the interrupted attempt logged after its checkpoint
            truncate_metrics(out, start if start > 0 else -1)
        manifest = old if old is not None else new_manifest(
            config_hash=run_id(cfg), name=cfg.name, seed=cfg.seed, meta=meta,
            store_identities={k: s.identity for k, s in stores.items()}, tokenizer_hash=tokenizer.hash,
            extra={"kind": KIND, "model_folder": folder})
        manifest.update(status="running", error=None, meta=meta, plan={
            "budget": plan.budget, "target_draws": plan.target_draws, "target_steps": plan.target_steps,
            "planned_steps": plan.planned_steps, "total_steps": plan.total_steps, "capped": plan.capped,
            "target_weight": plan.target_weight, "target_epochs": plan.target_epochs},
            realized_token_shares=shares, trainable_params=sum(p.numel() for _, p in trainable.named))
        write_manifest(out, manifest)
    logger = RunLogger(out, config=cfg, enabled=main, resume_step=start)
    try:
        if start == 0 and cfg.eval.initial:
            initial = _evaluate(cfg, model, eval_sets, tokenizer, device, dtype, logger, 0, mc=True)
            if main:
                manifest["initial"] = initial
        if main:
            logger.log({"type": "mix", "step": start, "realized_token_shares": shares,
                        "target_weight": plan.target_weight, "total_steps": plan.total_steps})
        result = _train(cfg, model, trainable, optimizer, sampler, plan, eval_sets, tokenizer,
                        device, dtype, dist, logger, start, (lo, hi), micro, out)
        if result["stopped"]:
            if main:
                manifest.update(steps_done=result["step"])
                write_manifest(out, manifest)
            raise FinetuneInterrupted(result["signum"], result["step"], out)
        # Sharded: every rank takes part in gathering the weights, rank 0 writes them.
        state = parallel.full_model_state(model, trainable_only=cfg.lora.enabled) if fsdp and cfg.save_final else None
        if main:
            manifest.update(status="done", finished=now(), steps_done=plan.total_steps, final=result["final"],
                            mc=result["mc"], train_tokens_seen=sampler.tokens_seen(plan.total_steps))
            if cfg.save_final:
                _save_final(cfg, model, folder, out, state)
            write_manifest(out, manifest)
        ddp.barrier(dist)
        return manifest if main else {}
    except (KeyboardInterrupt, TrainingInterrupted):
        raise
    except Exception as e:
        if main:
            manifest.update(status="failed", error=f"{type(e).__name__}: {e}", finished=now())
            write_manifest(out, manifest)
        raise
    finally:
        logger.close()


def _evaluate(cfg, model, eval_sets, tokenizer, device, dtype, logger, step, mc: bool) -> dict:
    losses = ev.evaluate_losses(model, eval_sets, batch_size=cfg.eval.batch_size, device=device, dtype=dtype)
    for dom, rec in losses.items():
        logger.log({"type": "eval", "step": step, "stage": "finetune", "domain": dom, **rec})
    out: dict[str, Any] = {"losses": losses, "mc": {}}
    if mc:
        for task in cfg.eval.mc_tasks:
            res = ev.score_mc(model, tokenizer, ev.load_mc_task(task, cfg.eval.mc_max_items), device=device,
                              dtype=dtype, max_len=getattr(model.config, "max_position_embeddings", None))
            out["mc"][Path(task).stem] = res
            logger.log({"type": "mc", "step": step, "task": Path(task).stem, **res})
    return out


def _train(cfg, model, trainable, optimizer, sampler, plan, eval_sets, tokenizer, device, dtype, dist,
           logger, start, rows, micro, out) -> dict:
    total = plan.total_steps
    lo, hi = rows
    params = [p for _, p in trainable.named]
    sharded = parallel.is_sharded(model)
    progress = Progress(cfg.progress, total, start, enabled=dist.is_main)
    model.train()
    t0, tokens_since = time.perf_counter(), 0
    step = start
    with _stop_on_signals() as flag, _closing(progress):
        while step < total:
            lr = lr_at(step, total, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr
            batch = torch.from_numpy(sampler.batch(step)[0][lo:hi])  # this rank's rows, (b, L + 1)
            n_micro = (hi - lo) // micro
            loss_sum = 0.0
            for m in range(n_micro):
                chunk = batch[m * micro : (m + 1) * micro].to(device)
                x, y = chunk[:, :-1], chunk[:, 1:]  # (b, L) each
                with autocast(device, dtype):
                    logits = model(input_ids=x, use_cache=False).logits  # (b, L, V)
                loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1)) / n_micro
                loss.backward()
                loss_sum += float(loss.detach())
            if not sharded:  # FSDP averaged (reduce-scattered) each layer's gradients in the backward pass
                ddp.average_gradients(params, dist)
            if cfg.optim.grad_clip > 0:  # on FSDP's DTensor shards this is still the global norm
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_since += cfg.batch_size * cfg.seq_len
            loss_mean = ddp.mean_scalar(loss_sum, dist, device)
            if not math.isfinite(loss_mean):
                raise FloatingPointError(f"training loss is {loss_mean} at step {step}; lower optim.lr (now {cfg.optim.lr})")
            if step % cfg.log_every == 0 or step == total:
                dt = time.perf_counter() - t0
                tps = tokens_since / dt if dt > 0 else 0.0
                logger.log({"type": "train", "step": step, "loss": loss_mean, "lr": lr,
                            "tokens": step * cfg.batch_size * cfg.seq_len, "tok_per_s": tps})
                for dom, seen in sampler.tokens_seen(step).items():
                    logger.log({"type": "data", "step": step, "domain": dom, "tokens_seen": seen,
                                "epochs": sampler.epochs(step)[dom]})
                progress.update(step, loss_mean, tps)
                t0, tokens_since = time.perf_counter(), 0
            if cfg.eval.every and step % cfg.eval.every == 0 and step < total:
                _evaluate(cfg, model, eval_sets, tokenizer, device, dtype, logger, step, mc=False)
            stop = ddp.any_flag(flag["signum"] is not None, dist, device)
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total) or (stop and step < total):
                # Sharded: gather the full tensors onto rank 0 (every rank takes part) in the same format.
                saved = parallel.gather(model, optimizer, [n for n, _ in trainable.named]) if sharded else (
                    trainable, optimizer)
                if dist.is_main:
                    ckpt.save_checkpoint(out, step=step, stage=0, kind="signal" if stop else "periodic",
                                         model=saved[0], optimizer=saved[1])
                    ckpt.prune_checkpoints(out, cfg.keep_checkpoints)
                ddp.barrier(dist)
            if stop:
                return {"stopped": True, "step": step, "signum": flag["signum"] or signal.SIGTERM}
    final = _evaluate(cfg, model, eval_sets, tokenizer, device, dtype, logger, total, mc=True)
    if cfg.eval.lm_eval_tasks and dist.is_main:
        from transformers import AutoTokenizer

        hf_tok = AutoTokenizer.from_pretrained(str(tokenizer.path), local_files_only=True)
        final["mc"].update(ev.run_lm_eval(model, hf_tok, cfg.eval.lm_eval_tasks, batch_size=cfg.eval.batch_size,
                                          include=cfg.eval.lm_eval_include))
    return {"stopped": False, "step": step, "final": final["losses"], "mc": final["mc"]}


def _save_final(cfg: FinetuneConfig, model, folder: str, out: Path, state: dict | None = None) -> None:
    """The fine-tuned weights as a loadable Hugging Face folder (LoRA: the adapter only).
    state: the gathered full state dict of a sharded model (None: the model's own)."""
    from transformers import AutoTokenizer

    from replaylab.paths import atomic_dir

    name = "adapter" if cfg.lora.enabled else "model"
    with atomic_dir(out / name) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state)
        AutoTokenizer.from_pretrained(folder, local_files_only=True).save_pretrained(tmp)

