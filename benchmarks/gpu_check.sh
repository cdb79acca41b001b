#!/usr/bin/env bash
# One prepared GPU session (a lent H100/H200 has minutes, not hours): everything issue 14 measures, on a
# fresh machine with no network and only the working tree. Prepare it with `bash benchmarks/gpu_pack.sh`
# (the default tokenizer and two token stores copied into .gpu_cache/, ~40 MB; the lever wheels into
# .whl/, ~3.4 MB), carry both, and run:
#
#   REPLAYLAB_HOME=$PWD/.gpu_cache bash benchmarks/gpu_check.sh   # results: $RESULTS (default gpu_out/<UTC time>)
#
# BUNDLE=PATH.tgz also packs the results (run folders left out) into one file: what the device tool's
# return folder takes best (it returns few files), e.g. BUNDLE=$OUT/gpu_check.tgz there.
# `python benchmarks/gpu_report.py FOLDER_OR_BUNDLE` prints the results as BENCHMARKS.md's Markdown.
#
# Parts, in this order (PARTS="determinism hf levers tests" is the default; name others to add them). Each
# has its own time limit, so one that fails or overruns does not cost the others; the limits add up to ~9 min:
#   determinism  train.deterministic on CUDA at the paper's shapes (150m, seq 4096, vocab 128256, micro-batch 8):
#                fused vs math attention, each compiled and run twice from the same weights, compared bit for
#                bit, and the math kernel's cost (benchmarks/throughput.py --repeat)                 DET_S=100
#   hf           `replaylab finetune`'s step vs transformers.Trainer, full fine-tuning at SmolLM2-135M's shape,
#                bf16, 8 x 2048 (benchmarks/hf_throughput.py); ours also with fused attention, and with
#                regional compilation (each decoder layer: a far shorter compile)                   HF_S=240
#   levers       the MFU levers at the paper's micro-batch 16: cut-cross-entropy (filtered and exact), float8
#                (all linears, all but the output layer), and the optimizer step's share       LEVERS_S=110
#   tests        the test files whose code runs on the GPU when there is one                    TESTS_S=100
#   lora         as hf, LoRA (ours deterministic vs transformers.Trainer)                         LORA_S=150
#   tiny         configs/tiny.yaml through `replaylab train` on CUDA: twice, and once killed (SIGKILL) and
#                resumed; the three final losses must agree bit for bit                          TINY_S=90
#   slice        benchmarks/paper_slice.yaml through `replaylab train` (4.19M-token steps, MFU)   SLICE_S=240
#   autotune     the last lever, by name only for its compile of minutes: ours/auto compiled with
#                mode="max-autotune-no-cudagraphs" (matmul templates and fusions benchmarked)   AUTOTUNE_S=300
#
# SMOKE=1 runs every part at toy sizes on the CPU (no GPU needed): how tests/test_gpu_check.py checks this
# script's plumbing. GENERIC, TARGET and TOK name the stores and tokenizer explicitly (default: found in
# $REPLAYLAB_HOME). Each part writes $RESULTS/<part>.txt (and .json where the benchmark writes one); the
# summary of every part's exit status and seconds is $RESULTS/parts.txt.
set -u -o pipefail
HOME_DIR=${REPLAYLAB_HOME:-$HOME/.cache/replaylab}
first() { for p in "$@"; do [ -e "$p" ] && { echo "${p%/}"; return; }; done; }
GENERIC=${GENERIC:-$(first "$HOME_DIR"/stores/generic-*/)}
TARGET=${TARGET:-$(first "$HOME_DIR"/stores/instructions-*/ "$HOME_DIR"/stores/code-*/)}
# "default" finds the tokenizer offline only through its pins index; naming the folder needs nothing else.
TOK=${TOK:-$(first "$HOME_DIR"/tokenizers/default-*/)}
# A new folder each time, so no result of an earlier run is mistaken for this one's (nor overwritten).
RESULTS=${RESULTS:-gpu_out/$(date -u +%Y%m%d-%H%M%S)}
if [ -n "$(ls -A "$RESULTS" 2>/dev/null)" ]; then
  echo "gpu_check: RESULTS=$RESULTS is not empty; name a new folder" >&2; exit 2
fi
if [ -n "${BUNDLE:-}" ] && [ -e "$BUNDLE" ]; then
  echo "gpu_check: BUNDLE=$BUNDLE exists; name a new file" >&2; exit 2
