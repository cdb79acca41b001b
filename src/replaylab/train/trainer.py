"""The one training loop, for every model: a run is a list of stages, and this loop walks them step by step.

What a run needs of its model is a train module (train/module.py: our Transformer; hf/train_module.py: a
Hugging Face causal LM, full, LoRA or FSDP). Everything else is the Trainer's, the same for both:

One step: this rank's rows of the step's global batch (the sampler's pure function of the step, built by
a background thread while the previous step trains), split into equal micro-batches whose losses are
averaged (the gradient of the mean token cross-entropy over the global batch), gradients averaged over
ranks, clipped, one AdamW step at the LR the schedule gives for that step (train/lr.py). At a stage start
with `optimizer: reset` the optimizer is rebuilt (moments zero, step count restarts).
Divergence: a step whose gradient norm is not finite is not applied; the run stops with status `diverged`.
That check is the one host sync per step (a scalar); the loss is brought to the host only when it is
logged, and ranks agree on a stop signal every few steps.
Eval at each stage end and every `eval.every` steps; checkpoints at stage ends, at `train.checkpoint_steps`
(shared-prefix branch points), every `train.checkpoint_every` steps, and on SIGINT/SIGTERM.

Because data and LR are functions of the step, resuming = loading model + optimizer + RNG + step from a
checkpoint; a resumed run ends bit-identical to one never interrupted (deterministic mode).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from replaylab.errors import one_line
from replaylab.runconfig import RunConfig
from replaylab.train import checkpoint as ckpt
from replaylab.train import ddp
from replaylab.train.evaluate import EvalSet
from replaylab.train.logging import Progress, RunLogger
from replaylab.train.loss_shares import batch_tensors, engine_weights, masked_batch
from replaylab.train.lr import lr_schedule
from replaylab.train.mixture import MixtureSampler, stage_at
from replaylab.train.module import TrainModule
from replaylab.train.run_folder import RunFolder

_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
STOP_CHECK_EVERY = 8  # under torchrun, ranks agree on a stop signal every this many steps (an all-reduce)


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run after saving a checkpoint; `exit_code` is 130 or 143."""

    def __init__(self, signum: int, step: int, run_dir: Path, resume_hint: str | None = None):
        self.signum, self.step, self.run_dir = signum, step, run_dir
        self.exit_code = _SIGNAL_EXIT.get(signum, 128 + signum)
        hint = resume_hint or f"replaylab train --resume {run_dir}"
        super().__init__(f"{signal.Signals(signum).name} at step {step}: checkpoint saved; continue with {hint}")


