"""The one dispatch point sends device arrays to the CUDA kernels (simulator or GPU)."""
import numpy as np
import pytest

import sparsenet.functional as F
import sparsenet.kernels as K
from sparsenet import CSRMatrix

cuda = pytest.importorskip("numba.cuda")


def test_functional_sparse_linear_runs_on_device_arrays(rng):
    w = CSRMatrix.random((7, 5), 0.4, rng=rng, dtype=np.float32)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    g = rng.standard_normal((3, 7)).astype(np.float32)
    wd, xd, gd = w.to("cuda"), cuda.to_device(x), cuda.to_device(g)
    np.testing.assert_allclose(F.sparse_linear(xd, wd).copy_to_host(), F.sparse_linear(x, w), rtol=1e-5, atol=1e-6)
    gx = K.spmm_t(wd.indptr, wd.indices, wd.data, 5, gd).copy_to_host()
    np.testing.assert_allclose(gx, g @ w.to_dense(), rtol=1e-5, atol=1e-6)
    gw = K.sddmm(wd.indptr, wd.indices, gd, xd).copy_to_host()
    np.testing.assert_allclose(gw, K.sddmm(w.indptr, w.indices, g, x), rtol=1e-5, atol=1e-6)


def test_mixing_devices_names_each_argument(rng):
    w = CSRMatrix.random((4, 3), 0.5, rng=rng, dtype=np.float32)
    with pytest.raises(ValueError, match="x on cuda"):
        K.spmm(w.indptr, w.indices, w.data, cuda.to_device(np.ones((2, 3), np.float32)))


def test_op_without_cuda_kernel_refuses_device_arrays():
    with pytest.raises(NotImplementedError, match="no CUDA kernel"):
        K.require_host("topk_abs_grad", cuda.to_device(np.ones(3)))


def test_conv_and_pool_dispatch_to_device(rng):
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    w = rng.standard_normal((2, 2, 3, 2)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    geometry = ((1, 1), (1, 0), (1, 1))
    y = K.conv2d(x, w, b, *geometry)
    yd = K.conv2d(cuda.to_device(x), cuda.to_device(w), cuda.to_device(b), *geometry)
    np.testing.assert_allclose(yd.copy_to_host(), y, rtol=1e-4, atol=1e-5)
    g = rng.standard_normal(y.shape).astype(np.float32)
    gx, gw = K.conv2d_backward(g, x, w, *geometry)
    gxd, gwd = K.conv2d_backward(cuda.to_device(g), cuda.to_device(x), cuda.to_device(w), *geometry)
    np.testing.assert_allclose(gxd.copy_to_host(), gx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gwd.copy_to_host(), gw, rtol=1e-4, atol=1e-4)
    pool = ((2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(K.max_pool2d(cuda.to_device(x), *pool).copy_to_host(), K.max_pool2d(x, *pool))
    np.testing.assert_allclose(K.avg_pool2d(cuda.to_device(x), *pool).copy_to_host(), K.avg_pool2d(x, *pool),
                               rtol=1e-6)


def test_host_only_pattern_ops_refuse_device_arrays(rng):
    w = CSRMatrix.random((4, 3), 0.5, rng=rng, dtype=np.float32).to("cuda")
    for call in (lambda: K.csr_transpose(3, w.indptr, w.indices),
                 lambda: K.csr_row_norms(w.indptr, w.data),
                 lambda: K.csr_lookup(w.indptr, w.indices, np.zeros(1), np.zeros(1))):
        with pytest.raises(NotImplementedError, match="no CUDA kernel"):
            call()


def test_csr_matrix_host_only_methods_refuse_device_arrays(rng):
    w = CSRMatrix.random((4, 3), 0.5, rng=rng, dtype=np.float32)
    wd = w.to("cuda")
    for method in ("to_dense", "to_scipy", "check", "transpose"):
        with pytest.raises(NotImplementedError, match=f"CSRMatrix.{method} needs host arrays"):
            getattr(wd, method)()
    with pytest.raises(NotImplementedError, match="astype"):
        wd.astype(np.float64)
    copy = wd.copy()
    assert copy.device == "cuda" and copy.data is not wd.data
    np.testing.assert_array_equal(copy.to("cpu").to_dense(), w.to_dense())


def test_device_test_caches_numba_types_only():
    """numba's array types get one verdict per type (asked ~140 times a training step); other
    numba objects stay host-side, and objects of other libraries are asked every time."""
    from numba import cuda, typed

    from sparsenet.kernels import device

    d = cuda.to_device(np.zeros(3))
    assert device.is_device_array(d) and device.is_device_array(d[1:])
    assert device._NUMBA_TYPE_VERDICT[type(d)] is True
    assert not device.is_device_array(typed.List([1.0]))  # a numba object, not a device array

    class Foreign:  # a CUDA array of another library, by its interface alone
        __cuda_array_interface__ = {"shape": (1,), "typestr": "<f4", "data": (0, False), "version": 3}

    assert device.is_device_array(Foreign()) and type(Foreign()) not in device._NUMBA_TYPE_VERDICT
    assert not device.is_device_array(np.zeros(2))
