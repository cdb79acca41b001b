"""`run_training`: every run, from a RunConfig to a finished run folder, whatever its model's kind.

The launch path, the same for every run: check the config, set up threads, device, ranks and deterministic
mode, check and lock the run folder, open the domains' token stores (a resumed run must read the data it
trained on), lay out the sampler and the held-out sets, build the train module and restore its state, write
the manifest, and hand the module to the one Trainer (train/trainer.py).

What differs by `model.kind` is a `RunKind` (the one kind switch, `run_kind`): ours, `TransformerRun` below
(resolve the vocabulary and `hf:` init; build the model from its stage-1 init or continue from a checkpoint,
its own or a shared prefix's with `init_from`), and a pretrained Hugging Face model's (hf/finetune.py: its
tokenizer packs the data, the fine-tuning plan lays out its stage, and its callbacks evaluate the pretrained
model first and score and save it at the end).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from replaylab import runtime
from replaylab.config import from_dict, to_dict
from replaylab.data.rows import instruction_summary
from replaylab.errors import ConfigError, DataError
from replaylab.fingerprint import run_id
from replaylab.model_kinds import model_kind, run_setup
from replaylab.runconfig import RunConfig
from replaylab.train import checkpoint as ckpt
from replaylab.train import ddp
from replaylab.train.evaluate import build_eval_sets
from replaylab.train.logging import read_metrics, truncate_metrics
from replaylab.train.manifest import new_manifest
from replaylab.train.mixture import MixtureSampler
from replaylab.train.module import TransformerModule
from replaylab.train.run_folder import RunFolder
from replaylab.train.trainer import Callback, Trainer, prefix_records


def resolve_config(config: RunConfig):
    """Fill model.vocab_size / max_seq_len (and, for `hf:` init, the model shape) so the saved
    config.yaml says exactly what was trained. Returns (config, tokenizer, hf_state_dict or None)."""
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
        raise ConfigError(
            f"model.vocab_size {model['vocab_size']} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size}; leave model.vocab_size unset to use the tokenizer's"
        )
    if model["max_seq_len"] < config.data.seq_len:
        raise ConfigError(
            f"model.max_seq_len {model['max_seq_len']} is below data.seq_len {config.data.seq_len}; "
            "raise model.max_seq_len or leave it unset"
        )
    return from_dict(RunConfig, raw), tokenizer, hf_state


def load_stores(config: RunConfig, tokenizer) -> dict:
    from replaylab.data.rows import read_as_rows
    from replaylab.data.store import get_store

    stores = {}
    for name, dom in config.data.domains.items():
        store = get_store(dom.source, tokenizer=tokenizer, options=dom.options or None)
        made_with = store.meta.get("tokenizer_hash") if hasattr(store, "meta") else None
        if made_with and made_with != tokenizer.hash:
            raise DataError(
                f"domain {name!r}: store {dom.source!r} was tokenized with another tokenizer "
                f"({made_with[:8]}, run uses {tokenizer.hash[:8]}); give the corpus, not a built store"
            )
        stores[name] = store
    # Instruction stores (a loss mask) train as whole examples per row, never as a stream (data/rows.py).
    return read_as_rows(stores, config.data.packing)


def check_resumed_data(config: RunConfig, existing: dict, stores: dict, tokenizer, out_dir: Path) -> None:
    """Refuse to continue a run on data other than what it trained on: a relative source read from another
    working directory, an edited file, another tokenizer. The manifest's recorded identities are the truth;
    they are compared before anything is written, so the record is never replaced."""
    from replaylab.data.store import store_source

    recorded = existing.get("store_identities") or {}
    for name, store in stores.items():
        before = recorded.get(name)
        if before is None or before == store.identity:
            continue
        was = store_source(before)
        was = f"{was} (store identity {before[:12]})" if was else f"store identity {before[:12]}"
        now = f"{store.meta.get('source_path') or store.meta['source']} (store identity {store.identity[:12]})"
        why = "; its tokenizer changed too" if existing.get("tokenizer_hash") not in (None, tokenizer.hash) else ""
        raise DataError(
            f"cannot resume {str(out_dir)!r}: domain {name!r} (source {config.data.domains[name].source!r}) now reads "
            f"{now}, but the run trained on {was}{why}; resume it where that data is (the same working "
            "directory, files and REPLAYLAB_HOME), or train a new run on the new data"
        )


def init_weights(model: torch.nn.Module, config: RunConfig, hf_state: dict | None) -> None:
    """Stage-1 init: scratch (already done by the constructor), checkpoint:PATH (weights only) or hf:PATH."""
    init = config.stages[0].init
    if init.startswith("checkpoint:"):
        state = ckpt.load_checkpoint(ckpt.resolve_checkpoint_path(init[len("checkpoint:") :])).model
        where = init
    elif init.startswith("hf:"):
        state, where = hf_state, init
    else:
        return
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ConfigError(
            f"stages.0.init {where}: its weights do not fit model (the model section must match "
            f"the checkpoint's shape): {first[1].strip() if len(first) > 1 else first[0]}"
        ) from None


class TransformerRun:
    """The run setup of our Transformer (model.kind: transformer)."""

    command = "train"
    checkpoint_at_end = True  # it is exported and branched from
    divergence_hint = None  # the stage's lr.peak

    def __init__(self, config: RunConfig):
        self.config = config

    def check_inputs(self) -> None:
        """Nothing to check before the device is set up: resolve() reads the tokenizer."""

    def resolve(self) -> RunConfig:
        self.config, self.tokenizer, self.hf_state = resolve_config(self.config)
        return self.config

    def open_stores(self) -> dict:
        return load_stores(self.config, self.tokenizer)

    def layout(self, stores: dict, dist: ddp.DistInfo) -> RunConfig:
        return self.config

    def build(
        self,
        laid: RunConfig,
        sampler: MixtureSampler,
        *,
        rows,
        device,
        dtype,
        dist,
        existing,
        resume,
        init_from,
        out_dir: Path,
    ):
        """(module, start step, the checkpoint it continues from when that is another run's)."""
        from replaylab.model import Transformer

        config, total = self.config, laid.train.total_steps
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
        if state is None:
            init_weights(model, config, self.hf_state)
        model.to(device)
        step = 0
        if state is not None:
            ckpt.set_rng_state(state.state["rng"])
            step = state.step
        first = torch.from_numpy(sampler.batch(min(step, total - 1), rows=rows)[0]).to(device)  # (mb, T+1)
        module = TransformerModule(
            model, config.optim, device=device, dtype=dtype, compile_spec=config.train.compile, example=first
        )
        if state is not None:  # the one restore path (the compile trial above left the weights untouched)
            module.load_state_dict({"model": state.model, "optim": state.optim})
        self.init_from = str(source) if source else (existing or {}).get("init_from")
        return module, step, source

    def manifest_fields(self, sampler: MixtureSampler, module) -> tuple[dict, dict]:
        """(meta, other manifest fields) of this run."""
        return self.config.meta, {"init_from": self.init_from}

    def callbacks(self) -> tuple[Callback, ...]:
        return ()


def run_kind(config: RunConfig):
    """The one kind switch: the run setup of `config.model.kind` (model_kinds.RUN_SETUPS names them)."""
    return run_setup(model_kind(config.model))(config)


def run_training(
    config: RunConfig,
    out_dir: Path | str,
    *,
    resume: bool = False,
    init_from: Path | str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train `config` into run folder `out_dir`; returns the final manifest.

    resume: continue from the newest good checkpoint in `out_dir` (a folder with no run yet just
    starts). init_from (our Transformer): a checkpoint folder of another run whose config agrees with this one
    up to that checkpoint's step; training continues from its full state as a resume would.
    A run that diverges (NaN/inf loss) returns its manifest with status `diverged`.
    out_dir: a new path or a run folder of replaylab's (replaylab.outputs); `overwrite` replaces one that holds
    another config. The folder is locked while the run trains: a second trainer is refused."""
    config.validate()
    kind = run_kind(config)
    if init_from is not None and not isinstance(kind, TransformerRun):
        raise ConfigError(
            "init_from continues a shared prefix of our Transformer's runs; a Hugging Face run "
            "starts from its pretrained model"
        )
    kind.check_inputs()  # before the model loads and the run folder exists; every rank checks
    out_dir = Path(out_dir)
    runtime.set_threads(config.train.threads)
    device = runtime.resolve_device(config.train.device)
    dist = ddp.setup(device.type)
    if device.type == "cuda" and dist.active:
        device = torch.device("cuda", dist.local_rank)
    try:
        with runtime.deterministic_run(device, config.train.deterministic), ExitStack() as held:
            return _run(kind, out_dir, resume, init_from, overwrite, device, dist, held)
    finally:
        ddp.teardown(dist)


def _run(
    kind,
    out_dir: Path,
    resume: bool,
    init_from,
    overwrite: bool,
    device: torch.device,
    dist: ddp.DistInfo,
    held: ExitStack,
) -> dict[str, Any]:
    config = kind.resolve()
    folder = RunFolder(
        out_dir,
        config,
        resume=resume,
        overwrite=overwrite,
        dist=dist,
        device=device,
        held=held,
        resume_hint=f"replaylab {kind.command} --resume {out_dir}",
    )
    existing = folder.prepare()
    # Every rank reads the folder before rank 0 writes to it: a slower rank would otherwise find rank
    # 0's fresh manifest and take it for an earlier run (seen in CI: "already holds this run").
    ddp.barrier(dist)
    if existing is not None and existing.get("status") == "done":
        return existing  # nothing left to do: same config, already finished
    stores = kind.open_stores()
    if existing is not None:
        check_resumed_data(config, existing, stores, kind.tokenizer, out_dir)
    laid = kind.layout(stores, dist)  # the run as the Trainer walks it (a fine-tuning plan: its stage)
    sampler = MixtureSampler(laid, stores)
    eval_sets = build_eval_sets(laid, stores)
    rows = ddp.shard_rows(laid.train.batch_size, laid.train.micro_batch_size or laid.train.batch_size, dist)
    dtype = runtime.resolve_precision(config.train.precision, device)
    module, step, source = kind.build(
        laid,
        sampler,
        rows=rows,
        device=device,
        dtype=dtype,
        dist=dist,
        existing=existing,
        resume=resume,
        init_from=init_from,
        out_dir=out_dir,
    )

    # The run folder: config, manifest (a resumed run's record kept and brought up to date), metrics cut back
    # to the starting step.
    meta, fields = kind.manifest_fields(sampler, module)
    manifest = {
        **(existing or {}),
        **new_manifest(
            config_hash=run_id(config),
            name=config.name,
            seed=config.seed,
            meta=meta,
            store_identities={n: s.identity for n, s in stores.items()},
            tokenizer_hash=kind.tokenizer.hash,
            extra={
                **fields,
                **instruction_summary(stores, config.data.seq_len),  # loss policy per domain, packing counts
                "world_size": dist.world_size,
                "steps_done": step,
                "error": None,
            },
        ),
    }
    finished = folder.create(manifest, existing)
    if finished is not None:
        return finished
    prefix = prefix_records(config, read_metrics(source.parent.parent)) if source is not None else None
    if dist.is_main and (existing is not None or prefix is not None):
        truncate_metrics(out_dir, step if step > 0 else -1, prefix)  # what the interrupted attempt logged after it
    ddp.barrier(dist)
    # A branch point at this run's own stage end, where the carrier did not evaluate: evaluate there.
    eval_at_start = prefix is not None and not any(r["type"] == "eval" and r["step"] == step for r in prefix)

    with Trainer(
        config=laid,
        module=module,
        sampler=sampler,
        eval_sets=eval_sets,
        folder=folder,
        start=step,
        rows=rows,
        logger_config=laid,
        eval_at_start=eval_at_start,
        checkpoint_at_end=kind.checkpoint_at_end,
        divergence_hint=kind.divergence_hint,
        callbacks=kind.callbacks(),
    ) as trainer:
        final = trainer.fit()
        if final is None:  # diverged: the manifest says so
            return folder.manifest or {"status": "diverged", "steps_done": trainer.step}
        trainer.finish(final=final)
    ddp.barrier(dist)
    return (
        folder.manifest
        if folder.manifest is not None
        else {"status": "done", "final": final, "steps_done": trainer.step}
    )
