#!/usr/bin/env bash
# Prepare what benchmarks/gpu_check.sh needs on a GPU machine that has no network, inside the repo so it can
# travel with the working tree (both folders are git-ignored):
#   .gpu_cache/  a REPLAYLAB_HOME with the default tokenizer (and its pins index) and the generic and
#                instructions stores (~40 MB), copied from this machine's cache (build them first:
#                `replaylab data build generic`, `replaylab data build instructions`)
#   .whl/        the wheels of the levers it tries: cut-cross-entropy and torchao (~3.4 MB), for Python 3.12
#                on x86-64 Linux (the GPU image's), pinned here
# Then: REPLAYLAB_HOME=$PWD/.gpu_cache bash benchmarks/gpu_check.sh, carrying .gpu_cache and .whl.
set -euo pipefail
SRC=${REPLAYLAB_HOME:-$HOME/.cache/replaylab}
DEST=.gpu_cache
WHEELS=("cut-cross-entropy==25.1.1" "torchao==0.18.0")  # torchao 0.18 needs torch >= 2.11 (the GPU image has 2.11)
PYVER=${GPU_PYTHON:-3.12}
pick() { ls -d "$SRC"/$1 2>/dev/null | head -1; }
generic=$(pick 'stores/generic-*/'); target=$(pick 'stores/instructions-*/'); tok=$(pick 'tokenizers/default-*/')
for x in generic target tok; do
  [ -n "${!x}" ] || { echo "gpu_pack: no $x under $SRC; build it first (see this script's header)" >&2; exit 2; }
done
mkdir -p "$DEST/stores" "$DEST/tokenizers"
cp -r "${generic%/}" "${target%/}" "$DEST/stores/"
cp -r "${tok%/}" "$DEST/tokenizers/"
cp "$SRC"/tokenizers/default.pins-*.json "$DEST/tokenizers/" 2>/dev/null || true
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
du -sh "$DEST" .whl