fi
mkdir -p "$RESULTS"
RUNS=$RESULTS/runs; mkdir -p "$RUNS"  # inside the new results folder: nothing of an earlier run is touched
export PY=${PY:-python3} PYTHONUNBUFFERED=1 GENERIC TARGET TOK RUNS
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
# Carried wheels (benchmarks/gpu_pack.sh): installed to a scratch folder, never into the machine's Python.
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site \
    .whl/*.whl > "$RESULTS/wheels.txt" 2>&1 && export PYTHONPATH=$PYTHONPATH:/tmp/gpu_check_site
fi
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  DEV=cpu
  ENGINE=(--device cpu --preset tiny --seq-len 32 --vocab 512 --steps 1 --rounds 1 --warmup 1 --split-steps 1)
  DET_BATCH=2 LEVER_BATCH=2
  HFB=(--device cpu --precision fp32 --layers 1 --batch 2 --seq-len 32 --steps 1 --warmup-steps 1 --trials 1)
  TINY_RUN=(train.compile=off stages.0.steps=8 stages.1.steps=4 train.total_steps=12 train.log_every=2
            train.checkpoint_every=4 eval.max_sequences=8)
  TINY_TARGET="budget: 16, epochs: 1"  # 4 fine-tuning steps x 8 sequences x rho 0.5
  SLICE_RUN=(model.preset=tiny model.vocab_size=4096 data.seq_len=64 train.batch_size=4 train.micro_batch_size=2
             train.precision=auto train.compile=off data.domains.target.budget=4 data.domains.target.epochs=1)
  KILL_AFTER=2
else
  DEV=cuda
  ENGINE=(--device cuda --preset 150m --seq-len 4096 --vocab 128256 --steps 5 --rounds 3 --warmup 2)
  DET_BATCH=8 LEVER_BATCH=16
  # One trial each: a dedicated GPU is quiet, and each first compile of the 30-layer model takes ~100 s.
  HFB=(--device cuda --precision bf16 --batch 8 --seq-len 2048 --steps 15 --warmup-steps 3 --trials 1)
  TINY_RUN=(train.checkpoint_every=16)
  TINY_TARGET="budget: 48, epochs: 4"  # as configs/tiny.yaml
  SLICE_RUN=()
  KILL_AFTER=7
fi
PARTS=${PARTS:-determinism hf levers tests}
echo "parts: $PARTS; device $DEV; stores $GENERIC, $TARGET; tokenizer $TOK" | tee "$RESULTS/parts.txt"
{ if [ "$DEV" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
  "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
  for m in peft cut_cross_entropy torchao; do  # the levers' packages come from .whl (benchmarks/gpu_pack.sh)
    "$PY" -c "import $m; print('$m', $m.__version__)" 2>/dev/null || echo "$m: not importable"
  done
} > "$RESULTS/env.txt" 2>&1; cat "$RESULTS/env.txt"

# part NAME LIMIT_S COMMAND...: runs under `timeout`, output to $RESULTS/NAME.txt, status and seconds to parts.txt
part() {
  local name=$1 limit=$2; shift 2
  [[ " $PARTS " == *" $name "* ]] || return 0
  echo "== $name (limit ${limit} s) ==" | tee -a "$RESULTS/parts.txt"
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" > "$RESULTS/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$RESULTS/$name.txt"
  echo "$name: exit $rc after $((SECONDS - t0)) s" | tee -a "$RESULTS/parts.txt"
}

part determinism "${DET_S:-100}" "$PY" benchmarks/throughput.py "${ENGINE[@]}" --batch "$DET_BATCH" \
  --only ours/auto,ours/deterministic --repeat ours/auto,ours/deterministic --split-steps 0 \
  --deadline $(( ${DET_S:-100} * 6 / 10 )) --json "$RESULTS/determinism.json"

part hf "${HF_S:-240}" "$PY" benchmarks/hf_throughput.py "${HFB[@]}" --modes full \
  --contenders ours,hf,ours-fused,ours-regional \
  --json "$RESULTS/hf.json"

part levers "${LEVERS_S:-110}" "$PY" benchmarks/throughput.py "${ENGINE[@]}" --batch "$LEVER_BATCH" \
  --only ours/auto,ours/cce,ours/fp8,ours/fp8-body,ours/cce-exact --deadline $(( ${LEVERS_S:-110} * 6 / 10 )) \
  --json "$RESULTS/levers.json"

# The files whose code picks the GPU when there is one (device auto) or tests CUDA paths directly. The
# TRL example is left out: the GPU image has no trl (CI runs it). Multi-GPU variants skip on one GPU.
GPU_TESTS=${GPU_TESTS:-tests/test_model.py tests/test_optim.py tests/test_trainer.py tests/test_resume.py
  tests/test_ddp.py tests/test_hf_finetune.py tests/test_hf_fsdp.py tests/test_replay_mixture.py tests/test_config.py}
if [ "$SMOKE" = 1 ]; then GPU_TESTS=tests/test_optim.py; fi
XDIST=(); "$PY" -c "import xdist" 2>/dev/null && XDIST=(-n "${TEST_WORKERS:-6}")  # pytest-xdist, where installed
part tests "${TESTS_S:-100}" "$PY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" -k "not trl" $GPU_TESTS

part lora "${LORA_S:-150}" "$PY" benchmarks/hf_throughput.py "${HFB[@]}" --modes lora --contenders ours,hf \
  --json "$RESULTS/lora.json"

tiny() {  # three runs of configs/tiny.yaml on $DEV: a, b straight, c killed with SIGKILL and resumed
  local args=(data.tokenizer="$TOK" data.domains="{generic: {source: $GENERIC}, target: {source: $TARGET, $TINY_TARGET}}"
              stages.1.mixture="{target: 0.5, generic: 0.5}" train.device="$DEV" "${TINY_RUN[@]}")
  local rl=("$PY" -m replaylab.cli train configs/tiny.yaml)
  "${rl[@]}" --out "$RUNS/tiny_a" "${args[@]}" > /dev/null || echo "run a failed"
  "${rl[@]}" --out "$RUNS/tiny_b" "${args[@]}" > /dev/null || echo "run b failed"
  "${rl[@]}" --out "$RUNS/tiny_c" "${args[@]}" > /dev/null & local pid=$! n=0
  for _ in $(seq 1200); do
    sleep 0.1; kill -0 $pid 2>/dev/null || break  # it ended (or failed) before the kill
    n=$(grep -c '"train"' "$RUNS/tiny_c/metrics.jsonl" 2>/dev/null); [ "${n:-0}" -ge "$KILL_AFTER" ] && break
  done
  kill -9 $pid; wait $pid 2>/dev/null; echo "killed c after $n train records"
  "$PY" -m replaylab.cli train --resume "$RUNS/tiny_c" > /dev/null || echo "resume c failed"
  "$PY" - "$RUNS"/tiny_a "$RUNS"/tiny_b "$RUNS"/tiny_c <<'PYEOF'
import json, sys
finals = []
for run in sys.argv[1:]:
    last = {}
    for line in open(run + "/metrics.jsonl"):
        r = json.loads(line)
        if r.get("type") == "eval":
            last[r["domain"]] = (r["step"], r["val_loss"])
    finals.append(last)
    print(run, json.dumps(last, sort_keys=True))
print("final losses bit-identical across a, b and resumed c:", all(f == finals[0] for f in finals) and bool(finals[0]))
PYEOF
}
export -f tiny; export DEV KILL_AFTER TINY_TARGET; export TINY_RUN_STR="${TINY_RUN[*]}"
part tiny "${TINY_S:-90}" bash -c 'TINY_RUN=($TINY_RUN_STR); tiny'

slice() {
  "$PY" -m replaylab.cli train benchmarks/paper_slice.yaml --out "$RUNS/slice" data.tokenizer="$TOK" \
    data.domains.generic.source="$GENERIC" data.domains.target.source="$TARGET" train.device="$DEV" $SLICE_RUN_STR ${SLICE_ARGS:-} \
    && "$PY" benchmarks/slice_mfu.py "$RUNS/slice/metrics.jsonl"
}
export -f slice; export SLICE_RUN_STR="${SLICE_RUN[*]}"
part slice "${SLICE_S:-240}" bash -c slice

part autotune "${AUTOTUNE_S:-300}" "$PY" benchmarks/throughput.py "${ENGINE[@]}" --batch "$LEVER_BATCH" \
  --only ours/auto,ours/max-autotune --split-steps 0 --json "$RESULTS/autotune.json"

[ "$DEV" = cuda ] && nvidia-smi --query-gpu=memory.used --format=csv,noheader >> "$RESULTS/env.txt" 2>&1
if [ -n "${BUNDLE:-}" ]; then tar czf "$BUNDLE" --exclude=runs -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"; fi
cat "$RESULTS/parts.txt"
