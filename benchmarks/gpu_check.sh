#!/usr/bin/env bash
# One prepared GPU session (a lent H100/H200 has minutes, not hours): the throughput benchmark at the
# paper's shapes (MFU), a short paper-shape training slice through `replaylab train`, and bit-exact
# determinism + kill-and-resume on CUDA with the tiny config. Each part has its own time limit, so
# one failure does not cost the others (PARTS=12 runs the first two only). Results go to $OUT
# (default ./gpu_out).
#
#   REPLAYLAB_HOME=<cache with the default tokenizer and the generic + math stores> bash benchmarks/gpu_check.sh
set -u
# Point the domains at the built store folders, so nothing is fetched or rebuilt on a machine without network.
STORES=${REPLAYLAB_HOME:-$HOME/.cache/replaylab}/stores
GENERIC=$(ls -d "$STORES"/generic-????????-????????/ | head -1); MATH=$(ls -d "$STORES"/math-????????-????????/ | head -1)
# The default tokenizer's folder. "default" finds it offline only through the pins index
# (tokenizers/default.pins-*.json); a cache written before the index would build the recipes (network).
TOK=$(ls -d "$STORES"/../tokenizers/default-*/ | head -1)
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PY=${PY:-python3}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
rl() { "$PY" -m replaylab.cli "$@"; }
slice_run() {  # the paper-shape slice on the carried stores; extra overrides as arguments
  rl train benchmarks/paper_slice.yaml --out runs/gpu_slice data.tokenizer="$TOK" data.domains.generic.source="$GENERIC" \
    data.domains.math.source="$MATH" "$@" ${SLICE_ARGS:-}
}
export -f rl slice_run; export TOK GENERIC MATH  # `timeout` runs them through `bash -c`
final_losses() {  # the last eval loss per domain of a run folder, one line
  "$PY" - "$1" <<'PYEOF'
import json, sys
last = {}
for line in open(sys.argv[1] + "/metrics.jsonl"):
    r = json.loads(line)
    if r.get("type") == "eval":
        last[r["domain"]] = (r["step"], r["val_loss"])
print(json.dumps(last, sort_keys=True))
PYEOF
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
} 2>&1 | tee "$OUT/env.txt"

if [[ ${PARTS:-123} == *1* ]]; then
echo "== 1. throughput: ours vs HF LlamaForCausalLM, 150m, seq 4096, vocab 128256 =="
timeout ${BENCH_S:-210} "$PY" benchmarks/throughput.py --device cuda --preset 150m --seq-len 4096 --vocab 128256 \
  --batch ${BENCH_BATCH:-8} --steps 5 --rounds 3 --warmup 3 --only "ours/auto,hf/bf16 + compile" 2>&1 | tee "$OUT/throughput.txt"

fi
if [[ ${PARTS:-123} == *2* ]]; then
echo "== 2. paper-shape slice: replaylab train benchmarks/paper_slice.yaml =="
rm -rf runs/gpu_slice
timeout ${SLICE_S:-240} bash -c slice_run > "$OUT/slice.txt" 2>&1; echo "exit $?" >> "$OUT/slice.txt"; tail -5 "$OUT/slice.txt"
if grep -qi "out of memory" "$OUT/slice.txt"; then  # the paper's micro-batch does not fit this GPU: halve it
  echo "== 2b. again with train.micro_batch_size=8 ==" | tee -a "$OUT/slice.txt"; rm -rf runs/gpu_slice
  timeout ${SLICE_S:-240} bash -c 'slice_run train.micro_batch_size=8' >> "$OUT/slice.txt" 2>&1
  echo "exit $?" >> "$OUT/slice.txt"; tail -3 "$OUT/slice.txt"
fi
cp runs/gpu_slice/metrics.jsonl "$OUT/slice_metrics.jsonl" 2>/dev/null
"$PY" - runs/gpu_slice/metrics.jsonl <<'PYEOF' 2>&1 | tee -a "$OUT/slice.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in rows:
    if r.get("type") in ("train", "eval"):
        print({k: r[k] for k in ("type", "step", "loss", "val_loss", "tok_per_s", "domain") if k in r})
tps = sorted(r["tok_per_s"] for r in rows if r.get("type") == "train" and r["step"] > 1)  # step 1 compiles
if tps:
    from replaylab.model import parameter_counts
    from replaylab.config import from_dict
    from replaylab.runconfig import ModelConfig
    cfg = from_dict(ModelConfig, {"preset": "150m", "vocab_size": 128256}); cfg.max_seq_len = 4096
    n = parameter_counts(cfg)
    # 6 per matmul weight (all but the input embedding) + causal attention, as benchmarks/throughput.py
    flops = 6 * (n["total"] - 128256 * cfg.d_model) + 6 * cfg.n_layers * 4096 * cfg.d_model
    rate = tps[len(tps) // 2]
    print(f"median tokens/s over steps 2+: {rate:,.0f}; {4096 * 1024 / rate:.2f} s/step; "
          f"MFU {flops * rate / 989e12:.1%} of 989 TFLOP/s")
PYEOF

fi
if [[ ${PARTS:-123} == *3* ]]; then
echo "== 3. CUDA determinism and kill-and-resume (configs/tiny.yaml on math) =="
TINY=(data.tokenizer=$TOK data.domains="{generic: {source: $GENERIC}, math: {source: $MATH, budget: 48, epochs: 4}}"
      stages.1.mixture="{math: 0.5, generic: 0.5}" train.device=${DEVICE:-cuda} train.checkpoint_every=16)
TINY+=( ${TINY_EXTRA:-} )  # e.g. train.compile=off for a quick check on a CPU
rm -rf runs/gpu_a runs/gpu_b runs/gpu_c
timeout ${TINY_S:-150} bash -c '
  rl train configs/tiny.yaml --out runs/gpu_a "$@" >/dev/null 2>&1 || echo "run a failed"
  rl train configs/tiny.yaml --out runs/gpu_b "$@" >/dev/null 2>&1 || echo "run b failed"
  rl train configs/tiny.yaml --out runs/gpu_c "$@" >/dev/null 2>&1 &
  pid=$!; n=0; for i in $(seq 1200); do sleep 0.1; n=$(cat runs/gpu_c/metrics.jsonl 2>/dev/null | grep -c "\"train\""); [ "${n:-0}" -ge 7 ] && break; done
  kill -9 $pid; wait $pid 2>/dev/null; echo "killed c after $n train logs"
  rl train --resume runs/gpu_c >/dev/null 2>&1 || echo "resume c failed"
' _ "${TINY[@]}" 2>&1 | tee "$OUT/determinism.txt"
for r in a b c; do echo "$r $(final_losses runs/gpu_$r)"; done 2>&1 | tee -a "$OUT/determinism.txt"
fi
