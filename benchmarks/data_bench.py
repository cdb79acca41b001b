"""Data-layer benchmark: tokenization throughput of a store build, and random sequence sampling.

    .venv/bin/python benchmarks/data_bench.py [--mb 8] [--vocab 4096] [--seq-len 256] [--batch 16]

Corpus: Python standard-library sources of the running interpreter (one file = one document), up to
--mb MB. Reports (1) BPE training time on a 2 MB sample, (2) store build MB/s and tokens/s (streaming
tokenization on all cores + writing the memmap), (3) sampling: random batches of sequences gathered
from the train memmap with one vectorized gather (sequences/s, tokens/s). Runs in a scratch
REPLAYLAB_HOME; prints one JSON line at the end for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np


def write_corpus(path: Path, max_bytes: int) -> int:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    taken = 0
    with open(path, "w", encoding="utf-8") as f:
        for p in sorted(stdlib.rglob("*.py")):
            if "site-packages" in p.parts:
                continue
            text = p.read_text(encoding="utf-8", errors="replace")
            f.write(json.dumps({"text": text}) + "\n")
            taken += len(text.encode())
            if taken >= max_bytes:
                break
    return taken


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=8.0, help="corpus size in MB")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16, help="sequences per sampled batch")
    ap.add_argument("--seconds", type=float, default=3.0, help="how long to sample")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="replaylab-bench-") as tmp:
        tmp = Path(tmp)
        os.environ["REPLAYLAB_HOME"] = str(tmp / "home")
        from replaylab.data.store import get_store
        from replaylab.data.tokenizer import train_tokenizer

        corpus = tmp / "code.jsonl"
        nbytes = write_corpus(corpus, int(args.mb * 1e6))

        t0 = time.perf_counter()
        tok = train_tokenizer([str(corpus)], vocab_size=args.vocab, out=tmp / "tok", sample_bytes=2_000_000)
        train_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        store = get_store(str(corpus), tokenizer=str(tok.path))
        build_s = time.perf_counter() - t0
        tokens = store.meta["tokens"]

        # Sampling: the training loop's access pattern (random sequences, one vectorized gather per batch).
        n = store.num_sequences("train", args.seq_len)
        rng = np.random.default_rng(0)
        sampling = {}
        for batch in sorted({args.batch, 256}):
            batches = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                store.sequences("train", args.seq_len, rng.integers(0, n, size=batch))
                batches += 1
            sampling[batch] = batches * batch / (time.perf_counter() - t0)
        seqs_per_s = sampling[args.batch]

        result = {
            "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
            "date": time.strftime("%Y-%m-%d"),
            "corpus_mb": round(nbytes / 1e6, 2),
            "vocab": args.vocab,
            "bpe_train_s_2mb": round(train_s, 2),
            "build_s": round(build_s, 2),
            "tokenize_mb_per_s": round(nbytes / 1e6 / build_s, 2),
            "tokenize_tokens_per_s": round(tokens / build_s),
            "bytes_per_token": round(store.bytes_per_token("train"), 3),
            "sample_batch": args.batch,
            "sample_seqs_per_s": round(seqs_per_s),
            "sample_tokens_per_s": round(seqs_per_s * (args.seq_len + 1)),
            "sample_seqs_per_s_batch256": round(sampling[256]),
        }
        print(f"BPE training (vocab {args.vocab}, 2 MB sample): {train_s:.2f} s")
        print(
            f"store build: {nbytes / 1e6:.1f} MB -> {tokens:,} tokens in {build_s:.2f} s = "
            f"{result['tokenize_mb_per_s']} MB/s, {result['tokenize_tokens_per_s']:,} tokens/s"
        )
        for batch, rate in sampling.items():
            print(
                f"sampling: {rate:,.0f} sequences/s = {rate * (args.seq_len + 1):,.0f} tokens/s "
                f"(batches of {batch} x {args.seq_len + 1})"
            )
        print(json.dumps(result))


if __name__ == "__main__":
    main()
