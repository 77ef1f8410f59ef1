"""Convolution and pooling kernels (through the sparsenet.kernels dispatch) against kernels.reference."""
import numpy as np
import pytest

from sparsenet import CSRMatrix, kernels
from sparsenet.kernels import reference as ref

TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}

# (N, C, H, W, O, KH, KW, stride, padding, dilation, groups)
GEOMETRIES = [
    (2, 3, 8, 9, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1),      # same-size 3x3
    (2, 4, 7, 8, 6, 3, 2, (1, 1), (1, 0), (1, 1), 2),      # non-square kernel, groups
    (2, 3, 9, 7, 4, 3, 3, (2, 1), (1, 2), (1, 2), 1),      # mixed stride, padding, dilation
    (1, 4, 5, 5, 4, 5, 5, (1, 1), (0, 0), (1, 1), 4),      # kernel equal to the input, depthwise
    (2, 2, 6, 6, 3, 1, 1, (2, 2), (0, 0), (1, 1), 1),      # 1x1 strided
    (1, 2, 10, 11, 3, 3, 3, (3, 2), (2, 1), (2, 1), 1),    # stride 3
    (5, 2, 28, 28, 3, 3, 3, (1, 1), (1, 1), (1, 1), 1),    # 2 images stacked per plane, batch padded
    (5, 2, 40, 40, 3, 3, 3, (2, 2), (1, 1), (1, 1), 1),    # 4 images stacked per phase plane
]


def _case(rng, geom, dtype):
    n, c, h, w, o, kh, kw, s, p, d, g = geom
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((o, c // g, kh, kw)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    return x, wt, b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", GEOMETRIES)
def test_conv2d_kernels_match_reference(rng, geom, dtype):
    s, p, d, g = geom[7:]
    x, wt, b = _case(rng, geom, dtype)
    y = kernels.conv2d(x, wt, b, s, p, d)
    assert y.dtype == dtype and y.flags.c_contiguous
    np.testing.assert_allclose(y, ref.conv2d(x, wt, b, s, p, d, g), **TOL[dtype])
    gout = rng.standard_normal(y.shape).astype(dtype)
    gx, gw = kernels.conv2d_backward(gout, x, wt, s, p, d)
    rx, rw, _ = ref.conv2d_backward(gout, x, wt, s, p, d, g)
    assert gx.dtype == gw.dtype == dtype
    np.testing.assert_allclose(gx, rx, **TOL[dtype])
    np.testing.assert_allclose(gw, rw, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", GEOMETRIES)
def test_sparse_conv2d_kernels_match_reference(rng, geom, dtype):
    n, c, h, w, o, kh, kw, s, p, d, g = geom
    x, _, b = _case(rng, geom, dtype)
    wt = CSRMatrix.random((o, c // g * kh * kw), 0.3, rng=rng, dtype=dtype, data_rvs=rng.standard_normal)
    dense = wt.to_dense().reshape(o, c // g, kh, kw)
    y = kernels.sparse_conv2d(x, wt.indptr, wt.indices, wt.data, (kh, kw), b, s, p, d, g)
    np.testing.assert_allclose(y, ref.conv2d(x, dense, b, s, p, d, g), **TOL[dtype])
    gout = rng.standard_normal(y.shape).astype(dtype)
    gx, gw = kernels.sparse_conv2d_backward(gout, x, wt.indptr, wt.indices, wt.data, (kh, kw), s, p, d, g)
    rx, rw, _ = ref.conv2d_backward(gout, x, dense, s, p, d, g)
    rows = np.repeat(np.arange(o), np.diff(wt.indptr))
    np.testing.assert_allclose(gx, rx, **TOL[dtype])
    np.testing.assert_allclose(gw, rw.reshape(o, -1)[rows, wt.indices], **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", [(2, 3, 7, 8, 4, 3, 2, (1, 1), (1, 0)), (2, 2, 9, 7, 3, 3, 3, (2, 1), (1, 1))])
def test_local2d_kernels_match_reference(rng, geom, dtype):
    n, c, h, w, o, kh, kw, s, p = geom
    oh = (h + 2 * p[0] - kh) // s[0] + 1
    ow = (w + 2 * p[1] - kw) // s[1] + 1
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((oh, ow, o, c * kh * kw)).astype(dtype)
    b = rng.standard_normal((o, oh, ow)).astype(dtype)
    y = kernels.local2d(x, wt, b, (kh, kw), s, p)
    np.testing.assert_allclose(y, ref.local2d(x, wt, b, (kh, kw), s, p), **TOL[dtype])
    gout = rng.standard_normal(y.shape).astype(dtype)
    gx, gw = kernels.local2d_backward(gout, x, wt, (kh, kw), s, p)
    rx, rw, _ = ref.local2d_backward(gout, x, wt, (kh, kw), s, p)
    np.testing.assert_allclose(gx, rx, **TOL[dtype])
    np.testing.assert_allclose(gw, rw, **TOL[dtype])


POOLS = [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 1), (1, 1)), ((3, 2), (1, 1), (1, 1)), ((7, 8), (1, 1), (0, 0))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, s, p", POOLS)
def test_pool_kernels_match_reference(rng, k, s, p, dtype):
    x = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    y = kernels.max_pool2d(x, k, s, p)
    np.testing.assert_array_equal(y, ref.max_pool2d(x, k, s, p))
    g = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(kernels.max_pool2d_backward(g, x, k, s, p), ref.max_pool2d_backward(g, x, k, s, p),
                               **TOL[dtype])
    np.testing.assert_allclose(kernels.avg_pool2d(x, k, s, p), ref.avg_pool2d(x, k, s, p), **TOL[dtype])
    np.testing.assert_allclose(kernels.avg_pool2d_backward(g, x.shape, dtype, k, s, p),
                               ref.avg_pool2d_backward(g, x.shape, k, s, p), **TOL[dtype])


def test_max_pool_propagates_nan_and_first_max_wins():
    x = np.array([[[[1.0, np.nan], [3.0, 3.0]]]])
    assert np.isnan(kernels.max_pool2d(x, (2, 2), (2, 2), (0, 0))).all()
    x = np.array([[[[3.0, 1.0], [3.0, 3.0]]]])
    gx = kernels.max_pool2d_backward(np.ones((1, 1, 1, 1)), x, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(gx, [[[[1.0, 0.0], [0.0, 0.0]]]])


def test_conv2d_deterministic_across_thread_counts(rng):
    import numba
    x, wt, b = _case(rng, GEOMETRIES[0], np.float32)
    g = rng.standard_normal((2, 4, 8, 9)).astype(np.float32)
    before = numba.get_num_threads()
    try:
        results = []
        for t in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(t)
            results.append((kernels.conv2d(x, wt, b, (1, 1), (1, 1), (1, 1)),)
                           + kernels.conv2d_backward(g, x, wt, (1, 1), (1, 1), (1, 1)))
    finally:
        numba.set_num_threads(before)
    for a, b_ in zip(results[0], results[-1]):
        np.testing.assert_array_equal(a, b_)
