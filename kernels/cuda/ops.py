"""CUDA kernels for everything in a training step that is not a sparse product or a convolution.

Element-wise activations and their gradients, bias add and the batch sum of a bias gradient,
gradient accumulation, a dense tiled matrix product (dense ``Linear``), strided copies that
make an array contiguous, and the losses (cross-entropy from logits, MSE) with a running
loss/accuracy accumulator, so that a whole step runs on the device and the host reads back
two numbers per epoch instead of one per batch.

Conventions as in ``csr.py``: raw arrays in, the preallocated output last, no allocation, every
output element written by one thread, reductions through the fixed shared-memory tree of
``block.block_sum`` (no atomics, bitwise deterministic), no warp intrinsics (the simulator lacks
them).
Element-wise kernels take 1-D views of contiguous arrays (C or F order alike: the same
elements in the same places) and loop grid-stride, so any size runs on a capped grid.

================  ======================  =============================================
kernel            block                   grid
================  ======================  =============================================
element-wise      (THREADS,)              (min(ceil(n / THREADS), MAX_BLOCKS),)
dropout           (TX, THREADS // TX)     (ceil(n_fast / TX), ceil(n_slow / TY)), capped
batch_sum         (RED_THREADS,)          (n_features,)
matmul            (MM_THREADS, MM_THREADS)  (ceil(M / MM_TILE), ceil(N / MM_TILE))
loss kernels      (RED_THREADS,)          (1,): one block, batch-sized work
================  ======================  =============================================
"""
import math

from numba import cuda, int64, uint64

from ..philox import LOW32, SHIFT32, ZERO, philox4x32
from .block import block_sum, fill_tile, kernel, tile_mma, unravel4

# inline: a separately compiled device function needs a live GPU to link (see block.py).
_philox = cuda.jit(device=True, inline="always")(philox4x32)

THREADS = 256
MAX_BLOCKS = 16384
MAX_GRID_Y = 65535  # the hardware's limit on gridDim.y
RED_THREADS = 256  # power of two: the tree reductions halve it
# matmul: a MM_TILE x MM_TILE block of out per block of MM_THREADS x MM_THREADS threads, each
# thread MM_REG x MM_REG outputs (MM_TILE = MM_THREADS * MM_REG; shared shapes must be constants,
# so both are spelled out), K staged MM_TILE_K at a time; MM_TILE_PAD keeps the transposed
# staging of a free of bank conflicts.
MM_THREADS = 16
MM_REG = 4
MM_TILE = 64
MM_TILE_K = 16
MM_TILE_PAD = MM_TILE + 1

# Activation codes shared with the wrappers.
RELU, LEAKY_RELU, TANH, SIGMOID = 0, 1, 2, 3


@kernel
def activation_fwd(kind, slope, x, out):
    """out[i] = act(x[i]) for act in (ReLU, LeakyReLU(slope), tanh, sigmoid).  x, out (n,)."""
    zero = x.dtype.type(0)
    one = x.dtype.type(1)
    s = x.dtype.type(slope)
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        v = x[i]
        if kind == RELU:
            r = v if v > zero else zero
        elif kind == LEAKY_RELU:
            r = v if v > zero else v * s
        elif kind == TANH:
            r = math.tanh(v)
        elif v >= zero:
            r = one / (one + math.exp(-v))
        else:  # exp of a negative number only: never overflows
            e = math.exp(v)
            r = e / (one + e)
        out[i] = r


@kernel
def activation_bwd(kind, slope, saved, g, out):
    """out[i] = g[i] * act'(.) from what forward kept: the output y for ReLU, tanh and sigmoid,
    the input x for LeakyReLU.  saved, g, out (n,)."""
    zero = g.dtype.type(0)
    one = g.dtype.type(1)
    s = g.dtype.type(slope)
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        v = saved[i]
        if kind == RELU:
            d = one if v > zero else zero
        elif kind == LEAKY_RELU:
            d = one if v > zero else s
        elif kind == TANH:
            d = one - v * v
        else:
            d = v * (one - v)
        out[i] = g[i] * d


