#!/usr/bin/env bash
# One short GPU session: offline install, the CUDA tests (kernels compiled by Triton, not interpreted), the
# fixed-case conv benchmark, the UNet training step and kernel launches per step, every table into $OUT.
# Usage (repository root, on the device machine): OUT=/path bash benchmarks/gpu_check.sh
# Budgeted for about 8 minutes of a 15-minute device lease; each part has its own time limit, and a failing
# part makes the script's exit status non-zero (pipefail) while the later parts still run.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
work=$(mktemp -d)
status=0
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.txt, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s)" | tee "$OUT/$name.txt"
    timeout "$limit" "$@" 2>&1 | tail -60 >> "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name exit $rc" | tee -a "$OUT/$name.txt"
    [ "$rc" -eq 0 ] || status=1
}
{
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    pip install --no-deps --no-build-isolation -q -e . 2>&1 | tail -3 && echo "install ok"
} > "$OUT/gpu.txt" 2>&1 || status=1
cat "$OUT/gpu.txt"
part pytest_cuda 200 python -m pytest -q -x tests/test_cuda.py tests/kernels tests/nn/test_fused_norm.py
part conv_cases 170 python -m benchmarks.conv_cases --device cuda --repeats 20 --timeout 50 --out "$work"
part unet 110 python -m benchmarks.unet --set target --steps 3 --timeout 50 --device cuda --out "$work"
# kernel launches and step time of the lightweight step on each backend (auto: triton on CUDA)
part launches 100 bash -c 'for backend in torch auto; do SPARSE_RADAR_BACKEND=$backend python -m \
    benchmarks.step_worker --preset lightweight --grid 32,128,128 --batch 2 --occupancy 0.03 --path sparse \
    --steps 2 --profile --device cuda 2> /dev/null || exit 1; done'
# the trainer's own step, counted by component (the CPU proxy) beside the profiler's cudaLaunchKernel count
part launch_budget 90 python -m benchmarks.launches --rows lightweight --out "$work"
cp "$work"/launches.md "$OUT"/ 2> /dev/null || status=1
cp "$work"/conv_cases.md "$work"/unet_target.md "$OUT"/ 2> /dev/null || status=1
rm -rf "$work"
exit $status
