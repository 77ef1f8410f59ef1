"""sparsenet.functional max/avg pooling: values (reference, torch), gradients, errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsenet.functional as F
from sparsenet.kernels import reference as ref
from sparsenet.testing import gradcheck

CASES = [(2, None, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 1)), (2, 1, 1)]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, s, p", CASES)
def test_pools_match_reference_and_torch(rng, k, s, p, dtype):
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    kk, ss, pp = _pair(k), _pair(k if s is None else s), _pair(p)
    y = F.max_pool2d(x, k, s, p)
    a = F.avg_pool2d(x, k, s, p)
    assert y.dtype == a.dtype == dtype
    np.testing.assert_array_equal(y, ref.max_pool2d(x, kk, ss, pp))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(a, ref.avg_pool2d(x, kk, ss, pp), **tol)
    g = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(F.max_pool2d_backward(g, x, k, s, p), ref.max_pool2d_backward(g, x, kk, ss, pp), **tol)
    np.testing.assert_allclose(F.avg_pool2d_backward(g, x, k, s, p), ref.avg_pool2d_backward(g, x.shape, kk, ss, pp), **tol)
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x)
    np.testing.assert_array_equal(y, torch.nn.functional.max_pool2d(tx, k, s, p).numpy())
    np.testing.assert_allclose(a, torch.nn.functional.avg_pool2d(tx, k, s, p).numpy(), **tol)


@pytest.mark.parametrize("k, s, p", CASES)
def test_pool_gradcheck(rng, k, s, p):
    # Distinct, well separated values keep every max-pool window away from a tie (a kink):
    # a random permutation of a grid with spacing 1 and eps = 1e-6 is resampled per test.
    x = rng.permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6).astype(np.float64)
    g = rng.standard_normal(F.max_pool2d(x, k, s, p).shape)
    gradcheck(lambda a: F.max_pool2d(a, k, s, p), [x], g, [F.max_pool2d_backward(g, x, k, s, p)], rng=rng)
    gradcheck(lambda a: F.avg_pool2d(a, k, s, p), [x], g, [F.avg_pool2d_backward(g, x, k, s, p)], rng=rng)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 8), w=st.integers(1, 8), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2), seed=st.integers(0, 999))
def test_pool_hypothesis_geometry(h, w, kh, kw, sh, sw, ph, pw, seed):
    x = np.random.default_rng(seed).standard_normal((1, 2, h, w))
    args = ((kh, kw), (sh, sw), (ph, pw))
    if ph > kh // 2 or pw > kw // 2:
        with pytest.raises(ValueError, match="at most half"):
            F.max_pool2d(x, *args)
        return
    if h + 2 * ph < kh or w + 2 * pw < kw:
        with pytest.raises(ValueError, match="larger than the padded input"):
            F.avg_pool2d(x, *args)
        return
    np.testing.assert_array_equal(F.max_pool2d(x, *args), ref.max_pool2d(x, *args))
    np.testing.assert_allclose(F.avg_pool2d(x, *args), ref.avg_pool2d(x, *args), rtol=1e-12, atol=1e-15)


def test_pool_errors():
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ValueError, match="4-D"):
        F.max_pool2d(np.zeros((4, 4)), 2)
    with pytest.raises(ValueError, match="stride must be positive"):
        F.avg_pool2d(x, 2, 0)
    with pytest.raises(ValueError, match="kernel_size must be positive"):
        F.max_pool2d(x, 0)
    with pytest.raises(ValueError, match="larger than the padded input"):
        F.max_pool2d(x, 5)
    with pytest.raises(TypeError, match="float32 or float64"):
        F.max_pool2d(x.astype(int), 2)
    with pytest.raises(ValueError, match="grad_out must have"):
        F.max_pool2d_backward(np.zeros((1, 1, 3, 3)), x, 2)
