"""CUDA kernels for 2-D max and average pooling, NCHW, forward and backward.

Same semantics as ``kernels/cpu/pool.py``: windows clipped to the unpadded input, max pooling
treats padding as -inf with NaN winning and ties going to the first element in row-major window
order; average pooling divides by KH*KW (``count_include_pad=True``).

One thread per output element (forward) or per *input* element (backward), flattened with the
last (W) axis fastest so a warp reads and writes consecutive addresses; a grid-stride loop
covers any size.  The backward passes gather instead of scattering: an input element sums the
gradients of the windows that contain it (for max pooling, those whose argmax it is), in
window row-major order, the same order as the CPU kernel.  No atomics, race-free,
deterministic.

Everything is inline (no ``cuda.jit(device=True)`` helpers) so each kernel compiles to PTX
without a GPU.  Geometry: 1-D blocks of POOL_THREADS, grid min(ceil(total / POOL_THREADS), POOL_MAX_BLOCKS).
"""
from numba import cuda

from .block import kernel

POOL_THREADS = 256
POOL_MAX_BLOCKS = 16384


@kernel
def max_pool2d_fwd(x, kh, kw, sh, sw, ph, pw, out):
    """out[n, c, r, j] = max of x[n, c] over the window at (r*sh - ph, j*sw - pw).

    x (N, C, H, W); out (N, C, OH, OW) preallocated and overwritten.  O(N*C*OH*OW*KH*KW).
    """
    n_ch, h, w = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w = out.shape[2], out.shape[3]
    total = out.shape[0] * n_ch * out_h * out_w
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        j = idx % out_w
        t = idx // out_w
        r = t % out_h
        t //= out_h
        c = t % n_ch
        n = t // n_ch
        r0 = max(r * sh - ph, 0)
        j0 = max(j * sw - pw, 0)
        m = x[n, c, r0, j0]
        for a in range(r0, min(r * sh - ph + kh, h)):
            for b in range(j0, min(j * sw - pw + kw, w)):
                v = x[n, c, a, b]
                if v > m or (v != v and m == m):  # NaN wins (the first one), ties go first
                    m = v
        out[n, c, r, j] = m


@kernel
def max_pool2d_bwd(g, x, kh, kw, sh, sw, ph, pw, gx):
    """gx[n, c, a, b] = sum of g[n, c, r, j] over the windows whose argmax is (a, b).

    g (N, C, OH, OW); x (N, C, H, W); gx (N, C, H, W) preallocated and overwritten.
    O(N*C*H*W * ceil(KH/SH)*ceil(KW/SW) * KH*KW): each candidate window's argmax is recomputed
    so that no two threads ever write one element.
    """
    n_ch, h, w = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w = g.shape[2], g.shape[3]
    total = x.shape[0] * n_ch * h * w
    zero = gx.dtype.type(0)
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        b = idx % w
        t = idx // w
        a = t % h
        t //= h
        c = t % n_ch
        n = t // n_ch
        # windows r with r*sh - ph <= a < r*sh - ph + kh (Python floor division: exact for negatives)
        r_lo = max(0, -((kh - 1 - a - ph) // sh))
        r_hi = min(out_h - 1, (a + ph) // sh)
        j_lo = max(0, -((kw - 1 - b - pw) // sw))
        j_hi = min(out_w - 1, (b + pw) // sw)
        acc = zero
        for r in range(r_lo, r_hi + 1):
            r0 = max(r * sh - ph, 0)
            r1 = min(r * sh - ph + kh, h)
            for j in range(j_lo, j_hi + 1):
                j0 = max(j * sw - pw, 0)
                j1 = min(j * sw - pw + kw, w)
                # the window's argmax, by the forward rule
                m = x[n, c, r0, j0]
                am = r0
                bm = j0
                for aa in range(r0, r1):
                    for bb in range(j0, j1):
                        v = x[n, c, aa, bb]
                        if v > m or (v != v and m == m):
                            m = v
                            am = aa
                            bm = bb
                if am == a and bm == b:
                    acc += g[n, c, r, j]
        gx[n, c, a, b] = acc


@kernel
def avg_pool2d_fwd(x, kh, kw, sh, sw, ph, pw, scale, out):
    """out[n, c, r, j] = (sum of x[n, c] over the clipped window) * scale, scale = 1/(KH*KW).

    ``scale`` comes in x's dtype so float32 stays float32.  O(N*C*OH*OW*KH*KW).
    """
    n_ch, h, w = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w = out.shape[2], out.shape[3]
    total = out.shape[0] * n_ch * out_h * out_w
    zero = out.dtype.type(0)
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        j = idx % out_w
        t = idx // out_w
        r = t % out_h
        t //= out_h
        c = t % n_ch
        n = t // n_ch
        s = zero
        for a in range(max(r * sh - ph, 0), min(r * sh - ph + kh, h)):
            for b in range(max(j * sw - pw, 0), min(j * sw - pw + kw, w)):
                s += x[n, c, a, b]
        out[n, c, r, j] = s * scale


@kernel
def avg_pool2d_bwd(g, kh, kw, sh, sw, ph, pw, scale, gx):
    """gx[n, c, a, b] = sum over the windows containing (a, b) of g[n, c, r, j] * scale.

    g (N, C, OH, OW); gx (N, C, H, W) preallocated and overwritten.
    """
    n_ch, h, w = gx.shape[1], gx.shape[2], gx.shape[3]
    out_h, out_w = g.shape[2], g.shape[3]
    total = gx.shape[0] * n_ch * h * w
    zero = gx.dtype.type(0)
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        b = idx % w
        t = idx // w
        a = t % h
        t //= h
        c = t % n_ch
        n = t // n_ch
        r_lo = max(0, -((kh - 1 - a - ph) // sh))
        r_hi = min(out_h - 1, (a + ph) // sh)
        j_lo = max(0, -((kw - 1 - b - pw) // sw))
        j_hi = min(out_w - 1, (b + pw) // sw)
        acc = zero
        for r in range(r_lo, r_hi + 1):
            for j in range(j_lo, j_hi + 1):
                acc += g[n, c, r, j] * scale
        gx[n, c, a, b] = acc
