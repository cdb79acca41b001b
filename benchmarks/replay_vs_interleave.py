"""ReplayMixture vs `datasets.interleave_datasets(probabilities=...)`: realized replay share of every global batch
and target exposure, measured on the same packed sequences.

    .venv/bin/python benchmarks/replay_vs_interleave.py [--seq-len 64] [--batch 16] [--budget 256] [--epochs 2]

Data: the examples' small real text (examples/_common.py): Python standard-library sources as the target, the pydoc
topics as replay, a vocab-512 BPE trained on both; stores in a scratch REPLAYLAB_HOME. Both methods mix the same
sequences: the target budget (ReplayMixture's budget, `budget_indices`) and the replay store's train sequences.

- ReplayMixture(rows="global"): its stream, cut into global batches.
- interleave: the usual Hugging Face recipe for `epochs` passes over the target: the budget repeated `epochs` times
  (each pass shuffled), interleaved with the replay sequences at probabilities [1 - R, R] (stopping_strategy
  "first_exhausted", the default), trained for ReplayMixture's number of steps (what max_steps would be set to).
- interleave of documents: the same recipe on whole (unpacked) documents, whose token share is not R at all.

Every sequence is recognised by its tokens (target store or not), nothing is read back from either sampler.
Prints a Markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def batch_stats(is_replay: np.ndarray, batch: int, rho: float) -> dict:
    """is_replay: one bool per row of the stream, in order; only whole global batches count."""
    steps = len(is_replay) // batch
    per = is_replay[: steps * batch].reshape(steps, batch).mean(axis=1)
    return {
        "steps": steps,
        "share_min": float(per.min()),
        "share_max": float(per.max()),
        "share_std": float(per.std()),
        "exact": float(np.mean(np.isclose(per, rho))),
        "run_share": float(per.mean()),
    }


def exposure(rows: list[bytes], budget_rows: list[bytes], epochs: int) -> dict:
    counts = Counter(r for r in rows if r in set(budget_rows))
    seen = [counts.get(r, 0) for r in budget_rows]
    return {
        "target_draws": sum(seen),
        "planned": len(budget_rows) * epochs,
        "per_seq_min": min(seen),
        "per_seq_max": max(seen),
        "exactly_epochs": float(np.mean(np.asarray(seen) == epochs)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--budget", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rhos", default="0.1,0.5,0.75")
    p.add_argument("--seeds", type=int, default=5)
    a = p.parse_args()
    os.environ.setdefault("REPLAYLAB_HOME", tempfile.mkdtemp(prefix="replaylab-bench-"))
    import datasets
    from _common import tiny_world

    from replaylab import ReplayMixture

    datasets.disable_progress_bars()
    t0 = time.time()
    world = tiny_world(Path(os.environ["REPLAYLAB_HOME"]) / "world")
    L, B = a.seq_len, a.batch
    rows_out = []
    for rho in map(float, a.rhos.split(",")):
        for seed in range(a.seeds):
            mix = ReplayMixture(
                world["target"],
                world["replay"],
                tokenizer=world["model"],
                replay_fraction=rho,
                budget=a.budget,
                epochs=a.epochs,
                seq_len=L,
                batch_size=B,
                seed=seed,
                rows="global",
            )
            tstore, rstore = mix.stores["target"], mix.stores["replay"]
            targets = {s.tobytes() for s in tstore.sequences("train", L, np.arange(tstore.num_sequences("train", L)))}
            budget_seqs = tstore.sequences("train", L, tstore.budget_indices(L, a.budget, 0))
            budget_rows = [s.tobytes() for s in budget_seqs]
            # ReplayMixture: its stream
            stream = [ex["input_ids"].numpy().tobytes() for ex in mix]
            is_replay = np.array([r not in targets for r in stream])
            rows_out.append(
                {
                    "method": "ReplayMixture",
                    "rho": rho,
                    "seed": seed,
                    **batch_stats(is_replay, B, rho),
                    **exposure(stream, budget_rows, a.epochs),
                }
            )
            # interleave_datasets on the same packed sequences, trained for the same number of steps
            rng = np.random.default_rng(seed)
            passes = np.concatenate([budget_seqs[rng.permutation(a.budget)] for _ in range(a.epochs)])
            replay_seqs = rstore.sequences("train", L, rng.permutation(rstore.num_sequences("train", L)))
            mixed = datasets.interleave_datasets(
                [
                    datasets.Dataset.from_dict({"input_ids": passes.tolist()}),
                    datasets.Dataset.from_dict({"input_ids": replay_seqs.tolist()}),
                ],
                probabilities=[1 - rho, rho],
                seed=seed,
                stopping_strategy="first_exhausted",
            )
            ids = np.asarray(mixed["input_ids"], dtype=np.int64)
            stream = [s.tobytes() for s in ids[: mix.num_steps * B]]
            is_replay = np.array([r not in targets for r in stream])
            rows_out.append(
                {
                    "method": "interleave_datasets",
                    "rho": rho,
                    "seed": seed,
                    **batch_stats(is_replay, B, rho),
                    **exposure(stream, budget_rows, a.epochs),
                    "stream_steps": len(ids) // B,
                }
            )
            # interleave_datasets on whole documents: probabilities are per example, not per token
            tdocs, rdocs = np.diff(tstore.doc_offsets("train")), np.diff(rstore.doc_offsets("train"))
            docs = datasets.interleave_datasets(
                [
                    datasets.Dataset.from_dict({"n": tdocs.tolist(), "replay": [False] * len(tdocs)}),
                    datasets.Dataset.from_dict({"n": rdocs.tolist(), "replay": [True] * len(rdocs)}),
                ],
                probabilities=[1 - rho, rho],
                seed=seed,
                stopping_strategy="first_exhausted",
            )
            n, rep = np.asarray(docs["n"]), np.asarray(docs["replay"])
            rows_out.append(
                {
                    "method": "interleave (documents)",
                    "rho": rho,
                    "seed": seed,
                    "example_share": float(rep.mean()),
                    "token_share": float(n[rep].sum() / n.sum()),
                }
            )

    print(
        f"\n{platform.node()}, python {platform.python_version()}, datasets {datasets.__version__}; seq_len {L}, "
        f"batch {B}, budget {a.budget} target sequences x {a.epochs} epochs; {a.seeds} seeds; "
        f"{time.time() - t0:.0f} s\n"
    )
    print(
        "| R | method | steps trained | replay share per batch: min / max (std over batches, mean over seeds) | "
        "batches at exactly R | run share | target draws (planned) | passes per target sequence: min / max |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for rho in map(float, a.rhos.split(",")):
        for method in ("ReplayMixture", "interleave_datasets"):
            rs = [r for r in rows_out if r["rho"] == rho and r["method"] == method]
            draws = sorted({r["target_draws"] for r in rs})
            steps = sorted({r["steps"] for r in rs})
            print(
                f"| {rho:g} | {method} | {steps[0]}..{steps[-1]} | {min(r['share_min'] for r in rs):.4f} / "
                f"{max(r['share_max'] for r in rs):.4f} ({np.mean([r['share_std'] for r in rs]):.3f}) | "
                f"{np.mean([r['exact'] for r in rs]):.0%} | {min(r['run_share'] for r in rs):.4f}.."
                f"{max(r['run_share'] for r in rs):.4f} | {draws[0]}..{draws[-1]} ({rs[0]['planned']}) | "
                f"{min(r['per_seq_min'] for r in rs)} / {max(r['per_seq_max'] for r in rs)} |"
            )
    print("\n| R | interleave of documents: replay share of examples | replay share of tokens |")
    print("|---|---|---|")
    for rho in map(float, a.rhos.split(",")):
        rs = [r for r in rows_out if r["rho"] == rho and r["method"] == "interleave (documents)"]
        print(
            f"| {rho:g} | {min(r['example_share'] for r in rs):.3f}..{max(r['example_share'] for r in rs):.3f} | "
            f"{min(r['token_share'] for r in rs):.3f}..{max(r['token_share'] for r in rs):.3f} |"
        )
    print(
        json.dumps(
            {
                "bench": "replay_vs_interleave",
                "seq_len": L,
                "batch": B,
                "budget": a.budget,
                "epochs": a.epochs,
                "rows": rows_out,
            }
        )
    )


if __name__ == "__main__":
    main()