@contextmanager
def stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step (main thread only: Python signal
    handlers cannot be installed elsewhere, e.g. inside a Ray or thread worker). A second signal stops now."""
    flag: dict[str, int | None] = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["signum"] is not None:
            raise KeyboardInterrupt
        flag["signum"] = signum

    old = {s: signal.signal(s, handler) for s in _SIGNAL_EXIT}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class Callback:
    """What a kind of run does around the loop (a Hugging Face run: evaluate the pretrained model first, score
    multiple choice and lm-eval tasks and save the model at the end; hf/finetune.py). Every rank calls them."""

    def on_fit_start(self, trainer: "Trainer") -> None:
        """Before the first step (of this attempt: `trainer.start` says where it starts)."""

    def on_fit_end(self, trainer: "Trainer", final: dict[str, dict[str, float]]) -> dict[str, Any]:
        """After the last step, before the run is recorded done; returns fields for the manifest."""
        return {}


class Trainer:
    """Trains `module` over the schedule of `config` (stages, LR, batch, eval and checkpoint cadence) on the
    sampler's batches, from `start` (a resumed or branched step), writing into `folder`.

    checkpoint_at_end: save a checkpoint at the last step (ours: yes, it is exported and branched from; a
    Hugging Face run writes its model/ or adapter/ folder instead). eval_at_start: evaluate before the first
    step if an eval is due there (a run branched off a shared prefix at its own stage end, where the carrier
    did not evaluate: the state is the one it would have had alone). divergence_hint: what to change when the
    run diverges (default: the stage's lr.peak). callbacks: `Callback`s, in order."""

    def __init__(
        self,
        *,
        config: RunConfig,
        module: TrainModule,
        sampler: MixtureSampler,
        eval_sets: list[EvalSet],
        folder: RunFolder,
        start: int,
        rows: tuple[int, int],
        logger_config: Any,
        checkpoint_at_end: bool = True,
        eval_at_start: bool = False,
        divergence_hint: str | None = None,
        callbacks: tuple = (),
    ):
        self.config, self.module, self.sampler, self.eval_sets = config, module, sampler, eval_sets
        self.folder, self.dist, self.device = folder, folder.dist, folder.device
        self.start, self.step = start, start
        self.total = config.train.total_steps
        self.starts = config.stage_starts()
        self.lrs = lr_schedule(config)
        self.micro = config.train.micro_batch_size or config.train.batch_size
        self.rows = rows  # this rank's rows of each global batch (ddp.shard_rows, computed once by the launcher)
        self.checkpoint_at_end = checkpoint_at_end
        self.eval_at_start = eval_at_start
        self.divergence_hint = divergence_hint
        self.callbacks = tuple(callbacks)
        self.logger = RunLogger(folder.path, config=logger_config, enabled=self.dist.is_main, resume_step=start)
        self.pin = self.device.type == "cuda"
        self._signal_at_end: int | None = None  # a signal during the last step: passed on by `finish`
        # Instruction data (stores read as rows): per-source loss weights per step (train/loss_shares.py); None for
        # text data, whose steps below are exactly as they were.
        self.loss_weights = engine_weights(config, sampler)
        self._shares: dict | None = None

    # -- pieces ---------------------------------------------------------------------------------------
    def stage_of(self, step: int) -> int:
        """The stage that trains step `step` (0-based)."""
        return stage_at(self.starts, step)

    def batch(self, step: int) -> torch.Tensor:
        """This rank's rows of step `step`'s global batch, int64 (B/W, T+1), pinned on CUDA. Instruction data: a
        MaskedBatch (rows with positions, segments and per-token loss weights)."""
        if self.loss_weights is not None:
            return masked_batch(self.sampler, step, self.loss_weights(step), rows=self.rows)
        tokens = torch.from_numpy(self.sampler.batch(step, rows=self.rows)[0])
        return tokens.pin_memory() if self.pin else tokens

    def masked_micro_steps(self, batch) -> tuple[torch.Tensor, int]:
        """Forward and backward of one step of instruction data: each micro-batch's loss is sum(weight x token
        loss) with weights that sum to 1 over the global batch, so the step objective is the sum over micro-batches
        and ranks; the backward is scaled by the world size because gradients are averaged over ranks. Returns
        (world x the summed local loss, 1): the trainer's mean over ranks of it is the step objective."""
        parts = batch_tensors(batch)
        world = self.dist.world_size if self.dist.active else 1
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for m in range(0, parts["tokens"].shape[0], self.micro):
            micro = {k: v[m : m + self.micro].to(self.device) for k, v in parts.items()}
            loss = self.module.weighted_micro_loss(micro)
            (loss * world).backward()
            total += loss.detach()
        self._shares = batch.shares
        return total * world, 1

    def evaluate(self, done: int) -> dict[str, dict[str, float]]:
        """Held-out losses after `done` steps, logged with the data seen so far."""
        results = self.module.evaluate(self.eval_sets, self.config.eval.batch_size)
        stage = self.config.stages[self.stage_of(max(done - 1, 0))].name
        for dom, r in results.items():
            self.logger.log({"type": "eval", "step": done, "stage": stage, "domain": dom, **r})
        seen, epochs = self.sampler.tokens_seen(done), self.sampler.epochs(done)
        for dom in seen:
            self.logger.log(
                {"type": "data", "step": done, "domain": dom, "tokens_seen": seen[dom], "epochs": epochs[dom]}
            )
        return results

    def save(self, done: int, kind: str) -> None:
        state = self.module.state_dict()  # every rank: a sharded model gathers here
        if self.dist.is_main:
            ckpt.save_checkpoint(
                self.folder.path,
                step=done,
                stage=self.stage_of(done - 1),
                kind=kind,
                **state,
                extra={"sampler": self.sampler.counts_before(done), "config_hash": self.folder.manifest["config_hash"]},
            )
            ckpt.prune_checkpoints(self.folder.path, self.config.train.keep_checkpoints)
            self.folder.update(steps_done=done)
        ddp.barrier(self.dist)

    def _eval_due(self, done: int) -> bool:
        return eval_due(self.config, self.starts, done)

    # -- the loop ---------------------------------------------------------------------------------------
    def fit(self) -> dict[str, dict[str, float]] | None:
        """Train to the end. Returns the last held-out losses; None when the run diverged (the manifest says
        so); raises TrainingInterrupted after a checkpoint on SIGINT/SIGTERM."""
        cfg, module, dist = self.config, self.module, self.dist
        tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
        branch_steps = set(cfg.train.checkpoint_steps)
        final: dict[str, dict[str, float]] = {}
        for callback in self.callbacks:
            callback.on_fit_start(self)
        if self.start >= self.total:  # killed after its last checkpoint, before it was recorded done:
            return self.module.evaluate(self.eval_sets, cfg.eval.batch_size)  # (its records are all written)
        if self.eval_at_start and self._eval_due(self.start):
            final = self.evaluate(self.start)
        bar = Progress(cfg.train.progress, self.total, self.start, enabled=dist.is_main)
        prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")
        try:
            with stop_on_signals() as stop:
                module.train()
                window_start, window_steps = time.perf_counter(), 0
                step = self.step
                upcoming = prefetch.submit(self.batch, step) if step < self.total else None
                while step < self.total:
                    stage = self.stage_of(step)
                    if step == self.starts[stage] and stage > 0 and cfg.stages[stage].optimizer == "reset":
                        module.reset_optimizer()  # fresh moments, step count 0
                    lr = float(self.lrs[step])
                    if self.loss_weights is not None:  # instruction data
                        loss_sum, n_micro = self.masked_micro_steps(upcoming.result())
                        upcoming = prefetch.submit(self.batch, step + 1) if step + 1 < self.total else None
                    else:
                        tokens = upcoming.result().to(self.device, non_blocking=self.pin)  # (B/W, T+1)
                        upcoming = prefetch.submit(self.batch, step + 1) if step + 1 < self.total else None
                        n_micro = tokens.shape[0] // self.micro
                        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
                        for m in range(n_micro):
                            loss = module.micro_loss(tokens[m * self.micro : (m + 1) * self.micro])  # mean (mb, T)
                            (loss / n_micro).backward()
                            loss_sum += loss.detach()
                    module.sync_gradients(dist)
                    grad_norm = module.clip_gradients(cfg.optim.grad_clip)
                    if not math.isfinite(float(grad_norm)):  # the one sync of every step: never apply a bad step
                        loss = ddp.mean_scalar(float(loss_sum) / n_micro, dist, self.device)
                        self._diverged(step, stage, lr, loss, float(grad_norm))
                        return None
                    module.optimizer_step(lr)
                    step += 1
                    self.step = step
                    window_steps += 1

                    if step % cfg.train.log_every == 0 or step == self.total:
                        step_loss = ddp.mean_scalar(float(loss_sum) / n_micro, dist, self.device)
                        elapsed = time.perf_counter() - window_start
                        tps = window_steps * tokens_per_step / max(elapsed, 1e-9)
                        self.logger.log(
                            {
                                "type": "train",
                                "step": step,
                                "loss": step_loss,
                                "lr": lr,
                                "tokens": step * tokens_per_step,
                                "tok_per_s": round(tps, 1),
                                "grad_norm": float(grad_norm),
                            }
                        )
                        if self._shares is not None:  # each source's realized share of the step
                            self.logger.log({"type": "shares", "step": step, **_flat(self._shares)})
                        bar.update(step, step_loss, tps)
                        window_start, window_steps = time.perf_counter(), 0
                    stage_end = step == self.starts[stage + 1]
                    if self._eval_due(step) or step == self.total:
                        final = self.evaluate(step)
                    saved = True
                    if stage_end and (step < self.total or self.checkpoint_at_end):
                        self.save(step, "stage_end")
                    elif step in branch_steps:
                        self.save(step, "branch")
                    elif cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 and step < self.total:
                        self.save(step, "periodic")
                    else:
                        saved = False
                    due = not dist.active or step % STOP_CHECK_EVERY == 0 or stage_end
                    if due and step < self.total and ddp.any_flag(stop["signum"] is not None, dist, self.device):
                        if not saved:
                            self.save(step, "signal")
                        raise TrainingInterrupted(
                            stop["signum"] or signal.SIGTERM, step, self.folder.path, self.folder.resume_hint
                        )
        finally:
            prefetch.shutdown(wait=True, cancel_futures=True)
            bar.close()
        self._signal_at_end = stop["signum"]
        return final

    def _diverged(self, step: int, stage: int, lr: float, loss: float, norm: float) -> None:
        hint = self.divergence_hint or f"lower stages.{stage}.lr.peak or keep optim.grad_clip on"
        message = (
            f"the gradient norm became {norm} at step {step + 1} (loss {loss:.4g}, stage "
            f"{self.config.stages[stage].name!r}, lr {lr:.3g}): the run diverged and that step was not "
            f"applied; {hint}"
        )
        self.logger.log(
            {
                "type": "train",
                "step": step + 1,
                "loss": loss,
                "lr": lr,
                "tokens": (step + 1) * self.config.train.batch_size * self.config.data.seq_len,
                "tok_per_s": None,
                "grad_norm": norm,
            }
        )
        print(f"replaylab: {message}", file=sys.stderr)
        self.folder.ended("diverged", error=message, steps_done=step)

    # -- how the run ends ---------------------------------------------------------------------------------
    def finish(self, final: dict[str, dict[str, float]], **fields: Any) -> None:
        """Record the run as done with its `final` losses, the callbacks' fields and `fields`. A signal that came
        during the last step is passed on once the run is saved: whoever sent it (a shell, a sweep worker's
        supervisor) still wants this process to stop."""
        for callback in self.callbacks:
            fields.update(callback.on_fit_end(self, final))
        self.folder.ended("done", steps_done=self.step, final=final, **fields)
        if self._signal_at_end is not None:
            os.kill(os.getpid(), self._signal_at_end)

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, kind, error, tb) -> None:
        """A run that fails records why (`failed`); a stopped one keeps `running`, so it can be resumed."""
        self.logger.close()
        if error is not None and not isinstance(error, (TrainingInterrupted, KeyboardInterrupt)):
            self.folder.ended("failed", error=one_line(error))


def _flat(shares: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{name}_{kind}": round(v, 6) for name, kinds in shares.items() for kind, v in kinds.items()}


def eval_due(config: RunConfig, starts: list[int], done: int) -> bool:
    """Whether a run evaluates after `done` steps: at each stage end and every `eval.every` steps."""
    return done in starts[1:] or bool(config.eval.every and done % config.eval.every == 0)


def prefix_records(config: RunConfig, records: list[dict]) -> list[dict]:
    """The source run's records that this run would have written itself over the shared prefix (its own log
    and eval steps, its own stage names), so a branched run's metrics.jsonl equals the one of the run trained
    alone."""
    starts = config.stage_starts()
    out = []
    for r in records:
        s = r.get("step", 0)
        if r.get("type") == "train":
            keep = s % config.train.log_every == 0
        else:
            keep = eval_due(config, starts, s)
        if keep and 0 < s <= config.train.total_steps:
            if r.get("type") == "eval":
                r = {**r, "stage": config.stages[stage_at(starts, s - 1)].name}
            out.append(r)
    return out
