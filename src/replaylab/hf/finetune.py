"""Fine-tune a pretrained Hugging Face causal LM on a target pool with generic replay.

`run_finetune(config, out_dir, resume=False) -> manifest` is what `replaylab finetune` and the sweep
executor (`kind: finetune_hf`) call. The run folder mirrors the engine's: config.yaml, manifest.json
(status, plan, realized token shares, initial and final losses), metrics.jsonl, checkpoints/ (the
trainable tensors + AdamW state in safetensors, JSON state), and the final weights in `model/`
(full fine-tuning) or `adapter/` (LoRA).

The run is the engine's, with a Hugging Face train module (hf/train_module.py): the one Trainer
(train/trainer.py) trains it as a one-stage RunConfig (hf/packing.py `sampler_config`: the engine's
sampler draws the global batch, a pure function of seed and step; the fresh AdamW's warmup + cosine/linear
LR is the stage's, a pure function of the step). Under `torchrun` each rank trains its rows and gradients
are averaged (`replaylab.train.ddp`), or, with `parallel: fsdp`, the model, gradients and AdamW state are
sharded over the ranks (`hf/parallel.py`). What is Hugging Face's own here: the model, its tokenizer,
the evaluation before step 1, multiple-choice and lm-evaluation-harness scores, and the final weights.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from replaylab.fingerprint import run_id
from replaylab.hf import evaluate as ev
from replaylab.hf import parallel
from replaylab.runconfig import RunConfig
from replaylab.hf.models import check_seq_len, resolve_model
from replaylab.hf.packing import REPLAY, TARGET, open_stores, replay_sampler
from replaylab.hf.train_module import HFCausalLMModule, build_model, compile_spec
from replaylab.runtime import deterministic_run, resolve_device, resolve_precision, set_threads
from replaylab.train import checkpoint as ckpt
from replaylab.train import ddp
from replaylab.train.evaluate import build_eval_sets
from replaylab.train.logging import truncate_metrics
from replaylab.train.manifest import new_manifest
from replaylab.train.run_folder import RunFolder
from replaylab.train.trainer import Trainer

KIND = "finetune_hf"


def _check_inputs(cfg: RunConfig) -> None:
    """Fail fast on every input the run names, before the model loads and before the run folder exists:
    the corpora, the multiple-choice files, the model's config (seq_len within its positions), the
    lm-eval tasks (slowest: last). Every rank checks, so all stop together."""
    from replaylab.data.corpus import check_source

    for dom in cfg.data.domains.values():
        check_source(dom.source)
    for task in cfg.eval.mc_tasks:
        ev.load_mc_task(task, cfg.eval.mc_max_items)
    m = cfg.model
    check_seq_len(m.source, resolve_model(m.source, trust_remote_code=m.trust_remote_code), cfg.data.seq_len,
                  trust_remote_code=m.trust_remote_code)
    if cfg.eval.lm_eval_tasks:
        ev.check_lm_eval(cfg.eval.lm_eval_tasks, cfg.eval.lm_eval_include)


def run_finetune(config: RunConfig, out_dir: Path | str, resume: bool = False,
                 overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) one replay fine-tuning run; returns the final manifest ({} on ranks other than 0).
    The run folder is locked while the run trains (a second trainer is refused); `overwrite` replaces a run
    folder of another config. A run that diverges returns its manifest with status `diverged`."""
    config.validate()
    _check_inputs(config)
    set_threads(config.train.threads)
    device = resolve_device(config.train.device)
    dist = ddp.setup(device.type)
    try:
        # Deterministic by default, as the engine: the fused attention kernels' backward is not reproducible on CUDA.
        with deterministic_run(device, config.train.deterministic), ExitStack() as held:
            folder = RunFolder(out_dir, config, resume=resume, overwrite=overwrite, dist=dist, device=device,
                               held=held, resume_hint=f"replaylab finetune --resume {out_dir}")
            old = folder.prepare()
            ddp.barrier(dist)
            if old is not None and old.get("status") == "done":
                return old
            return _run(config, folder, old, device, dist)
    finally:
        ddp.teardown(dist)


