"""CPU kernels for CSR sparse x dense products.

Layout convention: a dense (batch, features) operand is packed per call into *batch tiles*
(``pack_tiles``): a C-contiguous (n_tiles, features, lanes) array whose tile t holds batch rows
t*lanes ... t*lanes+lanes-1 feature-major, zero-padded past the batch.  One tile row is what a
nonzero touches (the whole batch up to 1 KiB: 256 float32 or 128 float64 lanes; wide rows
amortise the per-nonzero index arithmetic over many SIMD FMAs, measured 1.6x faster than
256-byte rows at 1% density); a tile stays in L2/L3 while every CSR row is run over it, and the innermost loop of every product runs over contiguous lanes (SIMD FMAs).
The packing reads C- or F-ordered input in place (a parallel, blocked in-kernel transpose), so
no NumPy transpose is made.  Outputs are written feature-major, (features, batch)
C-contiguous; the dispatch hands them back as F-ordered (batch, features) views.

The lane count depends only on the dtype and the batch size, never on the thread count, and
each output element is summed by one task in a fixed order, so every result is bitwise
reproducible whatever the number of threads.

All kernels take raw CSR arrays (indptr, indices, data), the dense operands, and the
preallocated output last.  They allocate nothing, validate nothing and assume canonical,
in-range CSR (the caller checks).  The dispatch passes column indices viewed as unsigned where
a kernel gathers with them: the same bits, but numba then skips its negative-index
wraparound test on every gather.
"""
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array

# Reassociation and FMA contraction let LLVM vectorise the reductions.  'nnan'/'ninf' are
# deliberately absent: NaN and inf in activations must propagate as they do in NumPy.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
# For the products that accumulate lane-wise: FMA contraction only.  With reassociation LLVM
# vectorises the loop over a row's entries instead (a gather per lane, several times slower).
CONTRACT = {"contract"}


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


# ---------------------------------------------------------------------------------------------
# Batch-tiled products (see the module docstring for the layout).
# ---------------------------------------------------------------------------------------------

# Upper bound on the lanes of a product tile (the stack buffers' size); the dispatch uses at most
# 1 KiB of lanes (256 float32 or 128 float64).
MAX_LANES = 256


@intrinsic
def _stack_buffer(typingctx, size, dtype):
    """A 1-D array of ``size`` (a literal int) elements of ``dtype`` on the stack of the caller.

    Why: an array from np.empty may alias any other array as far as LLVM can tell, so a loop
    that stores to it and loads from a tile is vectorised behind run-time overlap checks, paid
    on every nonzero.  A stack slot provably aliases nothing, the checks vanish, and it lives in
    L1.  The slot is allocated once in the function's entry block (``alloca_once``), not per
    loop iteration.  Contents are uninitialised.
    """
    if not isinstance(size, types.IntegerLiteral) or not isinstance(dtype, types.DType):
        return None
    n = size.literal_value
    arrty = types.Array(dtype.dtype, 1, "C")

    def codegen(context, builder, sig, args):
        elem = context.get_value_type(dtype.dtype)
        intp = context.get_value_type(types.intp)
        itemsize = context.get_abi_sizeof(elem)
        ary = make_array(arrty)(context, builder)
        populate_array(ary, data=cgutils.alloca_once(builder, elem, size=n), shape=[intp(n)],
                       strides=[intp(itemsize)], itemsize=intp(itemsize), meminfo=None)
        return ary._getvalue()

    return arrty(size, dtype), codegen


