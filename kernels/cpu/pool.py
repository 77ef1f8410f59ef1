"""CPU kernels for 2-D max and average pooling, NCHW, forward and backward.

Windows are clipped to the unpadded input instead of padding a copy: max pooling treats
padding as -inf (it never wins) and average pooling counts it as zeros in a divisor of
KH*KW (PyTorch's default ``count_include_pad=True``; with floor-mode output sizes and
padding at most half the kernel, no window leaves the padded input, so the divisor is
always the full KH*KW).

Tasks are (image, channel) planes: pooling never mixes channels, so each plane is owned by
one thread, overlapping windows included, and the backward scatter is race-free.
Outputs are preallocated and overwritten.
"""
from numba import njit, prange

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
def max_pool2d_fwd(x, kh, kw, sh, sw, ph, pw, out):
    """out[n, c, r, j] = max of x[n, c] over the window at (r*sh - ph, j*sw - pw).

    x (N, C, H, W); out (N, C, OH, OW).  O(N*C*OH*OW*KH*KW).  NaN wins (as in PyTorch);
    ties go to the first element in row-major window order.
    """
    n_img, n_ch, h, w = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    for t in prange(n_img * n_ch):
        n = t // n_ch
        c = t - n * n_ch
        xs = x[n, c]
        for r in range(out_h):
            r0 = max(r * sh - ph, 0)
            r1 = min(r * sh - ph + kh, h)
            for j in range(out_w):
                j0 = max(j * sw - pw, 0)
                j1 = min(j * sw - pw + kw, w)
                m = xs[r0, j0]
                for a in range(r0, r1):
                    for b in range(j0, j1):
                        v = xs[a, b]
                        if v > m or v != v:
                            m = v
                out[n, c, r, j] = m


@njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
def max_pool2d_bwd(g, x, kh, kw, sh, sw, ph, pw, gx):
    """gx[n, c, argmax of window (r, j)] += g[n, c, r, j]; argmax as in :func:`max_pool2d_fwd`.

    g (N, C, OH, OW); x (N, C, H, W); gx (N, C, H, W) preallocated and overwritten.
    """
    n_img, n_ch, h, w = x.shape
    out_h, out_w = g.shape[2], g.shape[3]
    for t in prange(n_img * n_ch):
        n = t // n_ch
        c = t - n * n_ch
        xs = x[n, c]
        gs = gx[n, c]
        for a in range(h):
            for b in range(w):
                gs[a, b] = 0
        for r in range(out_h):
            r0 = max(r * sh - ph, 0)
            r1 = min(r * sh - ph + kh, h)
            for j in range(out_w):
                j0 = max(j * sw - pw, 0)
                j1 = min(j * sw - pw + kw, w)
                m = xs[r0, j0]
                am = r0
                bm = j0
                for a in range(r0, r1):
                    for b in range(j0, j1):
                        v = xs[a, b]
                        if v > m or (v != v and m == m):
                            m = v
                            am = a
                            bm = b
                gs[am, bm] += g[n, c, r, j]


@njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
def avg_pool2d_fwd(x, kh, kw, sh, sw, ph, pw, out):
    """out[n, c, r, j] = (sum of x[n, c] over the clipped window) / (KH*KW).

    x (N, C, H, W); out (N, C, OH, OW).  O(N*C*OH*OW*KH*KW).
    """
    n_img, n_ch, h, w = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    scale = 1.0 / (kh * kw)
    for t in prange(n_img * n_ch):
        n = t // n_ch
        c = t - n * n_ch
        xs = x[n, c]
        for r in range(out_h):
            r0 = max(r * sh - ph, 0)
            r1 = min(r * sh - ph + kh, h)
            for j in range(out_w):
                j0 = max(j * sw - pw, 0)
                j1 = min(j * sw - pw + kw, w)
                s = out.dtype.type(0)
                for a in range(r0, r1):
                    for b in range(j0, j1):
                        s += xs[a, b]
                out[n, c, r, j] = s * scale


@njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
def avg_pool2d_bwd(g, kh, kw, sh, sw, ph, pw, gx):
    """gx[n, c, a, b] = sum over windows containing (a, b) of g[n, c, r, j] / (KH*KW).

    g (N, C, OH, OW); gx (N, C, H, W) preallocated and overwritten.
    """
    n_img, n_ch, h, w = gx.shape
    out_h, out_w = g.shape[2], g.shape[3]
    scale = 1.0 / (kh * kw)
    for t in prange(n_img * n_ch):
        n = t // n_ch
        c = t - n * n_ch
        gs = gx[n, c]
        for a in range(h):
            for b in range(w):
                gs[a, b] = 0
        for r in range(out_h):
            r0 = max(r * sh - ph, 0)
            r1 = min(r * sh - ph + kh, h)
            for j in range(out_w):
                j0 = max(j * sw - pw, 0)
                j1 = min(j * sw - pw + kw, w)
                v = g[n, c, r, j] * scale
                for a in range(r0, r1):
                    for b in range(j0, j1):
                        gs[a, b] += v
