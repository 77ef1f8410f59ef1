"""Compute kernels of sparsenet and the one place that dispatches to them.

Each public function here takes raw arrays in the caller's layout, picks the backend,
converts to the layout the kernel wants, allocates the output and calls the kernel.
Validation of user input happens one level up (``sparsenet``); what is checked here is only
what the kernels need to be memory-safe given already-validated CSR structure.
"""
if __name__ != "sparsenet.kernels":
    raise ImportError(
        "the kernels/ folder is installed as the subpackage 'sparsenet.kernels'; import it as "
        "'import sparsenet.kernels', not as a top-level 'kernels' (that would compile every kernel "
        f"a second time and shadow the PyPI package of that name); got module name {__name__!r}"
    )

import numba
import numpy as np

from .cpu import csr as _csr

__all__ = ["spmm", "spmm_t", "sddmm", "csr_transpose", "csr_row_faults", "feature_major"]

# A batch block narrower than this wastes the SIMD lanes of the transposed product.
_MIN_BATCH_BLOCK = 16


def _require_host(name, *arrays):
    for a in arrays:
        if hasattr(a, "__cuda_array_interface__"):
            raise NotImplementedError(f"{name} has no CUDA kernel yet; pass NumPy (host) arrays")


def feature_major(a):
    """(batch, features) array -> C-contiguous (features, batch); free for F-ordered input."""
    return np.ascontiguousarray(a.T)


def spmm(indptr, indices, data, x):
    """Y = X W^T for dense X (B, n_col) and CSR W (n_row, n_col); returns Y (B, n_row).

    Y is returned F-ordered (a transposed view of the feature-major result): passing it on to
    the next sparse layer then needs no copy.
    """
    _require_host("spmm", data, x)
    out_t = np.empty((indptr.shape[0] - 1, x.shape[0]), dtype=data.dtype)
    _csr.csr_spmm(indptr, indices, data, feature_major(x), out_t)
    return out_t.T


def spmm_t(indptr, indices, data, n_col, g):
    """grad_X = G W for dense G (B, n_row) and CSR W (n_row, n_col); returns (B, n_col), F-ordered."""
    _require_host("spmm_t", data, g)
    batch = g.shape[0]
    out_t = np.empty((n_col, batch), dtype=data.dtype)
    n_chunks = max(1, min(numba.get_num_threads(), batch // _MIN_BATCH_BLOCK))
    _csr.csr_spmm_t(indptr, indices, data, feature_major(g), n_chunks, out_t)
    return out_t.T


def sddmm(indptr, indices, g, x):
    """grad_W[k] = sum_b G[b, row_k] X[b, col_k] on W's pattern; G (B, n_row), X (B, n_col)."""
    _require_host("sddmm", g, x)
    out = np.empty(indices.shape[0], dtype=g.dtype)
    _csr.csr_sddmm(indptr, indices, feature_major(g), feature_major(x), out)
    return out


def csr_transpose(n_col, indptr, indices):
    """Pattern of W^T: returns (indptr_t, indices_t, perm) with W^T's data = data[perm]."""
    nnz = indices.shape[0]
    indptr_t = np.empty(n_col + 1, dtype=indptr.dtype)
    indices_t = np.empty(nnz, dtype=indices.dtype)
    perm = np.empty(nnz, dtype=indptr.dtype)
    _csr.csr_transpose(n_col, indptr, indices, indptr_t, indices_t, perm)
    return indptr_t, indices_t, perm


def csr_row_faults(n_col, indptr, indices):
    """(code, row) of the first structural fault: 0 ok, 1 out of range, 2 unsorted, 3 duplicate."""
    code, row = _csr.csr_row_faults(n_col, indptr, indices)
    return int(code), int(row)


# ---------------------------------------------------------------------------------------------
# Optimizer updates (sparsenet.optim).  Parameters and state are updated in place.
# ---------------------------------------------------------------------------------------------
from .cpu import update as _update  # noqa: E402

__all__ += ["sgd_update", "adam_update"]


def _flat(a):
    """1-D view of a C-contiguous array: the update kernels need views, never copies."""
    if not a.flags.c_contiguous:
        raise ValueError("optimizer kernels update in place and need C-contiguous arrays")
    return a.reshape(-1)


def sgd_update(param, grad, buf, *, lr, momentum, dampening, weight_decay, nesterov, first):
    """In-place SGD step on one parameter array (any shape); ``buf`` same shape or None."""
    _require_host("sgd_update", param, grad)
    p = _flat(param)
    b = _flat(buf) if buf is not None else p[:0]
    _update.sgd_update(float(lr), float(momentum), float(dampening), float(weight_decay),
                       bool(nesterov), bool(first), p, np.ascontiguousarray(grad, dtype=param.dtype).reshape(-1), b)


def adam_update(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, decoupled, step):
    """In-place Adam/AdamW step on one parameter array; ``step`` is the 1-based count after this step."""
    _require_host("adam_update", param, grad)
    _update.adam_update(float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
                        bool(decoupled), int(step), _flat(param), np.ascontiguousarray(grad, dtype=param.dtype).reshape(-1),
                        _flat(exp_avg), _flat(exp_avg_sq))
