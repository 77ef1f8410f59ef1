"""CUDA conv2d and pooling kernels against the float64 references in kernels/reference.py.

Simulator or GPU only (see conftest.py); tiny shapes, both dtypes, strides, paddings,
dilations, groups, and shapes that are not a multiple of the block tile.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsenet.functional as F
from sparsenet import CSRMatrix, kernels
from sparsenet.kernels import reference as ref

from .conftest import narrow_ratio

pytestmark = pytest.mark.usefixtures("small_geometry")

DTYPES = [np.float32, np.float64]


def _kc():
    from sparsenet.kernels import cuda as kc

    return kc


def _dev(a):
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(a))


def _host(a):
    return _kc().to_host(a)


def _tol(dtype):
    return dict(rtol=3e-5, atol=3e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


# (N, C, H, W), (O, KH, KW), stride, padding, dilation, groups
CONV_CASES = [
    ((1, 2, 4, 6), (3, 3, 2), (1, 1), (1, 0), (1, 1), 1),
    ((1, 2, 6, 5), (2, 2, 3), (2, 1), (0, 1), (2, 1), 1),
    ((2, 4, 4, 4), (4, 1, 3), (1, 2), (0, 1), (1, 1), 2),
    ((1, 1, 3, 3), (1, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((1, 3, 5, 5), (6, 3, 3), (1, 1), (1, 1), (1, 1), 1),  # two channel blocks: 4 + 2
    ((1, 4, 4, 4), (10, 2, 2), (1, 1), (0, 0), (1, 1), 2),  # 5 channels a group: 4 + 1
    ((5, 2, 2, 3), (2, 1, 2), (1, 1), (0, 0), (1, 1), 1),  # 2x2 planes < block: batch split too
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=[f"case{i}" for i in range(len(CONV_CASES))])
def test_conv2d_matches_cpu(rng, same_bits, relu_gate, conv_path, dtype, case):
    x_shape, (o, kh, kw), stride, padding, dilation, groups = case
    kc = _kc()
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((o, x_shape[1] // groups, kh, kw)).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype)
    y_ref = ref.conv2d(x, w, bias, stride, padding, dilation, groups)
    y = kc.conv2d(_dev(x), _dev(w), _dev(bias), stride, padding, dilation)
    assert y.shape == y_ref.shape and y.dtype == dtype
    np.testing.assert_allclose(_host(y), y_ref, **_tol(dtype))
    # relu=True: max(y, 0) as the activation kernel computes it, in the GEMM's store or in place
    same_bits(_host(kc.conv2d(_dev(x), _dev(w), _dev(bias), stride, padding, dilation, relu=True)),
              _host(kernels.activation("relu", y)))
    if case is CONV_CASES[-1]:
        y0 = kc.conv2d(_dev(x), _dev(w), None, stride, padding, dilation)
        np.testing.assert_allclose(_host(y0), ref.conv2d(x, w, None, stride, padding, dilation, groups),
                                   **_tol(dtype))

    g = rng.standard_normal(y_ref.shape).astype(dtype)
    gx_ref, gw_ref, gb_ref = ref.conv2d_backward(g, x, w, stride, padding, dilation, groups)
    gx, gw = kc.conv2d_backward(_dev(g), _dev(x), _dev(w), stride, padding, dilation)
    assert gx.dtype == dtype and gw.dtype == dtype
    np.testing.assert_allclose(_host(gx), gx_ref, **_tol(dtype))
    np.testing.assert_allclose(_host(gw), gw_ref, **_tol(dtype))
    np.testing.assert_allclose(_host(kc.conv2d_grad_bias(_dev(g))), gb_ref, **_tol(dtype))
    gate = relu_gate(x)  # a ReLU's output: its backward applied as grad_x is stored, bit for bit
    gated, _ = kc.conv2d_backward(_dev(g), _dev(x), _dev(w), stride, padding, dilation, need_weight=False,
                                  gate=_dev(gate))
    same_bits(_host(gated), _host(kernels.activation_backward("relu", _dev(gate), gx)))
    with pytest.raises(ValueError, match="gated result's shape"):
        kc.conv2d_backward(_dev(g), _dev(x), _dev(w), stride, padding, dilation, gate=_dev(np.zeros(x.shape[:3] + (x.shape[3] + 1,), dtype)))


@settings(max_examples=24, deadline=None)  # shared by the two paths
@given(
    n=st.integers(1, 2), cg=st.integers(1, 3), og=st.integers(1, 6), groups=st.integers(1, 3),
    h=st.integers(1, 6), w=st.integers(1, 6), kh=st.integers(1, 3), kw=st.integers(1, 3),
    sh=st.integers(1, 2), sw=st.integers(1, 2), ph=st.integers(0, 1), pw=st.integers(0, 1),
    dh=st.integers(1, 2), dw=st.integers(1, 2), f32=st.booleans(), seed=st.integers(0, 2**16),
    path=st.sampled_from(["gemm", "direct"]),
)
def test_conv2d_hypothesis_through_functional(n, cg, og, groups, h, w, kh, kw, sh, sw, ph, pw, dh, dw, f32, seed,
                                              path):
    """F.conv2d and its backward on device arrays equal the host ones over random geometry,
    including output-channel counts per group that are not a multiple of the forward's block,
    on the GEMMs and on the direct kernels."""
    if h + 2 * ph < dh * (kh - 1) + 1 or w + 2 * pw < dw * (kw - 1) + 1:
        return  # rejected at the boundary, tested on the host
    from sparsenet.kernels.cuda import conv

    with pytest.MonkeyPatch.context() as mp:  # hypothesis cannot take the function-scoped fixture
        mp.setattr(conv, "NARROW_RATIO", narrow_ratio(path))
        _conv2d_through_functional(n, cg, og, groups, h, w, kh, kw, sh, sw, ph, pw, dh, dw, f32, seed)


def _conv2d_through_functional(n, cg, og, groups, h, w, kh, kw, sh, sw, ph, pw, dh, dw, f32, seed):
    dtype = np.float32 if f32 else np.float64
    rng = np.random.default_rng(seed)
    geo = dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups)
    x = rng.standard_normal((n, cg * groups, h, w)).astype(dtype)
    wt = rng.standard_normal((og * groups, cg, kh, kw)).astype(dtype)
    bias = rng.standard_normal(og * groups).astype(dtype)
    y = F.conv2d(x, wt, bias, **geo)
    np.testing.assert_allclose(_host(F.conv2d(_dev(x), _dev(wt), _dev(bias), **geo)), y, **_tol(dtype))
    g = rng.standard_normal(y.shape).astype(dtype)
    host = F.conv2d_backward(g, x, wt, **geo)
    dev = F.conv2d_backward(_dev(g), _dev(x), _dev(wt), **geo)
    for a, b in zip(dev, host):
        np.testing.assert_allclose(_host(a), b, **_tol(dtype))


def test_conv_wrappers_refuse_a_bias_they_would_misread(rng, conv_path):
    """A short bias would be read past its end, one of another dtype would compile another kernel:
    both refused, by the dense (on either path) and the weight-sparse forward, empty outputs included."""
    kc = _kc()
    x, w = _dev(rng.standard_normal((1, 2, 4, 4))), _dev(rng.standard_normal((3, 2, 3, 3)))
    w_csr = CSRMatrix.from_dense(rng.standard_normal((3, 18))).to("cuda")
    for conv in (lambda b, xx: kc.conv2d(xx, w, b, (1, 1), (0, 0), (1, 1)),
                 lambda b, xx: kc.sparse_conv2d(xx, w_csr.indptr, w_csr.indices, w_csr.data, (3, 3), b, (1, 1),
                                                (0, 0), (1, 1), 1)):
        for xx in (x, _dev(np.zeros((0, 2, 4, 4)))):
            with pytest.raises(ValueError, match="bias must have shape"):
                conv(_dev(np.zeros(2)), xx)
            with pytest.raises(TypeError, match="one float dtype"):
                conv(_dev(np.zeros(3, np.float32)), xx)
    # filters of another dtype than x: refused on either path, forward and backward
    w32 = _dev(rng.standard_normal((3, 2, 3, 3)).astype(np.float32))
    with pytest.raises(TypeError, match="x float64, weight float32"):
        kc.conv2d(x, w32, None, (1, 1), (0, 0), (1, 1))
    with pytest.raises(TypeError, match="weight float32"):
        kc.conv2d_backward(_dev(np.zeros((1, 3, 2, 2))), x, w32, (1, 1), (0, 0), (1, 1))


def test_conv_wrappers_refuse_groups_that_do_not_divide_the_channels(rng, conv_path):
    """The device wrappers index channels by group and are public (sparsenet.kernels dispatches
    device arrays straight to them): groups that do not divide both channel counts are refused,
    not read or written past the arrays' ends."""
    kc = _kc()
    geo = ((1, 1), (0, 0), (1, 1))
    x, w = _dev(rng.standard_normal((1, 5, 4, 4))), _dev(rng.standard_normal((2, 2, 2, 1)))
    with pytest.raises(ValueError, match="positive multiple of weight.shape"):
        kc.conv2d(x, w, None, *geo)
    with pytest.raises(ValueError, match="positive multiple of weight.shape"):
        kc.conv2d_backward(_dev(np.zeros((1, 2, 3, 4))), x, w, *geo)
    with pytest.raises(ValueError, match="out_channels=3"):  # 4 channels, groups 2, 3 filters
        kc.conv2d(_dev(np.zeros((1, 4, 4, 4))), _dev(np.zeros((3, 2, 2, 2))), None, *geo)
    csr = CSRMatrix.from_dense(rng.standard_normal((3, 2))).to("cuda")  # (O, C/groups*KH*KW)
    x3 = _dev(rng.standard_normal((1, 3, 4, 4)))
    for xx, groups in ((x3, 2), (x3, 0), (_dev(np.zeros((1, 2, 4, 4))), 2)):  # C = 3, C = 3, O = 3 vs 2
        with pytest.raises(ValueError, match="must be positive and divide"):
            kc.sparse_conv2d(xx, csr.indptr, csr.indices, csr.data, (1, 2), None, *geo, groups)
    g = _dev(np.zeros((1, 3, 4, 3)))
    with pytest.raises(ValueError, match="must be positive and divide"):
        kc.sparse_conv2d_backward(g, x3, csr.indptr, csr.indices, csr.data, (1, 2), *geo, 2)
    with pytest.raises(ValueError, match="divide the 3 rows"):
        kc.transpose_pattern(2, csr.indptr, csr.indices, groups=2)


