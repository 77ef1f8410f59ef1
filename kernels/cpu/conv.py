"""CPU kernels for direct 2-D convolution (dense and weight-sparse) and locally connected layers.

Layout is NCHW throughout.  The dispatch in ``sparsenet.kernels`` zero-pads the input once
(a bordered copy of the input, N*C*Hp*Wp values, *not* an im2col matrix, which would be
KH*KW times larger), so no kernel needs bounds checks in its inner loops.

Two loop shapes:

* **wide** (stride 1, any dilation): an output plane is computed on a grid as wide as the
  padded input, ``Wp`` columns of which the first ``OW`` are kept.  Then every kernel tap
  (c, ki, kj) is *one* contiguous axpy over the flattened plane::

      acc[i] += w[o, c, ki, kj] * xp[n, c].flat[ki*dh*Wp + kj*dw + i],  0 <= i < L

  with ``L = (OH-1)*Wp + OW``: long unit-stride loops that LLVM vectorises, instead of OH
  short row loops.  The ``(KW-1)*dw`` extra columns per row are wasted work (6 % for a 3x3
  on 32x32) and are dropped when the plane is copied out.
* **rows** (any stride): one axpy per output row, ``xrow[kj*dw + ow*sw]`` strided.

Every kernel parallelises (``prange``) over independent outputs only: (image, out channel)
planes for the forward pass, (image, in channel) planes for the input gradient, output
channels (or weight rows) for the weight gradient, which sums over the batch in a fixed
order.  Results are therefore race-free and bitwise identical for any thread count.

All kernels take raw arrays, sizes/geometry as ints, and the preallocated output last.
They allocate nothing and validate nothing.
"""
from numba import njit, prange

# Same policy as csr.py: reassociation/contraction for SIMD reductions, but no 'nnan'/'ninf'
# so NaN and inf propagate as in NumPy.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

_OPTS = dict(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)


