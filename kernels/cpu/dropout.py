"""CPU dropout kernels: the keep mask drawn from Philox inside the kernel that applies it.

A row (the first axis; the other axes merged) of C elements is cut into four quarters of
Q = ceil(C / 4) elements.  Element (r, c) keeps its value iff word ``c // Q`` of
``philox4x32(c % Q, r mod 2**32, r // 2**32, 0; key)`` is at least ``threshold``: one generator
call serves the same position in each quarter, a pure function of the element's position and
the key.  Quarters, not runs of four adjacent elements, because then each of the four words
streams through contiguous memory: the loops below vectorise the generator across calls with
no shuffling of interleaved elements (2-4x faster than groups of four adjacent elements on
arrays of 16 MiB), and on the GPU each word's loads are coalesced across a warp.  The GPU
kernel (kernels/cuda/ops.py) computes the same words, so a key gives the same mask on both
devices, and backward recomputes the mask from the key instead of storing it.
"""
from numba import int64, njit, prange, uint64

from ..philox import LOW32, SHIFT32, ZERO, philox4x32

_philox = njit(inline="always")(philox4x32)


@njit(inline="always")
def _keep(x, word, threshold, s, zero):
    return x * s if int64(word) >= threshold else zero


@njit(cache=True, nogil=True, parallel=True)
def dropout(key0, key1, threshold, scale, x, out):
    """out[r, c] = x[r, c] * scale where the mask word of (r, c) is >= threshold, else 0.

    key0, key1: the key's 32-bit halves; threshold in [0, 2**32] (2**32 keeps nothing).
    x, out (R, C) C-contiguous, same dtype; out is preallocated and overwritten.  O(R*C),
    about 25 integer operations per element for the generator.  Rows are tasks (each written
    by one thread: race-free, order-independent).  While all four quarters have an element at
    position q, the four words are spelled out (no inner loop, no tuple index), so LLVM
    vectorises the generator across q (SIMD 64-bit multiplies).
    """
    n_row, n_col = x.shape
    quarter = (n_col + 3) // 4
    full = n_col - 3 * quarter  # positions present in all four quarters (may be <= 0)
    k0, k1 = uint64(key0), uint64(key1)
    s = x.dtype.type(scale)
    zero = x.dtype.type(0)
    for r in prange(n_row):
        r_lo, r_hi = uint64(r) & LOW32, uint64(r) >> SHIFT32
        x0, x1, x2, x3 = x[r, :quarter], x[r, quarter:2 * quarter], x[r, 2 * quarter:3 * quarter], x[r, 3 * quarter:]
        o0, o1, o2, o3 = (out[r, :quarter], out[r, quarter:2 * quarter], out[r, 2 * quarter:3 * quarter],
                          out[r, 3 * quarter:])
        for q in range(max(full, 0)):
            w0, w1, w2, w3 = _philox(uint64(q), r_lo, r_hi, ZERO, k0, k1)
            o0[q] = _keep(x0[q], w0, threshold, s, zero)
            o1[q] = _keep(x1[q], w1, threshold, s, zero)
            o2[q] = _keep(x2[q], w2, threshold, s, zero)
            o3[q] = _keep(x3[q], w3, threshold, s, zero)
        for q in range(max(full, 0), quarter):  # positions missing from the last quarter(s)
            words = _philox(uint64(q), r_lo, r_hi, ZERO, k0, k1)
            for j in range(4):
                c = j * quarter + q
                if c < n_col:
                    out[r, c] = _keep(x[r, c], words[j], threshold, s, zero)


@njit(cache=True, nogil=True, parallel=True)
def dropout_t(key0, key1, threshold, scale, x_t, out_t):
    """:func:`dropout` of the (R, C) matrix given transposed: x_t, out_t (C, R) C-contiguous,
    i.e. an F-ordered (R, C) array such as a sparse layer's output, read in place.

    Tasks are generator positions q (columns q, Q + q, 2Q + q, 3Q + q: four rows of x_t), the
    inner loop runs over R: the counter then varies with r, and LLVM vectorises across r as in
    :func:`dropout`.  Same words, same mask; no transposing copy.
    """
    n_col, n_row = x_t.shape
    quarter = (n_col + 3) // 4
    k0, k1 = uint64(key0), uint64(key1)
    s = x_t.dtype.type(scale)
    zero = x_t.dtype.type(0)
    for q in prange(quarter):
        if q + 3 * quarter < n_col:
            x0, x1, x2, x3 = x_t[q], x_t[q + quarter], x_t[q + 2 * quarter], x_t[q + 3 * quarter]
            o0, o1, o2, o3 = out_t[q], out_t[q + quarter], out_t[q + 2 * quarter], out_t[q + 3 * quarter]
            for r in range(n_row):
                w0, w1, w2, w3 = _philox(uint64(q), uint64(r) & LOW32, uint64(r) >> SHIFT32, ZERO, k0, k1)
                o0[r] = _keep(x0[r], w0, threshold, s, zero)
                o1[r] = _keep(x1[r], w1, threshold, s, zero)
                o2[r] = _keep(x2[r], w2, threshold, s, zero)
                o3[r] = _keep(x3[r], w3, threshold, s, zero)
        else:  # a position missing from the last quarter(s)
            for r in range(n_row):
                words = _philox(uint64(q), uint64(r) & LOW32, uint64(r) >> SHIFT32, ZERO, k0, k1)
                for j in range(4):
                    c = j * quarter + q
                    if c < n_col:
                        out_t[c, r] = _keep(x_t[c, r], words[j], threshold, s, zero)
