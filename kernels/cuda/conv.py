"""CUDA kernels for 2-D convolution (dense, weight-sparse, locally connected), NCHW, PyTorch
semantics.

x (N, C, H, W), weight (O, C/groups, KH, KW), stride (sh, sw), padding (ph, pw), dilation
(dh, dw); groups implied by ``C // weight.shape[1]``.  Padding is never materialised: taps that
fall outside the input are skipped by bounds checks.  Neither is the patch matrix of the
dense kernels, three implicit GEMMs sharing one register-blocked tile product (``block.tile_mma``):

* ``conv2d_fwd``: an implicit GEMM, per group out (O/groups, N*OH*OW) = weight (O/groups,
  C/groups*KH*KW) @ patches, the patch matrix gathered tile by tile from x and never stored;
  tiled and register-blocked like ``ops.matmul`` (GEMM_* constants).
* ``conv2d_grad_input``: the same implicit GEMM transposed, gx (C/groups, N*H*W) =
  weights^T @ the outputs that read each input pixel, gathered from g.  One writer per
  element: no atomics.
* ``conv2d_grad_weight``: gw (O/groups, K) = g (O/groups, N*OH*OW) @ patches, the long pixel
  reduction split over blocks and the partial sums added in order by ``split_sum``.
* a group with few channels on a tile's channel side (a depthwise layer: one) would fill little
  of a tile, so such ops run on the weight-sparse kernels with every tap stored
  (``NARROW_RATIO``; the wrappers decide per op).
* ``channel_sum`` (the bias gradient): one block per output channel, threads striding over the
  output pixels (coalesced), each summing its pixel over the batch, then a fixed shared-memory
  tree reduction: deterministic.

Block reductions use ``block.block_sum``, inlined into each kernel at compile time (numba
needs a live device to *link* a separate device function; inlined, every kernel still compiles
to PTX without a GPU, tests/cuda/test_cuda_compile.py).

Geometry (computed beside each launch by the wrappers):

====================  ====================  ==============================================
kernel                block                 grid
====================  ====================  ==============================================
conv2d_fwd            (GEMM_THREADS,) * 2   (ceil(N*OH*OW/GEMM_TILE), ceil(O/groups/GEMM_TILE), groups)
conv2d_grad_input     (GEMM_THREADS,) * 2   (ceil(N*H*W/GEMM_TILE), ceil(C/groups/GEMM_TILE), groups)
conv2d_grad_weight    (GEMM_THREADS,) * 2   (ceil(K/GEMM_TILE), ceil(O/groups/GEMM_TILE), groups * splits)
split_sum             (SUM_THREADS,)        (min(ceil(O*K / SUM_THREADS), 4096),)
channel_sum           (RED_THREADS,)        (O,)
====================  ====================  ==============================================
"""
from numba import cuda, int32, int64, uint32, uint64

from .block import block_sum, fill_tile, jit_fitting, kernel, tile_mma, unravel4

CONV_TX = 32  # the weight-sparse kernels' pixel tiles
CONV_TY = 8
# The dense implicit GEMMs, tiled like ops.matmul: a GEMM_TILE x GEMM_TILE output tile (channels x
# pixels, or filters x taps for grad-weight) a block of GEMM_THREADS x GEMM_THREADS threads,
# GEMM_REG x GEMM_REG a thread, K by GEMM_TILE_K.
# GEMM_TILE = GEMM_THREADS * GEMM_REG, and GEMM_THREADS**2 is a multiple of GEMM_TILE: each
# thread stages one fixed column of the gathered tile.
GEMM_THREADS = 16
GEMM_REG = 4
GEMM_TILE = 64
GEMM_TILE_K = 16
GEMM_PAD = GEMM_TILE + 1
# A dense conv op whose group has few channels on the tile's channel side (output channels for the
# forward and grad-weight, input channels for grad-input) fills little of a GEMM tile: a
# depthwise layer uses 1/GEMM_TILE of it.  Up to GEMM_TILE / NARROW_RATIO channels a group it runs
# on the direct (weight-sparse) kernels with every tap stored instead, as the CPU does: their
# inner loops issue 6-12 instructions per multiply-add (bench/sass_report.py) against the full
# tile's 1.6, about NARROW_RATIO times as many, with none wasted.  Static counts, not GPU times.
NARROW_RATIO = 8
# conv2d_grad_weight splits its long reduction (the output pixels) over blocks until the grid has
# about SPLIT_BLOCKS blocks, each split at least SPLIT_MIN_STEPS steps of GEMM_TILE_K pixels.
SPLIT_BLOCKS = 1024
SPLIT_MIN_STEPS = 8
SUM_THREADS = 256
RED_THREADS = 256  # power of two: the tree reduction halves it
SPARSE_STAGE = 256  # weight-sparse filter taps decoded into shared memory per chunk
SPARSE_NB = 4  # samples per thread in the weight-sparse forward and grad-input: exactly four accumulators
GW_ENTRIES = 4  # stored entries of one filter per block of the weight-sparse grad-weight (four sums)


@cuda.jit(device=True, inline="always")
def _split_tap(k, kh, kw):
    """(c, p, q) of a flattened filter column k = (c*kh + p)*kw + q."""
    taps = kh * kw
    c = k // taps
    pq = k - c * taps
    p = pq // kw
    return c, p, pq - p * kw


@cuda.jit(device=True, inline="always")
def _pixel(pix, plane, width):
    """(n, row, column) of flat pixel index ``pix`` over (N, planes of ``plane`` = rows * width)."""
    n = pix // plane
    rest = pix - n * plane
    row = rest // width
    return n, row, rest - row * width


