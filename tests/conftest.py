import os
import sys
import zlib

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("ci", deadline=None, derandomize=True, max_examples=40)
settings.register_profile("dev", deadline=None, max_examples=60)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_configure(config):
    """pytest-xdist workers sharing one explicit NUMBA_CACHE_DIR each get a subfolder of it.

    numba saves a new compiled variant under the lowest free file number without a lock, so two
    processes compiling one kernel for two dtypes at once can leave an index entry pointing at
    the other's code (numba/numba#10128): wrong results for every later process.  Applied
    where the cache dir is set explicitly (bench/gpu_session.sh); the in-tree default is left
    alone.  A plugin may have imported numba already: its config modules are updated too.
    """
    worker, base = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("NUMBA_CACHE_DIR")
    if worker and base:
        os.environ["NUMBA_CACHE_DIR"] = os.path.join(base, worker)
        for name in ("numba.core.config", "numba.cuda.core.config"):
            if name in sys.modules:
                sys.modules[name].CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]


@pytest.fixture
def rng(request):
    """A Generator seeded from the test's name: reproducible, different per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def _assert_same_bits(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    np.testing.assert_array_equal(a.view(f"u{a.dtype.itemsize}"), b.view(f"u{b.dtype.itemsize}"))


@pytest.fixture
def same_bits():
    """``same_bits(a, b)`` asserts equal shapes, dtypes and bits of two host arrays (signed zeros
    included, which assert_array_equal takes as equal): what a fused op must reproduce."""
    return _assert_same_bits


def _relu_gate(x):
    y = np.maximum(x, 0, order="C")
    flat = y.reshape(-1)  # a view: y is C-ordered whatever x's layout
    flat[0::5] = np.nan  # NaN > 0 is False: gated to zero, as the ReLU backward does
    flat[1::7] = np.inf
    flat[2::6] = -0.0
    return y


@pytest.fixture
def relu_gate():
    """``relu_gate(x)``: a ReLU's output for x with NaN, +inf and -0.0 sprinkled in, the values
    on which ``gate > 0`` and a careless rewrite of it (``not gate <= 0``, ``gate != 0``) differ."""
    return _relu_gate
