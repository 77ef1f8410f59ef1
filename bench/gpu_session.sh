#!/usr/bin/env bash
# One call on a lent GPU machine: the CUDA test suite on the real device, then every GPU benchmark
# suite.  Results go to $OUT (the device tool's output folder) or ./gpu-results.
#
#   bash bench/gpu_session.sh                 # tests + all benchmark suites
#   bash bench/gpu_session.sh --suite csr     # extra arguments go to bench/gpu_bench.py
#
# numba-cuda 0.30.4 fails with NumPy 2.5 (shared/GPU.md): put the NumPy 2.3.5 wheel for the
# machine's Python in .whl/ first; it is installed ahead of the system NumPy.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
export PYTHONPATH="$PWD"
if compgen -G ".whl/numpy-*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/numpy-*.whl
  export PYTHONPATH="/tmp/site:$PWD"
fi
{ nvidia-smi -L; python3 -c "import numpy, numba; print('numpy', numpy.__version__, 'numba', numba.__version__)"; } \
  > "$out/device.txt" 2>&1
python3 -m pytest -q -p no:cacheprovider tests/cuda > "$out/cuda_tests.txt" 2>&1
tests=$?
python3 bench/gpu_bench.py "$@" > "$out/gpu_bench.md" 2>&1
bench=$?
cat "$out/device.txt"; tail -15 "$out/cuda_tests.txt"; cat "$out/gpu_bench.md"
exit $(( tests != 0 || bench != 0 ))