def test_conv2d_backward_flags_and_big_kernel(rng, conv_path):
    kc = _kc()
    x = rng.standard_normal((1, 1, 4, 4))
    w = rng.standard_normal((1, 1, 2, 2))
    g = rng.standard_normal((1, 1, 3, 3))
    gx, gw = kc.conv2d_backward(_dev(g), _dev(x), _dev(w), (1, 1), (0, 0), (1, 1), need_input=False)
    assert gx is None and gw is not None
    # A g that is not the output's shape is refused (the kernels would read past a short one).
    with pytest.raises(ValueError, match="output's shape"):
        kc.conv2d_backward(_dev(np.zeros((1, 1, 2, 3))), _dev(x), _dev(w), (1, 1), (0, 0), (1, 1))
    # No filters at all: the input gradient is zeros (every element still written), the forward empty.
    x0, w0 = _dev(np.ones((2, 3, 4, 4))), _dev(np.zeros((0, 3, 2, 2)))
    gx, gw = kc.conv2d_backward(_dev(np.zeros((2, 0, 3, 3))), x0, w0, (1, 1), (0, 0), (1, 1))
    np.testing.assert_array_equal(_host(gx), np.zeros((2, 3, 4, 4)))
    assert gw.shape == (0, 3, 2, 2) and kc.conv2d(x0, w0, None, (1, 1), (0, 0), (1, 1)).shape == (2, 0, 3, 3)
    # Any kernel size: the implicit GEMMs stage K in fixed steps, not whole filters.
    x_big, w_big = rng.standard_normal((1, 2, 9, 8)), rng.standard_normal((3, 2, 7, 6))
    y = kc.conv2d(_dev(x_big), _dev(w_big), None, (1, 1), (1, 0), (1, 1))
    np.testing.assert_allclose(_host(y), ref.conv2d(x_big, w_big, None, (1, 1), (1, 0), (1, 1), 1), **_tol(np.float64))
    g = rng.standard_normal(y.shape)
    gx, gw = kc.conv2d_backward(_dev(g), _dev(x_big), _dev(w_big), (1, 1), (1, 0), (1, 1))
    gx_ref, gw_ref, _ = ref.conv2d_backward(g, x_big, w_big, (1, 1), (1, 0), (1, 1), 1)
    np.testing.assert_allclose(_host(gx), gx_ref, **_tol(np.float64))
    np.testing.assert_allclose(_host(gw), gw_ref, **_tol(np.float64))


