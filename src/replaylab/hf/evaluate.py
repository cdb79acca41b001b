"""Evaluation of a fine-tuned causal LM: held-out loss per pool (target = what we tune for, replay =
forgetting of the generic domain) and multiple-choice accuracy scored by log-likelihood.

Held-out sets and their scoring are the engine's (`replaylab.train.evaluate`): each pool's first
validation sequences, split into a `val` half (select LR / rho) and a `test` half (report).

Multiple-choice tasks are local jsonl files, one item per line:
    {"context": "Zein da Euskal Herriko hiriburua?", "choices": [" Gasteiz", " Madril"], "answer": 0}
Each choice is appended verbatim to the context (put the separating space in the choice); its score
is the summed log-probability of its tokens. `acc` picks the highest sum, `acc_norm` the highest sum
per UTF-8 byte of the choice, so longer answers are not penalized (lm-eval-harness's `acc_norm`
divides by characters instead: the two agree on ASCII text).

lm-evaluation-harness tasks (`run_lm_eval`) run on the same in-memory model: its built-in tasks, the
example tasks shipped in `lm_eval_tasks/` and a user's folder of task YAMLs (`eval.lm_eval_include`).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from replaylab.errors import ConfigError, DataError, one_line
from replaylab.runtime import autocast
from replaylab.train.evaluate import EvalSet, evaluate


def lm_logits(model, x: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) of a Hugging Face causal LM for tokens x (B, T), without a KV cache."""
    return model(input_ids=x, use_cache=False).logits


def evaluate_losses(
    model, sets: list[EvalSet], *, batch_size: int, device: torch.device, dtype
) -> dict[str, dict[str, float]]:
    """{pool: {val_loss, test_loss, val_bpb, test_bpb}}: the engine's held-out evaluation
    (`replaylab.train.evaluate.evaluate`) of a Hugging Face model; its train/eval mode is restored."""
    return evaluate(
        model,
        sets,
        batch_size=batch_size,
        device=device,
        autocast_dtype=dtype,
        forward=functools.partial(lm_logits, model),
        # instruction rows: padding-free positions, so attention stays inside each example
        forward_rows=lambda x, p, s: model(input_ids=x, position_ids=p, use_cache=False).logits,
    )


def load_mc_task(path: str | Path, max_items: int | None = None) -> list[dict]:
    """Items of a multiple-choice jsonl file, checked: a context, >= 2 choices, a valid answer index."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"multiple-choice task file {str(path)!r} does not exist; give a .jsonl path")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        ok = (
            isinstance(item, dict)
            and isinstance(item.get("context"), str)
            and isinstance(item.get("choices"), list)
            and len(item["choices"]) >= 2
            and all(isinstance(c, str) and c for c in item["choices"])
            and isinstance(item.get("answer"), int)
            and 0 <= item["answer"] < len(item["choices"])
        )
        if not ok:
            raise DataError(
                f'{path}:{n}: a multiple-choice item needs {{"context": str, "choices": [>= 2 non-empty '
                'str], "answer": index into choices}}'
            )
        items.append(item)
        if max_items is not None and len(items) >= max_items:
            break
    if not items:
        raise DataError(f"multiple-choice task file {str(path)!r} holds no items")
    return items


@torch.no_grad()
def score_mc(
    model,
    tokenizer,
    items: list[dict],
    *,
    device: torch.device,
    dtype,
    max_len: int | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """{"acc", "acc_norm", "n"} of `items` (see load_mc_task). `tokenizer`: a data-layer Tokenizer
    (no special tokens added). Contexts are cut from the left to fit `max_len` tokens. `forward`: tokens
    (B, T) -> logits (B, T, V); default a Hugging Face causal LM's (`lm_logits`), our Transformer is its own."""
    forward = forward or functools.partial(lm_logits, model)
    was_training = model.training
    model.eval()
    correct = correct_norm = 0
    try:
        for item in items:
            ctx = tokenizer.encode(item["context"])
            scores, norms = [], []
            rows, spans = [], []
            for choice in item["choices"]:
                cont = tokenizer.encode(choice)
                ids = ctx + cont
                if max_len is not None and len(ids) > max_len:
                    ids = ids[len(ids) - max_len :]
                rows.append(ids)
                spans.append(len(cont))
            width = max(len(r) for r in rows)
            x = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                x[i, : len(r)] = torch.tensor(r)  # right padding: causal attention never looks at it
            with autocast(device, dtype):
                logp = torch.log_softmax(forward(x.to(device)).float(), dim=-1)  # (C, W, V)
            for i, (r, k) in enumerate(zip(rows, spans)):
                # Tokens r[-k:] are predicted by positions len(r)-k-1 .. len(r)-2.
                pos = torch.arange(len(r) - k - 1, len(r) - 1, device=logp.device)
                tgt = torch.tensor(r[-k:], device=logp.device)
                s = float(logp[i, pos, tgt].double().sum())
                scores.append(s)
                norms.append(s / len(item["choices"][i].encode("utf-8")))
            correct += int(np.argmax(scores) == item["answer"])
            correct_norm += int(np.argmax(norms) == item["answer"])
    finally:
        model.train(was_training)
    n = len(items)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": n}


# lm-evaluation-harness ---------------------------------------------------------------------------

LM_EVAL_TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"  # example tasks shipped with replaylab, always searched
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _import_lm_eval(tasks: list[str]) -> None:
    try:
        importlib.import_module("lm_eval")
    except ImportError:
        raise ConfigError(
            f"eval.lm_eval_tasks {list(tasks)} needs lm-evaluation-harness: `pip install lm-eval` "
            "(or `pip install 'replaylab[eval]'`); or score local jsonl files with eval.mc_tasks"
        ) from None


