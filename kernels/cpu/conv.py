"""CPU kernels for direct 2-D convolution (dense and weight-sparse) and locally connected layers.

Layout is NCHW.  No im2col matrix is ever formed; the only copy of the input is a
zero-padded, *phase-split* one, the same size as the padded input:

* **phases**: for stride (sh, sw) the padded input plane is split into sh*sw sub-planes
  ``xq[p*sw + q] = xpad[p::sh, q::sw]`` (one plane for stride 1).  Tap (ki, kj) of a
  strided convolution then reads phase ``((ki*dh) % sh, (kj*dw) % sw)`` at a *unit-stride*
  offset, so every stride and dilation runs through the same contiguous loops.
* **wide rows**: an output plane is computed on a grid as wide as a phase plane (``Wq``
  columns, of which the first ``OW`` are kept), so one kernel tap is *one* contiguous axpy
  over the flattened plane::

      acc[i] += w * xq[n, plane, phase][off + i],   0 <= i < L = (OH-1)*Wq + OW

  instead of OH short row loops.  The ``Wq - OW`` extra columns per row are wasted work
  (6 % for a 3x3 on 32x32) and are dropped when the plane is copied out.

A convolution is thereby a list of *entries* per output plane, ``(source plane, phase,
offset, weight)``, built once per call by the dispatch: all taps of a dense filter, only the
stored taps of a CSR filter (a direct sparse convolution: zero weights are skipped, the
dense filter is never formed), or the flipped/transposed taps for the input gradient.  The
same two kernels then serve dense and sparse, forward and backward.  Three entries are fused
per pass over the plane (``acc += w0*s0 + w1*s1 + w2*s2``): one load and store of ``acc`` per
three FMAs instead of per one, which is what makes the loop compute-bound rather than
load/store-bound.

``prange`` runs over independent outputs only: (image, output plane) pairs for the
accumulating kernel, weight rows for the weight gradient, which sums over the batch in a
fixed order.  Results are race-free and bitwise identical for any thread count.

Kernels take raw arrays and the preallocated output last; they allocate and validate nothing.
"""
from numba import njit, prange

# Same policy as csr.py: reassociation/contraction for SIMD reductions, but no 'nnan'/'ninf'
# so NaN and inf propagate as in NumPy.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

_OPTS = dict(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)


# Slices are taken before the loops so the loops index with the bare induction variable:
# ``x[off + i]`` makes Numba emit a negative-index wraparound test per element, which blocks
# vectorisation (measured 3 GFLOP/s against 45 with slices).  The fused loops are written out
# in place: as small helper functions they ran at half the speed.
@njit(**_OPTS)
def conv_planes(src, row_ptr, ent_plane, ent_phase, ent_off, ent_w, bias, stack, img_rows, wq, n_chunks, scratch,
                out):
    """out[n, r] = bias[r] + sum_k ent_w[k] * src[n // stack, ent_plane[k], ent_phase[k], ent_off[k]:][:L].

    src (G, S, P, stack*img_rows*Wq) C-contiguous: each plane holds ``stack`` images one
    above the other, ``img_rows`` rows of width ``Wq`` each; row_ptr (R+1,) and the entry
    arrays (nnz,) list the entries of output plane r in ``row_ptr[r]:row_ptr[r+1]``; bias
    (R,); scratch (n_chunks, >= L) with ``L = ((stack-1)*img_rows + OH - 1)*Wq + OW``; out
    (N, R, OH, OW), N <= G*stack, is preallocated and overwritten: image b of group g, row
    i is ``acc[(b*img_rows + i)*Wq:][:OW]``.  Every slice ``src[g, plane, phase, off:off+L]``
    must be in bounds (the dispatch guarantees it).
    O(G * (nnz + R) * L).  Chunks own disjoint (g, r) planes: race-free, and each plane's
    sum runs in entry order whatever the thread count.
    """
    n_img, n_rows, out_h, out_w = out.shape
    n_grp = src.shape[0]
    length = ((stack - 1) * img_rows + out_h - 1) * wq + out_w
    n_tasks = n_grp * n_rows
    per = (n_tasks + n_chunks - 1) // n_chunks
    for ch in prange(n_chunks):
        acc = scratch[ch, :length]
        for t in range(ch * per, min(n_tasks, (ch + 1) * per)):
            n = t // n_rows
            r = t - n * n_rows
            b = bias[r]
            for i in range(length):
                acc[i] = b
            xs = src[n]
            k = row_ptr[r]
            end = row_ptr[r + 1]
            while k + 3 <= end:
                o0, o1, o2 = ent_off[k], ent_off[k + 1], ent_off[k + 2]
                s0 = xs[ent_plane[k], ent_phase[k], o0:o0 + length]
                s1 = xs[ent_plane[k + 1], ent_phase[k + 1], o1:o1 + length]
                s2 = xs[ent_plane[k + 2], ent_phase[k + 2], o2:o2 + length]
                w0, w1, w2 = ent_w[k], ent_w[k + 1], ent_w[k + 2]
                for i in range(length):
                    acc[i] += w0 * s0[i] + w1 * s1[i] + w2 * s2[i]
                k += 3
            while k < end:
                o0 = ent_off[k]
                s0 = xs[ent_plane[k], ent_phase[k], o0:o0 + length]
                w0 = ent_w[k]
                for i in range(length):
                    acc[i] += w0 * s0[i]
                k += 1
            for bi in range(min(stack, n_img - n * stack)):
                dst = out[n * stack + bi, r]
                for i in range(out_h):
                    start = (bi * img_rows + i) * wq
                    row = acc[start:start + out_w]
                    drow = dst[i]
                    for j in range(out_w):
                        drow[j] = row[j]


