"""CPU kernels for sparsity-pattern changes (pruning, SET, RigL, growth, compaction).

A topology update is split into O(nnz) passes over raw CSR arrays: *filter* (keep a subset of
the entries, rows and columns, renumbering columns), *merge* (insert new entries, given as a
second canonical CSR pattern disjoint from the first, into the kept ones) and *lookup* (find the
position of (row, col) pairs).  Each pass reports where every old entry went, so optimizer
state can follow its connections.

RigL's growth criterion needs the largest |dense gradient| entries of G^T X outside the current
pattern.  The dispatch computes G^T X one row tile at a time (one BLAS product into a small
preallocated buffer); ``topk_tile_filter`` keeps the free entries above the current k-th best
score and ``topk_tile_gather`` packs them, and a linear-time selection merges them into the
running top k.  The full (n_row, n_col) gradient never exists.

All kernels take raw arrays and a preallocated output last; they validate nothing and assume
canonical CSR (sorted, unique, in-range columns).
"""
import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True)
def topk_tile_filter(tile, r0, indptr, indices, thr, cand, n_cand):
    """Columns of one tile of |G^T X| that are free (not in the pattern) and score above ``thr``.

    tile (nr, n_col) holds rows r0..r0+nr-1 of G^T X; indptr, indices: the canonical pattern of
    excluded entries.  cand (>= nr, n_col) int32 and n_cand (>= nr,) int64 are preallocated and
    overwritten: row r's candidates are cand[r, :n_cand[r]], in column order.  ``thr`` < 0
    admits every score; NaN never passes (NaN > t is False).  O(nr * n_col).

    Serial on purpose: it runs between BLAS products, and a Numba parallel region started while
    OpenBLAS's worker threads still spin measured 5-10x slower on a 2-core machine; one cheap
    comparison per entry is well below the cost of the BLAS product that produced the tile.
    """
    nr = tile.shape[0]
    n_col = tile.shape[1]
    for r in range(nr):
        i = r0 + r
        p = indptr[i]
        end = indptr[i + 1]
        row = tile[r]
        out = cand[r]
        c = 0
        for j in range(n_col):
            if abs(row[j]) > thr:
                while p < end and indices[p] < j:
                    p += 1
                if p < end and indices[p] == j:
                    continue
                out[c] = j
                c += 1
        n_cand[r] = c


@njit(cache=True, nogil=True)
def topk_tile_gather(tile, r0, cand, n_cand, offsets, out_val, out_idx):
    """Scores and flat indices ``i * n_col + j`` of the filtered candidates, in (row, col) order.

    offsets (nr+1,) is the running sum of n_cand; out_val, out_idx (offsets[nr],) preallocated
    and overwritten.  O(candidates).
    """
    n_col = tile.shape[1]
    for r in range(tile.shape[0]):
        base = np.int64(r0 + r) * n_col
        dst = offsets[r]
        for q in range(n_cand[r]):
            j = cand[r, q]
            out_val[dst + q] = abs(tile[r, j])
            out_idx[dst + q] = base + j


@njit(cache=True, nogil=True, parallel=True)
def csr_lookup(indptr, indices, rows, cols, out):
    """out[q] = position of (rows[q], cols[q]) in the pattern, or -1 when not stored.

    rows, cols (Q,) in range; out (Q,) int64 preallocated and overwritten.  Binary search in
    each sorted row: O(Q log(nnz per row)).  Queries are independent.
    """
    for q in prange(rows.shape[0]):
        i = rows[q]
        j = cols[q]
        lo = indptr[i]
        hi = indptr[i + 1]
        while lo < hi:
            mid = (lo + hi) // 2
            if indices[mid] < j:
                lo = mid + 1
            else:
                hi = mid
        out[q] = lo if lo < indptr[i + 1] and indices[lo] == j else -1


@njit(cache=True, nogil=True)
def csr_filter_count(indptr, indices, row_sel, col_map, keep, counts):
    """counts[r] = entries of old row row_sel[r] with keep[k] and col_map[indices[k]] >= 0.

    row_sel (n_new_row,) old row of each new row; col_map (n_col,) old -> new column or -1;
    keep (nnz,) bool.  counts (n_new_row,) preallocated and overwritten.  O(nnz).
    """
    for r in range(row_sel.shape[0]):
        i = row_sel[r]
        c = 0
        for k in range(indptr[i], indptr[i + 1]):
            if keep[k] and col_map[indices[k]] >= 0:
                c += 1
        counts[r] = c


@njit(cache=True, nogil=True)
def csr_filter_fill(indptr, indices, row_sel, col_map, keep, out_indptr, out_indices, src):
    """Second pass of the filter: out_indices (new columns) and src (old position of each new entry).

    out_indptr from the cumulated counts of :func:`csr_filter_count`; out_indices, src (new_nnz,)
    preallocated and overwritten.  ``col_map`` must be increasing on kept columns so rows stay
    sorted (removing or renumbering columns in order).  O(nnz).
    """
    for r in range(row_sel.shape[0]):
        i = row_sel[r]
        dst = out_indptr[r]
        for k in range(indptr[i], indptr[i + 1]):
            if keep[k]:
                j = col_map[indices[k]]
                if j >= 0:
                    out_indices[dst] = j
                    src[dst] = k
                    dst += 1


@njit(cache=True, nogil=True, parallel=True)
def csr_merge(indptr_a, indices_a, indptr_b, indices_b, out_indptr, out_indices, pos_a, pos_b):
    """Union of two disjoint canonical patterns of the same shape, row by row.

    out_indptr = indptr_a + indptr_b (given).  out_indices (nnz_a + nnz_b,), pos_a (nnz_a,) and
    pos_b (nnz_b,) preallocated and overwritten: entry k of A lands at pos_a[k], of B at pos_b[k].
    O(nnz_a + nnz_b).  Rows are independent (disjoint output ranges): race-free.
    """
    for i in prange(out_indptr.shape[0] - 1):
        pa = indptr_a[i]
        ea = indptr_a[i + 1]
        pb = indptr_b[i]
        eb = indptr_b[i + 1]
        dst = out_indptr[i]
        while pa < ea or pb < eb:
            if pb >= eb or (pa < ea and indices_a[pa] < indices_b[pb]):
                out_indices[dst] = indices_a[pa]
                pos_a[pa] = dst
                pa += 1
            else:
                out_indices[dst] = indices_b[pb]
                pos_b[pb] = dst
                pb += 1
            dst += 1


@njit(cache=True, nogil=True, parallel=True)
def csr_row_norms(indptr, data, ord, out):
    """out[i] = sum |data| (ord 1) or sqrt(sum data^2) (ord 2) over row i.  O(nnz + n_row)."""
    for i in prange(out.shape[0]):
        acc = 0.0
        if ord == 1:
            for k in range(indptr[i], indptr[i + 1]):
                acc += abs(data[k])
            out[i] = acc
        else:
            for k in range(indptr[i], indptr[i + 1]):
                acc += data[k] * data[k]
            out[i] = np.sqrt(acc)
