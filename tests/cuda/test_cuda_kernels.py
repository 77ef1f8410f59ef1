"""Every CUDA kernel against its CPU twin and the float64 reference (kernels/reference.py).

Runs in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, own process) or on a GPU; see
conftest.py.  Shapes are tiny on purpose: the simulator runs each thread in Python.
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from sparsenet import CSRMatrix, kernels
from sparsenet.kernels import device as kdevice
from sparsenet.kernels import reference as ref

pytestmark = pytest.mark.usefixtures("small_geometry")

DTYPES = [np.float32, np.float64]
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _kc():
    from sparsenet.kernels import cuda as kc

    return kc


def _dev(a):
    from numba import cuda

    return cuda.to_device(np.asarray(a))


def _host(a):
    return _kc().to_host(a)


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def _matrix(rng, shape, density, dtype, idx=np.int32, empty_rows=()):
    dense = rng.standard_normal(shape) * (rng.random(shape) < density)
    for r in empty_rows:
        dense[r] = 0
    w = CSRMatrix.from_dense(dense.astype(dtype))
    return w.data, w.indices.astype(idx), w.indptr.astype(idx), w.shape


def _on_device(data, indices, indptr):
    return _dev(indptr), _dev(indices), _dev(data)


# Cases: (shape, density, batch, empty rows).  Batch 1; batch below, at and above the batch
# tile (16 in the small geometry: from the tile up, the SpMM's last tile is shifted left to
# end at the batch and stores only its own columns); rows not a multiple of the warps per
# block; empty rows first, inside and last; a row longer than a staging chunk; an all-empty
# matrix.
CASES = [
    ((5, 7), 0.5, 1, ()),
    ((7, 9), 0.4, 5, (0, 3, 6)),
    ((3, 11), 0.9, 17, (1,)),
    ((6, 13), 0.5, 16, (2,)),
    ((5, 9), 0.6, 35, ()),
    ((4, 6), 0.0, 3, ()),
    ((2, 40), 0.6, 4, ()),
]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * 0 on purpose (simulator)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0][0]}x{c[0][1]}-d{c[1]}-b{c[2]}")
def test_spmm_spmm_t_sddmm_match_reference_and_cpu(rng, same_bits, relu_gate, dtype, case):
    shape, density, batch, empty_rows = case
    kc = _kc()
    data, indices, indptr, shape = _matrix(rng, shape, density, dtype, empty_rows=empty_rows)
    x = rng.standard_normal((batch, shape[1])).astype(dtype)
    g = rng.standard_normal((batch, shape[0])).astype(dtype)
    d_indptr, d_indices, d_data = _on_device(data, indices, indptr)

    y = kc.spmm(d_indptr, d_indices, d_data, _dev(x))
    assert y.shape == (batch, shape[0]) and y.dtype == dtype
    np.testing.assert_allclose(_host(y), ref.spmm(indptr, indices, data, shape, x), **_tol(dtype))
    np.testing.assert_allclose(_host(y), kernels.spmm(indptr, indices, data, x), **_tol(dtype))
    bias = rng.standard_normal(shape[0]).astype(dtype)  # added in the product kernel's epilogue
    yb = kc.spmm(d_indptr, d_indices, d_data, _dev(x), _dev(bias))
    np.testing.assert_array_equal(_host(yb), _host(y) + bias)  # acc + bias: the separate add's rounding
    np.testing.assert_allclose(_host(yb), kernels.spmm(indptr, indices, data, x, bias), **_tol(dtype))
    yr = kc.spmm(d_indptr, d_indices, d_data, _dev(x), _dev(bias), relu=True)  # ReLU in the same store
    np.testing.assert_array_equal(_host(yr), np.maximum(_host(yb), 0))

    gx = kc.spmm_t(d_indptr, d_indices, d_data, shape[1], _dev(g))
    assert gx.shape == (batch, shape[1]) and gx.dtype == dtype
    np.testing.assert_allclose(_host(gx), ref.spmm_t(indptr, indices, data, shape, g), **_tol(dtype))
    np.testing.assert_allclose(_host(gx), kernels.spmm_t(indptr, indices, data, shape[1], g), **_tol(dtype))
    gate = relu_gate(x)  # a ReLU's output, C-ordered (a transpose first) and F-ordered (read in place)
    g_odd = g.copy()
    g_odd.reshape(-1)[3::8] = np.inf  # inf * 0 = NaN where gated: the same in both paths
    expect = _host(kernels.activation_backward("relu", _dev(gate), kc.spmm_t(d_indptr, d_indices, d_data, shape[1],
                                                                              _dev(g_odd))))
    for gate_dev in (_dev(gate), kc.batch_operand(_dev(gate))):
        gated = kc.spmm_t(d_indptr, d_indices, d_data, shape[1], _dev(g_odd), gate_dev)  # ReLU backward in the store
        same_bits(_host(gated), expect)
    with pytest.raises(ValueError, match="gated result's shape"):
        kc.spmm_t(d_indptr, d_indices, d_data, shape[1], _dev(g), _dev(np.zeros((batch, shape[1] + 1), dtype)))

    gw = kc.sddmm(d_indptr, d_indices, _dev(g), _dev(x))
    assert gw.shape == (len(indices),) and gw.dtype == dtype
    np.testing.assert_allclose(_host(gw), ref.sddmm(indptr, indices, shape, g, x), **_tol(dtype))
    np.testing.assert_allclose(_host(gw), kernels.sddmm(indptr, indices, g, x), **_tol(dtype))
    _check_sddmm_bias_paths(kc, d_indptr, d_indices, g, x, _host(gw))


def _check_sddmm_bias_paths(kc, d_indptr, d_indices, g, x, gw):
    """The bias gradient from the SDDMM launch (csr_sddmm_bias) and from batch_sum after it:
    the same weight gradient, and bitwise batch_sum's sum either way."""
    import sparsenet.kernels.cuda as kcmod

    limit = kcmod.SDDMM_BIAS_FUSED_MAX
    try:
        for fused_max in (1 << 62, 0):
            kcmod.SDDMM_BIAS_FUSED_MAX = fused_max
            gw2, gb = kc.sddmm(d_indptr, d_indices, _dev(g), _dev(x), bias_grad=True)
            np.testing.assert_array_equal(_host(gw2), gw)
            np.testing.assert_array_equal(_host(gb), _host(kc.batch_sum(_dev(g))))
            np.testing.assert_allclose(_host(gb), g.sum(axis=0), **_tol(g.dtype.type))
    finally:
        kcmod.SDDMM_BIAS_FUSED_MAX = limit