@njit(**_OPTS)
def conv_planes_grad_weight(gwide, src, row_ptr, ent_plane, ent_phase, ent_off, length, rows_per_task, out):
    """out[k] = sum_n <gwide[n, r, :L], src[n, ent_plane[k], ent_phase[k], ent_off[k]:][:L]> for row r's entries.

    The weight gradient of :func:`conv_planes` on its entries (the stored pattern).
    gwide (N, R, >= L) is grad_out on the wide grid with *zeros* in the dropped columns;
    src as in :func:`conv_planes`; out (nnz,) is preallocated and overwritten.
    O(N * nnz * L).  Tasks own ``rows_per_task`` consecutive rows and add the batch in a fixed
    order: deterministic.  Several rows per task let one image's planes, once in cache, serve
    all of them (one row per task re-read the whole input from memory for every row).
    """
    n_img = src.shape[0]
    n_rows = row_ptr.shape[0] - 1
    n_tasks = (n_rows + rows_per_task - 1) // rows_per_task
    for t in prange(n_tasks):
        r0 = t * rows_per_task
        r1 = min(n_rows, r0 + rows_per_task)
        for k in range(row_ptr[r0], row_ptr[r1]):
            out[k] = 0
        for n in range(n_img):
            for r in range(r0, r1):
                start = row_ptr[r]
                end = row_ptr[r + 1]
                gs = gwide[n, r, :length]
                xs = src[n]
                k = start
                while k + 3 <= end:
                    o0, o1, o2 = ent_off[k], ent_off[k + 1], ent_off[k + 2]
                    s0 = xs[ent_plane[k], ent_phase[k], o0:o0 + length]
                    s1 = xs[ent_plane[k + 1], ent_phase[k + 1], o1:o1 + length]
                    s2 = xs[ent_plane[k + 2], ent_phase[k + 2], o2:o2 + length]
                    d0 = out.dtype.type(0)
                    d1 = out.dtype.type(0)
                    d2 = out.dtype.type(0)
                    for i in range(length):
                        d0 += gs[i] * s0[i]
                        d1 += gs[i] * s1[i]
                        d2 += gs[i] * s2[i]
                    out[k] += d0
                    out[k + 1] += d1
                    out[k + 2] += d2
                    k += 3
                while k < end:
                    o0 = ent_off[k]
                    s0 = xs[ent_plane[k], ent_phase[k], o0:o0 + length]
                    d0 = out.dtype.type(0)
                    for i in range(length):
                        d0 += gs[i] * s0[i]
                    out[k] += d0
                    k += 1


