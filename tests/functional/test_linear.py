"""sparsenet.functional linear ops: sparse (CSR) and dense, forward and backward."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sparsenet.functional as F
from sparsenet import CSRMatrix
from sparsenet.testing import gradcheck

TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def make(rng, batch, n_in, n_out, density, dtype):
    w = CSRMatrix.random((n_out, n_in), density, rng=rng, dtype=dtype, data_rvs=lambda n: rng.standard_normal(n))
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    g = rng.standard_normal((batch, n_out)).astype(dtype)
    return w, x, b, g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_linear_matches_dense(rng, dtype):
    w, x, b, g = make(rng, 16, 30, 20, 0.2, dtype)
    wd = w.to_dense()
    y = F.sparse_linear(x, w, b)
    assert y.dtype == dtype and y.shape == (16, 20)
    np.testing.assert_allclose(y, x @ wd.T + b, **TOL[dtype])
    np.testing.assert_allclose(F.sparse_linear(x, w), x @ wd.T, **TOL[dtype])
    np.testing.assert_allclose(F.linear(x, wd, b), x @ wd.T + b, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_linear_backward_matches_dense(rng, dtype):
    w, x, b, g = make(rng, 16, 30, 20, 0.2, dtype)
    wd = w.to_dense()
    gx, gw, gb = F.sparse_linear_backward(g, x, w)
    assert (gx.dtype, gw.dtype, gb.dtype) == (dtype,) * 3
    assert gx.shape == x.shape and gw.shape == (w.nnz,) and gb.shape == (20,)
    rows = np.repeat(np.arange(20), np.diff(w.indptr))
    np.testing.assert_allclose(gx, g @ wd, **TOL[dtype])
    np.testing.assert_allclose(gw, (g.T @ x)[rows, w.indices], **TOL[dtype])
    np.testing.assert_allclose(gb, g.sum(0), **TOL[dtype])
    dgx, dgw, dgb = F.linear_backward(g, x, wd)
    np.testing.assert_allclose(dgx, gx, **TOL[dtype])
    np.testing.assert_allclose(dgw[rows, w.indices], gw, **TOL[dtype])
    np.testing.assert_allclose(dgb, gb, **TOL[dtype])


def test_sparse_linear_gradcheck(rng):
    w, x, b, g = make(rng, 7, 11, 9, 0.3, np.float64)

    def fn(x_, data_, b_):
        return F.sparse_linear(x_, CSRMatrix(data_, w.indices, w.indptr, w.shape, check=False), b_)

    gx, gw, gb = F.sparse_linear_backward(g, x, w)
    gradcheck(fn, [x, w.data, b], g, [gx, gw, gb], rng=rng)


def test_dense_linear_gradcheck(rng):
    x, wd, b = rng.standard_normal((5, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    g = rng.standard_normal((5, 3))
    gradcheck(F.linear, [x, wd, b], g, list(F.linear_backward(g, x, wd)), rng=rng)


def test_gradcheck_catches_a_wrong_gradient(rng):
    x = rng.standard_normal(4)
    with pytest.raises(AssertionError, match="input 0"):
        gradcheck(lambda a: a**2, [x], np.ones(4), [3 * x], rng=rng)


def test_leading_dimensions_like_pytorch(rng):
    w, _, b, _ = make(rng, 1, 6, 4, 0.5, np.float64)
    x3 = rng.standard_normal((2, 3, 6))
    y = F.sparse_linear(x3, w, b)
    assert y.shape == (2, 3, 4)
    np.testing.assert_allclose(y, x3 @ w.to_dense().T + b)
    g3 = rng.standard_normal((2, 3, 4))
    gx, gw, gb = F.sparse_linear_backward(g3, x3, w)
    assert gx.shape == x3.shape
    np.testing.assert_allclose(gx, g3 @ w.to_dense())
    np.testing.assert_allclose(gb, g3.reshape(-1, 4).sum(0))
    assert F.sparse_linear(x3[0, 0], w).shape == (4,)


def test_non_contiguous_inputs_and_no_mutation(rng):
    w, x, b, g = make(rng, 10, 8, 6, 0.4, np.float64)
    xs, gs = np.asfortranarray(x)[::2], g[::2]
    x_before, g_before = xs.copy(), gs.copy()
    np.testing.assert_allclose(F.sparse_linear(xs, w), xs @ w.to_dense().T)
    gx, _, _ = F.sparse_linear_backward(gs, xs, w)
    np.testing.assert_allclose(gx, gs @ w.to_dense())
    np.testing.assert_array_equal(xs, x_before)
    np.testing.assert_array_equal(gs, g_before)


def test_output_of_one_layer_feeds_the_next(rng):
    w1, x, _, _ = make(rng, 5, 7, 9, 0.5, np.float32)
    w2 = CSRMatrix.random((3, 9), 0.5, rng=rng)
    h = F.sparse_linear(x, w1)
    np.testing.assert_allclose(F.sparse_linear(h, w2), (x @ w1.to_dense().T) @ w2.to_dense().T, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch_and_empty_weight(dtype):
    w = CSRMatrix.random((4, 3), 0.0, dtype=dtype)
    y = F.sparse_linear(np.ones((2, 3), dtype), w, np.ones(4, dtype))
    np.testing.assert_array_equal(y, np.ones((2, 4)))
    gx, gw, gb = F.sparse_linear_backward(np.zeros((0, 4), dtype), np.zeros((0, 3), dtype), w)
    assert gx.shape == (0, 3) and gw.shape == (0,) and gb.shape == (4,)


def test_bad_inputs_raise_clear_errors(rng):
    w, x, b, g = make(rng, 4, 5, 3, 0.5, np.float32)
    with pytest.raises(ValueError, match=r"in_features=5.*\(4, 6\)"):
        F.sparse_linear(np.ones((4, 6), np.float32), w)
    with pytest.raises(TypeError, match="float64 but the weight is float32"):
        F.sparse_linear(x.astype(np.float64), w)
    with pytest.raises(TypeError, match="float32 or float64"):
        F.sparse_linear(np.ones((4, 5), np.int64), w)
    with pytest.raises(TypeError, match="CSRMatrix"):
        F.sparse_linear(x, w.to_dense())
    with pytest.raises(ValueError, match="bias must have shape"):
        F.sparse_linear(x, w, np.ones(4, np.float32))
    with pytest.raises(TypeError, match="bias"):
        F.sparse_linear(x, w, np.ones(3, np.float64))
    with pytest.raises(ValueError, match="out_features=3"):
        F.sparse_linear_backward(np.ones((4, 2), np.float32), x, w)
    with pytest.raises(ValueError, match="leading dimensions"):
        F.sparse_linear_backward(np.ones((3, 3), np.float32), x, w)
    with pytest.raises(ValueError, match="in_features"):
        F.sparse_linear(np.float32(1.0), w)
    with pytest.raises(ValueError, match="2-D"):
        F.linear(x, np.ones(5, np.float32))


def test_nan_propagates_without_error(rng):
    w, x, b, g = make(rng, 3, 4, 2, 1.0, np.float64)
    x[0, 0] = np.nan
    y = F.sparse_linear(x, w, b)
    assert np.isnan(y[0]).all() and np.isfinite(y[1:]).all()


@given(
    batch=st.integers(0, 20),
    n_in=st.integers(1, 20),
    n_out=st.integers(1, 20),
    density=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_sparse_linear_property(batch, n_in, n_out, density, dtype, seed):
    w, x, b, g = make(np.random.default_rng(seed), batch, n_in, n_out, density, dtype)
    wd = w.to_dense().astype(np.float64)
    np.testing.assert_allclose(F.sparse_linear(x, w, b), x @ wd.T + b, **TOL[dtype])
    gx, gw, gb = F.sparse_linear_backward(g, x, w)
    np.testing.assert_allclose(gx, g @ wd, **TOL[dtype])


def test_torch_oracle(rng):
    torch = pytest.importorskip("torch")
    w, x, b, g = make(rng, 8, 12, 10, 0.3, np.float64)
    tw = torch.tensor(w.to_dense(), requires_grad=True)
    tx = torch.tensor(x, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(F.sparse_linear(x, w, b), ty.detach().numpy(), rtol=1e-12)
    gx, gw, gb = F.sparse_linear_backward(g, x, w)
    rows = np.repeat(np.arange(10), np.diff(w.indptr))
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(gw, tw.grad.numpy()[rows, w.indices], rtol=1e-12)
    np.testing.assert_allclose(gb, tb.grad.numpy(), rtol=1e-12)
