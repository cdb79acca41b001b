"""Evaluation of a fine-tuned causal LM: held-out loss per pool (target = what we tune for, replay =
forgetting of the generic domain) and multiple-choice accuracy scored by log-likelihood.

Held-out sets are the engine's (`replaylab.train.evaluate.build_eval_sets`): each pool's first
validation sequences, split into a `val` half (select LR / rho) and a `test` half (report).

Multiple-choice tasks are local jsonl files, one item per line:
    {"context": "Zein da Euskal Herriko hiriburua?", "choices": [" Gasteiz", " Madril"], "answer": 0}
Each choice is appended verbatim to the context (put the separating space in the choice); its score
is the summed log-probability of its tokens. `acc` picks the highest sum, `acc_norm` the highest sum
per UTF-8 byte of the choice (lm-eval-harness's convention), so longer answers are not penalized.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from replaylab.errors import ConfigError, DataError
from replaylab.runtime import autocast
from replaylab.train.evaluate import EvalSet


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x, use_cache=False).logits


@torch.no_grad()
def mean_loss(model, seqs: np.ndarray, *, batch_size: int, device: torch.device, dtype) -> float:
    """Mean next-token cross-entropy (nats) over every token of `seqs` [n, seq_len + 1]."""
    total, count = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        batch = torch.from_numpy(seqs[i : i + batch_size]).to(device)
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T) each
        with autocast(device, dtype):
            logits = _logits(model, x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        total += float(loss.double())
        count += y.numel()
    return total / count


def evaluate_losses(model, sets: list[EvalSet], *, batch_size: int, device: torch.device,
                    dtype) -> dict[str, dict[str, float]]:
    """{pool: {val_loss, test_loss, val_bpb, test_bpb}}; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    out = {}
    try:
        for s in sets:
            rec = {}
            for half, seqs in (("val", s.val), ("test", s.test)):
                loss = mean_loss(model, seqs, batch_size=batch_size, device=device, dtype=dtype)
                rec[f"{half}_loss"] = loss
                rec[f"{half}_bpb"] = loss / math.log(2) / s.bytes_per_token
            out[s.domain] = rec
    finally:
        model.train(was_training)
    return out


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
        ok = (isinstance(item, dict) and isinstance(item.get("context"), str)
              and isinstance(item.get("choices"), list) and len(item["choices"]) >= 2
              and all(isinstance(c, str) and c for c in item["choices"])
              and isinstance(item.get("answer"), int) and 0 <= item["answer"] < len(item["choices"]))
        if not ok:
            raise DataError(f"{path}:{n}: a multiple-choice item needs {{\"context\": str, \"choices\": [>= 2 non-empty "
                            "str], \"answer\": index into choices}}")
        items.append(item)
        if max_items is not None and len(items) >= max_items:
            break
    if not items:
        raise DataError(f"multiple-choice task file {str(path)!r} holds no items")
    return items


@torch.no_grad()
def score_mc(model, tokenizer, items: list[dict], *, device: torch.device, dtype,
             max_len: int | None = None) -> dict[str, float]:
    """{"acc", "acc_norm", "n"} of `items` (see load_mc_task). `tokenizer`: a data-layer Tokenizer
    (no special tokens added). Contexts are cut from the left to fit `max_len` tokens."""
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
                    ids = ids[len(ids) - max_len:]
                rows.append(ids)
                spans.append(len(cont))
            width = max(len(r) for r in rows)
            x = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                x[i, : len(r)] = torch.tensor(r)  # right padding: causal attention never looks at it
            with autocast(device, dtype):
                logp = torch.log_softmax(_logits(model, x.to(device)).float(), dim=-1)  # (C, W, V)
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


def run_lm_eval(model, hf_tokenizer, tasks: list[str], *, batch_size: int) -> dict[str, dict]:
    """lm-evaluation-harness tasks on the in-memory model (needs `pip install lm-eval` and its data)."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise ConfigError(
            f"eval.lm_eval_tasks {tasks} needs lm-evaluation-harness: `pip install lm-eval` (its datasets must also "
            "be reachable); or score local jsonl files with eval.mc_tasks"
        ) from None
    lm = HFLM(pretrained=model, tokenizer=hf_tokenizer, batch_size=batch_size)
    results = simple_evaluate(model=lm, tasks=list(tasks))
    return {k: {m: v for m, v in r.items() if isinstance(v, (int, float))} for k, r in results["results"].items()}
