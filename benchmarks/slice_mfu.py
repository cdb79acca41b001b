"""Step time and MFU of a `replaylab train` run from its metrics.jsonl (benchmarks/gpu_check.sh, part slice).

    python benchmarks/slice_mfu.py runs/slice/metrics.jsonl [--peak-tflops 989]

Prints the train and eval records, then the median tokens/s over steps 2 on (step 1 compiles) and the MFU
with benchmarks/throughput.py's count (6 per matmul weight + causal attention), from the run's own
config.yaml beside the metrics.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from throughput import flops_per_token  # benchmarks/ is on the path when this runs as a script

from replaylab.config import load_config
from replaylab.model import parameter_counts
from replaylab.runconfig import RunConfig


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("metrics", type=Path)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="peak bf16 TFLOP/s (H100/H200: 989)")
    args = p.parse_args(argv)
    rows = [json.loads(line) for line in args.metrics.read_text().splitlines() if line.strip()]
    for r in rows:
        if r.get("type") in ("train", "eval"):
            print({k: r[k] for k in ("type", "step", "loss", "val_loss", "tok_per_s", "domain") if k in r})
    rates = [r["tok_per_s"] for r in rows if r.get("type") == "train" and r["step"] > 1]
    if not rates:
        print("no train records after step 1: nothing to time")
        return
    cfg = load_config(RunConfig, args.metrics.parent / "config.yaml")
    seq = cfg.data.seq_len
    flops = flops_per_token(cfg.model, parameter_counts(cfg.model), seq)
    rate = statistics.median(rates)
    tokens = cfg.train.batch_size * seq
    print(
        f"median tokens/s over steps 2+: {rate:,.0f}; {tokens / rate:.2f} s/step; "
        f"MFU {flops * rate / (args.peak_tflops * 1e12):.1%} of {args.peak_tflops:g} TFLOP/s"
    )


if __name__ == "__main__":
    main()
