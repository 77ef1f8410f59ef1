"""Slow, obvious NumPy/SciPy references for every kernel: for tests and benchmarks only.

They compute in float64 from the same raw arrays the kernels take, and are never used as a
fallback by the library.
"""
import numpy as np
import scipy.sparse as sp


def dense_from_csr(indptr, indices, data, shape):
    """Densify a CSR matrix with a Python loop (independent of scipy's conversion)."""
    out = np.zeros(shape, dtype=np.float64)
    for i in range(shape[0]):
        for k in range(indptr[i], indptr[i + 1]):
            out[i, indices[k]] += data[k]
    return out


def spmm(indptr, indices, data, shape, x):
    """Y = X W^T."""
    return np.asarray(x, np.float64) @ dense_from_csr(indptr, indices, data, shape).T


def spmm_t(indptr, indices, data, shape, g):
    """grad_X = G W."""
    return np.asarray(g, np.float64) @ dense_from_csr(indptr, indices, data, shape)


def sddmm(indptr, indices, shape, g, x):
    """grad_W[k] = (G^T X)[row_k, col_k] for each stored k."""
    rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
    full = np.asarray(g, np.float64).T @ np.asarray(x, np.float64)
    return full[rows, np.asarray(indices)]


def csr_transpose(indptr, indices, shape):
    """W^T's pattern and the permutation of data, via scipy."""
    m = sp.csr_matrix((np.arange(len(indices), dtype=np.float64) + 1, indices, indptr), shape=shape)
    t = m.T.tocsr()
    t.sort_indices()
    return t.indptr, t.indices, t.data.astype(np.int64) - 1
