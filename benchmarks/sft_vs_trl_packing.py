"""ReplayMixture on an instruction target vs TRL's SFTTrainer packing over `interleave_datasets`: what reaches the
gradient in each optimizer step.

    .venv/bin/python benchmarks/sft_vs_trl_packing.py [--replay-fraction 0.25] [--seq-len 255] [--batch 8]

Data (examples/_common.py): the pydoc topics as prompt/completion records (the target) and Python standard-library
sources (generic text, the replay), the examples' vocab-512 BPE and tiny random Llama.

- ReplayMixture(format="prompt_completion", loss_weights=True, rows="global"): its global batches, as the examples
  train them (`replay_loss`).
- TRL: the usual recipe. Replay texts become {"prompt": "", "completion": text} (so both datasets share features and
  replay keeps full loss), `interleave_datasets([target, replay], probabilities=[1 - R, R], seed=0)` over `epochs`
  passes of the target, SFTConfig(packing=True, max_length=seq_len + 1, completion_only_loss by default), the
  batches of `trainer.get_train_dataloader()` for ReplayMixture's number of steps. TRL's loss is the mean over the
  step's loss tokens, so a source's gradient weight is its share of the loss tokens.

Each packed example is classified by its tokens (a target example starts with the target's prompt), never by
asking either pipeline. Cross-example attention: the largest logit difference between an example inside a packed
row (run as the trainer runs it) and the same example alone. Prints a Markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each example in a packed row: its positions restart at 0."""
    starts = (position_ids == 0).nonzero().flatten().tolist() + [len(position_ids)]
    return list(zip(starts[:-1], starts[1:]))


