#!/usr/bin/env bash
# One prepared GPU call for issue 14 item 4: `replaylab finetune`'s training step vs transformers.Trainer at
# SmolLM2-135M's full shape (random weights: nothing is downloaded), bf16, batch 8 x 2048, full fine-tuning
# and LoRA, 2 ABBA rounds of 3 warm-up + 20 timed steps each. Measured 2026-11-29 on an H200: the first
# compile of each model (ours) takes ~100 s, a trial after it seconds; so allow ~5 minutes for this part
# (HF_BENCH_S, default 420 s) and ~3 for the compiled-Trainer comparison (HF_BENCH_S2, default 240 s).
# Results: $OUT/hf_throughput.json (every trial), $OUT/hf_throughput.txt (the table), $OUT/env.txt.
#
#   bash benchmarks/gpu_hf_check.sh                       # OUT defaults to ./gpu_out
#   HF_BENCH_ARGS="--batch 16" bash benchmarks/gpu_hf_check.sh
set -u -o pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'
} 2>&1 | tee "$OUT/env.txt"
timeout ${HF_BENCH_S:-420} "$PY" benchmarks/hf_throughput.py --device cuda --precision bf16 --batch 8 --seq-len 2048 \
  --steps 20 --warmup-steps 3 --trials 2 --modes full,lora --json "$OUT/hf_throughput.json" ${HF_BENCH_ARGS:-} \
  2>&1 | tee "$OUT/hf_throughput.txt"
echo "exit $?" | tee -a "$OUT/hf_throughput.txt"
# The same against transformers.Trainer with torch_compile=True (full fine-tuning only: the fairest pairing).
timeout ${HF_BENCH_S2:-240} "$PY" benchmarks/hf_throughput.py --device cuda --precision bf16 --batch 8 --seq-len 2048 \
  --steps 20 --warmup-steps 4 --trials 1 --modes full --hf-torch-compile --json "$OUT/hf_throughput_compiled.json" \
  2>&1 | tee "$OUT/hf_throughput_compiled.txt"
echo "exit $?" | tee -a "$OUT/hf_throughput_compiled.txt"
nvidia-smi --query-gpu=memory.used --format=csv,noheader >> "$OUT/env.txt" 2>&1
