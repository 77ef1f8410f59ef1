"""First-call latency of the CSR kernels: cold (empty Numba cache) and warm (on-disk cache).

Run:  python -m pytest bench/bench_jit.py --benchmark-json=bench/jit.json
Each round is a fresh interpreter that imports sparsenet and runs one forward + backward.
"""
import os
import subprocess
import sys
import tempfile
import time

import pytest

SCRIPT = """
import time, numpy as np
t0 = time.perf_counter()
import sparsenet, sparsenet.functional as F
t1 = time.perf_counter()
w = sparsenet.CSRMatrix.random((100, 80), 0.1, rng=0)
x = np.ones((8, 80), np.float32)
F.sparse_linear_backward(np.ones((8, 100), np.float32), x, w)
F.sparse_linear(x, w)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def _run(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return [float(v) for v in out.stdout.split()]


@pytest.mark.parametrize("cache", ["cold", "cached"])
def test_first_call_latency(benchmark, cache):
    with tempfile.TemporaryDirectory() as cache_dir:
        if cache == "cached":
            _run(cache_dir)
        times = []

        def once():
            if cache == "cold":
                for entry in os.scandir(cache_dir):
                    subprocess.run(["rm", "-rf", entry.path], check=True)
            times.append(_run(cache_dir))

        benchmark.group = "first-call"
        benchmark.pedantic(once, rounds=3, iterations=1)
        benchmark.extra_info.update(import_s=min(t[0] for t in times), first_call_s=min(t[1] for t in times))
