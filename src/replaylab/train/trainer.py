"""The training engine: a run is a list of stages; this loop walks them step by step.

One step: the sampler's global batch for that step (a pure function of the step), this rank's rows,
split into equal micro-batches whose losses are averaged (so the gradient is that of the mean token
cross-entropy over the global batch), gradients averaged over ranks, clipped, one AdamW step at the
LR the schedule gives for that step. At a stage start with `optimizer: reset` the optimizer is
rebuilt (moments zero, step count restarts).

Because data and LR are functions of the step, resuming = loading model + optimizer + RNG + step
from a checkpoint; a resumed run ends bit-identical to one never interrupted (deterministic mode).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from replaylab import runtime
from replaylab.config import config_hash, dump_yaml, load_config
from replaylab.errors import ConfigError, DataError
from replaylab.fingerprint import run_identity
from replaylab.outputs import OutputError, claim_output, folder_lock, read_marker, remove_ours, write_marker
from replaylab.paths import atomic_write_text
from replaylab.runconfig import RunConfig
from replaylab.train import checkpoint as ckpt
from replaylab.train import ddp
from replaylab.train.evaluate import build_eval_sets, evaluate
from replaylab.train.loss import build_step_loss
from replaylab.train.logging import Progress, RunLogger, read_metrics, truncate_metrics
from replaylab.train.manifest import new_manifest, now, read_manifest, write_manifest

_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run after saving a checkpoint; `exit_code` is 130 or 143."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        self.signum, self.step, self.run_dir = signum, step, run_dir
        self.exit_code = _SIGNAL_EXIT.get(signum, 128 + signum)
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: checkpoint saved; continue with replaylab train --resume {run_dir}")


@contextmanager
def _stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step (main thread only: Python
    signal handlers cannot be installed elsewhere, e.g. inside a Ray or thread worker)."""
    flag: dict[str, int | None] = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["signum"] is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        flag["signum"] = signum

    old = {s: signal.signal(s, handler) for s in _SIGNAL_EXIT}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def resolve_config(config: RunConfig):
    """Fill model.vocab_size / max_seq_len (and, for `hf:` init, the model shape) so the saved
    config.yaml says exactly what was trained. Returns (config, tokenizer, hf_state_dict or None)."""
    from replaylab.config import from_dict, to_dict
    from replaylab.data.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(config.data.tokenizer)
    raw = to_dict(config)
    model, hf_state = raw["model"], None
    init = config.stages[0].init
    if init.startswith("hf:"):
        from replaylab.hf_convert import import_hf

        hf_cfg, hf_state = import_hf(init[3:])
        model.update({k: v for k, v in hf_cfg.items() if k in model})
        model["preset"] = None
    model["vocab_size"] = model["vocab_size"] or tokenizer.vocab_size
    model["max_seq_len"] = model["max_seq_len"] or config.data.seq_len
    if model["vocab_size"] < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size {model['vocab_size']} is smaller than the tokenizer's "
                          f"{tokenizer.vocab_size}; leave model.vocab_size unset to use the tokenizer's")
    if model["max_seq_len"] < config.data.seq_len:
        raise ConfigError(f"model.max_seq_len {model['max_seq_len']} is below data.seq_len {config.data.seq_len}; "
                          "raise model.max_seq_len or leave it unset")
    return from_dict(RunConfig, raw), tokenizer, hf_state


def load_stores(config: RunConfig, tokenizer) -> dict:
    from replaylab.data.store import get_store

    stores = {}
    for name, dom in config.data.domains.items():
        store = get_store(dom.source, tokenizer=tokenizer, options=dom.options or None)
        made_with = store.meta.get("tokenizer_hash") if hasattr(store, "meta") else None
        if made_with and made_with != tokenizer.hash:
            raise DataError(f"domain {name!r}: store {dom.source!r} was tokenized with another tokenizer "
                            f"({made_with[:8]}, run uses {tokenizer.hash[:8]}); give the corpus, not a built store")
        stores[name] = store
    return stores


def init_weights(model: torch.nn.Module, config: RunConfig, hf_state: dict | None) -> None:
    """Stage-1 init: scratch (already done by the constructor), checkpoint:PATH (weights only) or hf:PATH."""
    init = config.stages[0].init
    if init.startswith("checkpoint:"):
        state = ckpt.load_checkpoint(ckpt.resolve_checkpoint_path(init[len("checkpoint:"):])).model
        where = init
    elif init.startswith("hf:"):
        state, where = hf_state, init
    else:
        return
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ConfigError(f"stages.0.init {where}: its weights do not fit model (the model section must match "
                          f"the checkpoint's shape): {first[1].strip() if len(first) > 1 else first[0]}") from None