def test_sddmm_bias_sum_over_more_samples_than_threads(rng):
    """B = 300 > 256 threads: the strided split of the batch over the block, on a real GPU too."""
    kc = _kc()
    data, indices, indptr, shape = _matrix(rng, (4, 5), 0.6, np.float32, empty_rows=(1,))
    g = rng.standard_normal((300, 4)).astype(np.float32)
    x = rng.standard_normal((300, 5)).astype(np.float32)
    d = _on_device(data, indices, indptr)
    _check_sddmm_bias_paths(kc, d[0], d[1], g, x, _host(kc.sddmm(d[0], d[1], _dev(g), _dev(x))))


def test_int64_indices(rng):
    kc = _kc()
    data, indices, indptr, shape = _matrix(rng, (5, 6), 0.5, np.float64, idx=np.int64, empty_rows=(2,))
    x = rng.standard_normal((3, 6))
    g = rng.standard_normal((3, 5))
    d = _on_device(data, indices, indptr)
    np.testing.assert_allclose(_host(kc.spmm(*d, _dev(x))), ref.spmm(indptr, indices, data, shape, x), rtol=1e-12)
    np.testing.assert_allclose(_host(kc.spmm_t(*d, 6, _dev(g))), ref.spmm_t(indptr, indices, data, shape, g),
                               rtol=1e-12)
    np.testing.assert_allclose(_host(kc.sddmm(d[0], d[1], _dev(g), _dev(x))),
                               ref.sddmm(indptr, indices, shape, g, x), rtol=1e-12)


