"""Run the CUDA kernel suite in Numba's CUDA simulator, in its own process.

NUMBA_ENABLE_CUDASIM must be set before numba is first imported, so it cannot share this process.
"""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _workers():
    """pytest-xdist workers for the simulator suite: one per core, up to 4.  The simulator runs
    every CUDA thread as a Python thread under one GIL, so a single process uses one core; the
    main pytest process only waits meanwhile."""
    try:
        import xdist  # noqa: F401
    except ImportError:
        return []
    n = min(os.cpu_count() or 1, 4)
    return ["-n", str(n)] if n > 1 else []


def test_cuda_suite_passes_in_the_simulator():
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (pip install '.[cuda]')")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_workers(), "tests/cuda"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert " passed" in out.stdout


def test_cpu_training_never_imports_numba_cuda():
    """numba.cuda is imported only when a device array arrives: CPU users never pay for it."""
    code = (
        "import sys, numpy as np\n"
        "from sparsenet import nn, optim, train\n"
        "m = nn.Sequential(nn.SparseLinear(4, 8, rng=0), nn.ReLU(), nn.Linear(8, 2, rng=1))\n"
        "x = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)\n"
        "y = (x[:, 0] > 0).astype(np.int64)\n"
        "train.fit(m, nn.CrossEntropyLoss(), optim.Adam(m.parameters()), (x, y), epochs=1, progress=False)\n"
        "m.state_dict(); train.evaluate(m, (x, y))\n"
        "assert 'numba.cuda' not in sys.modules, 'numba.cuda was imported by CPU training'\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