# (N, C, H, W), kernel, stride, padding
POOL_CASES = [
    ((2, 2, 4, 5), (2, 2), (2, 2), (0, 0)),
    ((1, 2, 5, 5), (3, 3), (1, 2), (1, 1)),
    ((1, 1, 3, 7), (2, 3), (1, 2), (1, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=[f"case{i}" for i in range(len(POOL_CASES))])
def test_pooling_matches_cpu(rng, dtype, case):
    x_shape, kernel, stride, padding = case
    kc = _kc()
    x = rng.standard_normal(x_shape).astype(dtype)
    x.flat[::7] = x.flat[1]  # ties: the first maximum gets the gradient
    y_ref = ref.max_pool2d(x, kernel, stride, padding)
    y = kc.max_pool2d(_dev(x), kernel, stride, padding)
    assert y.dtype == dtype
    np.testing.assert_array_equal(_host(y), y_ref)
    g = rng.standard_normal(y_ref.shape).astype(dtype)
    np.testing.assert_allclose(_host(kc.max_pool2d_backward(_dev(g), _dev(x), kernel, stride, padding)),
                               ref.max_pool2d_backward(g, x, kernel, stride, padding), **_tol(dtype))
    a = kc.avg_pool2d(_dev(x), kernel, stride, padding)
    np.testing.assert_allclose(_host(a), ref.avg_pool2d(x, kernel, stride, padding), **_tol(dtype))
    ga = kc.avg_pool2d_backward(_dev(g), x.shape, dtype, kernel, stride, padding)
    assert ga.dtype == dtype
    np.testing.assert_allclose(_host(ga), ref.avg_pool2d_backward(g, x.shape, kernel, stride, padding),
                               **_tol(dtype))


def test_max_pool_nan_wins(rng):
    kc = _kc()
    x = rng.standard_normal((1, 1, 4, 4))
    x[0, 0, 1, 0] = np.nan
    x[0, 0, 1, 1] = np.nan
    g = np.ones((1, 1, 2, 2))
    y = _host(kc.max_pool2d(_dev(x), (2, 2), (2, 2), (0, 0)))
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 1, 1])
    gx = _host(kc.max_pool2d_backward(_dev(g), _dev(x), (2, 2), (2, 2), (0, 0)))
    np.testing.assert_array_equal(gx, ref.max_pool2d_backward(g, x, (2, 2), (2, 2), (0, 0)))
    assert gx[0, 0, 1, 0] == 1 and gx[0, 0, 1, 1] == 0