def test_sddmm_batch_zero_gives_zeros(rng):
    kc = _kc()
    data, indices, indptr, shape = _matrix(rng, (3, 4), 0.7, np.float32)
    out = kc.sddmm(_dev(indptr), _dev(indices), _dev(np.zeros((0, 3), np.float32)),
                   _dev(np.zeros((0, 4), np.float32)))
    np.testing.assert_array_equal(_host(out), np.zeros(len(indices), np.float32))
    out, gb = kc.sddmm(_dev(indptr), _dev(indices), _dev(np.zeros((0, 3), np.float32)),
                       _dev(np.zeros((0, 4), np.float32)), bias_grad=True)
    np.testing.assert_array_equal(_host(gb), np.zeros(3, np.float32))


def test_sddmm_bias_grad_of_an_empty_pattern(rng):
    """No stored entry: no SDDMM launch, the bias gradient still comes (from batch_sum)."""
    kc = _kc()
    indptr, indices = np.zeros(4, np.int32), np.zeros(0, np.int32)
    g = rng.standard_normal((5, 3)).astype(np.float32)
    gw, gb = kc.sddmm(_dev(indptr), _dev(indices), _dev(g), _dev(np.ones((5, 2), np.float32)), bias_grad=True)
    assert gw.shape == (0,)
    np.testing.assert_allclose(_host(gb), g.sum(axis=0), rtol=1e-5)


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_any_input_layout(rng, layout):
    """C-ordered input goes through the transpose kernel, F-ordered is used as a view,
    a strided slice is transposed too; outputs are F-ordered and chain without copies."""
    kc = _kc()
    data, indices, indptr, shape = _matrix(rng, (6, 9), 0.5, np.float32)
    base = rng.standard_normal((7, 18)).astype(np.float32)
    x_host = {"C": np.ascontiguousarray(base[:, :9]), "F": np.asfortranarray(base[:, :9]),
              "strided": base[:, ::2]}[layout]
    from numba import cuda

    x_dev = cuda.to_device(base)[:, ::2] if layout == "strided" else cuda.to_device(x_host)
    d = _on_device(data, indices, indptr)
    y = kc.spmm(*d, x_dev)
    np.testing.assert_allclose(_host(y), ref.spmm(indptr, indices, data, shape, x_host), rtol=2e-5, atol=2e-5)
    # y is F-ordered: feature_major of it is a view of the kernel's output buffer
    y_t = kc.feature_major(y)
    np.testing.assert_array_equal(_host(y_t), _host(y).T)


def test_feature_major_transpose_kernel(rng):
    kc = _kc()
    for shape in [(1, 1), (1, 7), (5, 1), (9, 10)]:
        a = rng.standard_normal(shape)
        np.testing.assert_array_equal(_host(kc.feature_major(_dev(a))), a.T)


def test_spmm_t_pattern_is_cached_and_can_be_given(rng):
    kc = _kc()
    data, indices, indptr, shape = _matrix(rng, (4, 5), 0.6, np.float64)
    d_indptr, d_indices, d_data = _on_device(data, indices, indptr)
    p1 = kc.transpose_pattern(shape[1], d_indptr, d_indices)
    p2 = kc.transpose_pattern(shape[1], d_indptr, d_indices)
    assert p1 is p2
    t_indptr, t_indices, perm = ref.csr_transpose(indptr, indices, shape)
    np.testing.assert_array_equal(_host(p1[0]), t_indptr)
    np.testing.assert_array_equal(_host(p1[1]), t_indices)
    np.testing.assert_array_equal(_host(p1[2]), perm)
    g = rng.standard_normal((2, 4))
    # new values, same pattern: no re-transpose needed, the result follows the values
    d_data2 = _dev(data * 3.0)
    gx = kc.spmm_t(d_indptr, d_indices, d_data2, shape[1], _dev(g), pattern_t=p1)
    np.testing.assert_allclose(_host(gx), ref.spmm_t(indptr, indices, data * 3.0, shape, g), rtol=1e-12)
    with pytest.raises(ValueError, match="pattern_t does not match"):
        kc.spmm_t(d_indptr, d_indices, d_data, shape[1] + 1, _dev(np.zeros((2, 4))), pattern_t=p1)


