"""CUDA weight-sparse convolution and training-step kernels against their CPU twins.

Simulator or GPU only (see conftest.py).  The CPU side is the host branch of the same dispatch
function in ``sparsenet.kernels`` (or kernels/reference.py), both dtypes, tiny shapes that are
not a multiple of the (shrunk) block geometry, F- and C-ordered operands, empty inputs.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsenet.functional as F
import sparsenet.kernels as K
from sparsenet import CSRMatrix
from sparsenet.kernels import reference as ref

pytestmark = pytest.mark.usefixtures("small_geometry")

DTYPES = [np.float32, np.float64]
cuda = pytest.importorskip("numba.cuda")


def _kc():
    from sparsenet.kernels import cuda as kc

    return kc


def _dev(a):
    return cuda.to_device(np.asarray(a))


def _host(a):
    return _kc().to_host(a)


def _tol(dtype):
    return dict(rtol=3e-5, atol=3e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def _is_dev(a):
    return cuda.devicearray.is_cuda_ndarray(a)


# ----------------------------------------------------------------------------- weight-sparse conv
# (N, C, H, W), (O, KH, KW), stride, padding, dilation, groups, density, empty filters
SPARSE_CONV_CASES = [
    ((1, 2, 4, 6), (3, 3, 2), (1, 1), (1, 0), (1, 1), 1, 0.5, (1,)),
    ((2, 2, 6, 5), (2, 2, 3), (2, 1), (0, 1), (2, 1), 1, 0.7, ()),
    ((1, 4, 5, 4), (4, 1, 3), (1, 2), (0, 1), (1, 1), 2, 0.6, (0, 3)),
    ((1, 1, 3, 3), (2, 3, 3), (1, 1), (1, 1), (1, 1), 1, 0.0, ()),
    ((6, 2, 4, 3), (3, 2, 2), (1, 1), (1, 0), (1, 1), 1, 0.6, (2,)),  # 4 + 2 samples a thread
]


def test_sparse_conv2d_of_an_empty_plane_is_the_bias(rng):
    """Zero input rows with padding still give outputs: the bias, as on the host (every tap
    falls in the padding; none may be read)."""
    w = CSRMatrix.from_dense(rng.standard_normal((2, 1 * 1 * 3)).astype(np.float32))
    x = np.zeros((1, 1, 0, 3), np.float32)
    bias = np.array([1.5, -2.0], np.float32)
    geo = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    y = F.sparse_conv2d(x, w, (1, 3), bias, **geo)
    assert y.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(y, np.broadcast_to(bias[None, :, None, None], y.shape))
    yd = F.sparse_conv2d(_dev(x), w.to("cuda"), (1, 3), _dev(bias), **geo)
    np.testing.assert_array_equal(_host(yd), y)
    g = rng.standard_normal(y.shape).astype(np.float32)
    host = F.sparse_conv2d_backward(g, x, w, (1, 3), **geo)
    dev = F.sparse_conv2d_backward(_dev(g), _dev(x), w.to("cuda"), (1, 3), **geo)
    with pytest.raises(ValueError, match="output's shape"):  # a short g would be read past its end
        K.sparse_conv2d_backward(_dev(np.ascontiguousarray(g[:, :, :1])), _dev(x), *(_dev(a) for a in (w.indptr, w.indices, w.data)),
                                 (1, 3), (1, 1), (1, 1), (1, 1), 1)
    for a, b in zip(dev, host):  # grad_x empty, grad_w zeros (all taps in the padding), grad_b sums
        np.testing.assert_allclose(_host(a), b, rtol=1e-6)
    assert not _host(dev[1]).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SPARSE_CONV_CASES, ids=[f"case{i}" for i in range(len(SPARSE_CONV_CASES))])
def test_sparse_conv2d_matches_dense_reference(rng, same_bits, relu_gate, dtype, case):
    x_shape, (o, kh, kw), stride, padding, dilation, groups, density, empty = case
    c_g = x_shape[1] // groups
    dense = rng.standard_normal((o, c_g * kh * kw)) * (rng.random((o, c_g * kh * kw)) < density)
    dense[list(empty)] = 0
    w = CSRMatrix.from_dense(dense.astype(dtype))
    x = rng.standard_normal(x_shape).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype)
    w4 = dense.reshape(o, c_g, kh, kw).astype(dtype)
    geometry = ((kh, kw), stride, padding, dilation, groups)
    y_ref = ref.conv2d(x, w4, bias, stride, padding, dilation, groups)
    wd = w.to("cuda")
    y = K.sparse_conv2d(_dev(x), wd.indptr, wd.indices, wd.data, (kh, kw), _dev(bias), stride, padding,
                        dilation, groups)
    assert _is_dev(y) and y.shape == y_ref.shape and y.dtype == dtype
    np.testing.assert_allclose(_host(y), y_ref, **_tol(dtype))
    np.testing.assert_allclose(_host(y), K.sparse_conv2d(x, w.indptr, w.indices, w.data, (kh, kw), bias, stride,
                                                         padding, dilation, groups), **_tol(dtype))

    g = rng.standard_normal(y_ref.shape).astype(dtype)
    gx_ref, gw_ref, _ = ref.conv2d_backward(g, x, w4, stride, padding, dilation, groups)
    gx, gw = K.sparse_conv2d_backward(_dev(g), _dev(x), wd.indptr, wd.indices, wd.data, *geometry)
    assert gx.dtype == dtype and gw.shape == (w.nnz,)
    np.testing.assert_allclose(_host(gx), gx_ref, **_tol(dtype))
    rows = np.repeat(np.arange(o), np.diff(w.indptr))
    np.testing.assert_allclose(_host(gw), gw_ref.reshape(o, -1)[rows, w.indices], **_tol(dtype))
    only_w = K.sparse_conv2d_backward(_dev(g), _dev(x), wd.indptr, wd.indices, wd.data, *geometry,
                                      need_input=False)
    assert only_w[0] is None and only_w[1] is not None
    gate = relu_gate(x)  # a ReLU's output: its backward applied as grad_x is stored, bit for bit
    gated, _ = K.sparse_conv2d_backward(_dev(g), _dev(x), wd.indptr, wd.indices, wd.data, *geometry,
                                        need_weight=False, gate=_dev(gate))
    same_bits(_host(gated), _host(K.activation_backward("relu", _dev(gate), gx)))
    with pytest.raises(ValueError, match="gated result's shape"):
        K.sparse_conv2d_backward(_dev(g), _dev(x), wd.indptr, wd.indices, wd.data, *geometry,
                                 gate=_dev(np.zeros(x.shape[:3] + (x.shape[3] + 1,), dtype)))


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 2), cg=st.integers(1, 2), og=st.integers(1, 2), groups=st.integers(1, 2),
    h=st.integers(1, 6), w=st.integers(1, 6), kh=st.integers(1, 3), kw=st.integers(1, 3),
    sh=st.integers(1, 2), sw=st.integers(1, 2), ph=st.integers(0, 1), pw=st.integers(0, 1),
    dh=st.integers(1, 2), dw=st.integers(1, 2), density=st.floats(0.0, 1.0), f32=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_sparse_conv2d_hypothesis_through_functional(n, cg, og, groups, h, w, kh, kw, sh, sw, ph, pw, dh, dw,
                                                     density, f32, seed):
    """F.sparse_conv2d and its backward on device arrays equal the host ones over random geometry."""
    if h + 2 * ph < dh * (kh - 1) + 1 or w + 2 * pw < dw * (kw - 1) + 1:
        return  # rejected at the boundary, tested on the host
    dtype = np.float32 if f32 else np.float64
    rng = np.random.default_rng(seed)
    c, o = cg * groups, og * groups
    geo = dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    ws = CSRMatrix.random((o, cg * kh * kw), density, rng=rng, dtype=dtype, data_rvs=rng.standard_normal)
    bias = rng.standard_normal(o).astype(dtype)
    y = F.sparse_conv2d(x, ws, (kh, kw), bias, **geo)
    yd = F.sparse_conv2d(_dev(x), ws.to("cuda"), (kh, kw), _dev(bias), **geo)
    np.testing.assert_allclose(_host(yd), y, **_tol(dtype))
    g = rng.standard_normal(y.shape).astype(dtype)
    host = F.sparse_conv2d_backward(g, x, ws, (kh, kw), **geo)
    dev = F.sparse_conv2d_backward(_dev(g), _dev(x), ws.to("cuda"), (kh, kw), **geo)
    for a, b in zip(dev, host):
        assert _is_dev(a)
        np.testing.assert_allclose(_host(a), b, **_tol(dtype))


# (N, C, H, W), O, kernel, stride, padding
LOCAL_CASES = [
    ((2, 2, 4, 5), 3, (2, 3), (1, 2), (1, 0)),
    ((1, 1, 3, 3), 2, (3, 3), (1, 1), (1, 1)),
    ((3, 2, 5, 4), 1, (1, 2), (2, 1), (0, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LOCAL_CASES, ids=[f"case{i}" for i in range(len(LOCAL_CASES))])
def test_locally_connected_matches_reference(rng, dtype, case):
    x_shape, o, kernel, stride, padding = case
    oh = (x_shape[2] + 2 * padding[0] - kernel[0]) // stride[0] + 1
    ow = (x_shape[3] + 2 * padding[1] - kernel[1]) // stride[1] + 1
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((oh, ow, o, x_shape[1], *kernel)).astype(dtype)
    b = rng.standard_normal((o, oh, ow)).astype(dtype)
    geo = dict(stride=stride, padding=padding)
    y = F.locally_connected2d(_dev(x), _dev(w), _dev(b), **geo)
    assert _is_dev(y)
    np.testing.assert_allclose(_host(y), F.locally_connected2d(x, w, b, **geo), **_tol(dtype))
    flat = w.reshape(oh, ow, o, -1)
    np.testing.assert_allclose(_host(y), ref.local2d(x, flat, b, kernel, stride, padding), **_tol(dtype))
    g = rng.standard_normal((x_shape[0], o, oh, ow)).astype(dtype)
    for a, h in zip(F.locally_connected2d_backward(_dev(g), _dev(x), _dev(w), **geo),
                    F.locally_connected2d_backward(g, x, w, **geo)):
        assert _is_dev(a) and tuple(a.shape) == h.shape
        np.testing.assert_allclose(_host(a), h, **_tol(dtype))


# ----------------------------------------------------------------------------- element-wise
def _layouts(rng, shape, dtype):
    a = rng.standard_normal(shape).astype(dtype)
    return {"C": a, "F": np.asfortranarray(a)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(K.ACTIVATIONS))
@pytest.mark.parametrize("x_order,g_order", [("C", "C"), ("F", "F"), ("F", "C")])
def test_activations_match_host(rng, dtype, name, x_order, g_order):
    x = _layouts(rng, (5, 3), dtype)[x_order]
    x[0, 0] = 0.0  # the kink: gradient 0 (ReLU) or slope (LeakyReLU), as on the host
    g = _layouts(rng, (5, 3), dtype)[g_order]
    y = K.activation(name, _dev(x), slope=0.1)
    assert _is_dev(y) and y.dtype == dtype
    np.testing.assert_allclose(_host(y), K.activation(name, x, slope=0.1), **_tol(dtype))
    saved = x if name == "leaky_relu" else K.activation(name, x, slope=0.1)
    saved_d = _dev(x) if name == "leaky_relu" else y
    gx = K.activation_backward(name, saved_d, _dev(g), slope=0.1)
    np.testing.assert_allclose(_host(gx), K.activation_backward(name, saved, g, slope=0.1), **_tol(dtype))


def test_sigmoid_saturates_without_nan():
    y = _host(K.activation("sigmoid", _dev(np.array([-1000.0, 1000.0, 0.0]))))
    np.testing.assert_array_equal(y, [0.0, 1.0, 0.5])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ["C", "F"])
def test_bias_add_batch_sum_add(rng, dtype, order):
    y = _layouts(rng, (7, 5), dtype)[order]
    b = rng.standard_normal(5).astype(dtype)
    yd = _dev(y)
    assert K.bias_add_(yd, _dev(b)) is yd
    np.testing.assert_allclose(_host(yd), y + b, **_tol(dtype))
    np.testing.assert_allclose(_host(K.batch_sum(_dev(y))), y.sum(axis=0), **_tol(dtype))
    np.testing.assert_array_equal(_host(K.batch_sum(_dev(np.zeros((0, 3), dtype)))), np.zeros(3))
    dst = rng.standard_normal((7, 5)).astype(dtype)
    dd = _dev(dst)
    K.add_(dd, _dev(y))  # src layout may differ from dst's
    np.testing.assert_allclose(_host(dd), dst + y, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 5), (33, 9), (1, 1), (6,), (), (2, 3, 4, 6), (0, 5), (5, 0)])
@pytest.mark.parametrize("order", ["C", "F", "strided"])
def test_dropout_draws_the_host_mask_on_the_device(rng, dtype, shape, order):
    """The mask is a function of the seed and the logical position only: any device layout
    (C, F as a sparse layer's output comes, strided) gives the host's mask, bit for bit."""
    x = rng.standard_normal(shape).astype(dtype)
    seed = int(rng.integers(2**64, dtype=np.uint64))
    if order == "strided" and x.ndim:
        xd = _dev(np.repeat(x, 2, axis=-1))[..., ::2]
    else:
        xd = _dev(np.asfortranarray(x) if order == "F" and x.ndim else x)  # (it makes a 0-d array 1-d)
    for p in (0.0, 0.35, 1.0):
        y = K.dropout(xd, p, seed)
        assert _is_dev(y) and y.shape == x.shape and y.dtype == dtype
        np.testing.assert_array_equal(_host(y), K.dropout(x, p, seed))


def test_dropout_grid_covers_large_slow_and_fast_axes(monkeypatch):
    """Grid-stride loops on both axes: more rows (or groups) than the capped grid has threads."""
    from sparsenet.kernels.cuda import ops

    monkeypatch.setattr(ops, "MAX_BLOCKS", 1)
    monkeypatch.setattr(ops, "MAX_GRID_Y", 2)
    rng = np.random.default_rng(0)
    # slow axis longer than the grid; then the fast axis (groups in C order, rows in F order)
    # longer than a block, in either order
    for shape, orders in (((45, 300), "CF"), ((3, 2100), "C"), ((700, 5), "F")):
        x = rng.standard_normal(shape).astype(np.float32)
        for order in orders:
            a = np.asfortranarray(x) if order == "F" else x
            np.testing.assert_array_equal(_host(K.dropout(_dev(a), 0.5, 77)), K.dropout(x, 0.5, 77))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ["C", "F"])
def test_soft_threshold_in_place_matches_the_host(rng, dtype, order):
    from sparsenet.sparsity import soft_threshold

    w = _layouts(rng, (6, 5), dtype)[order]
    w[0, :4] = [np.nan, np.inf, -np.inf, 0.0]  # NaN stays NaN, infinities shrink to themselves
    t = 0.7
    expected = soft_threshold(w, t)
    wd = _dev(w)
    assert soft_threshold(wd, t, out=wd) is wd
    np.testing.assert_allclose(_host(wd), expected, **_tol(dtype))
    fresh = soft_threshold(_dev(w), t)  # out=None: a new device array
    assert _is_dev(fresh)
    np.testing.assert_allclose(_host(fresh), expected, **_tol(dtype))
    np.testing.assert_array_equal(_host(K.soft_threshold_(_dev(np.zeros(0, dtype)), t)), np.zeros(0))
    with pytest.raises(ValueError, match="out must be None or w itself"):
        soft_threshold(wd, t, out=_dev(np.empty_like(w)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_soft_threshold_over_runs_matches_the_host(rng, dtype):
    from sparsenet.sparsity import group_soft_threshold

    # groups of 0, 1, 3, 20 and 2 entries (20 > the shrunk block: several strides per thread);
    # one zero group, one NaN entry (its group: NaN stays, the rest zero), one group shrunk to 0
    indptr = np.array([0, 0, 1, 4, 24, 26], dtype=np.int32)  # a CSR row pointer's dtype
    x = rng.standard_normal(26).astype(dtype)
    x[1:4] = 0.0
    x[24:26] = [np.nan, 1.0]
    x[0] = 1e-3
    t = 0.2
    ids = np.repeat(np.arange(5), np.diff(indptr))
    expected = group_soft_threshold(x, ids, 5, t)
    xd = _dev(x)
    assert K.group_soft_threshold_(xd, _dev(indptr), t) is xd
    np.testing.assert_allclose(_host(xd), expected, **_tol(dtype))
    w = rng.standard_normal((3, 2, 2)).astype(dtype)  # a C-ordered weight: rows of 4 values
    bounds = np.arange(4) * 4
    np.testing.assert_allclose(_host(K.group_soft_threshold_(_dev(w), _dev(bounds), t)),
                               K.group_soft_threshold_(w.copy(), bounds, t), **_tol(dtype))
    with pytest.raises(ValueError, match="C-contiguous"):
        K.group_soft_threshold_(_dev(np.asfortranarray(w[:, :, 0])), _dev(np.arange(4) * 2), t)
    tiny = np.full(4, 1e-30, dtype)  # t = 0 leaves a group alone even where its squares underflow
    np.testing.assert_array_equal(_host(K.group_soft_threshold_(_dev(tiny), _dev(np.array([0, 4])), 0.0)), tiny)


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_soft_threshold_over_gathered_columns_matches_the_host(rng, dtype):
    """Input-feature groups: CSR columns (int32 and int64 patterns, blocks of 1 and 3 columns)
    and a dense weight's column blocks, gathered through their permutations."""
    t = 0.25
    for idt, taps in ((np.int32, 1), (np.int64, 3)):
        w = CSRMatrix.random((9, 4 * taps), 0.5, rng=rng, dtype=dtype)
        indptr, indices = w.indptr.astype(idt), w.indices.astype(idt)
        w.data[indices // taps == 1] *= 1e-3  # a group that dies
        expected = _host_group_threshold(w.data, K.column_groups(w.shape[1], indptr, indices, taps), t)
        d_indptr, d_indices = _dev(indptr), _dev(indices)
        bounds, perm = K.column_groups(w.shape[1], d_indptr, d_indices, taps)
        assert _is_dev(bounds) and _is_dev(perm) and perm.dtype == idt
        assert K.column_groups(w.shape[1], d_indptr, d_indices, taps)[0] is bounds  # derived once per pattern
        got = _dev(w.data)
        assert K.group_soft_threshold_(got, bounds, t, perm=perm) is got
        np.testing.assert_allclose(_host(got), expected, **_tol(dtype))
        assert (_host(got)[indices // taps == 1] == 0).all()
    x = rng.standard_normal((5, 3, 2, 2)).astype(dtype)  # a conv weight: 3 channels of 4 taps
    for by_input in (True, False):
        xd = _dev(x)
        bounds, perm = K.dense_groups(xd, 4, by_input=by_input)
        assert K.dense_groups(xd, 4, by_input=by_input)[0] is bounds
        expected = _host_group_threshold(x, (bounds, perm), t)
        np.testing.assert_allclose(_host(K.group_soft_threshold_(xd, bounds, t, perm=perm)), expected, **_tol(dtype))
    with pytest.raises(TypeError, match="share an integer dtype"):
        K.group_soft_threshold_(_dev(x), _dev(np.array([0, 4], np.int32)), t, perm=_dev(np.arange(4)))


def _host_group_threshold(x, groups, t):
    bounds, perm = groups
    return K.group_soft_threshold_(x.copy(), _host(bounds), t, perm=None if perm is None else _host(perm))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["distinct", "ties", "specials", "fortran"])
def test_zero_smallest_matches_the_host_bit_for_bit(rng, dtype, case):
    """The radix select zeroes the same entries as the host partition: every count, over several
    blocks and tiles of the (shrunk) geometry, ties broken in memory order, NaN largest."""
    x = rng.standard_normal(45).astype(dtype)
    if case == "ties":
        x = np.round(x * 2).astype(dtype)  # a handful of values, each many times
    elif case == "specials":
        x[::7] = np.nan
        x[1::9] = -0.0
        tiny = np.finfo(dtype).smallest_subnormal
        x[2:6] = [np.inf, -np.inf, tiny, -tiny]
    elif case == "fortran":
        x = np.asfortranarray(x[:44].reshape(4, 11))
    for n in (-1, 1, 20, x.size - 1, x.size + 5):
        expected = K.zero_smallest_(x.copy(order="K"), n)
        xd = _dev(x)
        assert K.zero_smallest_(xd, n) is xd
        np.testing.assert_array_equal(np.ascontiguousarray(_host(xd)).view(np.uint8),
                                      np.ascontiguousarray(expected).view(np.uint8), err_msg=f"n={n}")
    assert K.zero_smallest_(_dev(np.zeros(0, dtype)), 3).size == 0
    with pytest.raises(ValueError, match="contiguous"):
        K.zero_smallest_(_dev(np.ones((4, 6), dtype))[:, ::2], 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["kl", "l1"])
def test_activity_penalty_gradient_matches_the_host(rng, dtype, kind):
    """g += beta * d penalty / dh on F- and C-ordered operands (units driven to the clip bounds
    for KL, exact zeros for L1, a NaN)."""
    h = rng.random((7, 5)).astype(dtype)
    h[:, 0] = 0.0  # a dead unit: its mean is clipped to eps
    h[:, 1] = 1.0  # a saturated one: clipped to 1 - eps
    h[2, 2] = 0.0 if kind == "l1" else h[2, 2]
    h[3, 4] = np.nan  # NaN stays NaN (KL: the whole unit), on a GPU as on the host
    g = rng.standard_normal((7, 5)).astype(dtype)
    expected = K.activity_penalty_grad_(g.copy(), h, kind, 0.1, 0.6)
    assert np.isnan(expected[:, 4]).sum() == (7 if kind == "kl" else 1)
    for order in ("C", "F"):
        gd = _dev(np.asarray(g, order=order))
        assert K.activity_penalty_grad_(gd, _dev(np.asfortranarray(h)), kind, 0.1, 0.6) is gd
        # coefficients up to ~1e6 at the clip bounds, where the host's 1 - (1 - eps) differs from
        # eps in the last digits
        tol = dict(rtol=2e-5, atol=1e-3) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(_host(gd), expected, **tol)
    with pytest.raises(ValueError, match="one shape"):
        K.activity_penalty_grad_(_dev(g), _dev(h[:, :3].copy()), kind, 0.1, 0.6)


@pytest.mark.parametrize("shape", [(9,), (9, 5), (9, 2, 3, 2)])
def test_take_gathers_rows_like_numpy(rng, shape):
    a = rng.standard_normal(shape)
    idx = np.array([8, 0, 3, 3, 7, 1, 2, 5, 4, 6, 0])  # repeats, more rows than the grid has threads
    got = K.take(_dev(a), _dev(idx))
    assert _is_dev(got) and got.shape == (11,) + shape[1:]
    np.testing.assert_array_equal(_host(got), K.take(a, idx))
    assert K.take(_dev(a), _dev(idx[:0])).shape == (0,) + shape[1:]
    got_f = K.take(_dev(a), _dev(idx), order="F")  # 2-D: F-ordered, gathered feature-major; else C
    assert got_f.shape == got.shape
    assert got_f.strides == ((8, 8 * 11) if len(shape) == 2 else got.strides)
    np.testing.assert_array_equal(_host(got_f), K.take(a, idx))
    assert K.take(_dev(a), _dev(idx[:0]), order="F").shape == (0,) + shape[1:]
    with pytest.raises(ValueError, match="order must be"):
        K.take(_dev(a), _dev(idx), order="A")
    if len(shape) > 1:
        with pytest.raises(ValueError, match="C-contiguous"):
            K.take(_dev(np.asfortranarray(a)), _dev(idx))


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_threshold_and_mul_in_place_match_the_host(rng, dtype):
    x = rng.standard_normal((4, 5)).astype(dtype)
    x[0, :3] = [np.nan, np.inf, 0.0]
    xd = _dev(x)
    assert K.hard_threshold_(xd, 0.5) is xd
    np.testing.assert_array_equal(_host(xd), K.hard_threshold_(x.copy(), 0.5))
    mask = (rng.random((4, 5)) < 0.5).astype(dtype)
    fd = _dev(np.asfortranarray(x))  # an F-ordered destination, a C-ordered mask
    assert K.mul_(fd, _dev(mask)) is fd
    np.testing.assert_array_equal(_host(fd), x * mask)
    assert K.mul_(_dev(np.zeros((0, 3), dtype)), _dev(np.zeros((0, 3), dtype))).size == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", [((5, 7), (7, 3)), ((1, 1), (1, 9)), ((9, 4), (4, 1)), ((3, 0), (0, 2)),
                                    ((17, 10), (10, 11))])  # several tiles along M, K and N
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True)])
def test_matmul_matches_numpy(rng, same_bits, relu_gate, dtype, shapes, ta, tb):
    (m, k), (_, n) = shapes
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    out = K.matmul(_dev(a), _dev(b), transpose_a=ta, transpose_b=tb)
    assert _is_dev(out) and out.shape == (m, n)
    np.testing.assert_allclose(_host(out), K.matmul(a, b, transpose_a=ta, transpose_b=tb), **_tol(dtype))
    bias = rng.standard_normal(n).astype(dtype)  # a dense layer's bias, added as the kernel stores
    out_b = K.matmul(_dev(a), _dev(b), transpose_a=ta, transpose_b=tb, bias=_dev(bias))
    np.testing.assert_array_equal(_host(out_b), _host(out) + bias)
    with pytest.raises(ValueError, match="bias must have shape"):
        K.matmul(_dev(a), _dev(b), transpose_a=ta, transpose_b=tb, bias=_dev(np.ones(n + 1, dtype)))
    gate = relu_gate(rng.standard_normal((m, n))).astype(dtype)  # a ReLU's output: its backward in the store
    for bias_dev, plain in ((None, out), (_dev(bias), out_b)):  # with K = 0 too (bias only, then the gate)
        expect = _host(K.activation_backward("relu", _dev(gate), plain))
        for gate_dev in (_dev(gate), _dev(np.asfortranarray(gate))):  # F-ordered: copied to C first
            gated = K.matmul(_dev(a), _dev(b), transpose_a=ta, transpose_b=tb, bias=bias_dev, gate=gate_dev)
            same_bits(_host(gated), expect)
    with pytest.raises(ValueError, match="gated result's shape"):
        K.matmul(_dev(a), _dev(b), transpose_a=ta, transpose_b=tb, gate=_dev(np.ones((m, n + 1), dtype)))
    with pytest.raises(TypeError, match="gate must have the result's dtype"):
        K.matmul(_dev(a), _dev(b), transpose_a=ta, transpose_b=tb, gate=_dev(gate.astype(np.float16)))



