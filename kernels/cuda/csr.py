"""CUDA kernels for CSR sparse x dense products (and the dense transpose they need).

Layout convention, the same as the CPU kernels: dense operands are *feature-major*, shape
(features, batch), C-contiguous, so that consecutive lanes of a warp touch consecutive batch
columns of one feature row: every global load and store of a dense operand is a coalesced
128-byte (float32) transaction.  The launch wrappers in ``sparsenet.kernels.cuda`` convert from
the caller's (batch, features) arrays; an F-ordered (batch, features) array is already
feature-major and costs nothing.

Every kernel takes raw arrays, the preallocated output last; none allocates (apart from shared
memory), validates, or assumes more than canonical, in-range CSR.  Each output element is
written by exactly one thread, summing in a fixed order: no atomics, bitwise deterministic.

No warp intrinsics (shuffles, ``syncwarp``) are used: Numba's CUDA simulator, where CI tests
these kernels, does not implement them; lanes exchange data through shared memory between
block-wide ``syncthreads``, so no kernel returns early.  Thread geometry (blockDim.x is the warp
width, so ``threadIdx.y`` names the warp):

================  ==========================  ===================================================
kernel            block                       grid
================  ==========================  ===================================================
csr_spmm          (32, SPMM_WARPS)            (ceil(n_row / SPMM_WARPS), ceil(B / SPMM_BATCH_TILE))
csr_sddmm         (32, SDDMM_WARPS)           (n_row,)
transpose_2d      (TILE, TILE_ROWS)           (ceil(n_col / TILE), ceil(n_row / TILE))
fill              (FILL_THREADS,)             (min(ceil(n / FILL_THREADS), FILL_MAX_BLOCKS),)
================  ==========================  ===================================================

The wrappers compute these beside each launch from the constants below.
"""
from numba import cuda, uint32, uint64

from .block import block_sum, kernel

WARP = 32

# SpMM: one warp per CSR row, lanes along the batch, each lane owning SPMM_COLS batch columns
# (lane, lane + 32, lane + 64, lane + 96): four independent loads in flight per stored entry.
SPMM_COLS = 4
SPMM_BATCH_TILE = WARP * SPMM_COLS
SPMM_WARPS = 8

# SDDMM: one block per CSR row, SDDMM_ENTRIES of its entries at a time, four per warp.
SDDMM_WARPS = 8
SDDMM_ENTRIES = 4 * SDDMM_WARPS
SDDMM_PAD = WARP + 1  # shared-memory shapes must be compile-time constants, not expressions
SDDMM_THREADS = 256  # WARP * SDDMM_WARPS, spelled out for the same reason

TILE = 32
TILE_ROWS = 8
TILE_PAD = TILE + 1

FILL_THREADS = 256
FILL_MAX_BLOCKS = 4096


