"""Fine-tune a pretrained Hugging Face causal LM on a target pool with generic replay: the `hf` kind of run.

`run_finetune(config, out_dir, resume=False) -> manifest` is what `replaylab finetune` and the sweep executor
(`kind: finetune_hf`) call; it is `train.run.run_training`, the one launch path. The run folder is the engine's:
config.yaml, manifest.json (status, plan, realized token shares, initial and final losses), metrics.jsonl,
checkpoints/ (the trainable tensors + AdamW state in safetensors, JSON state), and the final weights in `model/`
(full fine-tuning) or `adapter/` (LoRA).

What is Hugging Face's own is `HFRun`, the run setup train/run.py picks for `model.kind: hf`: the model and its
tokenizer (which packs the data), the fine-tuning plan laid out as the run's one stage (hf/packing.py), the
train module (hf/train_module.py; FSDP-sharded with `parallel: fsdp` under torchrun), and `HFCallbacks`: the
evaluation before step 1, multiple-choice and lm-evaluation-harness scores, and the final weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from replaylab.hf import evaluate as ev
from replaylab.hf import guards, parallel
from replaylab.hf.models import check_seq_len, resolve_model
from replaylab.hf.packing import REPLAY, TARGET, open_stores, replay_sampler, resolve_budget
from replaylab.hf.train_module import HFCausalLMModule, build_model, compile_spec
from replaylab.runconfig import RunConfig
from replaylab.train import checkpoint as ckpt
from replaylab.train import ddp
from replaylab.train.trainer import Callback, Trainer

KIND = "finetune_hf"


def run_finetune(
    config: RunConfig, out_dir: Path | str, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Run (or resume) one replay fine-tuning run; returns the final manifest ({} on ranks other than 0).
    The run folder is locked while the run trains (a second trainer is refused); `overwrite` replaces a run
    folder of another config. A run that diverges returns its manifest with status `diverged`."""
    from replaylab.train.run import run_training

    manifest = run_training(config, out_dir, resume=resume, overwrite=overwrite)
    return manifest if int(os.environ.get("RANK", "0")) == 0 else {}