@njit(cache=True, nogil=True, parallel=True)
def pack_tiles(x, feature_major, n_cb, out):
    """Copy a dense operand into batch tiles: out[t, j, l] = X[t*lanes + l, j], zero past the batch.

    x is C-contiguous and holds X (batch, n) when ``feature_major`` is False, or X^T (n, batch)
    when True (an F-ordered X, or the transposed result of another kernel).  out (n_tiles, n,
    lanes) is preallocated and overwritten.  O(batch * n).  Tasks own disjoint (tile, feature
    block) pieces of ``out``, ``n_cb`` feature blocks per tile: race-free.  The batch-major
    case is a blocked transpose, so it runs near copy speed instead of striding through memory.
    """
    n_tiles, n, lanes = out.shape
    batch = x.shape[1] if feature_major else x.shape[0]
    cb = (n + n_cb - 1) // n_cb
    for task in prange(n_tiles * n_cb):
        t = task // n_cb
        c0 = (task - t * n_cb) * cb
        c1 = min(n, c0 + cb)
        b0 = t * lanes
        nb = min(lanes, batch - b0)
        dst = out[t]
        # Views indexed from 0 throughout: numba's negative-index test on a computed index
        # (b0 + b) would otherwise keep these copies from vectorising.
        if feature_major:
            for j in range(c0, c1):
                src = x[j, b0:b0 + nb]
                d = dst[j]
                for b in range(nb):
                    d[b] = src[b]
                for b in range(nb, lanes):
                    d[b] = 0
        else:
            # Blocked transpose, 32 batch rows x 64 features (8 KiB) at a time: the block being
            # written stays in L1 and at most 32 input rows are streamed at once, few enough
            # for the hardware prefetchers (a full-width tile would stream hundreds).
            for bc in range(0, nb, 32):
                be = min(nb, bc + 32)
                for j0 in range(c0, c1, 64):
                    j1 = min(c1, j0 + 64)
                    blk = dst[j0:j1]
                    for b in range(bc, be):
                        src = x[b0 + b, j0:j1]
                        col = blk[:, b]
                        for j in range(j1 - j0):
                            col[j] = src[j]
            for j in range(c0, c1):
                d = dst[j]
                for b in range(nb, lanes):
                    d[b] = 0