def cross_attention(model, ids: torch.Tensor, pos: torch.Tensor) -> float:
    """Largest |logit| difference between each example in a packed row and the example alone (0: none attends)."""
    with torch.no_grad():
        packed = model(input_ids=ids[None], position_ids=pos[None], use_cache=False).logits[0]
        worst = 0.0
        for a, b in segments(pos):
            if b - a < 2 or a == 0:
                continue
            alone = model(input_ids=ids[None, a:b], use_cache=False).logits[0]
            worst = max(worst, float((packed[a:b] - alone).abs().max()))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--replay-fraction", type=float, default=0.25)
    p.add_argument("--seq-len", type=int, default=255)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--epochs", type=float, default=4.0)
    a = p.parse_args()
    import os

    os.environ.setdefault("REPLAYLAB_HOME", tempfile.mkdtemp(prefix="sft_vs_trl."))
    torch.set_num_threads(1)
    import datasets
    from _common import instruction_records, stdlib_texts, tiny_world
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from replaylab import ReplayMixture

    world = tiny_world(os.path.join(os.environ["REPLAYLAB_HOME"], "examples"))
    tok = AutoTokenizer.from_pretrained(world["model"])
    model = AutoModelForCausalLM.from_pretrained(world["model"]).eval()
    replay_texts = stdlib_texts(target_bytes=3_000_000)[0]  # enough that interleave's replay does not run out
    records, R, width = instruction_records(), a.replay_fraction, a.seq_len + 1

    def is_target(ids) -> bool:  # a target example starts with its question
        return tok.decode(list(ids[:16])).startswith("Explain the Python topic")

    # ---- ReplayMixture ----
    mix = ReplayMixture(
        records,
        replay_texts,
        tokenizer=world["model"],
        format="prompt_completion",
        replay_fraction=R,
        epochs=a.epochs,
        seq_len=a.seq_len,
        batch_size=a.batch,
        rows="global",
        loss_weights=True,
    )
    rows = list(mix)
    ours = {"steps": mix.num_steps, "replay_loss_token_share": [], "replay_weight": [], "replay_rows": []}
    for s in range(mix.num_steps):
        batch = rows[s * a.batch : (s + 1) * a.batch]
        replay = [not is_target(r["input_ids"].tolist()) for r in batch]
        loss = [int((r["labels"] != -100).sum()) for r in batch]
        w = [float(r["loss_weights"].sum()) for r in batch]
        ours["replay_rows"].append(sum(replay) / a.batch)
        ours["replay_loss_token_share"].append(sum(n for n, x in zip(loss, replay) if x) / sum(loss))
        ours["replay_weight"].append(sum(v for v, x in zip(w, replay) if x) / sum(w))
    summary = mix.stores["target"].summary("train", a.seq_len)
    ours["target_examples_cut"] = f"{summary['truncated_examples']} of {summary['examples']}"
    ours["replay_documents_cut"] = "0 (text rows continue the stream: no token is dropped)"
    multi = next(r for r in rows if len(segments(r["position_ids"])) > 1)
    ours["cross_attention"] = cross_attention(model, multi["input_ids"], multi["position_ids"])

    # ---- TRL: interleave_datasets + SFTTrainer packing ----
    target = datasets.concatenate_datasets([datasets.Dataset.from_list(records)] * int(a.epochs))
    replay = datasets.Dataset.from_list([{"prompt": "", "completion": t} for t in replay_texts])
    mixed = datasets.interleave_datasets(
        [target.shuffle(seed=0), replay.shuffle(seed=0)], probabilities=[1 - R, R], seed=0
    )
    args = SFTConfig(
        tempfile.mkdtemp(),
        packing=True,
        max_length=width,
        per_device_train_batch_size=a.batch,
        max_steps=mix.num_steps,
        report_to=[],
        use_cpu=True,
        bf16=False,
        dataloader_drop_last=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=mixed, processing_class=tok)
    unpacked = SFTTrainer(
        model=model,
        args=SFTConfig(tempfile.mkdtemp(), max_length=None, report_to=[], use_cpu=True, bf16=False),
        train_dataset=mixed,
        processing_class=tok,
    ).train_dataset
    lengths = np.array([len(x) for x in unpacked["input_ids"]])
    kinds = np.array([is_target(x) for x in unpacked["input_ids"]])
    trl_side = {"steps": 0, "replay_loss_token_share": [], "replay_weight": [], "replay_rows": []}
    for step, batch in enumerate(trainer.get_train_dataloader()):
        if step == mix.num_steps:
            break
        ids, labels, pos = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
        loss = {True: 0, False: 0}
        examples = {True: 0, False: 0}
        for a0, b0 in segments(pos):
            t = is_target(ids[a0:b0].tolist())
            loss[t] += int((labels[a0:b0] != -100).sum())
            examples[t] += 1
        share = loss[False] / (loss[True] + loss[False])
        trl_side["steps"] += 1
        trl_side["replay_loss_token_share"].append(share)
        trl_side["replay_weight"].append(share)  # mean over the step's loss tokens: weight = loss-token share
        trl_side["replay_rows"].append(examples[False] / (examples[True] + examples[False]))
        if "cross_attention" not in trl_side and len(segments(pos)) > 1:
            trl_side["cross_attention"] = cross_attention(model, ids, pos)
    trl_side["target_examples_cut"] = f"{int(((lengths > width) & kinds).sum())} of {int(kinds.sum())}"
    cut = (lengths > width) & ~kinds
    dropped = int((lengths[cut] - width).sum())
    trl_side["replay_documents_cut"] = f"{int(cut.sum())} of {int((~kinds).sum())} ({dropped:,} tokens dropped)"

    def span(v):
        return f"{min(v):.3f} / {np.mean(v):.3f} / {max(v):.3f}"

    print(f"R = {R}, rows of {width} tokens, batch {a.batch}, {mix.num_steps} steps\n")
    header = [
        "",
        "steps",
        "replay share of rows (ours) / examples (TRL) per step, min / mean / max",
        "replay share of loss tokens per step",
        "replay gradient weight per step",
        "target examples cut",
        "replay documents cut",
        "cross-example attention (max logit diff)",
    ]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, d in (
        ("ReplayMixture (loss_weights, replay_loss)", ours),
        ("TRL packing + interleave_datasets", trl_side),
    ):
        cells = [name, d["steps"], span(d["replay_rows"]), span(d["replay_loss_token_share"])]
        cells += [span(d["replay_weight"]), d["target_examples_cut"], d["replay_documents_cut"]]
        print("| " + " | ".join(map(str, cells)) + f" | {d['cross_attention']:.2g} |")
    deviation = max(abs(w - R) for w in ours["replay_weight"])
    print(f"\nReplayMixture: replay's gradient weight differs from R by at most {deviation:.1e} in any step")
    print(json.dumps({"ours": ours, "trl": trl_side}, default=float))


if __name__ == "__main__":
    main()
