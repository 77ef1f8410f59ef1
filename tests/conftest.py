import os
import zlib

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("ci", deadline=None, derandomize=True, max_examples=40)
settings.register_profile("dev", deadline=None, max_examples=60)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


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
    y = np.maximum(np.asarray(x), 0)
    flat = y.reshape(-1)  # a view: y is a fresh C-ordered array
    flat[0::5] = np.nan  # NaN > 0 is False: gated to zero, as the ReLU backward does
    flat[1::7] = np.inf
    flat[2::6] = -0.0
    return y


@pytest.fixture
def relu_gate():
    """``relu_gate(x)``: a ReLU's output for x with NaN, +inf and -0.0 sprinkled in, the values
    on which ``gate > 0`` and a careless rewrite of it (``not gate <= 0``, ``gate != 0``) differ."""
    return _relu_gate
