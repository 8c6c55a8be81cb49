#!/usr/bin/env bash
# One short GPU session: install, run the CUDA tests, then the conv and unet benchmarks on the GPU.
# Usage (repository root, on the device machine): OUT=/path bash benchmarks/gpu_check.sh
# Budgeted for about 8 minutes of a 15-minute device lease; each part has its own time limit.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
pip install --no-deps --no-build-isolation -q -e . > "$OUT/install.txt" 2>&1 || { cat "$OUT/install.txt"; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
if python -c "import pytest" 2> /dev/null; then
    timeout 150 python -m pytest -q tests/test_cuda.py 2>&1 | tail -20 | tee "$OUT/pytest_cuda.txt"
else
    echo "pytest is not installed here: tests/test_cuda.py not run" | tee "$OUT/pytest_cuda.txt"
fi
timeout 150 python -m benchmarks.conv --sweep --device cuda --out "$OUT" 2>&1 | tail -30
timeout 240 python -m benchmarks.unet --set target --steps 3 --timeout 100 --device cuda --out "$OUT" 2>&1 | tail -12