@kernel
def csr_spmm(indptr, indices, perm, gather, data, x_t, bias, has_bias, relu, gated, gate_t, out_t):
    """out_t[i, :] = sum_k data[src(k)] * x_t[indices[k], :] (+ bias[i]) over row i's stored entries.

    ``src(k) = perm[k]`` when ``gather`` else ``k``: with the transposed pattern of W and its
    permutation this computes W^T products without ever materialising W^T's values, so an
    optimizer step on ``data`` needs no re-transpose (see ``spmm_t`` in the wrappers).
    ``perm`` is not read when ``gather`` is False (pass ``indices``).  With ``has_bias`` the
    layer's bias (n_row,) is added as each output is stored (the epilogue spares the bias-add
    kernel a launch and a pass over the output; the sum is the same, acc + bias); without it
    ``bias`` is not read (pass ``data``).  With ``relu`` each output is then stored as
    ``v if v > 0 else 0``, the ReLU kernel's expression: a sparse layer followed by a ReLU in a
    ``Sequential`` costs one launch and one output array.  With ``gated`` each output is stored
    times ``1 if gate_t[i, b] > 0 else 0``, the ReLU backward kernel's expression, with gate_t
    (n_row, B) C-contiguous the output of that ReLU: the input gradient of a layer after a ReLU
    comes out as the gradient of the ReLU's input, in one launch; without it ``gate_t`` is not
    read (pass ``out_t``).

    indptr (n_row+1,) int32|int64, indices (nnz,), data (nnz,), x_t (n_col, B) C-contiguous;
    out_t (n_row, B) is preallocated and overwritten (empty rows give zeros).  O(B * nnz).

    One warp per row (SPMM_WARPS rows per block), batch along lanes, SPMM_COLS columns per
    lane.  The block's rows' entries are staged in shared memory 32 per row at a time, each
    lane loading one (coalesced; for the gathered W^T values, one scattered load per entry
    instead of 32 redundant ones) and storing its column index and value; the warp then reads
    them as shared-memory broadcasts.  The dense reads
    ``x_t[j, b..b+31]`` and the stores are coalesced.  The staging loop runs to the longest
    row of the block so every thread meets every ``syncthreads``.

    The inner loop is written for the instruction count, which bounds it (the SASS, not the
    PTX, is what to read): offsets are unsigned, so numba emits no negative-index fix-up; each
    entry's x_t row is addressed once, as a view; and no load is guarded, so the four loads of
    an entry issue back to back.  When B >= SPMM_BATCH_TILE every tile is a full one (the last
    is shifted left to end at B and stores only the columns it owns), and a lane's four loads
    are one address plus constant offsets: about 15 instructions per entry and four columns,
    against 90 when each load carried its own bounds check and index arithmetic.  A smaller
    batch clamps the lanes' columns to B - 1 (valid loads, never stored).
    """
    stage_j = cuda.shared.array((SPMM_WARPS, WARP), dtype=indices.dtype)
    stage_w = cuda.shared.array((SPMM_WARPS, WARP), dtype=data.dtype)
    lane = cuda.threadIdx.x
    warp = cuda.threadIdx.y
    row0 = cuda.blockIdx.x * SPMM_WARPS
    row = row0 + warp
    n_row = out_t.shape[0]
    batch = out_t.shape[1]
    # Rows past the end behave as empty rows: no early return, syncthreads needs everyone.
    start = 0
    end = 0
    if row < n_row:
        start = indptr[row]
        end = indptr[row + 1]
    longest = 0
    for r in range(row0, min(row0 + SPMM_WARPS, n_row)):
        longest = max(longest, indptr[r + 1] - indptr[r])
    owned = cuda.blockIdx.y * SPMM_BATCH_TILE  # this block stores columns owned.. owned + tile - 1
    full = batch >= SPMM_BATCH_TILE
    tile0 = min(owned, batch - SPMM_BATCH_TILE) if full else owned
    b0 = tile0 + lane
    step1 = uint64(WARP)  # unsigned constants: an int literal meeting a uint64 would make a float
    step2 = uint64(2 * WARP)
    step3 = uint64(3 * WARP)
    c0 = uint64(b0)
    last = uint64(batch - 1)
    d0 = min(c0, last)
    d1 = min(c0 + step1, last)
    d2 = min(c0 + step2, last)
    d3 = min(c0 + step3, last)
    uwarp = uint64(warp)
    zero = out_t.dtype.type(0)
    acc0 = zero
    acc1 = zero
    acc2 = zero
    acc3 = zero
    for c in range(0, longest, WARP):
        cuda.syncthreads()  # the previous chunk has been consumed by every warp
        k = start + c + lane
        if k < end:
            stage_j[warp, lane] = indices[k]
            stage_w[warp, lane] = data[perm[k]] if gather else data[k]
        cuda.syncthreads()
        n = uint64(max(min(WARP, end - start - c), 0))
        t = uint64(0)
        if full:
            while t < n:
                xj = x_t[uint64(stage_j[uwarp, t])]
                w = stage_w[uwarp, t]
                v0 = xj[c0]
                v1 = xj[c0 + step1]
                v2 = xj[c0 + step2]
                v3 = xj[c0 + step3]
                acc0 += w * v0
                acc1 += w * v1
                acc2 += w * v2
                acc3 += w * v3
                t += uint64(1)
        else:
            while t < n:
                xj = x_t[uint64(stage_j[uwarp, t])]
                w = stage_w[uwarp, t]
                v0 = xj[d0]
                v1 = xj[d1]
                v2 = xj[d2]
                v3 = xj[d3]
                acc0 += w * v0
                acc1 += w * v1
                acc2 += w * v2
                acc3 += w * v3
                t += uint64(1)
    if row < n_row:
        if has_bias:
            shift = bias[row]
            acc0 += shift
            acc1 += shift
            acc2 += shift
            acc3 += shift
        if relu:
            acc0 = acc0 if acc0 > zero else zero
            acc1 = acc1 if acc1 > zero else zero
            acc2 = acc2 if acc2 > zero else zero
            acc3 = acc3 if acc3 > zero else zero
        if gated:  # d0..d3: in-range columns; those a lane does not own are not stored
            one = out_t.dtype.type(1)
            acc0 *= one if gate_t[row, d0] > zero else zero
            acc1 *= one if gate_t[row, d1] > zero else zero
            acc2 *= one if gate_t[row, d2] > zero else zero
            acc3 *= one if gate_t[row, d3] > zero else zero
        b1 = b0 + WARP
        b2 = b1 + WARP
        b3 = b2 + WARP
        if owned <= b0 < batch:
            out_t[row, b0] = acc0
        if owned <= b1 < batch:
            out_t[row, b1] = acc1
        if owned <= b2 < batch:
            out_t[row, b2] = acc2
        if owned <= b3 < batch:
            out_t[row, b3] = acc3