# --------------------------------------------------------------------------- locally connected
# Weight layout (OH, OW, O, C*KH*KW): one dense filter per output position, the filter index
# flattened like a conv filter (c, ki, kj).  Per position the layer is a small dense matrix
# times the receptive-field patch, so the kernels gather that patch (C*KH*KW values) into a
# per-chunk buffer and run contiguous dot/axpy loops over it.
@njit(cache=True, nogil=True)
def _gather_patch(xp, n, r, j, kh, kw, sh, sw, patch):
    """patch[(c*KH + ki)*KW + kj] = xp[n, c, r*sh + ki, j*sw + kj]."""
    q = 0
    for c in range(xp.shape[1]):
        for ki in range(kh):
            xrow = xp[n, c, r * sh + ki]
            for kj in range(kw):
                patch[q] = xrow[j * sw + kj]
                q += 1


@njit(**_OPTS)
def local2d_fwd(xp, w, bias, kh, kw, sh, sw, n_chunks, scratch, out):
    """out[n, o, r, j] = bias[o, r, j] + <w[r, j, o, :], patch(n, r, j)>.

    xp (N, C, Hp, Wp) padded; w (OH, OW, O, K) with K = C*KH*KW; bias (O, OH, OW);
    scratch (n_chunks, K); out (N, O, OH, OW) preallocated and overwritten.
    O(N*OH*OW*O*K).  Chunks own disjoint output positions, and a position's weights stay
    in cache across the batch.
    """
    n_img, n_out, out_h, out_w = out.shape
    n_k = w.shape[3]
    n_pos = out_h * out_w
    per = (n_pos + n_chunks - 1) // n_chunks
    for ch in prange(n_chunks):
        patch = scratch[ch]
        for p in range(ch * per, min(n_pos, (ch + 1) * per)):
            r = p // out_w
            j = p - r * out_w
            for n in range(n_img):
                _gather_patch(xp, n, r, j, kh, kw, sh, sw, patch)
                for o in range(n_out):
                    wrow = w[r, j, o]
                    s = bias[o, r, j]
                    for q in range(n_k):
                        s += wrow[q] * patch[q]
                    out[n, o, r, j] = s


@njit(**_OPTS)
def local2d_grad_input(g, w, kh, kw, sh, sw, scratch, gxp):
    """Input gradient of :func:`local2d_fwd` on the padded grid.

    g (N, O, OH, OW); w (OH, OW, O, K); scratch (N, K); gxp (N, C, Hp, Wp) preallocated and
    overwritten.  Tasks own images (receptive fields overlap, so positions would race).
    """
    n_img, n_in, hp, wp = gxp.shape
    out_h, out_w, n_out, n_k = w.shape
    for n in prange(n_img):
        pg = scratch[n]
        gx = gxp[n]
        for c in range(n_in):
            for r in range(hp):
                for j in range(wp):
                    gx[c, r, j] = 0
        for r in range(out_h):
            for j in range(out_w):
                for q in range(n_k):
                    pg[q] = 0
                for o in range(n_out):
                    gv = g[n, o, r, j]
                    wrow = w[r, j, o]
                    for q in range(n_k):
                        pg[q] += gv * wrow[q]
                q = 0
                for c in range(n_in):
                    for ki in range(kh):
                        xrow = gx[c, r * sh + ki]
                        for kj in range(kw):
                            xrow[j * sw + kj] += pg[q]
                            q += 1


@njit(**_OPTS)
def local2d_grad_weight(g, xp, kh, kw, sh, sw, n_chunks, scratch, gw):
    """Weight gradient: gw[r, j, o, :] = sum_n g[n, o, r, j] * patch(n, r, j).

    g (N, O, OH, OW); xp (N, C, Hp, Wp); scratch (n_chunks, K); gw (OH, OW, O, K)
    preallocated and overwritten.  Chunks own positions, fixed batch order: deterministic.
    """
    out_h, out_w, n_out, n_k = gw.shape
    n_img = xp.shape[0]
    n_pos = out_h * out_w
    per = (n_pos + n_chunks - 1) // n_chunks
    for ch in prange(n_chunks):
        patch = scratch[ch]
        for p in range(ch * per, min(n_pos, (ch + 1) * per)):
            r = p // out_w
            j = p - r * out_w
            for o in range(n_out):
                for q in range(n_k):
                    gw[r, j, o, q] = 0
            for n in range(n_img):
                _gather_patch(xp, n, r, j, kh, kw, sh, sw, patch)
                for o in range(n_out):
                    gv = g[n, o, r, j]
                    dst = gw[r, j, o]
                    for q in range(n_k):
                        dst[q] += gv * patch[q]