# Uncapped, 167 registers (float32): one block an SM.  At 128, float32 spills nothing and
# float64 spills 24 bytes outside the inner loop (bench/sass_report.py).
@jit_fitting(GEMM_THREADS * GEMM_THREADS, 2)
def conv2d_fwd(x, weight, kh, kw, bias, has_bias, sh, sw, ph, pw, dh, dw, relu, out):
    """out[n, o, r, j] = bias[o] + sum_{c, p, q} weight[o, c, p, q] * x[n, c0 + c, r*sh - ph + p*dh,
    j*sw - pw + q*dw] (c0 = first input channel of o's group; out-of-range taps are zero).

    weight (O, C/groups*KH*KW): the filters flattened in (c, p, q) order (a free view of the
    4-D weight), with (kh, kw) given; bias (O,), read only with ``has_bias`` (else zero is added:
    no zero-filled array is allocated and filled per call); out (N, O, OH,
    OW) preallocated and overwritten, with ``relu`` as max(., 0) (``v if v > 0 else 0``, the ReLU
    kernel's expression: a Conv2d then ReLU in a Sequential is one launch).
    O(N*O*OH*OW*C/groups*KH*KW).

    An implicit GEMM: per group, out (O/groups, N*OH*OW) = weight (O/groups, K) @ patches (K,
    N*OH*OW), the patch matrix never stored.  A block computes a GEMM_TILE x GEMM_TILE tile (filters
    x output pixels), each thread GEMM_REG x GEMM_REG of it, with K staged GEMM_TILE_K at a time
    as in ``ops.matmul``: every staged input value serves GEMM_TILE filters and every staged
    weight GEMM_TILE pixels, where the direct kernel re-read each input for every four filters.
    The patch tile is gathered from x: a thread always loads the same pixel column of it (its
    (n, r, j) decoded once), and each K step's taps are decoded once per block into shared memory.
    Each output's sum runs over k = (c, p, q) in order, padding taps adding nothing.
    """
    ta = cuda.shared.array((GEMM_TILE_K, GEMM_PAD), dtype=out.dtype)
    tb = cuda.shared.array((GEMM_TILE_K, GEMM_TILE), dtype=out.dtype)
    k_c = cuda.shared.array(GEMM_TILE_K, dtype=int32)  # the K step's taps: input channel,
    k_dy = cuda.shared.array(GEMM_TILE_K, dtype=int32)  # row shift p*dh, column shift q*dw
    k_dx = cuda.shared.array(GEMM_TILE_K, dtype=int32)
    acc = cuda.local.array((GEMM_REG, GEMM_REG), dtype=out.dtype)
    ra = cuda.local.array(GEMM_REG, dtype=out.dtype)
    rb = cuda.local.array(GEMM_REG, dtype=out.dtype)
    n_batch, n_c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    n_o, n_k = weight.shape[0], weight.shape[1]
    out_h, out_w = out.shape[2], out.shape[3]
    taps = kh * kw
    c_g = n_k // taps
    o_g = n_o // (n_c // c_g)
    grp = cuda.blockIdx.z
    c_first = grp * c_g
    o_first = grp * o_g
    plane = out_h * out_w
    n_pix = n_batch * plane
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * GEMM_THREADS + tx
    pix0 = cuda.blockIdx.x * GEMM_TILE
    o0 = cuda.blockIdx.y * GEMM_TILE
    # The patch column this thread stages (the same at every K step).
    col = tid % GEMM_TILE
    pix = pix0 + col
    has_pix = pix < n_pix
    n_s, r, q = _pixel(pix if has_pix else 0, plane, out_w)
    top = int32(r * sh - ph)
    left = int32(q * sw - pw)
    x_n = x[uint32(n_s)]
    uh = uint32(h)
    uw = uint32(w)
    zero = out.dtype.type(0)
    fill_tile(acc, GEMM_REG, zero)
    for k0 in range(0, n_k, GEMM_TILE_K):
        cuda.syncthreads()  # the previous tiles and taps have been read by every thread
        if tid < GEMM_TILE_K:
            c, p, q = _split_tap(k0 + tid, kh, kw)
            k_c[tid] = c_first + c
            k_dy[tid] = p * dh
            k_dx[tid] = q * dw
        for e in range(tid, GEMM_TILE * GEMM_TILE_K, GEMM_THREADS * GEMM_THREADS):
            ii = e // GEMM_TILE_K  # k fastest across threads: a filter's taps are read in runs
            kk = e - ii * GEMM_TILE_K
            o = o0 + ii
            k = k0 + kk
            ta[kk, ii] = weight[o_first + o, k] if o < o_g and k < n_k else zero
        cuda.syncthreads()  # the taps are decoded
        for kk in range(tid // GEMM_TILE, GEMM_TILE_K, (GEMM_THREADS * GEMM_THREADS) // GEMM_TILE):
            a = _wrap32(top + k_dy[kk])  # a tap in the padding wraps to >= h: one compare
            b = _wrap32(left + k_dx[kk])
            value = zero
            if has_pix and k0 + kk < n_k and a < uh and b < uw:
                value = x_n[uint32(k_c[kk]), a, b]
            tb[kk, col] = value
        cuda.syncthreads()
        tile_mma(ta, tb, acc, ra, rb, GEMM_THREADS, GEMM_REG, GEMM_TILE_K)
    for j in range(GEMM_REG):
        pix = pix0 + tx + j * GEMM_THREADS
        if pix < n_pix:
            n_s, r, q = _pixel(pix, plane, out_w)
            for i in range(GEMM_REG):
                o = o0 + ty + i * GEMM_THREADS
                if o < o_g:
                    v = acc[i, j] + (bias[o_first + o] if has_bias else zero)
                    out[n_s, o_first + o, r, q] = (v if v > zero else zero) if relu else v


@cuda.jit(device=True, inline="always")
def _output_reading(pos, pad, tap, dil, stride, n_out):
    """(True, i) when output i's window reads input position ``pos`` at this tap, i.e.
    pos = i*stride - pad + tap*dil with 0 <= i < n_out; else (False, 0).  The division is a
    32-bit unsigned one: a fraction of an emulated 64-bit division's cost."""
    t = pos + pad - tap * dil
    if t < 0:
        return False, uint32(0)
    if stride == 1:  # the common case, uniform across the block: no division
        return t < n_out, uint32(t)
    i = uint32(t) // uint32(stride)  # unsigned on both sides of every compare: a signed one
    return i * uint32(stride) == uint32(t) and i < uint32(n_out), i  # would go through float64


@kernel
def conv2d_grad_input(g, weight, kh, kw, sh, sw, ph, pw, dh, dw, gated, gate, gx):
    """gx[n, c, a, b] = sum over o in c's group and taps (p, q) with a = r*sh - ph + p*dh,
    b = j*sw - pw + q*dw of weight[o, c - c0, p, q] * g[n, o, r, j].

    g (N, O, OH, OW); weight (O, C/groups*KH*KW), the filters flattened (a free view); gx (N, C,
    H, W) preallocated and overwritten.  With ``gated`` each element is stored times
    ``1 if gate[n, c, a, b] > 0 else 0`` (the ReLU backward kernel's expression), gate (N, C, H,
    W) C-contiguous the output of the ReLU before the layer: its backward in the same store.
    Without it gate is not read (pass gx).

    The forward's implicit GEMM transposed: per group, gx (C/groups, N*H*W) = weights^T
    (C/groups, O/groups*KH*KW) @ gathered g, where the row k = (o, p, q) of the gathered matrix
    holds, for input pixel (n, a, b), the output g[n, o, r, j] that reads (a, b) at tap (p, q)
    (zero when none does: a stride skips it, or it falls outside).  Tiled, register-blocked and
    staged as ``conv2d_fwd``; each K step's (o, p, q) decoded once per block.  One writer per
    element, sums over k in order: no atomics, deterministic.
    """
    ta = cuda.shared.array((GEMM_TILE_K, GEMM_PAD), dtype=gx.dtype)
    tb = cuda.shared.array((GEMM_TILE_K, GEMM_TILE), dtype=gx.dtype)
    k_o = cuda.shared.array(GEMM_TILE_K, dtype=int32)  # the K step's filter (absolute), flat
    k_pq = cuda.shared.array(GEMM_TILE_K, dtype=int32)  # tap and its (row, column)
    k_p = cuda.shared.array(GEMM_TILE_K, dtype=int32)
    k_q = cuda.shared.array(GEMM_TILE_K, dtype=int32)
    acc = cuda.local.array((GEMM_REG, GEMM_REG), dtype=gx.dtype)
    ra = cuda.local.array(GEMM_REG, dtype=gx.dtype)
    rb = cuda.local.array(GEMM_REG, dtype=gx.dtype)
    n_batch, n_c, h, w = gx.shape[0], gx.shape[1], gx.shape[2], gx.shape[3]
    n_o, out_h, out_w = g.shape[1], g.shape[2], g.shape[3]
    taps = kh * kw
    c_g = weight.shape[1] // taps
    groups = n_c // c_g
    o_g = n_o // groups
    n_k = o_g * taps
    grp = cuda.blockIdx.z
    c_first = grp * c_g
    o_first = grp * o_g
    plane = h * w
    n_pix = n_batch * plane
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * GEMM_THREADS + tx
    pix0 = cuda.blockIdx.x * GEMM_TILE
    c0 = cuda.blockIdx.y * GEMM_TILE
    col = tid % GEMM_TILE  # the input pixel this thread gathers for (the same at every K step)
    pix = pix0 + col
    has_pix = pix < n_pix
    n_s, a, b = _pixel(pix if has_pix else 0, plane, w)
    g_n = g[uint32(n_s)]
    zero = gx.dtype.type(0)
    fill_tile(acc, GEMM_REG, zero)
    for k0 in range(0, n_k, GEMM_TILE_K):
        cuda.syncthreads()  # the previous tiles and taps have been read by every thread
        if tid < GEMM_TILE_K:
            o, p, q = _split_tap(k0 + tid, kh, kw)
            k_o[tid] = o_first + o
            k_pq[tid] = p * kw + q
            k_p[tid] = p
            k_q[tid] = q
        cuda.syncthreads()  # the taps are decoded
        for e in range(tid, GEMM_TILE * GEMM_TILE_K, GEMM_THREADS * GEMM_THREADS):
            kk = e // GEMM_TILE  # c fastest across threads
            ii = e - kk * GEMM_TILE
            c = c0 + ii
            value = zero
            if c < c_g and k0 + kk < n_k:
                value = weight[k_o[kk], c * taps + k_pq[kk]]
            ta[kk, ii] = value
        for kk in range(tid // GEMM_TILE, GEMM_TILE_K, (GEMM_THREADS * GEMM_THREADS) // GEMM_TILE):
            value = zero
            if has_pix and k0 + kk < n_k:
                reads_r, r = _output_reading(a, ph, k_p[kk], dh, sh, out_h)
                reads_j, j = _output_reading(b, pw, k_q[kk], dw, sw, out_w)
                if reads_r and reads_j:
                    value = g_n[uint32(k_o[kk]), r, j]
            tb[kk, col] = value
        cuda.syncthreads()
        tile_mma(ta, tb, acc, ra, rb, GEMM_THREADS, GEMM_REG, GEMM_TILE_K)
    for j in range(GEMM_REG):
        pix = pix0 + tx + j * GEMM_THREADS
        if pix < n_pix:
            n_s, a, b = _pixel(pix, plane, w)
            for i in range(GEMM_REG):
                c = c0 + ty + i * GEMM_THREADS
                if c < c_g:
                    v = acc[i, j]
                    if gated:
                        v *= gx.dtype.type(1) if gate[n_s, c_first + c, a, b] > zero else zero
                    gx[n_s, c_first + c, a, b] = v


@cuda.jit(device=True, inline="always")
def _plane_split(plane, tid, stride):
    """(first pixel, pixel step, first sample, sample step) of thread ``tid`` of ``stride``
    threads summing over a batch of planes of ``plane`` pixels: threads stride over the
    pixels; a plane smaller than the block is split over the batch too (``stride // plane``
    threads per pixel), so small late-layer planes keep the block busy.  A thread with
    first sample >= sample step has no work."""
    if plane == 0:
        return 0, 1, 1, 1  # an empty plane: no work for anyone
    n_step = max(1, stride // plane)
    if n_step == 1:
        return tid, stride, 0, 1
    return tid % plane, plane, tid // plane, n_step


# Uncapped, 130 registers (float32): one block an SM; capped as conv2d_fwd, with the same spills.
@jit_fitting(GEMM_THREADS * GEMM_THREADS, 2)
def conv2d_grad_weight(g, x, kh, kw, sh, sw, ph, pw, dh, dw, steps_per_split, part):
    """part[s, o, k] = sum over the output pixels (n, r, j) of split s of g[n, o, r, j] *
    x[n, c0 + c, r*sh - ph + p*dh, j*sw - pw + q*dw], k = (c, p, q) flattened (c0: first input
    channel of o's group): the weight gradient, summed over the splits by ``split_sum`` (or
    written whole when there is one split: pass gw viewed as (1, O, C/groups*KH*KW)).

    g (N, O, OH, OW); x (N, C, H, W); part (splits, O, C/groups*KH*KW) preallocated and
    overwritten; blockIdx.z = group * splits + split.

    An implicit GEMM over the output pixels: per group, gw (O/groups, K) = g (O/groups,
    N*OH*OW) @ patches (N*OH*OW, K).  The reduction is that long dimension, so it is split
    across blocks (``steps_per_split`` steps of GEMM_TILE_K pixels each) to fill the GPU, and
    the partial sums are added in a fixed order afterwards: deterministic, no atomics.  Each
    thread stages a fixed patch column k (its (c, p, q) decoded once) and each step's pixels
    are decoded once per block; the tile product is ``conv2d_fwd``'s.
    """
    ta = cuda.shared.array((GEMM_TILE_K, GEMM_PAD), dtype=part.dtype)
    tb = cuda.shared.array((GEMM_TILE_K, GEMM_TILE), dtype=part.dtype)
    px_n = cuda.shared.array(GEMM_TILE_K, dtype=int32)  # the step's pixels: sample (-1: none),
    px_r = cuda.shared.array(GEMM_TILE_K, dtype=int32)  # output row and column
    px_j = cuda.shared.array(GEMM_TILE_K, dtype=int32)
    acc = cuda.local.array((GEMM_REG, GEMM_REG), dtype=part.dtype)
    ra = cuda.local.array(GEMM_REG, dtype=part.dtype)
    rb = cuda.local.array(GEMM_REG, dtype=part.dtype)
    n_batch, n_c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    n_o, out_h, out_w = g.shape[1], g.shape[2], g.shape[3]
    splits, n_k = part.shape[0], part.shape[2]
    taps = kh * kw
    c_g = n_k // taps
    o_g = n_o // (n_c // c_g)
    grp = cuda.blockIdx.z // splits
    split = cuda.blockIdx.z - grp * splits
    o_first = grp * o_g
    plane = out_h * out_w
    n_pix = n_batch * plane
    n_steps = (n_pix + GEMM_TILE_K - 1) // GEMM_TILE_K
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * GEMM_THREADS + tx
    k0 = cuda.blockIdx.x * GEMM_TILE
    o0 = cuda.blockIdx.y * GEMM_TILE
    col = tid % GEMM_TILE  # the patch column (tap) this thread stages at every step
    k = k0 + col
    has_k = k < n_k
    c, p, q = _split_tap(k if has_k else 0, kh, kw)
    dy = int32(p * dh - ph)
    dx = int32(q * dw - pw)
    xc = uint32(grp * c_g + c)
    uh = uint32(h)
    uw = uint32(w)
    zero = part.dtype.type(0)
    fill_tile(acc, GEMM_REG, zero)
    for step in range(split * steps_per_split, min((split + 1) * steps_per_split, n_steps)):
        cuda.syncthreads()  # the previous tiles and pixels have been read by every thread
        if tid < GEMM_TILE_K:
            pix = step * GEMM_TILE_K + tid
            n_s, r, q = _pixel(pix, plane, out_w)
            px_n[tid] = n_s if pix < n_pix else -1
            px_r[tid] = r
            px_j[tid] = q
        cuda.syncthreads()  # the pixels are decoded
        for e in range(tid, GEMM_TILE * GEMM_TILE_K, GEMM_THREADS * GEMM_THREADS):
            ii = e // GEMM_TILE_K  # pixels fastest across threads: g's planes are read in runs
            kk = e - ii * GEMM_TILE_K
            o = o0 + ii
            value = zero
            if o < o_g and px_n[kk] >= 0:
                value = g[px_n[kk], o_first + o, px_r[kk], px_j[kk]]
            ta[kk, ii] = value
        for kk in range(tid // GEMM_TILE, GEMM_TILE_K, (GEMM_THREADS * GEMM_THREADS) // GEMM_TILE):
            value = zero
            if has_k and px_n[kk] >= 0:
                a = _wrap32(px_r[kk] * sh + dy)  # a tap in the padding wraps to >= h: one compare
                b = _wrap32(px_j[kk] * sw + dx)
                if a < uh and b < uw:
                    value = x[uint32(px_n[kk]), xc, a, b]
            tb[kk, col] = value
        cuda.syncthreads()
        tile_mma(ta, tb, acc, ra, rb, GEMM_THREADS, GEMM_REG, GEMM_TILE_K)
    for i in range(GEMM_REG):
        o = o0 + ty + i * GEMM_THREADS
        if o < o_g:
            for j in range(GEMM_REG):
                k = k0 + tx + j * GEMM_THREADS
                if k < n_k:
                    part[split, o_first + o, k] = acc[i, j]


@kernel
def split_sum(part, out):
    """out[i] = sum_s part[s, i], s in order (the split-K partial sums of conv2d_grad_weight).
    part (splits, n) C-contiguous; out (n,) overwritten.  Grid-stride, coalesced."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        acc = part[0, i]
        for s in range(1, part.shape[0]):
            acc += part[s, i]
        out[i] = acc


@kernel
def channel_sum(g, out):
    """out[o] = sum_{n, r, j} g[n, o, r, j] (the bias gradient).  g (N, O, OH, OW); out (O,)."""
    red = cuda.shared.array(RED_THREADS, dtype=out.dtype)
    o = cuda.blockIdx.x
    out_h, out_w = g.shape[2], g.shape[3]
    tid = cuda.threadIdx.x
    pix0, pix_step, n0, n_step = _plane_split(out_h * out_w, tid, RED_THREADS)
    acc = out.dtype.type(0)
    if n0 < n_step:
        for idx in range(pix0, out_h * out_w, pix_step):
            r = idx // out_w
            j = idx - r * out_w
            for n in range(n0, g.shape[0], n_step):
                acc += g[n, o, r, j]
    red[tid] = acc
    total = block_sum(red, tid)
    if tid == 0:
        out[o] = total



# --------------------------------------------------------------------------- weight-sparse
# The filter bank is a CSR matrix W (O, C/groups*KH*KW), row o = filter o flattened in
# (c, p, q) order; only stored taps are visited, the dense filters never exist.  Every thread
# of a block reads the same tap at the same time: a broadcast.  The forward decodes its taps
# into shared memory and so must keep every thread to its barriers (no early return); the
# grad-input kernel reads the transposed pattern directly, has no barrier, and lets a thread
# outside the input leave early.
#
# ==========================  ====================  ==========================================
# kernel                      block                 grid
# ==========================  ====================  ==========================================
# sparse_conv2d_fwd           (CONV_TX, CONV_TY)    (ceil(N/SPARSE_NB)*O * ceil(OH/CONV_TY) * ceil(OW/CONV_TX),)
# sparse_conv2d_grad_input    (CONV_TX, CONV_TY)    (ceil(N/SPARSE_NB)*C * ceil(H/CONV_TY) * ceil(W/CONV_TX),)
# sparse_conv2d_grad_weight   (RED_THREADS,)        (chunks of GW_ENTRIES entries of one filter,)
# ==========================  ====================  ==========================================


@cuda.jit(device=True, inline="always")
def _wrap32(v):
    """v modulo 2**32 as uint32: a negative v becomes a large one, so ``0 <= v < n`` is one
    unsigned compare.  (Masked first: the simulator refuses to cast a negative to uint32.)"""
    return uint32(int64(v) & 0xFFFFFFFF)


@kernel
def sparse_conv2d_fwd(x, indptr, indices, data, groups, kh, kw, sh, sw, ph, pw, dh, dw, bias, out):
    """out[n, o, r, j] = bias[o] + sum over row o's stored taps k, col = (c, p, q), of
    data[k] * x[n, c0 + c, r*sh - ph + p*dh, j*sw - pw + q*dw] (c0: first channel of o's group;
    taps in the padding add nothing).

    x (N, C, H, W); indptr (O+1,), indices, data (nnz,) canonical CSR; bias (O,);
    out (N, O, OH, OW) preallocated and overwritten.  O(N*OH*OW*nnz).

    Every thread of the block walks the same filter row o, so its taps are decoded once per
    block, SPARSE_STAGE at a time, into shared memory as (input channel, row shift, column
    shift, value): the two divisions that turn a flattened column into (c, p, q) are done once
    per tap and block instead of once per tap and pixel (64-bit divisions are emulated, some
    70 instructions each).  The summing loop then reads broadcasts and tests the padding with
    one unsigned compare per axis (the compiler predicates the loads and multiply-adds on it).
    A thread computes its pixel for SPARSE_NB = 4 samples at once: one tap's decode, padding
    test and address serve four loads and four multiply-adds (the samples past N re-read the
    last sample and are not stored).
    """
    st_c = cuda.shared.array(SPARSE_STAGE, dtype=int32)
    st_dy = cuda.shared.array(SPARSE_STAGE, dtype=int32)
    st_dx = cuda.shared.array(SPARSE_STAGE, dtype=int32)
    st_w = cuda.shared.array(SPARSE_STAGE, dtype=data.dtype)
    n_c, h, w = x.shape[1], x.shape[2], x.shape[3]
    n_o, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    tiles_j = (out_w + CONV_TX - 1) // CONV_TX
    n_tiles = ((out_h + CONV_TY - 1) // CONV_TY) * tiles_j
    plane = cuda.blockIdx.x // n_tiles  # one flat grid axis: grid y would cap tiles at 65,535
    tile = cuda.blockIdx.x - plane * n_tiles
    n_group = plane // n_o  # samples n0 .. n0 + SPARSE_NB - 1
    o = plane - n_group * n_o
    tile_r = tile // tiles_j
    r = tile_r * CONV_TY + cuda.threadIdx.y
    j = (tile - tile_r * tiles_j) * CONV_TX + cuda.threadIdx.x
    inside = r < out_h and j < out_w  # no early return: every thread meets the syncthreads
    c_first = (o // (n_o // groups)) * (n_c // groups)
    tid = cuda.threadIdx.y * CONV_TX + cuda.threadIdx.x
    n0 = n_group * SPARSE_NB
    last = x.shape[0] - 1
    x0 = x[uint32(n0)]
    x1 = x[uint32(min(n0 + 1, last))]
    x2 = x[uint32(min(n0 + 2, last))]
    x3 = x[uint32(min(n0 + 3, last))]
    uh = uint32(h)
    uw = uint32(w)
    top = int32(r * sh)
    left = int32(j * sw)
    start = indptr[o]
    end = indptr[o + 1]
    zero = out.dtype.type(0)
    acc0 = zero
    acc1 = zero
    acc2 = zero
    acc3 = zero
    for k0 in range(start, end, SPARSE_STAGE):
        cuda.syncthreads()  # the previous chunk has been used by every thread
        n_k = uint32(min(SPARSE_STAGE, end - k0))
        for t in range(tid, n_k, CONV_TX * CONV_TY):
            c, p, q = _split_tap(indices[k0 + t], kh, kw)
            st_c[t] = c_first + c
            st_dy[t] = p * dh - ph
            st_dx[t] = q * dw - pw
            st_w[t] = data[k0 + t]
        cuda.syncthreads()
        if inside:
            t = uint32(0)
            while t < n_k:
                a = _wrap32(top + st_dy[t])  # a tap in the padding wraps to >= h: one compare
                b = _wrap32(left + st_dx[t])
                if a < uh and b < uw:
                    c = uint32(st_c[t])
                    w_t = st_w[t]
                    acc0 += w_t * x0[c, a, b]
                    acc1 += w_t * x1[c, a, b]
                    acc2 += w_t * x2[c, a, b]
                    acc3 += w_t * x3[c, a, b]
                t += uint32(1)
    if inside:
        shift = bias[o]
        out[n0, o, r, j] = acc0 + shift
        if n0 + 1 <= last:
            out[n0 + 1, o, r, j] = acc1 + shift
        if n0 + 2 <= last:
            out[n0 + 2, o, r, j] = acc2 + shift
        if n0 + 3 <= last:
            out[n0 + 3, o, r, j] = acc3 + shift


@jit_fitting(CONV_TX * CONV_TY, 4)  # 64 registers: uncapped the unguarded loop took 72
def sparse_conv2d_grad_input(g, indptr_t, indices_t, perm, data, kh, kw, sh, sw, ph, pw, dh, dw, gated, gate, gx):
    """gx[n, c, a, b] = sum over the stored taps (o, c, p, q) that read x[n, c, a, b] of
    data[k] * g[n, o, r, j] with a = r*sh - ph + p*dh, b = j*sw - pw + q*dw.

    Walks W's transposed pattern by input channel (indptr_t (C*KH*KW + 1,), indices_t = rows o,
    ``perm`` into ``data``; the wrappers' ``transpose_pattern(..., groups=)``): column (c, p, q) lists exactly
    the filters of c's group that store tap (c mod C/groups, p, q), so no entry is read only to
    be skipped (a depthwise layer's plain transpose would list all O filters in each column, one
    of them c's).  One writer per element, no atomics.  g (N, O, OH, OW); gx (N, C, H, W)
    preallocated and overwritten.

    A thread computes its input pixel for SPARSE_NB = 4 samples, as the forward does: a tap's
    two divisions and an entry's filter index and value serve four loads and multiply-adds
    (the samples past N re-read the last sample and are not stored).  With ``gated`` each
    element is stored times ``1 if gate[n, c, a, b] > 0 else 0`` (gate (N, C, H, W) C-contiguous,
    the output of the ReLU before the layer: its backward in the same store, as in
    conv2d_grad_input); without it gate is not read (pass gx).
    """
    n_c, h, w = gx.shape[1], gx.shape[2], gx.shape[3]
    out_h, out_w = g.shape[2], g.shape[3]
    tiles_b = (w + CONV_TX - 1) // CONV_TX
    n_tiles = ((h + CONV_TY - 1) // CONV_TY) * tiles_b
    plane = cuda.blockIdx.x // n_tiles
    tile = cuda.blockIdx.x - plane * n_tiles
    n_group = plane // n_c
    c = plane - n_group * n_c
    tile_a = tile // tiles_b
    a = tile_a * CONV_TY + cuda.threadIdx.y
    b = (tile - tile_a * tiles_b) * CONV_TX + cuda.threadIdx.x
    if a >= h or b >= w:
        return
    col0 = c * (kh * kw)
    n0 = n_group * SPARSE_NB
    last = g.shape[0] - 1
    g0 = g[uint32(n0)]
    g1 = g[uint32(min(n0 + 1, last))]
    g2 = g[uint32(min(n0 + 2, last))]
    g3 = g[uint32(min(n0 + 3, last))]
    zero = gx.dtype.type(0)
    acc0 = zero
    acc1 = zero
    acc2 = zero
    acc3 = zero
    for p in range(kh):
        reads_r, r = _output_reading(a, ph, p, dh, sh, out_h)
        if not reads_r:
            continue
        for q in range(kw):
            reads_j, jj = _output_reading(b, pw, q, dw, sw, out_w)
            if not reads_j:
                continue
            col = col0 + p * kw + q
            tap0 = g0[:, r, jj]  # g[n, :, r, jj]: each filter's output at this tap
            tap1 = g1[:, r, jj]
            tap2 = g2[:, r, jj]
            tap3 = g3[:, r, jj]
            k = uint64(indptr_t[col])  # unsigned: no negative-index fix-ups per entry
            k_end = uint64(indptr_t[col + 1])
            while k < k_end:
                value = data[uint64(perm[k])]
                uo = uint32(indices_t[k])
                acc0 += value * tap0[uo]
                acc1 += value * tap1[uo]
                acc2 += value * tap2[uo]
                acc3 += value * tap3[uo]
                k += uint64(1)
    if gated:
        one = gx.dtype.type(1)
        acc0 *= one if gate[n0, c, a, b] > zero else zero
        acc1 *= one if gate[min(n0 + 1, last), c, a, b] > zero else zero
        acc2 *= one if gate[min(n0 + 2, last), c, a, b] > zero else zero
        acc3 *= one if gate[min(n0 + 3, last), c, a, b] > zero else zero
    gx[n0, c, a, b] = acc0
    if n0 + 1 <= last:
        gx[n0 + 1, c, a, b] = acc1
    if n0 + 2 <= last:
        gx[n0 + 2, c, a, b] = acc2
    if n0 + 3 <= last:
        gx[n0 + 3, c, a, b] = acc3


@kernel
def sparse_conv2d_grad_weight(g, x, chunks, indices, groups, kh, kw, sh, sw, ph, pw, dh, dw, gw):
    """gw[k] = sum_{n, r, j} g[n, o, r, j] * x[n, c0 + c, r*sh - ph + p*dh, j*sw - pw + q*dw] for
    stored entry k = (o, col = (c, p, q)): the weight gradient on the pattern only.

    chunks (n_chunks, 3) int64: (row o, first entry, end entry) of up to GW_ENTRIES = 4
    consecutive entries of one filter row (``_weight_chunks`` in the wrappers); one block per chunk.  gw (nnz,)
    overwritten.

    The block's entries share their filter's output gradient g[:, o]: each thread takes its
    output pixels (r, j) (j fastest across threads: coalesced; see ``_plane_split``), works out
    once per pixel and entry whether the tap falls in the padding and where it reads x, then
    runs over the batch with one load of g and four of x per sample: four multiply-adds per g
    load (one block per entry re-read g for every entry, two loads per multiply-add).  The
    per-entry sums are reduced with fixed trees: deterministic, no atomics.
    """
    red0 = cuda.shared.array(RED_THREADS, dtype=gw.dtype)
    red1 = cuda.shared.array(RED_THREADS, dtype=gw.dtype)
    red2 = cuda.shared.array(RED_THREADS, dtype=gw.dtype)
    red3 = cuda.shared.array(RED_THREADS, dtype=gw.dtype)
    n_c, h, w = x.shape[1], x.shape[2], x.shape[3]
    n_o, out_h, out_w = g.shape[1], g.shape[2], g.shape[3]
    chunk = cuda.blockIdx.x
    o = chunks[chunk, 0]
    k0 = chunks[chunk, 1]
    n_e = chunks[chunk, 2] - k0  # 1 .. GW_ENTRIES
    c_first = (o // (n_o // groups)) * (n_c // groups)
    # The chunk's taps; entries past its end repeat its first (never stored).
    c0, p0, q0 = _split_tap(indices[k0], kh, kw)
    c1, p1, q1 = _split_tap(indices[k0 + 1] if n_e > 1 else indices[k0], kh, kw)
    c2, p2, q2 = _split_tap(indices[k0 + 2] if n_e > 2 else indices[k0], kh, kw)
    c3, p3, q3 = _split_tap(indices[k0 + 3] if n_e > 3 else indices[k0], kh, kw)
    tid = cuda.threadIdx.x
    pix0, pix_step, n0, n_step = _plane_split(out_h * out_w, tid, RED_THREADS)
    n_batch = uint32(x.shape[0])
    u_step = uint32(n_step)
    zero = gw.dtype.type(0)
    s0 = zero
    s1 = zero
    s2 = zero
    s3 = zero
    if n0 < n_step:
        for idx in range(pix0, out_h * out_w, pix_step):
            r = idx // out_w
            j = idx - r * out_w
            g_px = g[:, o, r, j]  # the pixel's output gradient over the batch
            in0, x0 = _tap_column(x, c_first + c0, r * sh - ph + p0 * dh, j * sw - pw + q0 * dw, h, w)
            in1, x1 = _tap_column(x, c_first + c1, r * sh - ph + p1 * dh, j * sw - pw + q1 * dw, h, w)
            in2, x2 = _tap_column(x, c_first + c2, r * sh - ph + p2 * dh, j * sw - pw + q2 * dw, h, w)
            in3, x3 = _tap_column(x, c_first + c3, r * sh - ph + p3 * dh, j * sw - pw + q3 * dw, h, w)
            n = uint32(n0)
            while n < n_batch:
                gv = g_px[n]
                if in0:
                    s0 += gv * x0[n]
                if in1:
                    s1 += gv * x1[n]
                if in2:
                    s2 += gv * x2[n]
                if in3:
                    s3 += gv * x3[n]
                n += u_step
    red0[tid] = s0
    red1[tid] = s1
    red2[tid] = s2
    red3[tid] = s3
    t0 = block_sum(red0, tid)
    t1 = block_sum(red1, tid)
    t2 = block_sum(red2, tid)
    t3 = block_sum(red3, tid)
    if tid == 0:
        gw[k0] = t0
        if n_e > 1:
            gw[k0 + 1] = t1
        if n_e > 2:
            gw[k0 + 2] = t2
        if n_e > 3:
            gw[k0 + 3] = t3


@cuda.jit(device=True, inline="always")
def _tap_column(x, c, a, b, h, w):
    """(whether input position (a, b) is inside the plane, x[:, c, a', b'] over the batch) with
    (a', b') clamped into the plane, so the view is always valid (read only when inside)."""
    inside = a >= 0 and a < h and b >= 0 and b < w
    return inside, x[:, c, min(max(a, 0), h - 1), min(max(b, 0), w - 1)]


# --------------------------------------------------------------------------- locally connected
# One filter per output position: weight (OH, OW, O, K), K = C*KH*KW flattened (c, p, q).  Each
# kernel is a grid-stride loop with one thread per output element and no shared data (nothing is
# reused across a block the way a shared filter is), threads consecutive along the fastest
# output axis.  Every element has one writer; sums run in a fixed order.
#
# ==========================  ====================  ==========================================
# kernel                      block                 grid
# ==========================  ====================  ==========================================
# local2d_fwd                 (LOCAL_THREADS,)      min(ceil(N*O*OH*OW / LOCAL_THREADS), LOCAL_MAX_BLOCKS)
# local2d_grad_input          (LOCAL_THREADS,)      min(ceil(N*C*H*W / LOCAL_THREADS), LOCAL_MAX_BLOCKS)
# local2d_grad_weight         (LOCAL_THREADS,)      min(ceil(OH*OW*O*K / LOCAL_THREADS), LOCAL_MAX_BLOCKS)
# ==========================  ====================  ==========================================
LOCAL_THREADS = 256
LOCAL_MAX_BLOCKS = 16384


@kernel
def local2d_fwd(x, weight, bias, kh, kw, sh, sw, ph, pw, out):
    """out[n, o, r, j] = bias[o, r, j] + sum_{c, p, q} weight[r, j, o, (c, p, q)] *
    x[n, c, r*sh - ph + p, j*sw - pw + q] (taps in the padding add nothing).

    x (N, C, H, W); weight (OH, OW, O, K); bias (O, OH, OW); out (N, O, OH, OW) overwritten.
    """
    n_c, h, w = x.shape[1], x.shape[2], x.shape[3]
    n_o, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    taps = kh * kw
    total = out.shape[0] * n_o * out_h * out_w
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        n, o, r, j = unravel4(idx, n_o, out_h, out_w)
        acc = bias[o, r, j]
        for c in range(n_c):
            for p in range(kh):
                a = r * sh - ph + p
                if a >= 0 and a < h:
                    for q in range(kw):
                        b = j * sw - pw + q
                        if b >= 0 and b < w:
                            acc += weight[r, j, o, c * taps + p * kw + q] * x[n, c, a, b]
        out[n, o, r, j] = acc


@kernel
def local2d_grad_input(g, weight, kh, kw, sh, sw, ph, pw, gx):
    """gx[n, c, a, b] = sum over the positions (r, j) whose window covers (a, b) at tap (p, q)
    (a = r*sh - ph + p, b = j*sw - pw + q) and over o of weight[r, j, o, (c, p, q)] * g[n, o, r, j].

    g (N, O, OH, OW); weight (OH, OW, O, K); gx (N, C, H, W) overwritten.
    """
    n_c, h, w = gx.shape[1], gx.shape[2], gx.shape[3]
    n_o, out_h, out_w = g.shape[1], g.shape[2], g.shape[3]
    taps = kh * kw
    total = gx.shape[0] * n_c * h * w
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        n, c, a, b = unravel4(idx, n_c, h, w)
        acc = gx.dtype.type(0)
        for p in range(kh):
            tr = a + ph - p
            if tr >= 0 and tr % sh == 0 and tr // sh < out_h:
                r = tr // sh
                for q in range(kw):
                    tj = b + pw - q
                    if tj >= 0 and tj % sw == 0 and tj // sw < out_w:
                        j = tj // sw
                        k = c * taps + p * kw + q
                        for o in range(n_o):
                            acc += weight[r, j, o, k] * g[n, o, r, j]
        gx[n, c, a, b] = acc


@kernel
def local2d_grad_weight(g, x, kh, kw, sh, sw, ph, pw, gw):
    """gw[r, j, o, (c, p, q)] = sum_n g[n, o, r, j] * x[n, c, r*sh - ph + p, j*sw - pw + q].

    g (N, O, OH, OW); x (N, C, H, W); gw (OH, OW, O, K) overwritten (zero for padding taps).
    Threads run along K, the fastest axis of gw: stores are coalesced.
    """
    h, w = x.shape[2], x.shape[3]
    out_h, out_w, n_o, n_k = gw.shape[0], gw.shape[1], gw.shape[2], gw.shape[3]
    total = out_h * out_w * n_o * n_k
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        r, j, o, k = unravel4(idx, out_w, n_o, n_k)
        c, p, q = _split_tap(k, kh, kw)
        a = r * sh - ph + p
        b = j * sw - pw + q
        acc = gw.dtype.type(0)
        if a >= 0 and a < h and b >= 0 and b < w:
            for n in range(x.shape[0]):
                acc += g[n, o, r, j] * x[n, c, a, b]
        gw[r, j, o, k] = acc
