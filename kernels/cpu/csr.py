"""CPU kernels for CSR sparse x dense products.

Layout convention: dense operands are *feature-major*, shape (features, batch), C-contiguous,
so that the innermost loop of every kernel runs over the batch on contiguous memory and
vectorises (one nonzero weight times a whole batch row is a SIMD axpy).  The dispatch in
``sparsenet.kernels`` converts from the user's (batch, features) arrays; an F-ordered
(batch, features) array is already feature-major and costs no copy.

All kernels take raw CSR arrays (indptr, indices, data), the dense operands, and the
preallocated output last.  They allocate nothing, validate nothing and assume canonical,
in-range CSR (the caller checks).
"""
import numpy as np
from numba import njit, prange

# Reassociation and FMA contraction let LLVM vectorise the reductions.  'nnan'/'ninf' are
# deliberately absent: NaN and inf in activations must propagate as they do in NumPy.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
def csr_spmm(indptr, indices, data, x_t, out_t):
    """out_t[i, :] = sum_k data[k] * x_t[indices[k], :] over row i's stored entries.

    indptr (n_row+1,) int32|int64, indices (nnz,), data (nnz,), x_t (n_col, B) C-contiguous;
    out_t (n_row, B) is preallocated and overwritten.  O(B * nnz + B * n_row).
    Rows are independent, so the prange over rows is race-free and deterministic.
    """
    batch = out_t.shape[1]
    for i in prange(out_t.shape[0]):
        row = out_t[i]
        for b in range(batch):
            row[b] = 0
        for k in range(indptr[i], indptr[i + 1]):
            w = data[k]
            src = x_t[indices[k]]
            for b in range(batch):
                row[b] += w * src[b]


@njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
def csr_spmm_t(indptr, indices, data, g_t, n_chunks, out_t):
    """out_t = W^T g_t: out_t[indices[k], :] += data[k] * g_t[i, :] for row i's entries.

    g_t (n_row, B) C-contiguous; out_t (n_col, B) is preallocated and overwritten.
    O(B * nnz + B * n_col).  A scatter over rows would race, so the batch is split into
    ``n_chunks`` column blocks instead: each thread owns a block of out_t's columns and walks
    the whole matrix, so every output element is summed by one thread in one fixed order
    (race-free, deterministic, and the same result whatever the number of threads).
    """
    batch = g_t.shape[1]
    chunk = (batch + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        b0 = c * chunk
        b1 = min(batch, b0 + chunk)
        for j in range(out_t.shape[0]):
            for b in range(b0, b1):
                out_t[j, b] = 0
        for i in range(g_t.shape[0]):
            g = g_t[i]
            for k in range(indptr[i], indptr[i + 1]):
                w = data[k]
                dst = out_t[indices[k]]
                for b in range(b0, b1):
                    dst[b] += w * g[b]


@njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
def csr_sddmm(indptr, indices, g_t, x_t, out):
    """out[k] = sum_b g_t[i, b] * x_t[indices[k], b] for every stored entry k of row i.

    The weight gradient of Y = X W^T restricted to W's pattern (sampled dense-dense product).
    g_t (n_row, B), x_t (n_col, B) C-contiguous; out (nnz,) is preallocated and overwritten.
    O(B * nnz); never forms the dense n_row x n_col gradient.  Rows are independent.
    """
    batch = g_t.shape[1]
    for i in prange(g_t.shape[0]):
        g = g_t[i]
        for k in range(indptr[i], indptr[i + 1]):
            src = x_t[indices[k]]
            acc = out.dtype.type(0)
            for b in range(batch):
                acc += g[b] * src[b]
            out[k] = acc


@njit(cache=True, nogil=True)
def csr_transpose(n_col, indptr, indices, indptr_t, indices_t, perm):
    """Pattern of W^T in CSR (i.e. W in CSC) by a counting sort.  O(nnz + n_row + n_col).

    indptr_t (n_col+1,), indices_t (nnz,), perm (nnz,) are preallocated and overwritten;
    W^T's data is ``data[perm]``.  Row indices come out sorted within each column because
    rows are visited in order, so the result is canonical.
    """
    for j in range(n_col + 1):
        indptr_t[j] = 0
    for k in range(indices.shape[0]):
        indptr_t[indices[k] + 1] += 1
    for j in range(n_col):
        indptr_t[j + 1] += indptr_t[j]
    n_row = indptr.shape[0] - 1
    for i in range(n_row):
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            dst = indptr_t[j]
            indices_t[dst] = i
            perm[dst] = k
            indptr_t[j] = dst + 1
    # indptr_t[j] now holds the end of column j, i.e. the start of column j + 1: shift back.
    for j in range(n_col, 0, -1):
        indptr_t[j] = indptr_t[j - 1]
    indptr_t[0] = 0


@njit(cache=True, nogil=True)
def csr_row_faults(n_col, indptr, indices):
    """First structural fault of a CSR pattern whose indptr is already known to be valid.

    Returns (code, row): code 0 = canonical, 1 = column index out of [0, n_col),
    2 = unsorted row, 3 = duplicate column in a row.  Out-of-range wins over the others
    because sorting could not repair it.  O(nnz).
    """
    unsorted_row = -1
    duplicate_row = -1
    for i in range(indptr.shape[0] - 1):
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            if j < 0 or j >= n_col:
                return 1, i
            if k > indptr[i]:
                prev = indices[k - 1]
                if j < prev and unsorted_row < 0:
                    unsorted_row = i
                elif j == prev and duplicate_row < 0:
                    duplicate_row = i
    if unsorted_row >= 0:
        return 2, unsorted_row
    if duplicate_row >= 0:
        return 3, duplicate_row
    return 0, -1