@kernel
def dropout(key0, key1, threshold, scale, x, out, n_row, n_col, row_stride, col_stride, rows_fast):
    """Dropout of the (n_row, n_col) matrix laid out in x with element strides (row_stride,
    col_stride): out[i] = x[i] * scale where the Philox word of (r, c) is >= threshold, else 0.

    The words are those of the CPU kernels (kernels/cpu/dropout.py): a row is cut in four
    quarters of Q elements, and one generator call at position q serves column q of each
    quarter.  A thread takes one (row, q); threads of a warp run along the contiguous axis
    (``rows_fast`` for F order: 32 rows at one q; else 32 consecutive q of a row), so each of
    the four loads is coalesced, block and grid y along the other.  Both axes are
    grid-strided, so no index is ever divided.  x, out flat views with the same layout.
    """
    k0, k1 = uint64(key0), uint64(key1)
    s = x.dtype.type(scale)
    zero = x.dtype.type(0)
    quarter = (n_col + 3) // 4
    n_fast = n_row if rows_fast else quarter
    n_slow = quarter if rows_fast else n_row
    step = quarter * col_stride
    fast0, fast_step = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, cuda.gridDim.x * cuda.blockDim.x
    slow0, slow_step = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, cuda.gridDim.y * cuda.blockDim.y
    for slow in range(slow0, n_slow, slow_step):
        for fast in range(fast0, n_fast, fast_step):
            r = fast if rows_fast else slow
            q = slow if rows_fast else fast
            w0, w1, w2, w3 = _philox(uint64(q), uint64(r) & LOW32, uint64(r) >> SHIFT32, ZERO, k0, k1)
            # The words spelled out: a tuple index would go to local memory.  q < Q <= n_col.
            i = r * row_stride + q * col_stride
            out[i] = x[i] * s if int64(w0) >= threshold else zero
            if q + quarter < n_col:
                i += step
                out[i] = x[i] * s if int64(w1) >= threshold else zero
            if q + 2 * quarter < n_col:
                i += step
                out[i] = x[i] * s if int64(w2) >= threshold else zero
            if q + 3 * quarter < n_col:
                i += step
                out[i] = x[i] * s if int64(w3) >= threshold else zero


@kernel
def soft_threshold_inplace(x, t):
    """x[i] <- sign(x[i]) * max(|x[i]| - t, 0) in place (the L1 proximal step); NaN stays NaN,
    as on the host.  x (n,)."""
    s = x.dtype.type(t)
    zero = x.dtype.type(0)
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        v = x[i]
        m = abs(v) - s
        if m > zero:
            x[i] = m if v > zero else -m
        elif m != m:
            x[i] = m
        else:
            x[i] = zero


@kernel
def hard_threshold_inplace(x, t):
    """x[i] <- 0 where |x[i]| < t, in place (the L0 proximal step; NaN kept).  x (n,)."""
    s = x.dtype.type(t)
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        if abs(x[i]) < s:
            x[i] = 0


@kernel
def group_soft_threshold_segments(x, indptr, perm, gather, t):
    """Group soft threshold in place, group g = x[src(k)] for k in [indptr[g], indptr[g+1]):
    x_g *= max(0, 1 - t * sqrt(n_g) / ||x_g||), 0 when ||x_g|| = 0 (NaN entries stay NaN, as on
    the host).  ``src(k) = perm[k]`` when ``gather`` (a weight's columns, through its transpose
    permutation) else k (runs: CSR rows, a dense weight's output units; perm not read).  One
    block per group; a block_sum tree: deterministic."""
    red = cuda.shared.array(RED_THREADS, dtype=x.dtype)
    g = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    start = indptr[g]
    end = indptr[g + 1]
    zero = x.dtype.type(0)
    acc = zero
    for k in range(start + tid, end, RED_THREADS):
        v = x[perm[k]] if gather else x[k]
        acc += v * v
    red[tid] = acc
    norm = math.sqrt(block_sum(red, tid))
    s = x.dtype.type(t)
    scale = zero
    if norm > zero:
        scale = max(zero, x.dtype.type(1) - s * math.sqrt(x.dtype.type(end - start)) / norm)
    elif norm == zero and s == zero:
        scale = x.dtype.type(1)  # t = 0 changes nothing, even where tiny values underflowed the sum
    for k in range(start + tid, end, RED_THREADS):
        if gather:
            x[perm[k]] *= scale
        else:
            x[k] *= scale


