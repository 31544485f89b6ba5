#!/usr/bin/env bash
# The GPU check, in one run on a machine with CUDA (e.g. the lent device machine):
#   scripts/gpu_check.sh [OUT_DIR]
# 1. names the card; 2. tests/gpu (CUDA) plus the device-simulation, precision and node tests;
# 3. the main job on CUDA in fp16 and bf16 (timed); 4. bench/unet_step.py on CUDA, fp32 / fp16 / bf16.
# Every result file goes to OUT_DIR (default ./gpu-check) with the card's name in it.
# Uses the Python on PATH (PYTHON=...), which must have torch with CUDA and requirements-dev.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
py="${PYTHON:-python3}"
mkdir -p "$out"
card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1)
echo "card: ${card:-unknown}" | tee "$out/card.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
  | tee -a "$out/card.txt"
status=0
"$py" -m pytest -q -rs tests/gpu tests/test_device.py tests/test_precision.py tests/test_device_policy.py \
  tests/test_nodes.py -p no:cacheprovider 2>&1 | tee "$out/tests.txt" || status=1
for dtype in fp16 bf16; do
  "$py" -m mav_core generate "a red circle on a black background" -o "$out/main_job_$dtype.mp4" \
    --device cuda --dtype "$dtype" 2>&1 | tee "$out/main_job_$dtype.txt" \
    || status=1
done
"$py" bench/unet_step.py --device cuda --configs small mid --variants fp32 fp16-weights bf16-weights \
  --repeats 7 --warmup 2 --out "$out/unet_step_cuda.json" 2>&1 | tee "$out/unet_step_cuda.txt" || status=1
echo "gpu_check: $([ $status = 0 ] && echo passed || echo FAILED) on ${card:-unknown}"
exit $status
