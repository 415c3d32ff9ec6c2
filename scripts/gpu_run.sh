#!/usr/bin/env bash
# The GPU run of issue "GPU": the whole catalogue on CPU and CUDA, float32 and float64, TF32 off and on.
# Needs torch and jax with CUDA installed. Writes gpu-report/ and gpu-report-tf32/, prints the summaries.
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
python -c "import torch, jax; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); print('jax', jax.__version__, jax.devices())"
/usr/bin/time -f "wall %e s (TF32 off)" gradaudit run --devices cpu,cuda --dtypes float32,float64 --profile ci --report gpu-report --junit gpu-report/junit.xml
/usr/bin/time -f "wall %e s (TF32 on)" gradaudit run --devices cpu,cuda --dtypes float32 --profile ci --allow-tf32 --report gpu-report-tf32
python -m pytest -m gpu -q tests/test_gpu.py