def test_matmul_in_the_production_geometry(rng, monkeypatch):
    """The real tile constants (16 x 16 threads, 64 x 64 outputs, K by 16) on a case with two
    row tiles, a partial K tile and a partial column tile."""
    from sparsenet.kernels.cuda import ops

    for key, value in {"MM_THREADS": 16, "MM_REG": 4, "MM_TILE": 64, "MM_TILE_K": 16, "MM_TILE_PAD": 65}.items():
        assert key in vars(ops)
        monkeypatch.setattr(ops, key, value)
    a = rng.standard_normal((70, 20)).astype(np.float32)
    b = rng.standard_normal((20, 5)).astype(np.float32)
    np.testing.assert_allclose(_host(K.matmul(_dev(a), _dev(b))), a @ b, rtol=2e-5, atol=2e-5)


@settings(max_examples=15, deadline=None)
@given(m=st.integers(0, 9), k=st.integers(0, 9), n=st.integers(0, 9), f32=st.booleans(),
       order=st.sampled_from("CF"), seed=st.integers(0, 2**16))
def test_dense_linear_hypothesis_through_functional(m, k, n, f32, order, seed):
    dtype = np.float32 if f32 else np.float64
    rng = np.random.default_rng(seed)
    x = np.asarray(rng.standard_normal((m, k)), dtype=dtype, order=order)
    w = rng.standard_normal((n, k)).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    np.testing.assert_allclose(_host(F.linear(_dev(x), _dev(w), _dev(b))), F.linear(x, w, b), **_tol(dtype))
    g = rng.standard_normal((m, n)).astype(dtype)
    for a, h in zip(F.linear_backward(_dev(g), _dev(x), _dev(w)), F.linear_backward(g, x, w)):
        np.testing.assert_allclose(_host(a), h, **_tol(dtype))