@njit(cache=True, nogil=True, parallel=True, fastmath=CONTRACT)
def spmm_tiled(indptr, indices, data, xp, n_rb, out_t):
    """out_t[i, b] = sum_k data[k] * X[b, indices[k]] over row i's stored entries.

    xp (n_tiles, n_col, lanes) is X in batch tiles (``pack_tiles``); out_t (n_row, batch)
    C-contiguous is preallocated and overwritten.  O(batch * nnz + batch * n_row).
    A task is (batch tile, block of ``n_rb``-th of the rows): tasks write disjoint pieces of
    out_t, so the prange is race-free; each element is summed in the order of its row's
    entries, independent of the blocking and thread count.

    The accumulator row is a stack buffer (no aliasing, so no run-time overlap checks) and the
    entries are taken four at a time, summed as a tree before touching it: one load and store of
    the accumulator per four FMAs.  Only 'contract' fastmath: reassociation would let LLVM turn
    the loop over entries into a gather-based reduction, and NaN/inf must propagate.
    """
    n_row = indptr.shape[0] - 1
    n_tiles, _, lanes = xp.shape
    batch = out_t.shape[1]
    rb = (n_row + n_rb - 1) // n_rb
    for task in prange(n_tiles * n_rb):
        t = task // n_rb
        r0 = (task - t * n_rb) * rb
        tile = xp[t]
        b0 = t * lanes
        nb = min(lanes, batch - b0)
        acc = _stack_buffer(MAX_LANES, out_t.dtype)
        for i in range(r0, min(n_row, r0 + rb)):
            for b in range(lanes):
                acc[b] = 0
            # Row-local views indexed from 0 let LLVM drop the negative-index wraparound.
            cols = indices[indptr[i]:indptr[i + 1]]
            vals = data[indptr[i]:indptr[i + 1]]
            n = cols.shape[0]
            for q in range(n // 4):
                k = 4 * q
                w0, w1, w2, w3 = vals[k], vals[k + 1], vals[k + 2], vals[k + 3]
                s0, s1 = tile[cols[k]], tile[cols[k + 1]]
                s2, s3 = tile[cols[k + 2]], tile[cols[k + 3]]
                for b in range(lanes):
                    acc[b] += (w0 * s0[b] + w1 * s1[b]) + (w2 * s2[b] + w3 * s3[b])
            for k in range(n - n % 4, n):
                w = vals[k]
                s = tile[cols[k]]
                for b in range(lanes):
                    acc[b] += w * s[b]
            o = out_t[i]
            for b in range(nb):
                o[b0 + b] = acc[b]


@njit(cache=True, nogil=True, parallel=True, fastmath=CONTRACT)
def spmm_t_tiled(indptr, indices, data, gp, n_cb, acc, out_t):
    """out_t[j, b] = sum over entries k = (i, j) of data[k] * G[b, i]  (grad_X = G W, transposed).

    gp (n_tiles, n_row, lanes) is G in batch tiles; acc (n_tiles, n_col, lanes) is scratch;
    out_t (n_col, batch) C-contiguous is preallocated and overwritten.  O(batch * nnz +
    n_row * n_cb * log(nnz_row) + batch * n_col).  Requires sorted column indices in each row.

    A transposed product scatters, so instead of splitting rows, a task owns a (batch tile,
    column block) piece of the output and walks every row, taking only the entries whose
    column falls in its block (two binary searches per row: rows are sorted).  Each
    output element is then summed by one task in row order: race-free, and the same bits
    whatever the blocking or thread count.  The G row is copied to a stack buffer so the
    scatter's inner loop needs no overlap checks.
    """
    n_row = indptr.shape[0] - 1
    n_tiles, n_col, lanes = acc.shape
    batch = out_t.shape[1]
    cb = (n_col + n_cb - 1) // n_cb
    for task in prange(n_tiles * n_cb):
        t = task // n_cb
        c0 = (task - t * n_cb) * cb
        c1 = min(n_col, c0 + cb)
        a = acc[t]
        g_tile = gp[t]
        g = _stack_buffer(MAX_LANES, out_t.dtype)
        for j in range(c0, c1):
            for b in range(lanes):
                a[j, b] = 0
        for i in range(n_row):
            # Row-local views indexed from 0: numba's wraparound test folds away.
            cols = indices[indptr[i]:indptr[i + 1]]
            vals = data[indptr[i]:indptr[i + 1]]
            if n_cb > 1:
                q0 = np.searchsorted(cols, c0)
                q1 = np.searchsorted(cols, c1)
                cols = cols[q0:q1]
                vals = vals[q0:q1]
            if cols.shape[0] == 0:
                continue
            src = g_tile[i]
            for b in range(lanes):
                g[b] = src[b]
            for q in range(cols.shape[0]):
                w = vals[q]
                d = a[cols[q]]
                for b in range(lanes):
                    d[b] += w * g[b]
        b0 = t * lanes
        nb = min(lanes, batch - b0)
        for j in range(c0, c1):
            o = out_t[j]
            s = a[j]
            for b in range(nb):
                o[b0 + b] = s[b]


@njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
def sddmm_tiled(indptr, indices, gp, xp, n_rb, out):
    """out[k] = sum_b G[b, i] * X[b, indices[k]] for every stored entry k of row i.

    gp (n_tiles, n_row, lanes), xp (n_tiles, n_col, lanes) are G and X in batch tiles (zero
    padding contributes 0); out (nnz,) is preallocated and overwritten.  O(batch * nnz); never
    forms the dense gradient.  Tasks own blocks of rows, hence disjoint ranges of out:
    race-free.  Tiles are visited in order inside a task and each tile's dot product has a
    fixed lane count, so the sum order is fixed: deterministic and thread-count independent.
    Reassociation is allowed here (and only here) because each dot product is a reduction
    that must be vectorised; its order still depends on nothing but the lane count.
    """
    n_row = indptr.shape[0] - 1
    n_tiles, _, lanes = xp.shape
    rb = (n_row + n_rb - 1) // n_rb
    for r in prange(n_rb):
        r0 = min(n_row, r * rb)
        r1 = min(n_row, r0 + rb)
        for k in range(indptr[r0], indptr[r1]):
            out[k] = 0
        for t in range(n_tiles):
            x_tile = xp[t]
            g_tile = gp[t]
            for i in range(r0, r1):
                g = g_tile[i]
                cols = indices[indptr[i]:indptr[i + 1]]
                o = out[indptr[i]:indptr[i + 1]]
                n = cols.shape[0]
                # Two entries per pass share the loads of the G row (X rows come from L2/L3).
                for q in range(0, n - 1, 2):
                    s0 = x_tile[cols[q]]
                    s1 = x_tile[cols[q + 1]]
                    d0 = out.dtype.type(0)
                    d1 = out.dtype.type(0)
                    for b in range(lanes):
                        d0 += g[b] * s0[b]
                        d1 += g[b] * s1[b]
                    o[q] += d0
                    o[q + 1] += d1
                if n % 2:
                    s0 = x_tile[cols[n - 1]]
                    d0 = out.dtype.type(0)
                    for b in range(lanes):
                        d0 += g[b] * s0[b]
                    o[n - 1] += d0
