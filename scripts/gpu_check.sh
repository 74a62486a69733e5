#!/usr/bin/env bash
# The GPU device check (issue 15): ~5 minutes on one GPU. Needs the package installed with torch's CUDA wheel
# (`make install` on the GPU machine). Writes runs/gpu-check/gpu_check.json; exit 1 when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=${WANDB_MODE:-disabled}
exec timeout 480 "$PY" scripts/gpu_check.py "${1:-runs/gpu-check}"
