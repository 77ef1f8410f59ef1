"""Run the CUDA kernel suite in Numba's CUDA simulator, in its own process.

NUMBA_ENABLE_CUDASIM must be set before numba is first imported, so it cannot share this process.
"""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_cuda_suite_passes_in_the_simulator():
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (pip install '.[cuda]')")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/cuda"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert " passed" in out.stdout
