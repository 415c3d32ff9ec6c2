#!/usr/bin/env bash
# The GPU run: the whole catalogue on CPU and CUDA, float32 and float64 with TF32 off, then float32
# with TF32 on; then the GPU tests. Needs torch and jax with CUDA. Writes gpu-report/ and
# gpu-report-tf32/ (HTML, results.jsonl, JUnit) and prints the summaries and wall times.
# GRADAUDIT_WORKERS sets --workers (default: half the cores, at most 8); extra arguments go to both runs.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
workers=${GRADAUDIT_WORKERS:-$(( $(nproc) / 2 > 8 ? 8 : ($(nproc) / 2 > 0 ? $(nproc) / 2 : 1) ))}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$py - <<'PY'
import platform, numpy, hypothesis, torch, jax, jaxlib
print("python", platform.python_version(), "numpy", numpy.__version__, "hypothesis", hypothesis.__version__)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
print("jax", jax.__version__, "jaxlib", jaxlib.__version__, jax.devices())
PY
status=0
t0=$(date +%s.%N)
$py -m gradaudit run --devices cpu,cuda --dtypes float64,float32 --profile ci --workers "$workers" \
    --report gpu-report --junit gpu-report/junit.xml "$@" || status=$?
t1=$(date +%s.%N)
echo "wall $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s (TF32 off, exit $status)"
$py -m gradaudit run --devices cpu,cuda --dtypes float32 --profile ci --workers "$workers" --allow-tf32 \
    --report gpu-report-tf32 --junit gpu-report-tf32/junit.xml "$@"
tf32=$?
t2=$(date +%s.%N)
echo "wall $(awk "BEGIN{printf \"%.1f\", $t2 - $t1}") s (TF32 on, exit $tf32: failures expected, each named tf32)"
$py -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py || status=$?
exit $status