def _prepare_run_dir(config: RunConfig, out_dir: Path, resume: bool, overwrite: bool = False,
                     is_main: bool = True) -> dict | None:
    """Check what `out_dir` holds (replaylab.outputs: a new path or a run folder of ours). Returns the existing
    manifest when there is a run to continue. With `overwrite`, a run folder of another config is replaced
    (by the main process)."""
    claim_output(out_dir, "run")  # new, or a run folder of ours: which run it holds is config.yaml's to say
    saved = out_dir / "config.yaml"
    if not saved.exists():
        if out_dir.exists() and any(p for p in out_dir.iterdir() if not p.name.startswith(".")) and not resume:
            if (out_dir / "manifest.json").exists() or (out_dir / "checkpoints").exists():
                raise ConfigError(f"--out {str(out_dir)!r} holds a damaged run (no config.yaml); choose another --out")
        return None
    other = load_config(RunConfig, saved)
    mine, theirs = run_identity(config), run_identity(other)
    manifest = read_manifest(out_dir) or {}
    # The hash ignores key order, but the order of data.domains is the sampler's tie-break order.
    if (mine != theirs or list(config.data.domains) != list(other.data.domains)) and overwrite:
        if is_main:
            remove_ours(out_dir, "run")
        return None
    if mine != theirs or list(config.data.domains) != list(other.data.domains):
        raise ConfigError(
            f"--out {str(out_dir)!r} already holds a different run (config {theirs}, this one {mine}); "
            "choose another --out, continue that run with replaylab train --resume DIR, or pass --overwrite"
        )
    if not resume and manifest.get("status") != "done":
        raise ConfigError(
            f"--out {str(out_dir)!r} already holds this run (status {manifest.get('status')}, "
            f"{manifest.get('steps_done', 0)} steps done); continue it with replaylab train --resume {out_dir}"
        )
    return manifest