def test_contiguous_and_copy(rng):
    kc = _kc()
    f = np.asfortranarray(rng.standard_normal((5, 6)))
    c = kc.contiguous(_dev(f))
    assert kc._order(c) == "C"
    np.testing.assert_array_equal(_host(c), f)
    x4 = rng.standard_normal((2, 3, 4, 5))
    strided = kc.transpose(_dev(x4.reshape(6, 20)))  # (20, 6) view with swapped strides
    np.testing.assert_array_equal(_host(kc.contiguous(strided)), x4.reshape(6, 20).T)
    x3 = rng.standard_normal((3, 4, 5))
    s3 = kc._view(_dev(x3), (3, 5, 4), (x3.strides[0], x3.strides[2], x3.strides[1]))  # swapped last axes
    np.testing.assert_array_equal(_host(kc.contiguous(s3)), x3.transpose(0, 2, 1))
    v = _dev(np.arange(10.0))
    np.testing.assert_array_equal(_host(kc.contiguous(kc._view(v, (5,), (16,)))), np.arange(0.0, 10.0, 2))
    d = _dev(x4)
    d2 = kc.copy(d)
    assert d2 is not d
    np.testing.assert_array_equal(_host(d2), x4)
    assert kc.contiguous(d) is d


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ["C", "F"])
def test_cross_entropy_and_mse_match_host(rng, dtype, order):
    logits = _layouts(rng, (9, 4), dtype)[order] * 3
    logits[0] = [1e4, 0, -1e4, 5]  # no overflow: the row maximum is subtracted
    target = rng.integers(0, 4, 9)
    loss = K.cross_entropy(_dev(logits), _dev(target))
    assert _is_dev(loss) and loss.shape == (1,)
    np.testing.assert_allclose(_host(loss)[0], K.cross_entropy(logits, target), **_tol(dtype))
    grad = K.cross_entropy_backward(_dev(logits), _dev(target), 0.5)
    assert grad.is_f_contiguous()  # coalesced stores; feature-major for the last layer's backward
    np.testing.assert_allclose(_host(grad), K.cross_entropy_backward(logits, target, 0.5), **_tol(dtype))
    t = _layouts(rng, (9, 4), dtype)["C"]
    np.testing.assert_allclose(_host(K.mse_loss(_dev(logits), _dev(t)))[0], K.mse_loss(logits, t), rtol=1e-5)
    np.testing.assert_allclose(_host(K.mse_loss_backward(_dev(logits), _dev(t), 2.0)),
                               K.mse_loss_backward(logits, t, 2.0), **_tol(dtype))