def test_conv2d_gemms_in_the_production_geometry(rng, monkeypatch):
    """The real implicit-GEMM tile (16 x 16 threads, 64 channels x 64 pixels, K by 16) on a case
    with two pixel tiles, partial channel and K tiles, padding and a stride: forward and grad-input."""
    from sparsenet.kernels.cuda import conv

    for key, value in {"GEMM_THREADS": 16, "GEMM_REG": 4, "GEMM_TILE": 64, "GEMM_TILE_K": 16,
                       "GEMM_PAD": 65}.items():
        assert key in vars(conv)
        monkeypatch.setattr(conv, key, value)
    monkeypatch.setattr(conv, "NARROW_RATIO", narrow_ratio("gemm"))  # 5 filters would go direct
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    y = _kc().conv2d(_dev(x), _dev(w), _dev(bias), (1, 2), (1, 1), (1, 1))
    np.testing.assert_allclose(_host(y), ref.conv2d(x, w, bias, (1, 2), (1, 1), (1, 1), 1), **_tol(np.float32))
    g = rng.standard_normal(y.shape).astype(np.float32)
    gx, gw = _kc().conv2d_backward(_dev(g), _dev(x), _dev(w), (1, 2), (1, 1), (1, 1))
    gx_ref, gw_ref, _ = ref.conv2d_backward(g, x, w, (1, 2), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(_host(gx), gx_ref, **_tol(np.float32))
    np.testing.assert_allclose(_host(gw), gw_ref, rtol=1e-4, atol=1e-4)  # split over blocks (shrunk SPLIT_*)


class _Recorder:
    """Stands in for a kernel and records which kernels a wrapper launched."""

    def __init__(self, name, kernel, launched):
        self.name, self.kernel, self.launched = name, kernel, launched

    def __getitem__(self, config):
        self.launched.append(self.name)
        return self.kernel[config]


def test_dense_conv_runs_narrow_groups_on_the_direct_kernels(rng, monkeypatch):
    """Each dense conv op picks its kernels from the channels a group puts on its tile's channel
    side: a depthwise layer (one channel a group) runs on the weight-sparse kernels with every
    tap stored, a layer whose groups fill a tile on the GEMMs; the stored-tap pattern is built
    once per weight array, and so then are the transposed pattern and the grad-weight work list."""
    from sparsenet.kernels.cuda import conv

    kc = _kc()
    launched = []
    for name in ("conv2d_fwd", "conv2d_grad_input", "conv2d_grad_weight", "sparse_conv2d_fwd",
                 "sparse_conv2d_grad_input", "sparse_conv2d_grad_weight"):
        monkeypatch.setattr(conv, name, _Recorder(name, getattr(conv, name), launched))
    wide = conv.GEMM_TILE // conv.NARROW_RATIO + 1  # channels a group that take the GEMMs
    geo = ((1, 1), (1, 1), (1, 1))
    x = _dev(rng.standard_normal((2, 3, 5, 4)))
    depthwise = _dev(rng.standard_normal((3, 1, 3, 3)))
    y = kc.conv2d(x, depthwise, None, *geo)
    g = _dev(rng.standard_normal(y.shape))
    kc.conv2d_backward(g, x, depthwise, *geo)
    assert launched == ["sparse_conv2d_fwd", "sparse_conv2d_grad_input", "sparse_conv2d_grad_weight"]
    pattern = kc._full_pattern(depthwise)
    assert kc._full_pattern(depthwise) is pattern
    # the bias-free forward's zeros are kept with the pattern, not allocated and filled per call
    zero_bias = kc._recall(pattern[0], ("zero bias", np.dtype(np.float64)))
    assert zero_bias is not None and not _host(zero_bias).any()
    np.testing.assert_array_equal(_host(kc.conv2d(x, depthwise, None, *geo)), _host(y))
    assert kc._recall(pattern[0], ("zero bias", np.dtype(np.float64))) is zero_bias
    np.testing.assert_array_equal(_host(pattern[0]), np.arange(0, 30, 9))
    np.testing.assert_array_equal(_host(pattern[1]), np.tile(np.arange(9), 3))
    # grad-input walks a column per input channel and tap listing only that channel's group:
    # one filter each here (a plain transpose would list all three, two of them skipped)
    indptr_t, indices_t, perm = kc.transpose_pattern(9, *pattern, groups=3)
    assert kc.transpose_pattern(9, *pattern, groups=3)[0] is indptr_t  # cached per pattern
    np.testing.assert_array_equal(_host(indptr_t), np.arange(28))
    np.testing.assert_array_equal(_host(indices_t), np.repeat(np.arange(3), 9))
    np.testing.assert_array_equal(_host(perm), np.arange(27))
    launched.clear()
    # wide groups of one input channel: forward and grad-weight on the GEMMs, grad-input direct
    fan_out = _dev(rng.standard_normal((3 * wide, 1, 3, 3)))
    y = kc.conv2d(x, fan_out, None, *geo)
    kc.conv2d_backward(_dev(rng.standard_normal(y.shape)), x, fan_out, *geo)
    assert launched == ["conv2d_fwd", "sparse_conv2d_grad_input", "conv2d_grad_weight"]
    launched.clear()
    x_wide = _dev(rng.standard_normal((2, wide, 5, 4)))
    dense = _dev(rng.standard_normal((wide, wide, 3, 3)))
    y = kc.conv2d(x_wide, dense, None, *geo, relu=True)
    kc.conv2d_backward(_dev(rng.standard_normal(y.shape)), x_wide, dense, *geo)
    assert launched == ["conv2d_fwd", "conv2d_grad_input", "conv2d_grad_weight"]
    launched.clear()
    # a bad gate is refused before anything launches, whichever path each op takes
    with pytest.raises(ValueError, match="gated result's shape"):
        kc.conv2d_backward(g, x, depthwise, *geo, gate=_dev(np.zeros((2, 3, 5, 5))))
    with pytest.raises(ValueError, match="gated result's shape"):
        kc.conv2d_backward(_dev(rng.standard_normal((2, 3 * wide, 5, 4))), x, fan_out, *geo,
                           gate=_dev(np.zeros((2, 3, 5, 5))))
    assert launched == []