def run_training(config: RunConfig, out_dir: Path | str, *, resume: bool = False,
                 init_from: Path | str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train `config` into run folder `out_dir`; returns the final manifest.

    resume: continue from the newest good checkpoint in `out_dir` (a folder with no run yet just
    starts). init_from: a checkpoint folder of another run whose config agrees with this one up to
    that checkpoint's step; training continues from its full state as a resume would.
    A run that diverges (NaN/inf loss) returns its manifest with status `diverged`.
    out_dir: a new path or a run folder of replaylab's (replaylab.outputs); `overwrite` replaces one that holds
    another config. The folder is locked while the run trains: a second trainer is refused."""
    config.validate()
    out_dir = Path(out_dir)
    runtime.set_threads(config.train.threads)
    if config.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    device = runtime.resolve_device(config.train.device)
    dist = ddp.setup(device.type)
    if device.type == "cuda" and dist.active:
        device = torch.device("cuda", dist.local_rank)
    try:
        with runtime.deterministic_attention(device, config.train.deterministic), ExitStack() as held:
            return _run(config, out_dir, resume, init_from, device, dist, held, overwrite)
    finally:
        ddp.teardown(dist)


def lock_run_dir(out_dir: Path, dist: ddp.DistInfo, device: torch.device, held: ExitStack) -> None:
    """Rank 0 holds the run folder's lock until `held` closes; every rank stops if another process holds it."""
    error = None
    if dist.is_main:
        try:
            held.enter_context(folder_lock(out_dir, "run folder"))
        except OutputError as e:
            error = e
    if ddp.any_flag(error is not None, dist, device):
        raise error or OutputError(f"run folder {str(out_dir)!r} is being written by another process")


def _run(config: RunConfig, out_dir: Path, resume: bool, init_from, device: torch.device,
         dist: ddp.DistInfo, held: ExitStack, overwrite: bool) -> dict[str, Any]:
    from replaylab.model import Transformer
    from replaylab.train.lr import lr_schedule
    from replaylab.train.mixture import MixtureSampler, stage_starts
    from replaylab.train.optim import build_optimizer, clip_gradients, set_lr

    config, tokenizer, model_state = resolve_config(config)
    locked = out_dir.is_dir()  # an existing folder is locked before it is read; a new one when it is created
    if locked:
        lock_run_dir(out_dir, dist, device, held)
    existing = _prepare_run_dir(config, out_dir, resume, overwrite, dist.is_main)
    # Every rank reads the folder before rank 0 writes to it: a slower rank would otherwise find rank
    # 0's fresh manifest and take it for an earlier run (seen in CI: "already holds this run").
    ddp.barrier(dist)
    if existing is not None and existing.get("status") == "done":
        return existing  # nothing left to do: same config, already finished
    stores = load_stores(config, tokenizer)
    sampler = MixtureSampler(config, stores)
    eval_sets = build_eval_sets(config, stores)
    lrs = lr_schedule(config)
    starts = stage_starts(config)
    total = config.train.total_steps
    micro = config.train.micro_batch_size or config.train.batch_size
    lo, hi = ddp.shard_rows(config.train.batch_size, micro, dist)
    n_micro = (hi - lo) // micro
    dtype = runtime.resolve_precision(config.train.precision, device)

    # Starting state: own newest good checkpoint, else init_from, else the stage-1 init.
    state = ckpt.latest_good_checkpoint(out_dir) if resume else None
    if init_from is None and existing:
        init_from = existing.get("init_from")  # a branched run killed before its own first checkpoint
    source = None
    if state is None and init_from is not None:
        state = ckpt.load_checkpoint(ckpt.resolve_checkpoint_path(init_from))
        ckpt.check_prefix(config, state)
        source = state.path
    torch.manual_seed(config.seed)
    model = Transformer(config.model)
    if state is not None:
        model.load_state_dict(state.model)
    else:
        init_weights(model, config, model_state)
    model.to(device)
    optimizer = build_optimizer(model, config.optim, device)
    step = 0
    if state is not None:
        optimizer.load_state_dict(state.optim)
        ckpt.set_rng_state(state.state["rng"])
        step = state.step
    first = torch.from_numpy(sampler.batch(min(step, total - 1))[0][lo : lo + micro]).to(device)  # (mb, T+1)
    step_loss_fn = build_step_loss(model, config.train.compile, first, dtype)

    # The run folder: config, manifest, metrics cut back to the starting step.
    lock_run_dir(out_dir, dist, device, held)  # a no-op where this process holds it already
    if not locked:  # again, under the lock: another process may have been first
        existing = _prepare_run_dir(config, out_dir, resume, overwrite, dist.is_main)
        if existing is not None and existing.get("status") == "done":
            return existing
    manifest = None
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if (read_marker(out_dir) or {}).get("identity") is None:
            write_marker(out_dir, "run", run_identity(config))
        atomic_write_text(out_dir / "config.yaml", dump_yaml(config))
        manifest = new_manifest(
            config_hash=config_hash(config), name=config.name, seed=config.seed, meta=config.meta,
            store_identities={n: s.identity for n, s in stores.items()}, tokenizer_hash=tokenizer.hash,
            extra={"init_from": str(source) if source else (existing or {}).get("init_from"),
                   "world_size": dist.world_size})
        if existing:
            manifest["started"] = existing.get("started", manifest["started"])
        manifest["steps_done"] = step
        write_manifest(out_dir, manifest)
        prefix = _prefix_records(config, starts, read_metrics(source.parent.parent)) if source is not None else None
        truncate_metrics(out_dir, step, prefix)
    ddp.barrier(dist)

    logger = RunLogger(out_dir, config=config, enabled=dist.is_main, resume_step=step)
    bar = Progress(config.train.progress, total, step, enabled=dist.is_main)
    params = [p for p in model.parameters() if p.requires_grad]
    tokens_per_step = config.train.batch_size * config.data.seq_len
    final: dict[str, dict[str, float]] = {}

    branch_steps = set(config.train.checkpoint_steps)

    def stage_of(s: int) -> int:
        return max(i for i in range(len(config.stages)) if starts[i] <= s)

    def save(done: int, kind: str) -> None:
        if dist.is_main:
            ckpt.save_checkpoint(out_dir, step=done, stage=stage_of(done - 1), kind=kind, model=model,
                                 optimizer=optimizer, extra={"sampler": sampler.counts_before(done),
                                                             "config_hash": config_hash(config)})
            ckpt.prune_checkpoints(out_dir, config.train.keep_checkpoints)
            manifest["steps_done"] = done
            write_manifest(out_dir, manifest)
        ddp.barrier(dist)

    def run_eval(done: int) -> dict[str, dict[str, float]]:
        results = evaluate(model, eval_sets, batch_size=config.eval.batch_size, device=device, autocast_dtype=dtype)
        stage = stage_of(done - 1)
        for dom, r in results.items():
            logger.log({"type": "eval", "step": done, "stage": config.stages[stage].name, "domain": dom, **r})
        seen, epochs = sampler.tokens_seen(done), sampler.epochs(done)
        for dom in seen:
            logger.log({"type": "data", "step": done, "domain": dom, "tokens_seen": seen[dom], "epochs": epochs[dom]})
        return results

    try:
        with _stop_on_signals() as stop:
            model.train()
            window_start, window_steps = time.perf_counter(), 0
            while step < total:
                stage = stage_of(step)
                if step == starts[stage] and stage > 0 and config.stages[stage].optimizer == "reset":
                    optimizer = build_optimizer(model, config.optim, device)  # fresh moments, step count 0
                lr = float(lrs[step])
                set_lr(optimizer, lr)
                tokens = torch.from_numpy(sampler.batch(step)[0][lo:hi]).to(device)  # (B/W, T+1)
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # synced once per step
                for m in range(n_micro):
                    chunk = tokens[m * micro : (m + 1) * micro]
                    with runtime.autocast(device, dtype):
                        loss = step_loss_fn(chunk)  # mean cross-entropy over the (mb, T) next tokens, fp32
                    (loss / n_micro).backward()
                    loss_sum += loss.detach()
                ddp.average_gradients(params, dist)
                step_loss = ddp.mean_scalar(float(loss_sum) / n_micro, dist, device)
                if not math.isfinite(step_loss):
                    return _diverged(out_dir, manifest, logger, config, step, stage, lr, step_loss, dist)
                clip_gradients(model, config.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                window_steps += 1

                if step % config.train.log_every == 0 or step == total:
                    elapsed = time.perf_counter() - window_start
                    tps = window_steps * tokens_per_step / max(elapsed, 1e-9)
                    logger.log({"type": "train", "step": step, "loss": step_loss, "lr": lr,
                                "tokens": step * tokens_per_step, "tok_per_s": round(tps, 1)})
                    bar.update(step, step_loss, tps)
                    window_start, window_steps = time.perf_counter(), 0
                stage_end = step == starts[stage + 1]
                if stage_end or (config.eval.every and step % config.eval.every == 0):
                    final = run_eval(step)
                saved = True
                if stage_end:
                    save(step, "stage_end")
                elif step in branch_steps:
                    save(step, "branch")
                elif config.train.checkpoint_every and step % config.train.checkpoint_every == 0:
                    save(step, "periodic")
                else:
                    saved = False
                if ddp.any_flag(stop["signum"] is not None, dist, device) and step < total:
                    if not saved:
                        save(step, "signal")
                    raise TrainingInterrupted(stop["signum"] or signal.SIGTERM, step, out_dir)
    except (TrainingInterrupted, KeyboardInterrupt):
        raise  # resumable: the manifest keeps status "running"
    except BaseException as e:
        if manifest is not None:
            manifest.update(status="failed", error=f"{type(e).__name__}: {e}", finished=now())
            write_manifest(out_dir, manifest)
        raise
    finally:
        bar.close()
        logger.close()

    if dist.is_main:
        manifest.update(status="done", finished=now(), steps_done=step, final=final)
        write_manifest(out_dir, manifest)
    if stop["signum"] is not None:
        # The signal came during the last step: the run is complete and saved, but whoever sent it
        # (a shell, a sweep worker's supervisor) still wants this process to stop: pass it on.
        os.kill(os.getpid(), stop["signum"])
    return manifest if manifest is not None else {"status": "done", "final": final, "steps_done": step}


def _prefix_records(config: RunConfig, starts: list[int], records: list[dict]) -> list[dict]:
    """The source run's records that this run would have written itself over the shared prefix
    (its own log and eval steps, its own stage names), so a branched run's metrics.jsonl equals the
    one of the run trained alone."""
    out = []
    for r in records:
        s = r.get("step", 0)
        if r.get("type") == "train":
            keep = s % config.train.log_every == 0
        else:
            keep = s in starts[1:] or bool(config.eval.every and s % config.eval.every == 0)
        if keep and 0 < s <= config.train.total_steps:
            if r.get("type") == "eval":
                r = {**r, "stage": config.stages[max(i for i in range(len(config.stages)) if starts[i] < s)].name}
            out.append(r)
    return out


def _diverged(out_dir: Path, manifest: dict | None, logger: RunLogger, config: RunConfig, step: int, stage: int,
              lr: float, loss: float, dist: ddp.DistInfo) -> dict[str, Any]:
    message = (f"loss became {loss} at step {step + 1} (stage {config.stages[stage].name!r}, lr {lr:.3g}): the run "
               f"diverged; lower stages.{stage}.lr.peak or keep optim.grad_clip on")
    logger.log({"type": "train", "step": step + 1, "loss": loss, "lr": lr,
                "tokens": (step + 1) * config.train.batch_size * config.data.seq_len, "tok_per_s": None})
    print(f"replaylab: {message}", file=sys.stderr)
    if manifest is None:
        return {"status": "diverged", "error": message, "steps_done": step}
    manifest.update(status="diverged", error=message, finished=now(), steps_done=step)
    write_manifest(out_dir, manifest)
    return manifest