@cuda.jit(device=True, inline="always")
def _sddmm_row(indptr, indices, g_t, x_t, out, partial):
    """csr_sddmm's body for the block's row (see there); ``partial`` its shared scratch."""
    lane = cuda.threadIdx.x
    warp = cuda.threadIdx.y
    row = cuda.blockIdx.x
    start = indptr[row]
    end = indptr[row + 1]
    g = g_t[uint64(row)]
    batch = uint32(g_t.shape[1])  # B < 2**31 (checked by the wrapper)
    step = uint32(WARP)
    zero = out.dtype.type(0)
    for e0 in range(start, end, SDDMM_ENTRIES):
        ne = min(SDDMM_ENTRIES, end - e0)
        e_0 = warp
        e_1 = warp + SDDMM_WARPS
        e_2 = warp + 2 * SDDMM_WARPS
        e_3 = warp + 3 * SDDMM_WARPS
        x0 = x_t[uint64(indices[e0 + e_0] if e_0 < ne else indices[e0])]
        x1 = x_t[uint64(indices[e0 + e_1] if e_1 < ne else indices[e0])]
        x2 = x_t[uint64(indices[e0 + e_2] if e_2 < ne else indices[e0])]
        x3 = x_t[uint64(indices[e0 + e_3] if e_3 < ne else indices[e0])]
        p0 = zero
        p1 = zero
        p2 = zero
        p3 = zero
        b = uint32(lane)
        while b < batch:
            gb = g[b]
            p0 += gb * x0[b]
            p1 += gb * x1[b]
            p2 += gb * x2[b]
            p3 += gb * x3[b]
            b += step
        cuda.syncthreads()  # the previous chunk's partials have been summed
        partial[e_0, lane] = p0
        partial[e_1, lane] = p1
        partial[e_2, lane] = p2
        partial[e_3, lane] = p3
        cuda.syncthreads()
        e = warp * WARP + lane  # SDDMM_ENTRIES <= threads per block: the first threads sum
        if e < ne:
            acc = zero
            for t in range(WARP):
                acc += partial[e, t]
            out[e0 + e] = acc