def test_cross_entropy_out_of_range_target_is_nan_not_a_crash():
    logits = np.zeros((3, 2))
    target = np.array([0, 5, -1])
    assert np.isnan(_host(K.cross_entropy(_dev(logits), _dev(target)))[0])
    grad = _host(K.cross_entropy_backward(_dev(logits), _dev(target), 1.0))
    assert np.isfinite(grad[0]).all() and np.isnan(grad[1:]).all()


def test_accumulate_metrics_counts_loss_and_hits(rng):
    acc = K.metrics_accumulator()
    logits = np.array([[1.0, 2.0], [3.0, 0.0], [0.5, 0.5]])  # argmax 1, 0, 0 (first on ties)
    target = np.array([1, 1, 0])
    K.accumulate_metrics(acc, _dev(np.array([0.25])), 3, _dev(logits), _dev(target))
    K.accumulate_metrics(acc, _dev(np.array([1.0])), 2)  # regression batch: no accuracy
    np.testing.assert_allclose(_host(acc), [0.25 * 3 + 2.0, 2, 5])


def test_mixing_devices_in_the_new_ops_names_arguments():
    with pytest.raises(ValueError, match="bias on cpu"):
        K.bias_add_(_dev(np.ones((2, 2))), np.ones(2))
    with pytest.raises(ValueError, match="target on cpu"):
        K.cross_entropy(_dev(np.ones((2, 2))), np.zeros(2, np.int64))