@kernel
def mul_inplace(dst, src):
    """dst[i] *= src[i] (re-applying a pruning mask).  dst, src (n,)."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] *= src[i]


@kernel
def add_inplace(dst, src):
    """dst[i] += src[i] (gradient accumulation).  dst, src (n,)."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] += src[i]


@cuda.jit(device=True, inline="always")
def _batch_feature(idx, n_b, n_f, batch_fastest):
    """(b, f) of the flat index ``idx`` walking b fastest (F-ordered arrays) or f fastest."""
    if batch_fastest:
        f = idx // n_b
        return idx - f * n_b, f
    b = idx // n_f
    return b, idx - b * n_f


@kernel
def bias_add(y, bias, batch_fastest):
    """y[b, f] += bias[f] in place, y (B, F) of any strides; ``batch_fastest`` walks b fastest
    (F-ordered y, the sparse products' output) so a warp's stores are consecutive."""
    n_b, n_f = y.shape[0], y.shape[1]
    for idx in range(cuda.grid(1), n_b * n_f, cuda.gridsize(1)):
        b, f = _batch_feature(idx, n_b, n_f, batch_fastest)
        y[b, f] += bias[f]


@kernel
def kl_code_grad_add(rho, scale, eps, colsum, g, batch_fastest):
    """g[b, f] += scale * (-rho / m_f + (1 - rho) / (1 - m_f)), m_f = clip(colsum[f] / B, eps,
    1 - eps): the KL sparsity penalty's gradient (scale = beta / B).  g (B, F) any strides,
    colsum (F,) the code's column sums.

    ``1 - m_f`` is clipped below at eps itself rather than computed from the clipped m_f:
    1 - eps is not representable in float32 (it rounds to 1 - 1.19e-7), which would move the
    saturated units' coefficient by 19% from the host's.  The clips are comparisons, not
    min/max: those compile to fmin/fmax, which would turn a NaN mean into a finite eps (the
    host's np.clip keeps the NaN)."""
    n_b, n_f = g.shape[0], g.shape[1]
    one = g.dtype.type(1)
    r = g.dtype.type(rho)
    s = g.dtype.type(scale)
    lo = g.dtype.type(eps)
    for idx in range(cuda.grid(1), n_b * n_f, cuda.gridsize(1)):
        b, f = _batch_feature(idx, n_b, n_f, batch_fastest)
        mean = colsum[f] / g.dtype.type(n_b)
        m = lo if mean < lo else (one - lo if mean > one - lo else mean)
        q = one - mean
        q = lo if q < lo else q
        g[b, f] += s * (-r / m + (one - r) / q)


@kernel
def l1_code_grad_add(scale, h, g, batch_fastest):
    """g[b, f] += scale * sign(h[b, f]) (NaN stays NaN): the L1 activity penalty's gradient
    (scale = beta / B).  h, g (B, F) any strides."""
    n_b, n_f = g.shape[0], g.shape[1]
    zero = g.dtype.type(0)
    s = g.dtype.type(scale)
    for idx in range(cuda.grid(1), n_b * n_f, cuda.gridsize(1)):
        b, f = _batch_feature(idx, n_b, n_f, batch_fastest)
        v = h[b, f]
        d = s if v > zero else (-s if v < zero else v * zero)  # v * 0: 0, or NaN for NaN
        g[b, f] += d