@kernel
def csr_sddmm(indptr, indices, g_t, x_t, out):
    """out[k] = sum_b g_t[i, b] * x_t[indices[k], b] for every stored entry k of row i.

    The weight gradient of Y = X W^T on W's pattern (sampled dense-dense product).
    g_t (n_row, B), x_t (n_col, B) C-contiguous; out (nnz,) is preallocated and overwritten
    (B == 0 gives zeros).  O(B * nnz); never forms the dense n_row x n_col gradient.

    One block per row, SDDMM_ENTRIES of its entries at a time: warp ``w`` owns entries
    ``w, w + 8, w + 16, w + 24`` of the chunk and its lanes stride over the batch, so each
    loaded ``g_t[i, b]`` serves four entries from a register and every read of ``x_t[j, :]`` is
    coalesced.  The per-lane partial sums go to shared memory (one ``syncthreads`` per chunk,
    not per entry) and one lane per entry adds its 32 partials in a fixed order: race-free,
    deterministic, no atomics and no warp shuffles.  As in ``csr_spmm`` the batch loop is
    written for the instruction count: it indexes row views taken once per chunk with a 32-bit
    unsigned counter (no negative-index fix-up, and the compiler turns the five addresses into
    pointers it steps), and its loads are unguarded (an entry past the chunk reads the chunk's
    first row and is never stored): 13 instructions an iteration in the SASS, against 74.
    """
    partial = cuda.shared.array((SDDMM_ENTRIES, SDDMM_PAD), dtype=out.dtype)
    _sddmm_row(indptr, indices, g_t, x_t, out, partial)


@kernel
def csr_sddmm_bias(indptr, indices, g_t, x_t, out, bias_out):
    """:func:`csr_sddmm`, and bias_out[i] = sum_b g_t[i, b]: a sparse layer's weight and bias
    gradients from one launch.

    The block already owns row i of g_t: each thread adds g_t[i, b] for b = tid, tid +
    SDDMM_THREADS, ... and ``block_sum`` adds the threads' sums: the partition and tree of
    ``ops.batch_sum`` with as many threads (bitwise its result).  A kernel of its own, because
    the sum's registers (48 instead of 32 in float32) would cost the plain kernel occupancy.
    """
    partial = cuda.shared.array((SDDMM_ENTRIES, SDDMM_PAD), dtype=out.dtype)
    red = cuda.shared.array(SDDMM_THREADS, dtype=out.dtype)
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.y * WARP + cuda.threadIdx.x
    g = g_t[uint64(row)]
    batch = uint32(g_t.shape[1])
    acc = out.dtype.type(0)
    b = uint32(tid)
    while b < batch:
        acc += g[b]
        b += uint32(SDDMM_THREADS)
    red[tid] = acc
    total = block_sum(red, tid)
    if tid == 0:
        bias_out[row] = total
    _sddmm_row(indptr, indices, g_t, x_t, out, partial)


@kernel
def transpose_2d(a, out):
    """out[j, i] = a[i, j]: a (R, C) of any strides -> out (C, R) C-contiguous, overwritten.

    The classic shared-memory tile transpose: a TILE x TILE tile is read with coalesced rows of
    ``a`` and written with coalesced rows of ``out``; the +1 column of padding keeps the
    column-wise shared-memory reads free of bank conflicts.  O(R * C).
    """
    tile = cuda.shared.array((TILE, TILE_PAD), dtype=a.dtype)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    col0 = cuda.blockIdx.x * TILE
    row0 = cuda.blockIdx.y * TILE
    n_r = a.shape[0]
    n_c = a.shape[1]
    for r in range(ty, TILE, TILE_ROWS):
        i = row0 + r
        j = col0 + tx
        if i < n_r and j < n_c:
            tile[r, tx] = a[i, j]
    cuda.syncthreads()
    for r in range(ty, TILE, TILE_ROWS):
        i = col0 + r
        j = row0 + tx
        if i < n_c and j < n_r:
            out[i, j] = tile[tx, r]


@kernel
def fill(out, value):
    """out[:] = value for a 1-D array (grid-stride loop, coalesced).  O(n)."""
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, out.shape[0], stride):
        out[i] = value
