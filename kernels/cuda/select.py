"""CUDA kernels that zero the k entries of smallest magnitude (top-k hard thresholding).

A radix select over the bits of the magnitudes, entirely on the device: nothing is read back
between its passes, so a training step that keeps the largest weights never leaves the GPU.

Keys: the bits of a float with its sign bit cleared are ordered exactly like ``|x|`` for every
non-NaN value (IEEE 754); NaN keys are clamped to one value above +inf, so NaN counts as the
largest magnitude and every NaN ties with every other, as in the host twin
(``sparsenet.kernels.zero_smallest_``).  The kernels read the floats through an integer view
of the same memory (int32 for float32, int64 for float64) and write 0 (the bits of +0.0).

Pass by pass, from the most significant RADIX_BITS-bit digit down:

* ``radix_histogram``: each block counts, in a shared histogram, the digit of every key of its
  contiguous chunk whose higher digits equal the prefix chosen so far, and writes the counts to
  its row of ``hist``.  Shared integer atomics: the counts do not depend on their order.
* ``radix_pick`` (one block): adds the rows, finds the digit holding the rank-th smallest
  candidate, appends it to the prefix and keeps the rank within that digit, in ``state``
  (device memory).

After the last digit the prefix is the k-th smallest key T and ``state[1]`` the number r of
entries equal to T to zero.  The last histogram counts, per block, exactly the entries equal to
T, so ``zero_selected`` knows how many ties precede each block; it zeroes every key below T
and the first r keys equal to T in memory order (a block scan ranks ties inside a tile).
Integer arithmetic throughout: the result is exact and deterministic.

================  ===================  =====================================================
kernel            block                grid
================  ===================  =====================================================
radix_histogram   (SELECT_THREADS,)    (n_blocks,), n_blocks = min(ceil(n / (SELECT_THREADS
                                       * SELECT_ITEMS)), SELECT_MAX_BLOCKS), one chunk each
radix_pick        (SELECT_THREADS,)    (1,)
zero_selected     (SELECT_THREADS,)    (n_blocks,), the chunks of radix_histogram
================  ===================  =====================================================
"""
from numba import cuda, types

from .block import block_scan, block_sum, kernel

RADIX_BITS = 8
RADIX = 1 << RADIX_BITS
SELECT_THREADS = 256  # a power of two, at most RADIX: block scans, radix_pick's digit ranges
SELECT_ITEMS = 16  # keys per thread of a block's chunk, at least (fewer, larger chunks)
SELECT_MAX_BLOCKS = 512  # caps the histogram rows radix_pick adds up


@cuda.jit(device=True, inline="always")
def _key(bits, mask, nan_key):
    """The magnitude key of one float's bits: sign cleared, every NaN clamped to nan_key."""
    return min(bits & mask, nan_key)


@kernel
def radix_histogram(keys, mask, nan_key, chunk, first, hi_mask, shift, state, hist):
    """hist[b, d] = #keys in block b's chunk with (key & hi_mask) == prefix and digit d at ``shift``.

    keys (n,) int32|int64 (the floats' bits); the prefix is ``state[0]``, or 0 on the ``first``
    pass (when ``hi_mask`` is 0 and every key is a candidate).  hist (n_blocks, RADIX) int32 is
    overwritten.  O(n).
    """
    counts = cuda.shared.array(RADIX, dtype=types.int32)
    tid = cuda.threadIdx.x
    b = cuda.blockIdx.x
    for d in range(tid, RADIX, cuda.blockDim.x):
        counts[d] = 0
    prefix = 0 if first else state[0]
    cuda.syncthreads()
    start = b * chunk
    end = min(keys.shape[0], start + chunk)
    for i in range(start + tid, end, cuda.blockDim.x):
        k = _key(keys[i], mask, nan_key)
        if (k & hi_mask) == prefix:
            cuda.atomic.add(counts, (k >> shift) & (RADIX - 1), 1)
    cuda.syncthreads()
    for d in range(tid, RADIX, cuda.blockDim.x):
        hist[b, d] = counts[d]


@kernel
def radix_pick(hist, shift, first, rank0, state):
    """Choose the digit at ``shift`` of the rank-th smallest candidate key.

    The rank is ``state[1]`` (``rank0`` on the ``first`` pass), 1-based, at most the number of
    candidates counted in hist (n_blocks, RADIX).  Writes state[0] = prefix | digit << shift and
    state[1] = the rank among the candidates with that digit.  Thread t owns the digits
    [t * RADIX / SELECT_THREADS, (t + 1) * RADIX / SELECT_THREADS); one block.  O(n_blocks * RADIX).
    """
    scan = cuda.shared.array(SELECT_THREADS, dtype=types.int64)
    tid = cuda.threadIdx.x
    per = RADIX // SELECT_THREADS
    lo = tid * per
    prefix = 0 if first else state[0]
    rank = rank0 if first else state[1]
    total = 0
    for d in range(lo, lo + per):
        for b in range(hist.shape[0]):
            total += hist[b, d]
    scan[tid] = total
    upto, _ = block_scan(scan, tid)  # every thread has read state before anyone writes it
    before = upto - total
    if before < rank <= upto:  # the one thread whose digits hold the rank-th candidate
        r = rank - before
        for d in range(lo, lo + per):
            count = 0
            for b in range(hist.shape[0]):
                count += hist[b, d]
            if r <= count:
                state[0] = prefix | (d << shift)
                state[1] = r
                break
            r -= count


@kernel
def zero_selected(keys, mask, nan_key, chunk, state, hist):
    """keys[i] = 0 (the float +0.0) for every key below T = state[0] and the first r = state[1]
    keys equal to T in memory order.

    hist is the last pass's histogram: hist[b, T & (RADIX - 1)] counts block b's keys equal to
    T.  Chunks as in :func:`radix_histogram`.  O(n + n_blocks).
    """
    scan = cuda.shared.array(SELECT_THREADS, dtype=types.int64)
    tid = cuda.threadIdx.x
    b = cuda.blockIdx.x
    t_key = state[0]
    r = state[1]
    digit = t_key & (RADIX - 1)
    ties = 0
    for j in range(tid, b, cuda.blockDim.x):
        ties += hist[j, digit]
    scan[tid] = ties
    seen = block_sum(scan, tid)  # keys equal to T in the chunks before this one
    start = b * chunk
    end = min(keys.shape[0], start + chunk)
    for base in range(start, end, cuda.blockDim.x):  # the same trip count for every thread
        i = base + tid
        k = t_key
        tie = 0
        if i < end:
            k = _key(keys[i], mask, nan_key)
            if k == t_key:
                tie = 1
        scan[tid] = tie
        upto, tile_ties = block_scan(scan, tid)
        if i < end and (k < t_key or (tie == 1 and seen + upto <= r)):
            keys[i] = 0
        seen += tile_ties