def test_deterministic(rng):
    kc = _kc()
    data, indices, indptr, shape = _matrix(rng, (5, 8), 0.6, np.float32)
    d = _on_device(data, indices, indptr)
    x, g = _dev(rng.standard_normal((6, 8)).astype(np.float32)), _dev(rng.standard_normal((6, 5)).astype(np.float32))
    for fn in (lambda: kc.spmm(*d, x), lambda: kc.spmm_t(*d, 8, g), lambda: kc.sddmm(d[0], d[1], g, x)):
        np.testing.assert_array_equal(_host(fn()), _host(fn()))


def test_adjoint_identity(rng):
    """<spmm(x), g> == <x, spmm_t(g)> == <W, sddmm(g, x)>."""
    kc = _kc()
    data, indices, indptr, shape = _matrix(rng, (6, 7), 0.5, np.float64)
    d = _on_device(data, indices, indptr)
    x, g = rng.standard_normal((3, 7)), rng.standard_normal((3, 6))
    lhs = np.vdot(_host(kc.spmm(*d, _dev(x))), g)
    np.testing.assert_allclose(np.vdot(x, _host(kc.spmm_t(*d, 7, _dev(g)))), lhs, rtol=1e-12)
    np.testing.assert_allclose(np.vdot(data, _host(kc.sddmm(d[0], d[1], _dev(g), _dev(x)))), lhs, rtol=1e-12)