@kernel
def batch_sum(g, out):
    """out[f] = sum_b g[b, f]: one block per feature, fixed tree reduction.  g (B, F), out (F,)."""
    red = cuda.shared.array(RED_THREADS, dtype=out.dtype)
    f = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    acc = out.dtype.type(0)
    for b in range(tid, g.shape[0], RED_THREADS):
        acc += g[b, f]
    red[tid] = acc
    total = block_sum(red, tid)
    if tid == 0:
        out[f] = total


@kernel
def matmul(a, b, bias, has_bias, relu, gated, gate, out):
    """out = a @ b (+ bias) for a (M, K), b (K, N) of any strides (transposes are views); out
    (M, N); with ``has_bias`` bias (N,) is added as out is stored (else not read), and with
    ``relu`` the stored value is ``v if v > 0 else 0`` (a Linear then ReLU is one launch).
    With ``gated`` it is ``v * (1 if gate[i, j] > 0 else 0)``, the ReLU backward kernel's
    expression, gate (M, N) C-contiguous a ReLU's output (the input gradient of a Linear after
    a ReLU comes out through the ReLU's backward); without it gate is not read (pass out).

    Shared-memory tiles with register blocking: a block stages an MM_TILE x MM_TILE_K tile of a
    (transposed, k-major) and an MM_TILE_K x MM_TILE tile of b per step of K, and each thread
    accumulates an MM_REG x MM_REG block of outputs, rows ``ty + r*MM_THREADS`` and columns
    ``tx + c*MM_THREADS``: per step of k it reads MM_REG values of a (broadcasts within a row
    of threads) and MM_REG of b (consecutive across tx: conflict-free) for MM_REG**2
    multiply-adds, where one output per thread read two values per multiply-add.  Each sum
    over K runs in the order k = 0, 1, ...: the same result as one thread per output.
    """
    ta = cuda.shared.array((MM_TILE_K, MM_TILE_PAD), dtype=out.dtype)
    tb = cuda.shared.array((MM_TILE_K, MM_TILE), dtype=out.dtype)
    acc = cuda.local.array((MM_REG, MM_REG), dtype=out.dtype)
    ra = cuda.local.array(MM_REG, dtype=out.dtype)
    rb = cuda.local.array(MM_REG, dtype=out.dtype)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * MM_THREADS + tx
    i0 = cuda.blockIdx.x * MM_TILE
    j0 = cuda.blockIdx.y * MM_TILE
    n_m, n_k, n_n = a.shape[0], a.shape[1], b.shape[1]
    zero = out.dtype.type(0)
    one = out.dtype.type(1)
    fill_tile(acc, MM_REG, zero)
    for k0 in range(0, n_k, MM_TILE_K):
        cuda.syncthreads()  # the previous tiles have been read by every thread
        for e in range(tid, MM_TILE * MM_TILE_K, MM_THREADS * MM_THREADS):
            ii = e // MM_TILE_K  # k fastest across threads: a's rows are read in runs
            kk = e - ii * MM_TILE_K
            i = i0 + ii
            k = k0 + kk
            ta[kk, ii] = a[i, k] if i < n_m and k < n_k else zero
        for e in range(tid, MM_TILE_K * MM_TILE, MM_THREADS * MM_THREADS):
            kk = e // MM_TILE  # j fastest across threads: b's rows are read in runs
            jj = e - kk * MM_TILE
            j = j0 + jj
            k = k0 + kk
            tb[kk, jj] = b[k, j] if k < n_k and j < n_n else zero
        cuda.syncthreads()
        tile_mma(ta, tb, acc, ra, rb, MM_THREADS, MM_REG, MM_TILE_K)
    for r in range(MM_REG):
        i = i0 + ty + r * MM_THREADS
        for c in range(MM_REG):
            j = j0 + tx + c * MM_THREADS
            if i < n_m and j < n_n:
                v = acc[r, c] + bias[j] if has_bias else acc[r, c]
                if relu:
                    v = v if v > zero else zero
                if gated:
                    v *= one if gate[i, j] > zero else zero
                out[i, j] = v


