"""sparsenet.functional convolutions (dense, weight-sparse, locally connected): values, gradients, errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsenet.functional as F
from sparsenet import CSRMatrix
from sparsenet.kernels import reference as ref
from sparsenet.testing import gradcheck

TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}

# (N, C, H, W, O, KH, KW, stride, padding, dilation, groups)
GEOMS = [
    (2, 3, 7, 8, 4, 3, 3, 1, 1, 1, 1),
    (2, 4, 9, 7, 6, (3, 2), None, (2, 1), (1, 0), (1, 2), 2),
    (1, 4, 6, 6, 8, 3, 3, 2, 1, 1, 4),           # depthwise multiplier 2
    (2, 2, 5, 5, 3, 5, 5, 1, 0, 1, 1),           # kernel = input
]


def _make(rng, geom, dtype):
    n, c, h, w, o, k, _, s, p, d, g = geom
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((o, c // g, kh, kw)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    return x, wt, b, dict(stride=s, padding=p, dilation=d, groups=g)


def _pairs(kw):
    def pr(v):
        return (v, v) if isinstance(v, int) else tuple(v)
    return pr(kw["stride"]), pr(kw["padding"]), pr(kw["dilation"]), kw["groups"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", GEOMS)
def test_conv2d_matches_reference(rng, geom, dtype):
    x, wt, b, kw = _make(rng, geom, dtype)
    y = F.conv2d(x, wt, b, **kw)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ref.conv2d(x, wt, b, *_pairs(kw)), **TOL[dtype])
    g = rng.standard_normal(y.shape).astype(dtype)
    gx, gw, gb = F.conv2d_backward(g, x, wt, **kw)
    rx, rw, rb = ref.conv2d_backward(g, x, wt, *_pairs(kw))
    assert gx.shape == x.shape and gw.shape == wt.shape and gb.shape == b.shape
    for a, r in ((gx, rx), (gw, rw), (gb, rb)):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, r, **TOL[dtype])


@pytest.mark.parametrize("geom", GEOMS)
def test_conv2d_matches_torch(rng, geom):
    torch = pytest.importorskip("torch")
    x, wt, b, kw = _make(rng, geom, np.float64)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(wt, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, **kw)
    g = rng.standard_normal(ty.shape)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(F.conv2d(x, wt, b, **kw), ty.detach().numpy(), **TOL[np.float64])
    for a, t in zip(F.conv2d_backward(g, x, wt, **kw), (tx, tw, tb)):
        np.testing.assert_allclose(a, t.grad.numpy(), **TOL[np.float64])


@pytest.mark.parametrize("geom", GEOMS)
def test_conv2d_gradcheck_and_adjoint(rng, geom):
    x, wt, b, kw = _make(rng, geom, np.float64)
    g = rng.standard_normal(F.conv2d(x, wt, b, **kw).shape)
    gx, gw, gb = F.conv2d_backward(g, x, wt, **kw)
    gradcheck(lambda x_, w_, b_: F.conv2d(x_, w_, b_, **kw), [x, wt, b], g, [gx, gw, gb], rng=rng)
    # Adjoint identity of the linear map x -> conv(x, w): <conv(x), g> == <x, grad_x(g)>.
    lhs = np.sum(F.conv2d(x, wt, **kw) * g)
    np.testing.assert_allclose(lhs, np.sum(x * gx), rtol=1e-12)
    np.testing.assert_allclose(lhs, np.sum(wt * gw), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", GEOMS)
def test_sparse_conv2d_equals_dense_conv_on_densified_kernel(rng, geom, dtype):
    x, wt, b, kw = _make(rng, geom, dtype)
    o, cg, kh, kwid = wt.shape
    w = CSRMatrix.random((o, cg * kh * kwid), 0.25, rng=rng, dtype=dtype, data_rvs=rng.standard_normal)
    dense = w.to_dense().reshape(wt.shape)
    y = F.sparse_conv2d(x, w, (kh, kwid), b, **kw)
    np.testing.assert_allclose(y, F.conv2d(x, dense, b, **kw), **TOL[dtype])
    g = rng.standard_normal(y.shape).astype(dtype)
    gx, gw, gb = F.sparse_conv2d_backward(g, x, w, (kh, kwid), **kw)
    dx, dw, db = F.conv2d_backward(g, x, dense, **kw)
    rows = np.repeat(np.arange(o), np.diff(w.indptr))
    assert gw.shape == (w.nnz,)
    np.testing.assert_allclose(gx, dx, **TOL[dtype])
    np.testing.assert_allclose(gw, dw.reshape(o, -1)[rows, w.indices], **TOL[dtype])
    np.testing.assert_allclose(gb, db, **TOL[dtype])


def test_sparse_conv2d_gradcheck(rng):
    x, wt, b, kw = _make(rng, GEOMS[1], np.float64)
    o, cg, kh, kwid = wt.shape
    w = CSRMatrix.random((o, cg * kh * kwid), 0.4, rng=rng, dtype=np.float64, data_rvs=rng.standard_normal)

    def fn(x_, data_, b_):
        return F.sparse_conv2d(x_, CSRMatrix(data_, w.indices, w.indptr, w.shape, check=False), (kh, kwid), b_, **kw)

    g = rng.standard_normal(fn(x, w.data, b).shape)
    gradcheck(fn, [x, w.data, b], g, list(F.sparse_conv2d_backward(g, x, w, (kh, kwid), **kw)), rng=rng)


def test_sparse_conv2d_empty_pattern_gives_bias(rng):
    x = rng.standard_normal((2, 3, 5, 5))
    w = CSRMatrix.from_dense(np.zeros((4, 27)))
    b = np.arange(4.0)
    y = F.sparse_conv2d(x, w, 3, b, padding=1)
    np.testing.assert_array_equal(y, np.broadcast_to(b[:, None, None], (2, 4, 5, 5)))
    gx, gw, gb = F.sparse_conv2d_backward(np.ones_like(y), x, w, 3, padding=1)
    assert gw.shape == (0,) and not gx.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride, padding", [(1, 0), ((2, 1), (1, 2))])
def test_locally_connected_with_tied_weights_equals_conv(rng, dtype, stride, padding):
    x = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 2)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    y = F.conv2d(x, w, b, stride=stride, padding=padding)
    oh, ow = y.shape[2:]
    tied = np.broadcast_to(w, (oh, ow) + w.shape)
    tied_b = np.broadcast_to(b[:, None, None], (4, oh, ow))
    np.testing.assert_allclose(F.locally_connected2d(x, tied, tied_b, stride=stride, padding=padding), y, **TOL[dtype])
    g = rng.standard_normal(y.shape).astype(dtype)
    gx, gw, gb = F.locally_connected2d_backward(g, x, tied, stride=stride, padding=padding)
    cx, cw, cb = F.conv2d_backward(g, x, w, stride=stride, padding=padding)
    np.testing.assert_allclose(gx, cx, **TOL[dtype])
    np.testing.assert_allclose(gw.sum(axis=(0, 1)), cw, **TOL[dtype])   # tied weights: gradients add up
    np.testing.assert_allclose(gb.sum(axis=(1, 2)), cb, **TOL[dtype])


def test_locally_connected_gradcheck(rng):
    x = rng.standard_normal((2, 2, 6, 5))
    w = rng.standard_normal((3, 3, 3, 2, 3, 3))     # stride 2, padding 1 -> 3x3 positions
    b = rng.standard_normal((3, 3, 3))
    kw = dict(stride=2, padding=1)
    g = rng.standard_normal(F.locally_connected2d(x, w, b, **kw).shape)
    grads = F.locally_connected2d_backward(g, x, w, **kw)
    assert grads[1].shape == w.shape and grads[2].shape == b.shape
    gradcheck(lambda x_, w_, b_: F.locally_connected2d(x_, w_, b_, **kw), [x, w, b], g, list(grads), rng=rng)


def test_non_contiguous_inputs_and_no_mutation(rng):
    x = rng.standard_normal((2, 3, 8, 6)).transpose(0, 1, 3, 2)   # (2, 3, 6, 8), not C-contiguous
    w = rng.standard_normal((4, 3, 3, 3))[:, :, ::-1]              # negative strides
    g = rng.standard_normal((2, 4, 6, 8))
    copies = [a.copy() for a in (x, w, g)]
    y = F.conv2d(x, w, padding=1)
    np.testing.assert_allclose(y, ref.conv2d(x, w, None, (1, 1), (1, 1), (1, 1), 1), rtol=1e-10, atol=1e-12)
    F.conv2d_backward(g, x, w, padding=1)
    for a, c in zip((x, w, g), copies):
        np.testing.assert_array_equal(a, c)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 2), cg=st.integers(1, 3), og=st.integers(1, 3), groups=st.integers(1, 2),
    h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4),
    sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
    dh=st.integers(1, 2), dw=st.integers(1, 2), density=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
)
def test_conv2d_hypothesis_geometry(n, cg, og, groups, h, w, kh, kw, sh, sw, ph, pw, dh, dw, density, seed):
    rng = np.random.default_rng(seed)
    c, o = cg * groups, og * groups
    kw_ = dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((o, cg, kh, kw))
    if h + 2 * ph < dh * (kh - 1) + 1 or w + 2 * pw < dw * (kw - 1) + 1:
        with pytest.raises(ValueError, match="larger than the padded input"):
            F.conv2d(x, wt, **kw_)
        return
    y = F.conv2d(x, wt, **kw_)
    pairs = ((sh, sw), (ph, pw), (dh, dw), groups)
    np.testing.assert_allclose(y, ref.conv2d(x, wt, None, *pairs), rtol=1e-10, atol=1e-12)
    g = rng.standard_normal(y.shape)
    gx, gw, _ = F.conv2d_backward(g, x, wt, **kw_)
    rx, rw, _ = ref.conv2d_backward(g, x, wt, *pairs)
    np.testing.assert_allclose(gx, rx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gw, rw, rtol=1e-10, atol=1e-12)
    ws = CSRMatrix.random((o, cg * kh * kw), density, rng=rng, dtype=np.float64, data_rvs=rng.standard_normal)
    np.testing.assert_allclose(F.sparse_conv2d(x, ws, (kh, kw), **kw_),
                               ref.conv2d(x, ws.to_dense().reshape(o, cg, kh, kw), None, *pairs),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("args, kwargs, match", [
    ((np.zeros((2, 3, 5)), np.zeros((4, 3, 3, 3))), {}, "4-D"),
    ((np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3))), {}, "weight must be 4-D"),
    ((np.zeros((2, 3, 5, 5)), np.zeros((4, 2, 3, 3))), {}, "x has 3 channels"),
    ((np.zeros((2, 4, 5, 5)), np.zeros((4, 2, 3, 3))), {"groups": 3}, "groups=3 must divide"),
    ((np.zeros((2, 4, 5, 5)), np.zeros((3, 2, 3, 3))), {"groups": 2}, "groups=2 must divide"),
    ((np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 7, 3))), {}, "larger than the padded input"),
    ((np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3))), {"dilation": 3}, "larger than the padded input"),
    ((np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3))), {"stride": 0}, "stride must be positive"),
    ((np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3))), {"padding": (1, -1)}, "padding must be non-negative"),
    ((np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3))), {"groups": 0}, "groups must be positive"),
    ((np.zeros((2, 0, 5, 5)), np.zeros((4, 0, 3, 3))), {}, "at least one channel"),
])
def test_conv2d_bad_geometry_raises(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        F.conv2d(*args, **kwargs)
    if match == "at least one channel":  # the backward and the weight-sparse conv say the same
        with pytest.raises(ValueError, match=match):
            F.conv2d_backward(np.zeros((2, 4, 3, 3)), *args, **kwargs)
        with pytest.raises(ValueError, match=match):
            F.sparse_conv2d(args[0], CSRMatrix.from_dense(np.zeros((4, 0))), 3)


def test_conv_type_errors():
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(TypeError, match="dtype"):
        F.conv2d(x.astype(np.float32), np.zeros((1, 1, 2, 2)))
    with pytest.raises(TypeError, match="int or a pair"):
        F.conv2d(x, np.zeros((1, 1, 2, 2)), stride=1.5)
    with pytest.raises(TypeError, match="CSRMatrix"):
        F.sparse_conv2d(x, np.zeros((1, 4)), 2)
    with pytest.raises(ValueError, match=r"\(1, 9\)"):
        F.sparse_conv2d(x, CSRMatrix.from_dense(np.ones((1, 4))), 3)
    with pytest.raises(ValueError, match="grad_out must have"):
        F.conv2d_backward(np.zeros((1, 1, 2, 2)), x, np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="one filter per output position"):
        F.locally_connected2d(x, np.zeros((2, 2, 1, 1, 2, 2)))
    with pytest.raises(ValueError, match="6-D"):
        F.locally_connected2d(x, np.zeros((3, 3, 1, 4)))
