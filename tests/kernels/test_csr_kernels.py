"""CSR kernels against the float64 references of kernels/reference.py."""
import os
import pathlib
import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sparsenet.kernels as K
from sparsenet import CSRMatrix
from sparsenet.kernels import reference as ref

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOL = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}


def random_operands(rng, batch, n_in, n_out, density, dtype, index_dtype=np.int32):
    w = CSRMatrix.random((n_out, n_in), density, rng=rng, dtype=dtype, data_rvs=lambda n: rng.standard_normal(n))
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    g = rng.standard_normal((batch, n_out)).astype(dtype)
    return w.indptr.astype(index_dtype), w.indices.astype(index_dtype), w.data, (n_out, n_in), x, g


def check_all(indptr, indices, data, shape, x, g, dtype):
    tol = TOL[dtype]
    y = K.spmm(indptr, indices, data, x)
    assert y.shape == (x.shape[0], shape[0]) and y.dtype == dtype
    np.testing.assert_allclose(y, ref.spmm(indptr, indices, data, shape, x), **tol)
    bias = np.linspace(-1, 1, shape[0]).astype(dtype)
    np.testing.assert_array_equal(K.spmm(indptr, indices, data, x, bias), y + bias)
    gx = K.spmm_t(indptr, indices, data, shape[1], g)
    assert gx.shape == x.shape and gx.dtype == dtype
    np.testing.assert_allclose(gx, ref.spmm_t(indptr, indices, data, shape, g), **tol)
    # A ReLU's output (NaN, inf and -0 among its values): its backward applied by the product,
    # bitwise the separate pass (-0 where a negative was gated).
    gate = np.maximum(x, 0, order="C")  # reshape(-1) below is then a view, whatever x's layout
    gate.reshape(-1)[::5], gate.reshape(-1)[1::7], gate.reshape(-1)[2::6] = np.nan, np.inf, -0.0
    gated = K.spmm_t(indptr, indices, data, shape[1], g, gate)
    separate = K.activation_backward("relu", gate, gx)
    np.testing.assert_array_equal(gated, separate)
    np.testing.assert_array_equal(np.signbit(gated), np.signbit(separate))
    with pytest.raises(ValueError, match="gated result's shape"):
        K.spmm_t(indptr, indices, data, shape[1], g, gate[:, :1] if shape[1] > 1 else np.zeros((len(g), 2), dtype))
    with pytest.raises(TypeError, match="result's dtype"):
        K.spmm_t(indptr, indices, data, shape[1], g, gate.astype(np.float16))
    gw = K.sddmm(indptr, indices, g, x)
    assert gw.shape == data.shape and gw.dtype == dtype
    np.testing.assert_allclose(gw, ref.sddmm(indptr, indices, shape, g, x), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize(
    "batch, n_in, n_out, density",
    [(17, 23, 31, 0.2), (64, 50, 40, 0.05), (1, 9, 7, 0.5), (0, 5, 4, 0.5), (3, 6, 5, 0.0), (5, 4, 6, 1.0), (33, 1, 1, 1.0)],
)
def test_kernels_match_reference(rng, batch, n_in, n_out, density, dtype, index_dtype):
    check_all(*random_operands(rng, batch, n_in, n_out, density, dtype, index_dtype), dtype)


@pytest.mark.parametrize("layout", ["F", "sliced", "broadcast"])
def test_any_batch_layout_is_read_correctly(rng, layout):
    indptr, indices, data, shape, x, g = random_operands(rng, 12, 20, 15, 0.3, np.float64)
    make = {
        "F": np.asfortranarray,
        "sliced": lambda a: np.repeat(a, 2, axis=1)[:, ::2],
        "broadcast": lambda a: np.broadcast_to(a[:1], a.shape),
    }[layout]
    xs, gs = make(x), make(g)
    assert not xs.flags.c_contiguous
    check_all(indptr, indices, data, shape, xs, gs, np.float64)


def test_empty_rows_and_columns(rng):
    dense = rng.standard_normal((6, 7))
    dense[[0, 3, 5], :] = 0.0
    dense[:, [1, 6]] = 0.0
    w = CSRMatrix.from_dense(dense)
    x, g = rng.standard_normal((4, 7)), rng.standard_normal((4, 6))
    check_all(w.indptr, w.indices, w.data, w.shape, x, g, np.float64)


@given(
    batch=st.integers(0, 40),
    n_in=st.integers(1, 40),
    n_out=st.integers(1, 40),
    density=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]),
    dtype=st.sampled_from([np.float32, np.float64]),
    index_dtype=st.sampled_from([np.int32, np.int64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_kernels_property(batch, n_in, n_out, density, dtype, index_dtype, seed):
    rng = np.random.default_rng(seed)
    check_all(*random_operands(rng, batch, n_in, n_out, density, dtype, index_dtype), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adjoint_identity(rng, dtype):
    """<spmm(X), G> == <X, spmm_t(G)>: the grad-input kernel is the exact adjoint of the forward."""
    indptr, indices, data, shape, x, g = random_operands(rng, 32, 60, 45, 0.1, dtype)
    lhs = np.sum(K.spmm(indptr, indices, data, x).astype(np.float64) * g)
    rhs = np.sum(x * K.spmm_t(indptr, indices, data, shape[1], g).astype(np.float64))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4 if dtype == np.float32 else 1e-12)


def test_sddmm_is_the_weight_gradient(rng):
    """d<X W^T, G>/dW on the pattern, checked by finite differences along a random direction."""
    indptr, indices, data, shape, x, g = random_operands(rng, 8, 12, 10, 0.3, np.float64)
    v = rng.standard_normal(data.shape)
    eps = 1e-6
    phi = lambda d: np.sum(K.spmm(indptr, indices, d, x) * g)  # noqa: E731
    numeric = (phi(data + eps * v) - phi(data - eps * v)) / (2 * eps)
    np.testing.assert_allclose(np.dot(K.sddmm(indptr, indices, g, x), v), numeric, rtol=1e-7)


def test_parallel_kernels_are_deterministic_across_runs_and_thread_counts(rng):
    indptr, indices, data, shape, x, g = random_operands(rng, 70, 300, 200, 0.1, np.float32)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            results.append(
                (
                    K.spmm(indptr, indices, data, x),
                    K.spmm_t(indptr, indices, data, shape[1], g),
                    K.sddmm(indptr, indices, g, x),
                )
            )
    finally:
        numba.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_nan_and_inf_propagate(rng):
    indptr, indices, data, shape, x, g = random_operands(rng, 4, 8, 6, 1.0, np.float64)
    x[1, 3] = np.nan
    x[2, 5] = np.inf
    y = K.spmm(indptr, indices, data, x)
    assert np.isnan(y[1]).all() and np.isinf(y[2]).all() and np.isfinite(y[[0, 3]]).all()
    gw = K.sddmm(indptr, indices, g, x)
    assert np.isnan(gw[indices == 3]).all()


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_transpose_matches_scipy(rng, index_dtype):
    dense = rng.standard_normal((9, 13)) * (rng.random((9, 13)) < 0.3)
    w = CSRMatrix.from_dense(dense)
    indptr_t, indices_t, perm = K.csr_transpose(13, w.indptr.astype(index_dtype), w.indices.astype(index_dtype))
    r_indptr, r_indices, r_perm = ref.csr_transpose(w.indptr, w.indices, w.shape)
    np.testing.assert_array_equal(indptr_t, r_indptr)
    np.testing.assert_array_equal(indices_t, r_indices)
    np.testing.assert_array_equal(perm, r_perm)


def test_row_faults_codes():
    indptr = np.array([0, 2, 4], np.int32)
    assert K.csr_row_faults(5, indptr, np.array([0, 3, 1, 4], np.int32)) == (0, -1)
    assert K.csr_row_faults(5, indptr, np.array([0, 3, 1, 5], np.int32)) == (1, 1)
    assert K.csr_row_faults(5, indptr, np.array([0, 3, 4, 1], np.int32)) == (2, 1)
    assert K.csr_row_faults(5, indptr, np.array([2, 2, 1, 4], np.int32)) == (3, 0)


def _python(code, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_top_level_kernels_import_is_refused():
    out = _python("import kernels", ROOT)
    assert out.returncode != 0
    assert "ImportError" in out.stderr and "sparsenet.kernels" in out.stderr


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_sparsenet_kernels_imports_from_root_and_elsewhere(where, tmp_path):
    out = _python("import sparsenet.kernels as k; print(k.__name__)", ROOT if where == "root" else tmp_path)
    if where == "elsewhere" and "No module named 'sparsenet'" in out.stderr:
        pytest.skip("sparsenet is not installed (run from an installed environment)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "sparsenet.kernels"


def test_take_on_the_host(rng):
    """kernels.take on host arrays: numpy's rows, F-ordered on request for 2-D (as on the GPU)."""
    a = rng.standard_normal((6, 3))
    idx = np.array([5, 0, 0, 2])
    np.testing.assert_array_equal(K.take(a, idx), a[idx])
    f = K.take(a, idx, order="F")
    assert f.flags.f_contiguous and not f.flags.c_contiguous
    np.testing.assert_array_equal(f, a[idx])
    assert K.take(a[:, 0], idx, order="F").shape == (4,)
    with pytest.raises(ValueError, match="order must be 'C' or 'F'"):
        K.take(a, idx, order="K")
