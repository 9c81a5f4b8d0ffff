#!/usr/bin/env bash
# One prepared GPU check (about 5 minutes on an H100): measure this GPU's operator and layer-step
# tables (llama3-8b, every third shape of the H100 grid) and compare them with the shipped H100
# tables, then replay scenarios/validation-small.yaml on a 4-layer real engine and on the full
# 32-layer model, measured against simkv's prediction. Everything lands in one folder.
#
#   scripts/gpu-check.sh [OUT]        (default results/gpu-check; run from anywhere)
#
# Needs Python with simkv's dependencies and a CUDA build of PyTorch (pip install -e '.[gpu]').
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu-check}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
"$PY" - <<'PY' || { echo "gpu-check: install simkv's dependencies and a CUDA PyTorch first (pip install -e '.[gpu]')" >&2; exit 2; }
import importlib, sys
missing = [m for m in ("simpy", "numpy", "scipy", "matplotlib", "pydantic", "yaml", "torch") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)}")
import torch
if not torch.cuda.is_available():
    sys.exit("PyTorch sees no CUDA GPU")
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
PY
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
start=$(date +%s)
"$PY" -m simkv.cli calibrate --gpu --models llama3-8b --quick -o "$OUT/calibration" 2>&1 | tee "$OUT/calibrate.log"
"$PY" -m simkv.cli validate scenarios/validation-small.yaml --gpu --layers 4 -o "$OUT/validate-4-layers" 2>&1 | tee "$OUT/validate-4-layers.log"
"$PY" -m simkv.cli validate scenarios/validation-small.yaml --gpu -o "$OUT/validate-32-layers" 2>&1 | tee "$OUT/validate-32-layers.log"
echo "gpu-check: done in $(( $(date +%s) - start )) s -> $OUT/"
