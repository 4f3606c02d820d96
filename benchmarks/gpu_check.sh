#!/usr/bin/env bash
# The cost benchmark on one GPU, in one prepared run (under 8 minutes on an H100/H200-class
# card before Whisper base was added; base has not run on a GPU yet): the 20M Conformer CTC,
# Whisper base (72.6M: the real weights when converted here in
# pretrained/whisper-base, else a random Whisper of base's dimensions, the same step cost:
# the GPU machine has no network and its 145 MB do not fit what is carried to it) and a
# Whisper of small's dimensions (~240M, random weights),
# full fine-tuning, the frozen-backward floor, our LoRA, SpeechBrain's and PEFT's, each step
# timed in fp32 and under bf16 autocast, peak device memory read with
# torch.cuda.max_memory_allocated. Writes cost_20m.{json,md,png}, cost_whisper-small.* and
# cost_whisper-base[-random].* to
# $OUT (the device tool's output folder) or results/benchmarks/gpu.
#
#   bash benchmarks/gpu_check.sh            # PYTHON=... to choose the interpreter
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT_DIR=${OUT:-results/benchmarks/gpu}
mkdir -p "$OUT_DIR"
"$PY" - <<'PYCHECK'
import sys
try:
    import torch, speechbrain, peft  # noqa: F401
except ImportError as err:
    sys.exit(f"gpu_check: {err}. Install the project first (pip install -e '.[dev]').")
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device; run this on a machine with a GPU.")
print("gpu_check:", torch.__version__, torch.cuda.get_device_name(0), flush=True)
PYCHECK
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
METHODS=full,floor,lora,sb_lora,peft_native
start=$SECONDS
"$PY" benchmarks/adapter_cost.py --device cuda --bf16 --size 20m --methods $METHODS \
    --repeats 3 --steps 10 --batch 8 --frames 1000 --out "$OUT_DIR"
echo "gpu_check: 20m done after $((SECONDS - start)) s"
"$PY" benchmarks/adapter_cost.py --device cuda --bf16 --size whisper-small --methods $METHODS \
    --repeats 2 --steps 5 --batch 4 --window 30 --out "$OUT_DIR"
echo "gpu_check: whisper-small done after $((SECONDS - start)) s"
BASE=whisper-base-random
if [ -f pretrained/whisper-base/model.safetensors ]; then BASE=whisper-base; fi
echo "gpu_check: Whisper base as $BASE"
"$PY" benchmarks/adapter_cost.py --device cuda --bf16 --size $BASE --methods $METHODS \
    --repeats 3 --steps 5 --batch 8 --window 30 --out "$OUT_DIR"
echo "gpu_check: $BASE done after $((SECONDS - start)) s"