def test_host_arrays_are_refused_not_copied(rng):
    kc = _kc()
    data, indices, indptr, shape = _matrix(rng, (3, 4), 0.5, np.float32)
    d = _on_device(data, indices, indptr)
    with pytest.raises(TypeError, match="x must be a CUDA device array"):
        kc.spmm(*d, np.ones((2, 4), np.float32))
    with pytest.raises(TypeError, match="data must be a CUDA device array"):
        kc.spmm(d[0], d[1], data, _dev(np.ones((2, 4), np.float32)))
    x = _dev(np.ones((2, 4), np.float32))
    with pytest.raises(TypeError, match="bias must be a CUDA device array"):
        kc.spmm(*d, x, np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        kc.spmm(*d, x, _dev(np.ones(4, np.float32)))
    with pytest.raises(TypeError, match="one float dtype"):
        kc.spmm(*d, x, _dev(np.ones(3)))
    # sddmm reads g and x over the same batch, g over W's rows: a mismatch is refused, not read past
    with pytest.raises(ValueError, match="same batch"):
        kc.sddmm(d[0], d[1], _dev(np.ones((2, 3), np.float32)), _dev(np.ones((3, 4), np.float32)))
    with pytest.raises(ValueError, match="one feature per row"):
        kc.sddmm(d[0], d[1], _dev(np.ones((2, 5), np.float32)), x)


# ----------------------------------------------------------------------------- production geometry
@pytest.mark.parametrize("dtype", DTYPES)
def test_production_geometry(rng, monkeypatch, dtype):
    """The real block constants (32 lanes, 8 warps) on one tiny case per kernel."""
    import importlib

    csr = importlib.import_module("sparsenet.kernels.cuda.csr")
    for key, value in {"WARP": 32, "SPMM_WARPS": 8, "SPMM_BATCH_TILE": 128, "SDDMM_WARPS": 8,
                       "SDDMM_ENTRIES": 32, "SDDMM_PAD": 33, "SDDMM_THREADS": 256, "TILE": 32, "TILE_ROWS": 8, "TILE_PAD": 33}.items():
        assert key in vars(csr)
        monkeypatch.setattr(csr, key, value)
    kc = _kc()
    data, indices, indptr, shape = _matrix(rng, (2, 35), 0.9, dtype, empty_rows=(1,))
    x = rng.standard_normal((3, 35)).astype(dtype)
    g = rng.standard_normal((3, 2)).astype(dtype)
    d = _on_device(data, indices, indptr)
    np.testing.assert_allclose(_host(kc.spmm(*d, _dev(x))), ref.spmm(indptr, indices, data, shape, x), **_tol(dtype))
    gw = _host(kc.sddmm(d[0], d[1], _dev(g), _dev(x)))
    np.testing.assert_allclose(gw, ref.sddmm(indptr, indices, shape, g, x), **_tol(dtype))
    gw_b, gb = kc.sddmm(d[0], d[1], _dev(g), _dev(x), bias_grad=True)  # 256 threads sum the bias
    np.testing.assert_array_equal(_host(gw_b), gw)
    np.testing.assert_allclose(_host(gb), g.sum(axis=0), **_tol(dtype))
    # A batch over the 128-column tile: a full tile, then one shifted left to end at the batch.
    x = rng.standard_normal((130, 35)).astype(dtype)
    np.testing.assert_allclose(_host(kc.spmm(*d, _dev(x))), ref.spmm(indptr, indices, data, shape, x), **_tol(dtype))


# ----------------------------------------------------------------------------- optimizers
def _np_sgd(p, g, buf, lr, momentum, dampening, wd, nesterov, first):
    d = g + wd * p if wd else g.copy()
    if momentum:
        buf = d.copy() if first else momentum * buf + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    return p - lr * d, buf


def _np_adam(p, g, m, v, lr, b1, b2, eps, wd, decoupled, step):
    if wd:
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
    m = m + (1 - b1) * (g - m)
    v = b2 * v + (1 - b2) * g * g
    denom = np.sqrt(v) / np.sqrt(1 - b2 ** step) + eps
    return p - lr / (1 - b1 ** step) * (m / denom), m, v


SGD_CASES = [
    dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2, nesterov=False),
    dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hp", SGD_CASES, ids=["plain", "momentum-damp-wd", "nesterov"])
def test_sgd_update_matches_reference(rng, dtype, hp):
    kc = _kc()
    n = 29  # not a multiple of the block; more elements than threads in the grid (grid-stride)
    p = rng.standard_normal(n).astype(dtype)
    buf = np.zeros(n, dtype)
    d_p, d_buf = _dev(p), _dev(buf)
    for step in range(3):
        g = rng.standard_normal(n).astype(dtype)
        kc.sgd_update(hp["lr"], hp["momentum"], hp["dampening"], hp["weight_decay"], hp["nesterov"],
                      step == 0, d_p, _dev(g), d_buf if hp["momentum"] else None)
        p64, buf64 = _np_sgd(p.astype(np.float64), g.astype(np.float64), buf.astype(np.float64),
                             hp["lr"], hp["momentum"], hp["dampening"], hp["weight_decay"], hp["nesterov"],
                             step == 0)
        p, buf = p64.astype(dtype), buf64.astype(dtype)
        np.testing.assert_allclose(_host(d_p), p, **_tol(dtype))
        p = _host(d_p)
        if hp["momentum"]:
            np.testing.assert_allclose(_host(d_buf), buf, **_tol(dtype))
            buf = _host(d_buf)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decoupled,wd", [(False, 0.0), (False, 0.01), (True, 0.01)], ids=["adam", "adam-l2", "adamw"])
def test_adam_update_matches_reference(rng, dtype, decoupled, wd):
    kc = _kc()
    n = 21
    p = rng.standard_normal(n).astype(dtype)
    m = np.zeros(n, dtype)
    v = np.zeros(n, dtype)
    d_p, d_m, d_v = _dev(p), _dev(m), _dev(v)
    for step in range(1, 4):
        g = rng.standard_normal(n).astype(dtype)
        kc.adam_update(1e-2, 0.9, 0.999, 1e-8, wd, decoupled, step, d_p, _dev(g), d_m, d_v)
        p, m, v = (a.astype(dtype) for a in _np_adam(p.astype(np.float64), g.astype(np.float64),
                                                      m.astype(np.float64), v.astype(np.float64),
                                                      1e-2, 0.9, 0.999, 1e-8, wd, decoupled, step))
        for dev_arr, want in ((d_p, p), (d_m, m), (d_v, v)):
            np.testing.assert_allclose(_host(dev_arr), want, **_tol(dtype))
        p, m, v = _host(d_p), _host(d_m), _host(d_v)


def test_updates_match_cpu_twin(rng):
    """Same arguments as kernels/cpu/update.py, same result (float64)."""
    cpu = pytest.importorskip("sparsenet.kernels.cpu.update")
    kc = _kc()
    n = 13
    p, g, buf = rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(n)
    d_p, d_buf = _dev(p), _dev(buf)
    kc.sgd_update(0.1, 0.9, 0.1, 1e-3, True, False, d_p, _dev(g), d_buf)
    cpu.sgd_update(0.1, 0.9, 0.1, 1e-3, True, False, p, g, buf)
    np.testing.assert_allclose(_host(d_p), p, rtol=1e-14)
    np.testing.assert_allclose(_host(d_buf), buf, rtol=1e-14)
    m, v = rng.standard_normal(n), rng.random(n)
    d_p, d_m, d_v = _dev(p), _dev(m), _dev(v)
    kc.adam_update(1e-3, 0.9, 0.99, 1e-8, 0.01, True, 5, d_p, _dev(g), d_m, d_v)
    cpu.adam_update(1e-3, 0.9, 0.99, 1e-8, 0.01, True, 5, p, g, m, v)
    for dev_arr, want in ((d_p, p), (d_m, m), (d_v, v)):
        np.testing.assert_allclose(_host(dev_arr), want, rtol=1e-13)


def test_update_of_2d_parameter_and_empty(rng):
    kc = _kc()
    p = rng.standard_normal((3, 5))
    g = rng.standard_normal((3, 5))
    d_p = _dev(p)
    kc.sgd_update(0.5, 0.0, 0.0, 0.0, False, True, d_p, _dev(g), None)
    np.testing.assert_allclose(_host(d_p), p - 0.5 * g, rtol=1e-14)
    kc.sgd_update(0.5, 0.0, 0.0, 0.0, False, True, _dev(np.zeros(0)), _dev(np.zeros(0)), None)


# ----------------------------------------------------------------------------- devices
def test_device_helpers(rng):
    x = _dev(np.ones(3))
    assert kdevice.is_device_array(x) and not kdevice.is_device_array(np.ones(3))
    assert kdevice.device_of(x) == "cuda" and kdevice.device_of(np.ones(3)) == "cpu"
    assert kdevice.check_same_device(a=x, b=x, c=None) == "cuda"
    with pytest.raises(ValueError, match="x on cuda, w on cpu"):
        kdevice.check_same_device(x=x, w=np.ones(2))
    ok, reason = kdevice.cuda_available()
    assert ok, reason


def test_csrmatrix_to_and_back(rng):
    w = CSRMatrix.random((5, 6), 0.4, rng=rng, dtype=np.float32)
    wd = w.to("cuda")
    assert wd.device == "cuda" and wd.shape == w.shape and wd.nnz == w.nnz
    assert wd.to("cuda") is wd
    back = wd.to("cpu")
    assert back.device == "cpu"
    np.testing.assert_array_equal(back.to_dense(), w.to_dense())
    assert back.indices.dtype == w.indices.dtype and back.dtype == w.dtype
    y = _kc().spmm(wd.indptr, wd.indices, wd.data, _dev(np.ones((2, 6), np.float32)))
    np.testing.assert_allclose(_host(y), np.ones((2, 6)) @ w.to_dense().T, rtol=1e-6)
    with pytest.raises(ValueError, match="'cpu', 'cuda'"):
        w.to("gpu")


def test_bench_script_dry_run():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_bench.py"), "--dry-run"],
                         capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "| case |" in res.stdout


def test_every_thread_of_a_block_gets_one_shared_array(monkeypatch):
    """conftest makes the simulator's shared-array lookup thread-safe: threads asking at once
    for a block's array (here with the allocation slowed down, so that they all find it missing
    without the lock) get the same array, not one each."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
        pytest.skip("a simulator-only concern")
    import threading
    import time

    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    empty = np.empty
    monkeypatch.setattr(np, "empty", lambda *a, **k: time.sleep(0.002) or empty(*a, **k))
    shared = FakeCUDAShared(0)
    start = threading.Barrier(16)
    got = []

    def thread():
        start.wait()
        got.append(shared.array(8, np.float64))

    threads = [threading.Thread(target=thread) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 16 and all(a is got[0] for a in got)