@kernel
def copy_2d(a, out):
    """out[i, j] = a[i, j]; a of any strides, out C-contiguous (i fastest thread: j)."""
    n_i, n_j = out.shape[0], out.shape[1]
    for idx in range(cuda.grid(1), n_i * n_j, cuda.gridsize(1)):
        i = idx // n_j
        out[i, idx - i * n_j] = a[i, idx - i * n_j]


@kernel
def take_rows(src, idx, out):
    """out[b, :] = src[idx[b], :] (a shuffled mini-batch gathered from a device-resident data
    set).  src (n, F), out (B, F) C-contiguous, idx (B,) in [0, n) (not checked: the trainer's
    own permutation).  Features fastest: each row is read and written coalesced."""
    n_b, n_f = out.shape[0], out.shape[1]
    for t in range(cuda.grid(1), n_b * n_f, cuda.gridsize(1)):
        b = t // n_f
        f = t - b * n_f
        out[b, f] = src[idx[b], f]


@kernel
def take_rows_t(src, idx, out_t):
    """out_t[f, b] = src[idx[b], f]: take_rows written feature-major, the layout the sparse
    products read (a shuffled batch then needs no transpose kernel).  src (n, F), out_t (F, B)
    C-contiguous.  Batch fastest: the stores are coalesced, each warp's loads touch 32 rows
    (the rows' lines are reused from the cache by the warps on the next features)."""
    n_f, n_b = out_t.shape[0], out_t.shape[1]
    for t in range(cuda.grid(1), n_b * n_f, cuda.gridsize(1)):
        f = t // n_b
        b = t - f * n_b
        out_t[f, b] = src[idx[b], f]


@kernel
def copy_4d(a, out):
    """out[...] = a[...] for 4-D arrays; a of any strides, out C-contiguous."""
    n1, n2, n3 = out.shape[1], out.shape[2], out.shape[3]
    for idx in range(cuda.grid(1), out.shape[0] * n1 * n2 * n3, cuda.gridsize(1)):
        i, j, k, l = unravel4(idx, n1, n2, n3)
        out[i, j, k, l] = a[i, j, k, l]


@kernel
def cross_entropy_fwd(logits, target, out):
    """out[0] = mean_i (logsumexp(logits[i]) - logits[i, target[i]]); one block.

    The row maximum is subtracted before exp (no overflow for logits of any size).  A target
    outside [0, n_classes) makes its term NaN (the kernel must not read out of bounds; the host
    validates targets it can see).  logits (B, C), target (B,) int; out (1,).
    """
    red = cuda.shared.array(RED_THREADS, dtype=out.dtype)
    tid = cuda.threadIdx.x
    n_b, n_c = logits.shape[0], logits.shape[1]
    acc = out.dtype.type(0)
    for i in range(tid, n_b, RED_THREADS):
        m = logits[i, 0]
        for j in range(1, n_c):
            m = max(m, logits[i, j])
        s = out.dtype.type(0)
        for j in range(n_c):
            s += math.exp(logits[i, j] - m)
        t = target[i]
        if t >= 0 and t < n_c:
            acc += math.log(s) + m - logits[i, t]
        else:
            acc += out.dtype.type(math.nan)
    red[tid] = acc
    total = block_sum(red, tid)
    if tid == 0:
        out[0] = total / out.dtype.type(n_b)


@kernel
def cross_entropy_bwd(logits, target, scale, grad):
    """grad[i, j] = scale * (softmax(logits[i])[j] - [j == target[i]]), scale = grad_out / B.

    A thread per row (classes are few; lanes on consecutive rows read and write consecutive
    addresses of F-ordered logits and grad).  Out-of-range targets give a NaN row.  grad (B, C).
    """
    n_b, n_c = logits.shape[0], logits.shape[1]
    s_ = grad.dtype.type(scale)
    for i in range(cuda.grid(1), n_b, cuda.gridsize(1)):
        m = logits[i, 0]
        for j in range(1, n_c):
            m = max(m, logits[i, j])
        s = grad.dtype.type(0)
        for j in range(n_c):
            s += math.exp(logits[i, j] - m)
        t = target[i]
        bad = t < 0 or t >= n_c
        for j in range(n_c):
            v = math.exp(logits[i, j] - m) / s
            if j == t:
                v -= grad.dtype.type(1)
            grad[i, j] = grad.dtype.type(math.nan) if bad else v * s_


