#!/usr/bin/env bash
# One call on a lent GPU machine: the CUDA test suite on the real device, then every GPU benchmark
# suite.  Results go to $OUT (the device tool's output folder) or ./gpu-results.
#
#   bash bench/gpu_session.sh                 # tests + all benchmark suites
#   bash bench/gpu_session.sh --suite csr     # extra arguments go to bench/gpu_bench.py's main stage
#
# numba-cuda 0.30.4 fails with NumPy 2.5 (shared/GPU.md): put the NumPy 2.3.5 wheel for the
# machine's Python in .whl/ first; it is installed ahead of the system NumPy.
# TEST_TIMEOUT / BENCH_TIMEOUT / JIT_TIMEOUT / NOPOOL_TIMEOUT (seconds) bound the four stages so
# that a lease is never overrun: by default 200 + 200 + 90 + 60 s, under the device tool's 600 s
# per call.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1  # (our kernels' small grids do not warn: block.Kernel)
export SPARSENET_EXPECT_GPU=1 CI=1  # tests/cuda refuses to skip; hypothesis' CI profile
# Kernels are cached on disk (cache=True): one fresh cache per session, never one a previous call
# on this machine left with kernels built from other sources (numba keys a kernel on its own file,
# not on block.py's).  The test workers each take a subfolder (tests/conftest.py: concurrent
# saves into one folder can mix up variants), the benchmarks the folder itself.
export NUMBA_CACHE_DIR="$(mktemp -d)"
# The caching allocator (kernels/cuda/memory.py) is opt-in until a GPU has proven it: the tests
# and the main benchmark run through it, the last stage times the host-bound suites without it.
export SPARSENET_CUDA_POOL=1
if compgen -G ".whl/numpy-*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/numpy-*.whl
  export PYTHONPATH="/tmp/site:$PWD"
fi
{ nvidia-smi -L; python3 -c "import numpy, numba, numba_cuda; print('numpy', numpy.__version__, 'numba', numba.__version__, 'numba-cuda', numba_cuda.__version__)"
  python3 -c "from numba import cuda; cuda.detect()"; } > "$out/device.txt" 2>&1
# Compilation dominates the suite on a GPU: spread it over the cores when pytest-xdist is there.
par=(); python3 -c "import xdist" 2>/dev/null && par=(-n "${TEST_WORKERS:-12}")
timeout -k 10 "${TEST_TIMEOUT:-200}" python3 -m pytest -q -rfEs -p no:cacheprovider "${par[@]}" tests/cuda \
  > "$out/cuda_tests.txt" 2>&1
tests=$?
[ $# -eq 0 ] && set -- --suite overhead,roofline,csr,train,dropout,sparsity,conv  # jit: its own stage below
timeout -k 10 "${BENCH_TIMEOUT:-200}" python3 bench/gpu_bench.py "$@" > "$out/gpu_bench.md" 2> "$out/gpu_bench.err"
bench=$?
# A new process's compile-or-load cost (fresh processes, their own numba cache folder).
jit_budget=$(( ${JIT_TIMEOUT:-90} - 5 ))  # the suite stops its own runs first
timeout -k 10 "${JIT_TIMEOUT:-90}" python3 bench/gpu_bench.py --suite jit --jit-budget "$jit_budget" \
  > "$out/gpu_bench_jit.md" 2>> "$out/gpu_bench.err"
jit=$?
# The caching allocator's effect, measured: the host-bound suites again without it (numba's own).
SPARSENET_CUDA_POOL=0 timeout -k 10 "${NOPOOL_TIMEOUT:-60}" python3 bench/gpu_bench.py --suite overhead,train --no-cpu \
  > "$out/gpu_bench_nopool.md" 2>> "$out/gpu_bench.err"
nopool=$?
cat "$out/device.txt"; tail -25 "$out/cuda_tests.txt"
cat "$out/gpu_bench.md" "$out/gpu_bench_jit.md" "$out/gpu_bench_nopool.md"
tail -5 "$out/gpu_bench.err"
echo "tests exit $tests, bench exit $bench, jit bench exit $jit, no-pool bench exit $nopool"
exit $(( tests != 0 || bench != 0 || jit != 0 || nopool != 0 ))