@contextlib.contextmanager
def _hub_offline():
    """Hugging Face downloads off while lm-eval loads data, unless the user's environment sets an
    offline variable itself (HF_DATASETS_OFFLINE=0 allows downloads). Without this a hub task on an
    offline machine retries its downloads instead of failing. `datasets` and `huggingface_hub` read
    the variables at import time, so their module constants are switched too; all is restored after.
    Yields whether downloads are off."""
    import datasets.config
    import huggingface_hub.constants as hub

    if any(v in os.environ for v in _OFFLINE_VARS):
        yield bool(datasets.config.HF_HUB_OFFLINE)
        return
    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE)
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE = saved
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ.pop(v, None)


@functools.lru_cache(maxsize=4)
def _task_manager(folders: tuple[str, ...], defaults: bool):
    """lm-eval's task index over `folders` (+ its ~15k built-in tasks when `defaults`: indexing those
    takes 10-30 s on a small CPU, so it is built once per process and only when a name needs it)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(folders), include_defaults=defaults)


def _is_task_file(name: str) -> bool:
    return Path(name).suffix in (".yaml", ".yml") and Path(name).is_file()


def _load_tasks(tasks: list[str], include: str | None, offline: bool):
    """(TaskManager, [Task | Group]) for `tasks`, data loaded; unknown names and unloadable data
    raise a one-line ConfigError."""
    folders = [str(LM_EVAL_TASKS_DIR)]
    if include is not None:
        _check_include(include)
        folders.append(str(Path(include).resolve()))
    manager = _task_manager(tuple(folders), False)
    if not all(n in manager.all_tasks or _is_task_file(n) for n in tasks):
        manager = _task_manager(tuple(folders), True)
    for name in tasks:
        if name not in manager.all_tasks and not _is_task_file(name):
            import lm_eval.tasks

            close = difflib.get_close_matches(name, manager.all_tasks, n=3)
            where = ", ".join([str(Path(lm_eval.tasks.__file__).parent) + " (lm-eval's own)", *folders])
            raise ConfigError(
                f"lm-eval task {name!r} is unknown"
                + (f" (did you mean {', '.join(close)}?)" if close else "")
                + f"; looked in {where}; list tasks with `lm-eval ls tasks` or add its YAML to --lm-eval-include DIR"
            )
    loaded = []
    for name in tasks:
        try:
            try:
                got = manager.load([name])
            except KeyError:
                # A local group naming one of lm-eval's own tasks needs the full index.
                manager = _task_manager(tuple(folders), True)
                got = manager.load([name])
        except KeyError as e:  # a group or tag naming a task that exists nowhere
            raise ConfigError(f"lm-eval task {name!r} could not be built: {e}") from None
        except OSError as e:  # ConnectionError (offline hub), FileNotFoundError (missing data files)
            reason = one_line(e)
            hint = (
                "; downloads are off while evaluating: put the dataset in the Hugging Face cache first, set "
                "HF_DATASETS_OFFLINE=0 to let lm-eval download it, or use a local task (--lm-eval-include DIR)"
                if offline
                else ""
            )
            raise ConfigError(f"lm-eval task {name!r}: its data could not be loaded ({reason}){hint}") from None
        loaded.extend([got["groups"][name]] if name in got.get("groups", {}) else got["tasks"].values())
    return manager, loaded


def _check_include(include: str) -> None:
    if not Path(include).is_dir():
        raise ConfigError(f"eval.lm_eval_include {include!r} is not a folder; give a folder of lm-eval task YAML files")


def check_lm_eval(tasks: list[str], include: str | None = None) -> None:
    """Fail fast, before training: the include folder (a mistake in the command comes first), lm-eval
    installed, every task known and its data loadable."""
    if include is not None:
        _check_include(include)
    _import_lm_eval(tasks)
    with _hub_offline() as offline:
        _load_tasks(list(tasks), include, offline)


def run_lm_eval(
    model, hf_tokenizer, tasks: list[str], *, batch_size: int, include: str | None = None
) -> dict[str, dict]:
    """lm-evaluation-harness tasks on the in-memory model: {task: {acc, acc_stderr, acc_norm,
    acc_norm_stderr, n}} (the metrics each task defines; `,none` filter suffixes dropped).
    `include`: a folder of extra task YAMLs, e.g. a local jsonl as `dataset_path: json` +
    `dataset_kwargs: {data_files: {test: /abs/path.jsonl}}`. The model's train/eval mode is restored."""
    _import_lm_eval(tasks)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    try:
        with _hub_offline() as offline:
            manager, loaded = _load_tasks(list(tasks), include, offline)
            lm = HFLM(pretrained=model, tokenizer=hf_tokenizer, batch_size=batch_size)
            # No global seeding: the caller's python/numpy/torch RNG streams are left as they were.
            results = simple_evaluate(
                model=lm,
                tasks=loaded,
                task_manager=manager,
                log_samples=False,
                random_seed=None,
                numpy_random_seed=None,
                torch_random_seed=None,
            )
    finally:
        model.train(was_training)
    out: dict[str, dict] = {}
    for task, metrics in results["results"].items():
        rec = {}
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metric, _, filt = key.partition(",")
                rec[metric if filt in ("", "none") else f"{metric},{filt}"] = float(value)
        rec.pop("sample_len", None)
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        if n is not None:
            rec["n"] = int(n)
        out[task] = rec
    return out