def test_strict_simulator_arrays_refuse_numpy_arithmetic():
    """The conftest makes simulated device arrays as poor as real ones (no-op on a real GPU,
    where these fail by themselves)."""
    d = _dev(np.ones(3))
    with pytest.raises((TypeError, AttributeError)):
        d + 1
    with pytest.raises((TypeError, AttributeError)):
        d.sum()


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_layers_take_leading_batch_dimensions(rng, dtype):
    """(2, 3, in) inputs: the F-ordered products must be made C-contiguous before reshaping
    (numba's reshape reinterprets memory; the strict conftest reproduces it)."""
    x = rng.standard_normal((2, 3, 5)).astype(dtype)
    w = CSRMatrix.random((4, 5), 0.6, rng=rng, dtype=dtype)
    b = rng.standard_normal(4).astype(dtype)
    g = rng.standard_normal((2, 3, 4)).astype(dtype)
    np.testing.assert_allclose(_host(F.sparse_linear(_dev(x), w.to("cuda"), _dev(b))), F.sparse_linear(x, w, b),
                               **_tol(dtype))
    for a, h in zip(F.sparse_linear_backward(_dev(g), _dev(x), w.to("cuda")), F.sparse_linear_backward(g, x, w)):
        np.testing.assert_allclose(_host(a), h, **_tol(dtype))
    wd = w.to_dense()
    np.testing.assert_allclose(_host(F.linear(_dev(x), _dev(wd), _dev(b))), F.linear(x, wd, b), **_tol(dtype))
    for a, h in zip(F.linear_backward(_dev(g), _dev(x), _dev(wd)), F.linear_backward(g, x, wd)):
        np.testing.assert_allclose(_host(a), h, **_tol(dtype))


def test_cross_entropy_needs_a_class():
    with pytest.raises(ValueError, match="n_classes >= 1"):
        K.cross_entropy(_dev(np.zeros((3, 0))), _dev(np.zeros(3, np.int64)))