class HFRun:
    """The run setup of a pretrained Hugging Face causal LM (model.kind: hf), for train/run.py."""

    command = "finetune"
    checkpoint_at_end = False  # the model/ or adapter/ folder is written instead
    divergence_hint = "lower optim.lr or keep optim.grad_clip on"

    def __init__(self, config: RunConfig):
        self.config = config

    def check_inputs(self) -> None:
        """Fail fast on every input the run names, before the model loads and before the run folder exists:
        the corpora, the multiple-choice files, the model's config (seq_len within its positions), the
        lm-eval tasks (slowest: last). Every rank checks, so all stop together."""
        from replaylab.data.corpus import check_source

        cfg, m = self.config, self.config.model
        for dom in cfg.data.domains.values():
            check_source(dom.source)
        for task in cfg.eval.mc_tasks:
            ev.load_mc_task(task, cfg.eval.mc_max_items)
        check_seq_len(
            m.source,
            resolve_model(m.source, trust_remote_code=m.trust_remote_code),
            cfg.data.seq_len,
            trust_remote_code=m.trust_remote_code,
        )
        if cfg.eval.lm_eval_tasks:
            ev.check_lm_eval(cfg.eval.lm_eval_tasks, cfg.eval.lm_eval_include)

    def resolve(self) -> RunConfig:
        return self.config  # as planned: the stage is laid out once the stores are open

    def open_stores(self) -> dict:
        from replaylab.data.tokenizer import load_tokenizer

        m = self.config.model
        self.model_folder = resolve_model(m.source, trust_remote_code=m.trust_remote_code)
        self.tokenizer = load_tokenizer(self.model_folder)  # the model's own tokenizer packs the data
        return open_stores(self.config, self.tokenizer)

    def layout(self, stores: dict, dist: ddp.DistInfo) -> RunConfig:
        cfg = self.config
        self.fsdp = parallel.use_fsdp(cfg.model.parallel, dist.world_size, dist.is_main)
        if self.fsdp:
            parallel.check_supported(cfg.eval.lm_eval_tasks)
        micro = cfg.train.micro_batch_size or max(1, cfg.train.batch_size // dist.world_size)  # no accumulation
        guards.check_replay_stretch(
            budget=resolve_budget(cfg, stores[TARGET]),
            target_epochs=cfg.finetune.target_epochs,
            replay_fraction=cfg.finetune.replay_fraction,
            batch_size=cfg.train.batch_size,
        )
        self.plan, laid, _ = replay_sampler(cfg, stores, str(self.tokenizer.path), micro_batch_size=micro)
        return laid

    def build(self, laid: RunConfig, sampler, *, rows, device, dtype, dist, existing, resume, init_from, out_dir: Path):
        cfg = self.config
        if self.fsdp:
            # Load on CPU; sharding moves one layer at a time to the device, so no GPU holds the whole model.
            model = parallel.shard(
                build_model(cfg, self.model_folder, torch.device("cpu")), device, dist.world_size, dtype
            )
            dtype = None  # FSDP's mixed-precision policy already computes in bf16: no autocast on top
        else:
            model = build_model(cfg, self.model_folder, device)
        example = torch.from_numpy(sampler.batch(0, rows=rows)[0]).to(device)  # (mb, T+1): compile trial
        module = HFCausalLMModule(
            model,
            laid.optim,
            device=device,
            dtype=dtype,
            example=example,
            compile_spec=compile_spec(cfg.model.compile, device, parallel.is_sharded(model)),
        )
        start = 0
        found = ckpt.latest_good_checkpoint(out_dir) if existing is not None else None
        if found is not None:
            module.load_state_dict({"model": found.model, "optim": found.optim})
            ckpt.set_rng_state(found.state["rng"])
            start = found.step
        self.model, self.dtype, self.device = model, dtype, device
        return module, start, None

    def manifest_fields(self, sampler, module) -> tuple[dict, dict]:
        cfg, plan = self.config, self.plan
        replay = cfg.data.domains.get(REPLAY)
        meta = {
            "strategy": KIND,
            "target_domain": TARGET,
            "generic_domain": REPLAY,
            "rho": cfg.finetune.replay_fraction,
            "target_source": cfg.data.domains[TARGET].source,
            "replay_source": replay.source if replay else None,
            "budget": plan.budget,
            "target_epochs": plan.target_epochs,
            "lr": cfg.finetune.lr.peak,
            "model": cfg.model.source,
            "lora": cfg.model.lora.enabled,
            **cfg.meta,
        }
        return meta, {
            "kind": KIND,
            "model_folder": self.model_folder,
            "plan": {
                "budget": plan.budget,
                "target_draws": plan.target_draws,
                "target_steps": plan.target_steps,
                "planned_steps": plan.planned_steps,
                "total_steps": plan.total_steps,
                "capped": plan.capped,
                "target_weight": plan.target_weight,
                "target_epochs": plan.target_epochs,
            },
            "realized_token_shares": sampler.realized_shares(0),
            "trainable_params": sum(p.numel() for p in module.params),
        }

    def callbacks(self) -> tuple[Callback, ...]:
        return (HFCallbacks(self),)


class HFCallbacks(Callback):
    """What only a Hugging Face run does around the loop."""

    def __init__(self, run: HFRun):
        self.run = run

    def on_fit_start(self, trainer: Trainer) -> None:
        """The pretrained model's losses and scores before step 1 (forgetting is relative to them), and the
        mixture's record."""
        run, cfg = self.run, self.run.config
        if trainer.start == 0 and cfg.eval.initial:
            trainer.folder.update(initial={"losses": trainer.evaluate(0), "mc": self._score_mc(trainer, 0)})
        trainer.logger.log(
            {
                "type": "mix",
                "step": trainer.start,
                "realized_token_shares": trainer.sampler.realized_shares(0),
                "target_weight": run.plan.target_weight,
                "total_steps": run.plan.total_steps,
            }
        )

    def on_fit_end(self, trainer: Trainer, final: dict) -> dict[str, Any]:
        run, cfg = self.run, self.run.config
        mc = self._score_mc(trainer, run.plan.total_steps)
        if cfg.eval.lm_eval_tasks and trainer.dist.is_main:
            from transformers import AutoTokenizer

            hf_tok = AutoTokenizer.from_pretrained(str(run.tokenizer.path), local_files_only=True)
            mc.update(
                ev.run_lm_eval(
                    run.model,
                    hf_tok,
                    cfg.eval.lm_eval_tasks,
                    batch_size=cfg.eval.batch_size,
                    include=cfg.eval.lm_eval_include,
                )
            )
        save, lora = cfg.model.save_final, cfg.model.lora.enabled
        # Sharded: every rank takes part in gathering the weights, rank 0 writes them.
        state = parallel.full_model_state(run.model, trainable_only=lora) if run.fsdp and save else None
        if trainer.dist.is_main and save:
            _save_final(cfg, run.model, run.model_folder, trainer.folder.path, state)
        return {"mc": mc, "train_tokens_seen": trainer.sampler.tokens_seen(run.plan.total_steps)}

    def _score_mc(self, trainer: Trainer, step: int) -> dict:
        """Multiple-choice scores of the `eval.mc_tasks` files (log-likelihood), logged as `mc` records."""
        run, out = self.run, {}
        for task in run.config.eval.mc_tasks:
            res = ev.score_mc(
                run.model,
                run.tokenizer,
                ev.load_mc_task(task, run.config.eval.mc_max_items),
                device=run.device,
                dtype=run.dtype,
                max_len=getattr(run.model.config, "max_position_embeddings", None),
            )
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
