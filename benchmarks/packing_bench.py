"""What per-document packing costs against today's stream packing (docs/integrations.md, "Instruction data").

Three measurements on one instruction corpus (the Python reference topics as question/answer records, tokenized
with a byte-level BPE trained on them) and pydoc prose as replay:
1. the data path: ReplayMixture examples per second, text target (stream rows) vs instruction target (per-document
   rows with labels, positions and loss weights);
2. what a row holds: loss tokens, padding and truncated examples per packing (stream, documents, padded);
3. the train step (forward + backward) of our model and of a Hugging Face Llama at the same shape: causal
   attention over stream rows vs the document mask (ours) / padding-free position_ids (HF), timed round-robin
   after warm-up, median of the rounds.

Run: PYTHONPATH=src python benchmarks/packing_bench.py [--seq-len 256] [--batch 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def corpora(folder: Path) -> tuple[Path, Path, Path, str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import write_prose_corpus
    from instruction_fixtures import write_prompt_completion

    from replaylab.data.tokenizer import train_tokenizer

    pc = write_prompt_completion(folder / "pc.jsonl")
    text = folder / "pc_text.jsonl"
    import json

    with open(pc) as f, open(text, "w") as g:  # the same records joined into text: today's way
        for line in f:
            r = json.loads(line)
            g.write(json.dumps({"text": r["prompt"] + r["completion"]}) + "\n")
    prose = write_prose_corpus(folder / "prose.jsonl")
    tok = folder / "tok"
    train_tokenizer([str(text), str(prose)], vocab_size=2048, out=tok, sample_bytes=1_000_000)
    return pc, text, prose, str(tok)


def data_path(pc, text, prose, tok, seq_len, batch) -> None:
    from replaylab import ReplayMixture

    common = dict(
        replay_fraction=0.5,
        seq_len=seq_len,
        batch_size=batch,
        tokenizer=tok,
        epochs=4,
        options={"val_docs": 8},
        replay_options={"val_docs": 8},
    )
    for name, mix in (
        ("text target (stream rows)", ReplayMixture(str(text), str(prose), **common)),
        (
            "instructions, packed per document",
            ReplayMixture(str(pc), str(prose), format="prompt_completion", loss_weights=True, **common),
        ),
        (
            "instructions, one example per row",
            ReplayMixture(
                str(pc), str(prose), format="prompt_completion", packing="padded", loss_weights=True, **common
            ),
        ),
    ):
        t = time.perf_counter()
        n = sum(1 for _ in mix)
        dt = time.perf_counter() - t
        target = mix.stores["target"]
        line = f"  {name:<36} {n / dt:>9,.0f} examples/s ({n} examples, {mix.num_steps} steps)"
        if hasattr(target, "summary"):
            s = target.summary("train", seq_len)
            shares = [mix.step_shares(k) for k in range(mix.num_steps)]
            lt = statistics.mean(x["replay"]["loss_tokens"] for x in shares)
            width = s["rows"] * (seq_len + 1)
            line += (
                f"; {s['examples']} examples in {s['rows']} rows, {s['truncated_examples']} truncated, "
                f"padding {s['padding_tokens'] / width:.1%}, loss-token share of replay {lt:.3f} (weight 0.5)"
            )
        print(line)


def step_time(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def train_steps(pc, prose, tok, seq_len, batch, rounds) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from replaylab import ReplayMixture
    from replaylab.config import from_dict
    from replaylab.model import Transformer
    from replaylab.runconfig import ModelConfig

    mix = ReplayMixture(
        str(pc),
        str(prose),
        format="prompt_completion",
        replay_fraction=0.0,
        seq_len=seq_len,
        batch_size=batch,
        tokenizer=tok,
        options={"val_docs": 8},
    )
    rows = [ex for _, ex in zip(range(batch), mix)]
    ids = torch.stack([e["input_ids"] for e in rows])
    pos = torch.stack([e["position_ids"] for e in rows])
    seg = torch.from_numpy(np.cumsum((pos.numpy() == 0), axis=1))
    vocab = 2048
    cfg = from_dict(
        ModelConfig, dict(d_model=256, n_layers=4, n_heads=4, d_ff=768, vocab_size=vocab, max_seq_len=seq_len + 1)
    )
    torch.manual_seed(0)
    ours = Transformer(cfg)
    hf = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=seq_len + 1,
            use_cache=False,
            attn_implementation="sdpa",
        )
    )
    x = ids[:, :-1]
    p, s = pos[:, :-1], seg[:, :-1]

    def run(f):
        def go():
            f().float().logsumexp(-1).mean().backward()

        return go

    contenders = {
        "ours, stream (is_causal)": run(lambda: ours(x)),
        "ours, document mask": run(lambda: ours(x, p, s)),
        "HF Llama sdpa, stream (attention_mask ones)": run(
            lambda: hf(input_ids=x, attention_mask=torch.ones_like(x)).logits
        ),
        "HF Llama sdpa, padding-free position_ids": run(lambda: hf(input_ids=x, position_ids=p).logits),
    }
    for f in contenders.values():
        f()  # warm-up
    results = {k: [] for k in contenders}
    for _ in range(rounds):
        for k, f in contenders.items():
            results[k].append(step_time(f, 1))
    tokens = x.numel()
    for k, v in results.items():
        med = statistics.median(v)
        print(f"  {k:<46} {med * 1000:8.1f} ms/step  {tokens / med:>9,.0f} tokens/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["REPLAYLAB_HOME"] = str(Path(tmp) / "home")
        pc, text, prose, tok = corpora(Path(tmp))
        print(f"data path (seq_len {args.seq_len}, batch {args.batch}):")
        data_path(pc, text, prose, tok, args.seq_len, args.batch)
        print(
            f"train step, forward + backward, {args.batch} x {args.seq_len} tokens, {torch.get_num_threads()} threads:"
        )
        train_steps(pc, prose, tok, args.seq_len, args.batch, args.rounds)


if __name__ == "__main__":
    main()