@kernel
def mse_fwd(x, t, out):
    """out[0] = mean_i (x[i] - t[i])^2 over flat views; one block.  x, t (n,), out (1,)."""
    red = cuda.shared.array(RED_THREADS, dtype=out.dtype)
    tid = cuda.threadIdx.x
    acc = out.dtype.type(0)
    for i in range(tid, x.shape[0], RED_THREADS):
        d = x[i] - t[i]
        acc += d * d
    red[tid] = acc
    total = block_sum(red, tid)
    if tid == 0:
        out[0] = total / out.dtype.type(x.shape[0])


@kernel
def mse_bwd(x, t, scale, out):
    """out[i] = scale * (x[i] - t[i]), scale = 2 grad_out / n.  Flat views (n,)."""
    s = out.dtype.type(scale)
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        out[i] = (x[i] - t[i]) * s


@kernel
def accumulate_metrics(loss, batch, logits, target, has_target, acc):
    """acc[0] += loss[0] * batch; acc[1] += #{i: argmax logits[i] == target[i]} (first maximum on
    ties, as NumPy's argmax); acc[2] += batch.  One block; acc (3,) float64 stays on the device
    for a whole epoch, so training reads it back once per epoch, not once per batch.
    ``has_target`` False (a regression loss) skips the accuracy count."""
    red = cuda.shared.array(RED_THREADS, dtype=acc.dtype)
    tid = cuda.threadIdx.x
    hits = acc.dtype.type(0)
    if has_target:
        n_c = logits.shape[1]
        for i in range(tid, logits.shape[0], RED_THREADS):
            best = 0
            for j in range(1, n_c):
                if logits[i, j] > logits[i, best]:
                    best = j
            if best == target[i]:
                hits += acc.dtype.type(1)
    red[tid] = hits
    total = block_sum(red, tid)
    if tid == 0:
        acc[0] += acc.dtype.type(loss[0]) * acc.dtype.type(batch)
        acc[1] += total
        acc[2] += acc.dtype.type(batch)


# ----------------------------------------------------------------------------- batch norm
# x is viewed as (N, C, S): S = 1 for (N, C), L for (N, C, L), H*W for (N, C, H, W).
@kernel
def channel_moments(x, mean, var):
    """mean[c], var[c] (biased) over (n, s) of x (N, C, S): one block per channel, two passes
    (mean, then squared deviations: no cancellation), fixed tree reductions."""
    red = cuda.shared.array(RED_THREADS, dtype=mean.dtype)
    c = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    n_s = x.shape[2]
    count = x.shape[0] * n_s
    acc = mean.dtype.type(0)
    for idx in range(tid, count, RED_THREADS):
        n = idx // n_s
        acc += x[n, c, idx - n * n_s]
    red[tid] = acc
    m = block_sum(red, tid) / mean.dtype.type(count)
    acc = mean.dtype.type(0)
    for idx in range(tid, count, RED_THREADS):
        n = idx // n_s
        d = x[n, c, idx - n * n_s] - m
        acc += d * d
    red[tid] = acc
    total = block_sum(red, tid)
    if tid == 0:
        mean[c] = m
        var[c] = total / var.dtype.type(count)


@kernel
def batch_norm_running(mean, var, momentum, keep, unbias, running_mean, running_var):
    """running = keep running + momentum batch (keep = 1 - momentum, computed by the caller in
    float64 as the host does), the variance unbiased by ``unbias`` = M / (M - 1)."""
    m = running_mean.dtype.type(momentum)
    keep = running_mean.dtype.type(keep)
    u = running_var.dtype.type(unbias)
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        running_mean[c] = keep * running_mean[c] + m * mean[c]
        running_var[c] = keep * running_var[c] + m * var[c] * u


