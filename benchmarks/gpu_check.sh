#!/usr/bin/env bash
# GPU check (issue 15, item 6): our SFT step and the hf_rank Ranker at Gemma-3-270M's architecture on cuda in
# bf16, < 6 minutes. Figures -> $OUT/gpu.json (+ the log in $OUT/gpu_check.log). Run from anywhere:
#     OUT=/tmp/gpu bash benchmarks/gpu_check.sh [extra gpu_check.py options]
# The weights stay home; these small files must travel with the working tree (run tool's `carry`):
#     models/base/gemma3-270m/config.json  (required: the architecture)
#     models/base/gemma3-270m/tokenizer.json, models/base/gemma3-270m/tokenizer_config.json  (Ranker; 33 MB)
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
PY="$(command -v python || command -v python3)"
echo "== $(date -u +%FT%TZ) on $(hostname), repo $(pwd)"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.max.sm --format=csv || echo "(no nvidia-smi)"
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda, "| available", torch.cuda.is_available(), "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
if [[ ! -f models/base/gemma3-270m/config.json ]]; then
    echo "models/base/gemma3-270m/config.json is missing: carry it (see the top of this script)" >&2
    exit 2
fi
timeout 340 "$PY" benchmarks/gpu_check.py --out "$OUT/gpu.json" "$@" 2>&1 | tee "$OUT/gpu_check.log"