# --------------------------------------------------------------------------- dense conv, wide
@njit(**_OPTS)
def conv2d_fwd_wide(xp, w, bias, dh, dw, n_chunks, scratch, out):
    """Stride-1 forward: out[n, o] = bias[o] + sum_{c,ki,kj} w[o,c,ki,kj] * xp[n, g*Cg+c] shifted.

    xp (N, C, Hp*Wp) padded input, flattened planes, C-contiguous; w (O, Cg, KH, KW);
    bias (O,); scratch (n_chunks, OH*Wp) work rows, one per chunk of planes;
    out (N, O, OH, OW) is preallocated and overwritten.  O(N*O*Cg*KH*KW*OH*Wp).
    Chunks own disjoint (n, o) planes: race-free.
    """
    n_img, n_out, out_h, out_w = out.shape
    n_cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    wp = (out_w - 1) + (kw - 1) * dw + 1
    n_og = n_out // (xp.shape[1] // n_cg)
    length = (out_h - 1) * wp + out_w
    n_tasks = n_img * n_out
    per = (n_tasks + n_chunks - 1) // n_chunks
    for ch in prange(n_chunks):
        acc = scratch[ch]
        for t in range(ch * per, min(n_tasks, (ch + 1) * per)):
            n = t // n_out
            o = t - n * n_out
            c0 = (o // n_og) * n_cg
            b = bias[o]
            for i in range(length):
                acc[i] = b
            for c in range(n_cg):
                xs = xp[n, c0 + c]
                for ki in range(kh):
                    for kj in range(kw):
                        wv = w[o, c, ki, kj]
                        off = ki * dh * wp + kj * dw
                        for i in range(length):
                            acc[i] += wv * xs[off + i]
            dst = out[n, o]
            for r in range(out_h):
                for j in range(out_w):
                    dst[r, j] = acc[r * wp + j]


@njit(**_OPTS)
def conv2d_grad_input_wide(gwide, w, dh, dw, wp, out_w, gxp):
    """Stride-1 input gradient on the padded grid (the adjoint of :func:`conv2d_fwd_wide`).

    gwide (N, O, OH*Wp) is grad_out on the wide grid with *zeros* in the dropped columns;
    w (O, Cg, KH, KW); gxp (N, C, Hp*Wp) is preallocated and overwritten.
    O(N*O*Cg*KH*KW*OH*Wp).  Tasks own (n, c) planes and scatter only into them: race-free.
    """
    n_img, n_in, plane = gxp.shape
    n_out, n_cg, kh, kw = w.shape
    n_og = n_out // (n_in // n_cg)
    length = gwide.shape[2] - wp + out_w
    for t in prange(n_img * n_in):
        n = t // n_in
        c = t - n * n_in
        g = c // n_cg
        cl = c - g * n_cg
        gx = gxp[n, c]
        for i in range(plane):
            gx[i] = 0
        for ol in range(n_og):
            o = g * n_og + ol
            gs = gwide[n, o]
            for ki in range(kh):
                for kj in range(kw):
                    wv = w[o, cl, ki, kj]
                    off = ki * dh * wp + kj * dw
                    for i in range(length):
                        gx[off + i] += wv * gs[i]


@njit(**_OPTS)
def conv2d_grad_weight_wide(gwide, xp, dh, dw, wp, out_w, gw):
    """Stride-1 weight gradient: gw[o, c, ki, kj] = sum_n <gwide[n, o], xp[n, g*Cg+c] shifted>.

    gwide (N, O, OH*Wp) with zeros in the dropped columns; xp (N, C, Hp*Wp);
    gw (O, Cg, KH, KW) is preallocated and overwritten.  O(N*O*Cg*KH*KW*OH*Wp).
    Tasks own output channels and sum over the batch in a fixed order: race-free and
    deterministic.
    """
    n_out, n_cg, kh, kw = gw.shape
    n_img = xp.shape[0]
    n_og = n_out // (xp.shape[1] // n_cg)
    length = gwide.shape[2] - wp + out_w
    for o in prange(n_out):
        c0 = (o // n_og) * n_cg
        for c in range(n_cg):
            for ki in range(kh):
                for kj in range(kw):
                    gw[o, c, ki, kj] = 0
        for n in range(n_img):
            gs = gwide[n, o]
            for c in range(n_cg):
                xs = xp[n, c0 + c]
                for ki in range(kh):
                    for kj in range(kw):
                        off = ki * dh * wp + kj * dw
                        s = gw.dtype.type(0)
                        for i in range(length):
                            s += gs[i] * xs[off + i]
                        gw[o, c, ki, kj] += s


# --------------------------------------------------------------------------- dense conv, rows
@njit(**_OPTS)
def conv2d_fwd_rows(xp, w, bias, sh, sw, dh, dw, out):
    """Any-stride forward, one strided axpy per output row.

    xp (N, C, Hp, Wp) padded; w (O, Cg, KH, KW); bias (O,); out (N, O, OH, OW) is
    preallocated and overwritten.  O(N*O*Cg*KH*KW*OH*OW).  Tasks own (n, o) planes.
    """
    n_img, n_out, out_h, out_w = out.shape
    n_cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    n_og = n_out // (xp.shape[1] // n_cg)
    for t in prange(n_img * n_out):
        n = t // n_out
        o = t - n * n_out
        c0 = (o // n_og) * n_cg
        dst = out[n, o]
        b = bias[o]
        for r in range(out_h):
            row = dst[r]
            for j in range(out_w):
                row[j] = b
            for c in range(n_cg):
                xs = xp[n, c0 + c]
                for ki in range(kh):
                    xrow = xs[r * sh + ki * dh]
                    for kj in range(kw):
                        wv = w[o, c, ki, kj]
                        base = kj * dw
                        for j in range(out_w):
                            row[j] += wv * xrow[base + j * sw]


@njit(**_OPTS)
def conv2d_grad_input_rows(g, w, sh, sw, dh, dw, gxp):
    """Any-stride input gradient on the padded grid (adjoint of :func:`conv2d_fwd_rows`).

    g (N, O, OH, OW); w (O, Cg, KH, KW); gxp (N, C, Hp, Wp) is preallocated and
    overwritten.  Tasks own (n, c) planes: race-free.
    """
    n_img, n_in, hp, wp = gxp.shape
    n_out, n_cg, kh, kw = w.shape
    out_h, out_w = g.shape[2], g.shape[3]
    n_og = n_out // (n_in // n_cg)
    for t in prange(n_img * n_in):
        n = t // n_in
        c = t - n * n_in
        gi = c // n_cg
        cl = c - gi * n_cg
        gx = gxp[n, c]
        for r in range(hp):
            for j in range(wp):
                gx[r, j] = 0
        for ol in range(n_og):
            o = gi * n_og + ol
            for r in range(out_h):
                grow = g[n, o, r]
                for ki in range(kh):
                    xrow = gx[r * sh + ki * dh]
                    for kj in range(kw):
                        wv = w[o, cl, ki, kj]
                        base = kj * dw
                        for j in range(out_w):
                            xrow[base + j * sw] += wv * grow[j]


@njit(**_OPTS)
def conv2d_grad_weight_rows(g, xp, sh, sw, dh, dw, gw):
    """Any-stride weight gradient; gw (O, Cg, KH, KW) is preallocated and overwritten.

    g (N, O, OH, OW); xp (N, C, Hp, Wp).  Tasks own output channels, fixed batch order.
    """
    n_out, n_cg, kh, kw = gw.shape
    n_img = xp.shape[0]
    out_h, out_w = g.shape[2], g.shape[3]
    n_og = n_out // (xp.shape[1] // n_cg)
    for o in prange(n_out):
        c0 = (o // n_og) * n_cg
        for c in range(n_cg):
            for ki in range(kh):
                for kj in range(kw):
                    gw[o, c, ki, kj] = 0
        for n in range(n_img):
            for c in range(n_cg):
                xs = xp[n, c0 + c]
                for ki in range(kh):
                    for kj in range(kw):
                        base = kj * dw
                        s = gw.dtype.type(0)
                        for r in range(out_h):
                            grow = g[n, o, r]
                            xrow = xs[r * sh + ki * dh]
                            for j in range(out_w):
                                s += grow[j] * xrow[base + j * sw]
                        gw[o, c, ki, kj] += s


# --------------------------------------------------------------------------- weight-sparse conv
# The weight is a CSR matrix (O, Cg*KH*KW); column col encodes (c, ki, kj) as
# c*KH*KW + ki*KW + kj, the row-major flattening of a dense (Cg, KH, KW) filter.  Only the
# stored taps are visited: the work is O(nnz * N * plane) instead of O(O*Cg*KH*KW * N * plane),
# and a dense filter is never formed.
@njit(**_OPTS)
def sparse_conv2d_fwd_wide(xp, indptr, indices, data, bias, kh, kw, dh, dw, n_cg, n_chunks, scratch, out):
    """Stride-1 weight-sparse forward; same layout as :func:`conv2d_fwd_wide`.

    xp (N, C, Hp*Wp); CSR (indptr, indices, data) of shape (O, Cg*KH*KW); bias (O,);
    scratch (n_chunks, OH*Wp); out (N, O, OH, OW) preallocated and overwritten.
    O(N * (nnz + O) * OH*Wp).  Chunks own disjoint (n, o) planes: race-free.
    """
    n_img, n_out, out_h, out_w = out.shape
    wp = (out_w - 1) + (kw - 1) * dw + 1
    n_og = n_out // (xp.shape[1] // n_cg)
    length = (out_h - 1) * wp + out_w
    kk = kh * kw
    n_tasks = n_img * n_out
    per = (n_tasks + n_chunks - 1) // n_chunks
    for ch in prange(n_chunks):
        acc = scratch[ch]
        for t in range(ch * per, min(n_tasks, (ch + 1) * per)):
            n = t // n_out
            o = t - n * n_out
            c0 = (o // n_og) * n_cg
            b = bias[o]
            for i in range(length):
                acc[i] = b
            for k in range(indptr[o], indptr[o + 1]):
                col = indices[k]
                c = col // kk
                ki = (col - c * kk) // kw
                kj = col - c * kk - ki * kw
                wv = data[k]
                xs = xp[n, c0 + c]
                off = ki * dh * wp + kj * dw
                for i in range(length):
                    acc[i] += wv * xs[off + i]
            dst = out[n, o]
            for r in range(out_h):
                for j in range(out_w):
                    dst[r, j] = acc[r * wp + j]


@njit(**_OPTS)
def sparse_conv2d_fwd_rows(xp, indptr, indices, data, bias, kh, kw, sh, sw, dh, dw, n_cg, out):
    """Any-stride weight-sparse forward.  xp (N, C, Hp, Wp); out (N, O, OH, OW) overwritten."""
    n_img, n_out, out_h, out_w = out.shape
    n_og = n_out // (xp.shape[1] // n_cg)
    kk = kh * kw
    for t in prange(n_img * n_out):
        n = t // n_out
        o = t - n * n_out
        c0 = (o // n_og) * n_cg
        dst = out[n, o]
        b = bias[o]
        for r in range(out_h):
            row = dst[r]
            for j in range(out_w):
                row[j] = b
            for k in range(indptr[o], indptr[o + 1]):
                col = indices[k]
                c = col // kk
                ki = (col - c * kk) // kw
                kj = col - c * kk - ki * kw
                wv = data[k]
                xrow = xp[n, c0 + c, r * sh + ki * dh]
                base = kj * dw
                for j in range(out_w):
                    row[j] += wv * xrow[base + j * sw]


@njit(**_OPTS)
def sparse_conv2d_grad_input_wide(gwide, indptr_t, indices_t, perm, data, kh, kw, dh, dw, wp, out_w, n_og, gxp):
    """Stride-1 weight-sparse input gradient, walking W^T (CSC of W) per input channel.

    gwide (N, O, OH*Wp) with zeros in the dropped columns; (indptr_t, indices_t, perm) the
    pattern of W^T, W^T's data being ``data[perm]``; gxp (N, C, Hp*Wp) preallocated and
    overwritten.  Tasks own (n, c) planes: race-free.
    """
    n_img, n_in, plane = gxp.shape
    kk = kh * kw
    n_cg = (indptr_t.shape[0] - 1) // kk
    length = gwide.shape[2] - wp + out_w
    for t in prange(n_img * n_in):
        n = t // n_in
        c = t - n * n_in
        gi = c // n_cg
        cl = c - gi * n_cg
        o_lo = gi * n_og
        o_hi = o_lo + n_og
        gx = gxp[n, c]
        for i in range(plane):
            gx[i] = 0
        for tap in range(kk):
            ki = tap // kw
            kj = tap - ki * kw
            off = ki * dh * wp + kj * dw
            col = cl * kk + tap
            # W^T's row is sorted by output channel: the group's entries are one run.
            for q in range(indptr_t[col], indptr_t[col + 1]):
                o = indices_t[q]
                if o < o_lo:
                    continue
                if o >= o_hi:
                    break
                wv = data[perm[q]]
                gs = gwide[n, o]
                for i in range(length):
                    gx[off + i] += wv * gs[i]


@njit(**_OPTS)
def sparse_conv2d_grad_input_rows(g, indptr_t, indices_t, perm, data, kh, kw, sh, sw, dh, dw, n_og, gxp):
    """Any-stride weight-sparse input gradient; gxp (N, C, Hp, Wp) preallocated and overwritten."""
    n_img, n_in, hp, wp = gxp.shape
    out_h, out_w = g.shape[2], g.shape[3]
    kk = kh * kw
    n_cg = (indptr_t.shape[0] - 1) // kk
    for t in prange(n_img * n_in):
        n = t // n_in
        c = t - n * n_in
        gi = c // n_cg
        cl = c - gi * n_cg
        o_lo = gi * n_og
        o_hi = o_lo + n_og
        gx = gxp[n, c]
        for r in range(hp):
            for j in range(wp):
                gx[r, j] = 0
        for tap in range(kk):
            ki = tap // kw
            kj = tap - ki * kw
            base = kj * dw
            col = cl * kk + tap
            for q in range(indptr_t[col], indptr_t[col + 1]):
                o = indices_t[q]
                if o < o_lo:
                    continue
                if o >= o_hi:
                    break
                wv = data[perm[q]]
                for r in range(out_h):
                    grow = g[n, o, r]
                    xrow = gx[r * sh + ki * dh]
                    for j in range(out_w):
                        xrow[base + j * sw] += wv * grow[j]


@njit(**_OPTS)
def sparse_conv2d_grad_weight_wide(gwide, xp, indptr, indices, kh, kw, dh, dw, wp, out_w, n_cg, out):
    """Stride-1 weight gradient on the stored pattern: out[k] for each entry k (nnz,).

    gwide (N, O, OH*Wp) with zeros in the dropped columns; xp (N, C, Hp*Wp); out (nnz,)
    preallocated and overwritten.  Tasks own weight rows, fixed batch order: deterministic.
    """
    n_out = indptr.shape[0] - 1
    n_img = xp.shape[0]
    n_og = n_out // (xp.shape[1] // n_cg)
    kk = kh * kw
    length = gwide.shape[2] - wp + out_w
    for o in prange(n_out):
        c0 = (o // n_og) * n_cg
        for k in range(indptr[o], indptr[o + 1]):
            out[k] = 0
        for n in range(n_img):
            gs = gwide[n, o]
            for k in range(indptr[o], indptr[o + 1]):
                col = indices[k]
                c = col // kk
                ki = (col - c * kk) // kw
                kj = col - c * kk - ki * kw
                xs = xp[n, c0 + c]
                off = ki * dh * wp + kj * dw
                s = out.dtype.type(0)
                for i in range(length):
                    s += gs[i] * xs[off + i]
                out[k] += s


@njit(**_OPTS)
def sparse_conv2d_grad_weight_rows(g, xp, indptr, indices, kh, kw, sh, sw, dh, dw, n_cg, out):
    """Any-stride weight gradient on the stored pattern; out (nnz,) preallocated and overwritten."""
    n_out = indptr.shape[0] - 1
    n_img = xp.shape[0]
    out_h, out_w = g.shape[2], g.shape[3]
    n_og = n_out // (xp.shape[1] // n_cg)
    kk = kh * kw
    for o in prange(n_out):
        c0 = (o // n_og) * n_cg
        for k in range(indptr[o], indptr[o + 1]):
            out[k] = 0
        for n in range(n_img):
            for k in range(indptr[o], indptr[o + 1]):
                col = indices[k]
                c = col // kk
                ki = (col - c * kk) // kw
                kj = col - c * kk - ki * kw
                xs = xp[n, c0 + c]
                base = kj * dw
                s = out.dtype.type(0)
                for r in range(out_h):
                    grow = g[n, o, r]
                    xrow = xs[r * sh + ki * dh]
                    for j in range(out_w):
                        s += grow[j] * xrow[base + j * sw]
                out[k] += s


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