@kernel
def batch_norm_apply(x, mean, var, eps, weight, bias, affine, xhat, invstd, y):
    """invstd[c] = 1/sqrt(var[c] + eps); xhat = (x - mean[c]) invstd[c]; y = xhat weight[c] + bias[c]
    (y = xhat when not ``affine``).  x, xhat, y (N, C, S); the rest (C,)."""
    e = x.dtype.type(eps)
    one = x.dtype.type(1)
    n_c, n_s = x.shape[1], x.shape[2]
    for c in range(cuda.grid(1), n_c, cuda.gridsize(1)):
        invstd[c] = one / math.sqrt(var[c] + e)
    for idx in range(cuda.grid(1), x.shape[0] * n_c * n_s, cuda.gridsize(1)):
        s = idx % n_s
        t = idx // n_s
        c = t % n_c
        n = t // n_c
        v = (x[n, c, s] - mean[c]) * (one / math.sqrt(var[c] + e))
        xhat[n, c, s] = v
        y[n, c, s] = v * weight[c] + bias[c] if affine else v


@kernel
def batch_norm_grad_sums(g, xhat, sum_g, sum_gx):
    """sum_g[c] = sum g[:, c, :], sum_gx[c] = sum (g xhat)[:, c, :]: one block per channel."""
    red = cuda.shared.array(RED_THREADS, dtype=sum_g.dtype)
    c = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    n_s = g.shape[2]
    a = sum_g.dtype.type(0)
    b = sum_g.dtype.type(0)
    for idx in range(tid, g.shape[0] * n_s, RED_THREADS):
        n = idx // n_s
        v = g[n, c, idx - n * n_s]
        a += v
        b += v * xhat[n, c, idx - n * n_s]
    red[tid] = a
    total_g = block_sum(red, tid)
    red[tid] = b
    total_gx = block_sum(red, tid)
    if tid == 0:
        sum_g[c] = total_g
        sum_gx[c] = total_gx


@kernel
def batch_norm_grad_input(g, xhat, invstd, weight, affine, sum_g, sum_gx, use_batch, inv_m, gx):
    """gx = w (g - sum_g/M - xhat sum_gx/M) invstd with batch statistics (inv_m = 1/M, M = N*S),
    or w g invstd with running ones; w = weight[c] (1 when not ``affine``).  (N, C, S) arrays."""
    n_c, n_s = g.shape[1], g.shape[2]
    inv_m = gx.dtype.type(inv_m)
    for idx in range(cuda.grid(1), g.shape[0] * n_c * n_s, cuda.gridsize(1)):
        s = idx % n_s
        t = idx // n_s
        c = t % n_c
        n = t // n_c
        w = weight[c] if affine else gx.dtype.type(1)
        v = g[n, c, s]
        if use_batch:
            v = v - sum_g[c] * inv_m - xhat[n, c, s] * (sum_gx[c] * inv_m)
        gx[n, c, s] = w * v * invstd[c]


# ----------------------------------------------------------------------------- softmax
@kernel
def softmax_rows(x, out):
    """out[i] = softmax(x[i]) over the last axis of (R, K): a thread per row, the row maximum
    subtracted first (no overflow).  Lanes on consecutive rows."""
    n_k = x.shape[1]
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        m = x[i, 0]
        for k in range(1, n_k):
            m = max(m, x[i, k])
        s = out.dtype.type(0)
        for k in range(n_k):
            e = math.exp(x[i, k] - m)
            out[i, k] = e
            s += e
        for k in range(n_k):
            out[i, k] /= s


@kernel
def softmax_rows_backward(y, g, out):
    """out[i] = y[i] * (g[i] - <g[i], y[i]>) for (R, K) arrays: the softmax Jacobian times g."""
    n_k = y.shape[1]
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        d = out.dtype.type(0)
        for k in range(n_k):
            d += g[i, k] * y[i, k]
        for k in range(n_k):
            out[i, k] = y[i, k] * (g[i, k] - d)