def _run(cfg: RunConfig, folder: RunFolder, old: dict | None, device: torch.device, dist) -> dict[str, Any]:
    from replaylab.data.tokenizer import load_tokenizer

    m, plan_cfg = cfg.model, cfg.finetune
    fsdp = parallel.use_fsdp(m.parallel, dist.world_size, dist.is_main)
    if fsdp:
        parallel.check_supported(cfg.eval.lm_eval_tasks)
    model_folder = resolve_model(m.source, trust_remote_code=m.trust_remote_code)
    tokenizer = load_tokenizer(model_folder)  # the model's own tokenizer packs the data
    stores = open_stores(cfg, tokenizer)
    micro = cfg.train.micro_batch_size or max(1, cfg.train.batch_size // dist.world_size)  # default: no accumulation
    plan, scfg, sampler = replay_sampler(cfg, stores, str(tokenizer.path), micro_batch_size=micro)
    shares = sampler.realized_shares(0)
    eval_sets = build_eval_sets(scfg, stores)
    dtype = resolve_precision(cfg.train.precision, device)
    if fsdp:
        # Load on CPU; sharding moves one layer at a time to the device, so no GPU holds the whole model.
        model = parallel.shard(build_model(cfg, model_folder, torch.device("cpu")), device, dist.world_size, dtype)
        dtype = None  # FSDP's mixed-precision policy already computes in bf16: no autocast on top
    else:
        model = build_model(cfg, model_folder, device)
    rows = ddp.shard_rows(cfg.train.batch_size, micro, dist)
    example = torch.from_numpy(sampler.batch(0, rows=rows)[0]).to(device)  # (mb, T+1): compile trial
    module = HFCausalLMModule(model, scfg.optim, device=device, dtype=dtype, example=example,
                              compile_spec=compile_spec(m.compile, device, parallel.is_sharded(model)))

    start = 0
    found = ckpt.latest_good_checkpoint(folder.path) if old is not None else None
    if found is not None:
        module.load_state_dict({"model": found.model, "optim": found.optim})
        ckpt.set_rng_state(found.state["rng"])
        start = found.step
    replay = cfg.data.domains.get(REPLAY)
    meta = {"strategy": KIND, "target_domain": TARGET, "generic_domain": REPLAY, "rho": plan_cfg.replay_fraction,
            "target_source": cfg.data.domains[TARGET].source, "replay_source": replay.source if replay else None,
            "budget": plan.budget, "target_epochs": plan.target_epochs, "lr": plan_cfg.lr.peak,
            "model": m.source, "lora": m.lora.enabled, **cfg.meta}
    manifest = dict(old) if old else new_manifest(
        config_hash=run_id(cfg), name=cfg.name, seed=cfg.seed, meta=meta,
        store_identities={k: s.identity for k, s in stores.items()}, tokenizer_hash=tokenizer.hash,
        extra={"kind": KIND, "model_folder": model_folder})
    manifest.update(status="running", error=None, meta=meta, steps_done=start, plan={
        "budget": plan.budget, "target_draws": plan.target_draws, "target_steps": plan.target_steps,
        "planned_steps": plan.planned_steps, "total_steps": plan.total_steps, "capped": plan.capped,
        "target_weight": plan.target_weight, "target_epochs": plan.target_epochs},
        realized_token_shares=shares, trainable_params=sum(p.numel() for p in module.params))
    finished = folder.create(manifest, old)
    if finished is not None:
        return finished if dist.is_main else {}
    if dist.is_main and old is not None:  # drop what the interrupted attempt logged after its checkpoint
        truncate_metrics(folder.path, start if start > 0 else -1)
    ddp.barrier(dist)

    with Trainer(config=scfg, module=module, sampler=sampler, eval_sets=eval_sets, folder=folder, start=start,
                 rows=rows, logger_config=scfg, checkpoint_at_end=False,
                 divergence_hint="lower optim.lr or keep optim.grad_clip on") as trainer:
        if start == 0 and cfg.eval.initial:
            initial = {"losses": trainer.evaluate(0), "mc": _score_mc(cfg, model, tokenizer, device, dtype, trainer, 0)}
            folder.update(initial=initial)
        trainer.logger.log({"type": "mix", "step": start, "realized_token_shares": shares,
                            "target_weight": plan.target_weight, "total_steps": plan.total_steps})
        final = trainer.fit()
        if final is None:  # diverged: the manifest says so
            return folder.manifest if dist.is_main else {}
        mc = _score_mc(cfg, model, tokenizer, device, dtype, trainer, plan.total_steps)
        if cfg.eval.lm_eval_tasks and dist.is_main:
            from transformers import AutoTokenizer

            hf_tok = AutoTokenizer.from_pretrained(str(tokenizer.path), local_files_only=True)
            mc.update(ev.run_lm_eval(model, hf_tok, cfg.eval.lm_eval_tasks, batch_size=cfg.eval.batch_size,
                                     include=cfg.eval.lm_eval_include))
        # Sharded: every rank takes part in gathering the weights, rank 0 writes them.
        state = parallel.full_model_state(model, trainable_only=m.lora.enabled) if fsdp and m.save_final else None
        if dist.is_main and m.save_final:
            _save_final(cfg, model, model_folder, folder.path, state)
        trainer.finish(final=final, mc=mc, train_tokens_seen=sampler.tokens_seen(plan.total_steps))
    ddp.barrier(dist)
    return folder.manifest if dist.is_main else {}


def _score_mc(cfg: RunConfig, model, tokenizer, device, dtype, trainer: Trainer, step: int) -> dict:
    """Multiple-choice scores of the `eval.mc_tasks` files (log-likelihood), logged as `mc` records."""
    out = {}
    for task in cfg.eval.mc_tasks:
        res = ev.score_mc(model, tokenizer, ev.load_mc_task(task, cfg.eval.mc_max_items), device=device,
                          dtype=dtype, max_len=getattr(model.config, "max_position_embeddings", None))
        out[Path(task).stem] = res
        trainer.logger.log({"type": "mc", "step": step, "task": Path(task).stem, **res})
    return out


def _save_final(cfg: RunConfig, model, folder: str, out: Path, state: dict | None = None) -> None:
    """The fine-tuned weights as a loadable Hugging Face folder (LoRA: the adapter only).
    state: the gathered full state dict of a sharded model (None: the model's own)."""
    from transformers import AutoTokenizer

    from replaylab.paths import atomic_dir

    name = "adapter" if cfg.model.lora.enabled else "model"
    with atomic_dir(out / name) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state)
        AutoTokenizer.from_pretrained(folder, local_files_only=True).save_pretrained(tmp)

