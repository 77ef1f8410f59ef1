"""Compute kernels of sparsenet and the one place that dispatches to them.

Each public function here takes raw arrays in the caller's layout, picks the backend,
converts to the layout the kernel wants, allocates the output and calls the kernel.
Validation of user input happens one level up (``sparsenet``); what is checked here is only
what the kernels need to be memory-safe given already-validated CSR structure.
"""
if __name__ != "sparsenet.kernels":
    raise ImportError(
        "the kernels/ folder is installed as the subpackage 'sparsenet.kernels'; import it as "
        "'import sparsenet.kernels', not as a top-level 'kernels' (that would compile every kernel "
        f"a second time and shadow the PyPI package of that name); got module name {__name__!r}"
    )

import math

import numba
import numpy as np

from . import device as _device
from .cpu import csr as _csr

__all__ = ["spmm", "spmm_t", "sddmm", "csr_transpose", "csr_row_faults", "require_host", "to_device",
           "to_host", "zeros_like"]

def _on_cuda(**arrays):
    """True when the arrays are CUDA device arrays; mixing host and device raises ValueError.

    numba.cuda is imported only when a device array actually arrives (see kernels.device).
    """
    return _device.check_same_device(**arrays) == "cuda"


def _gpu():
    from . import cuda  # lazy: only once device arrays are in play

    return cuda


def require_host(name, *arrays):
    """For ops without a CUDA kernel: refuse device arrays instead of copying them silently.

    Raises NotImplementedError naming ``name`` when any of ``arrays`` is a device array.
    """
    if any(_device.is_device_array(a) for a in arrays):
        raise NotImplementedError(f"{name} has no CUDA kernel yet; pass NumPy (host) arrays")


def to_device(a, device="cuda"):
    """``a`` on ``device`` ("cpu" or "cuda"): an explicit copy when it lives elsewhere, else ``a``."""
    if device == "cpu":
        return to_host(a)
    if device != "cuda":
        raise ValueError(f"device must be one of {_device.DEVICES}; got {device!r}")
    return _gpu().to_device(a)


def to_host(a):
    """A NumPy array with ``a``'s values (``a`` itself when it already is one)."""
    if _device.is_device_array(a):
        return _gpu().to_host(a)
    return np.asarray(a)


def take(a, idx, order="C"):
    """Rows ``a[idx]`` (a new array on a's device); on the device ``idx`` must be a device int
    array in range (it is not read back to check).  ``order="F"``: a 2-D result F-ordered, the
    layout in which a batch feeds the sparse products with no transpose (others stay C)."""
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F'; got {order!r}")
    if _on_cuda(a=a, idx=idx):
        return _gpu().take(a, idx, order)
    out = a[idx]
    return np.asfortranarray(out) if order == "F" and out.ndim == 2 else out


def zeros_like(a):
    """Zeros of ``a``'s shape and dtype, C-ordered, on ``a``'s device."""
    if _device.is_device_array(a):
        return _gpu().zeros(tuple(a.shape), a.dtype)
    return np.zeros(np.shape(a), a.dtype)


def _lanes(dtype, batch):
    """Batch-tile width: the batch rounded up to 8 lanes, at most 1 KiB (256 float32, 128 float64).

    Measured on AVX2 (2 threads, 4096x4096): a wide tile row amortises the per-nonzero index
    work over many FMAs (1 KiB rows 1.6x faster than 256-byte rows at 1% density, never
    slower); rounding to 8 keeps B=1 from computing padding lanes.  A function of dtype and
    batch only, never of the thread count, so the kernels' summation order (and result bits)
    does not depend on it.
    """
    return min(1024 // np.dtype(dtype).itemsize, max(8, -(-batch // 8) * 8))


def _blocks(n, per_tile_tasks):
    """Split n items into at most ``per_tile_tasks`` blocks (>= 1); work splitting only."""
    return max(1, min(n, per_tile_tasks))


def _unsigned(indices):
    """Same bits viewed as unsigned: the kernels then skip the negative-index wraparound test
    on every gather (valid column indices are non-negative, checked upstream)."""
    return indices.view(np.uint32 if indices.dtype.itemsize == 4 else np.uint64)


def _pack(a, dtype, lanes):
    """Dense (batch, n) operand -> C-contiguous batch tiles (n_tiles, n, lanes), zero-padded.

    C- and F-ordered inputs are read in place by the packing kernel (as X or as X^T); any other
    layout (a slice, a broadcast) is first made C-contiguous.
    """
    batch, n = a.shape
    n_tiles = -(-batch // lanes)
    if a.flags.c_contiguous:
        src, transposed = a, False
    elif a.T.flags.c_contiguous:
        src, transposed = a.T, True
    else:
        src, transposed = np.ascontiguousarray(a), False
    out = np.empty((n_tiles, n, lanes), dtype=dtype)
    if n_tiles:
        per_tile = -(-2 * numba.get_num_threads() // n_tiles)
        _csr.pack_tiles(src, transposed, _blocks(n // 64, per_tile), out)
    return out


def spmm(indptr, indices, data, x, bias=None, relu=False):
    """Y = X W^T (+ bias) for dense X (B, n_col) and CSR W (n_row, n_col); returns Y (B, n_row).

    Y is returned F-ordered (a transposed view of the feature-major result): the next layer
    then packs it without a transpose.  ``bias`` (n_row,), optional: on the GPU the product
    kernel adds it as it stores Y (one launch and one pass fewer than a separate bias add).
    ``relu``: return max(Y, 0) instead, with :func:`activation`'s semantics on each device
    (in place on the host, in the product kernel's store on the GPU).
    """
    if _on_cuda(indptr=indptr, indices=indices, data=data, x=x, bias=bias):
        return _gpu().spmm(indptr, indices, data, x, bias, relu)
    n_row = indptr.shape[0] - 1
    xp = _pack(x, data.dtype, _lanes(data.dtype, x.shape[0]))
    out_t = np.empty((n_row, x.shape[0]), dtype=data.dtype)
    if xp.shape[0]:
        per_tile = -(-4 * numba.get_num_threads() // xp.shape[0])
        _csr.spmm_tiled(indptr, _unsigned(indices), data, xp, _blocks(n_row, per_tile), out_t)
    y = out_t.T
    if bias is not None:
        y += bias
    if relu:
        np.maximum(y, 0, out=y)
    return y


def _check_gate(gate, shape, dtype):
    """A ReLU-backward gate must match the result it gates exactly (np.multiply would broadcast
    or cast): ValueError / TypeError naming what was expected."""
    if gate is None:
        return
    if tuple(np.shape(gate)) != tuple(shape):
        raise ValueError(f"gate (a ReLU's output) must have the gated result's shape {tuple(shape)}; "
                         f"got {tuple(np.shape(gate))}")
    if gate.dtype != dtype:
        raise TypeError(f"gate must have the result's dtype {np.dtype(dtype)}; got {gate.dtype}")


def _apply_gate(out, gate):
    """``out *= gate > 0`` in place: activation_backward's ``g * (y > 0)``, bit for bit."""
    if gate is not None:
        np.multiply(out, gate > 0, out=out)
    return out


def spmm_t(indptr, indices, data, n_col, g, gate=None):
    """grad_X = G W for dense G (B, n_row) and CSR W (n_row, n_col); returns (B, n_col), F-ordered.

    With ``gate`` (B, n_col), the output of a ReLU whose result was W's input, returns
    ``grad_X * (gate > 0)``: the gradient with respect to that ReLU's input, the ReLU's backward
    applied as the product is stored (on the GPU, in the same kernel).
    Needs sorted column indices within each row (canonical CSR, checked upstream).
    """
    if _on_cuda(indptr=indptr, indices=indices, data=data, g=g, gate=gate):
        return _gpu().spmm_t(indptr, indices, data, n_col, g, gate)
    _check_gate(gate, (g.shape[0], n_col), data.dtype)
    gp = _pack(g, data.dtype, _lanes(data.dtype, g.shape[0]))
    out_t = np.empty((n_col, g.shape[0]), dtype=data.dtype)
    if gp.shape[0]:
        acc = np.empty((gp.shape[0], n_col, gp.shape[2]), dtype=data.dtype)
        per_tile = -(-numba.get_num_threads() // gp.shape[0])
        _csr.spmm_t_tiled(indptr, indices, data, gp, _blocks(n_col // 64, per_tile), acc, out_t)
    return _apply_gate(out_t.T, gate)


def sddmm(indptr, indices, g, x, *, bias_grad=False):
    """grad_W[k] = sum_b G[b, row_k] X[b, col_k] on W's pattern; G (B, n_row), X (B, n_col).

    With ``bias_grad`` returns ``(grad_W, G.sum(axis=0))``: a sparse layer's weight and bias
    gradients, from one launch on the GPU.
    """
    if _on_cuda(indptr=indptr, indices=indices, g=g, x=x):
        return _gpu().sddmm(indptr, indices, g, x, bias_grad)
    n_row = indptr.shape[0] - 1
    out = np.empty(indices.shape[0], dtype=g.dtype)
    # One tile as wide as the batch (rounded up to whole SIMD vectors): each entry is then one
    # long contiguous dot product, reading X's row once per entry rather than once per tile.
    lanes = max(8, -(-g.shape[0] // 8) * 8)
    gp = _pack(g, g.dtype, lanes)
    xp = _pack(x, g.dtype, lanes)
    _csr.sddmm_tiled(indptr, _unsigned(indices), gp, xp, _blocks(n_row, 4 * numba.get_num_threads()), out)
    return (out, batch_sum(g)) if bias_grad else out


def csr_transpose(n_col, indptr, indices):
    """Pattern of W^T: returns (indptr_t, indices_t, perm) with W^T's data = data[perm]."""
    require_host("csr_transpose", indptr, indices)
    nnz = indices.shape[0]
    indptr_t = np.empty(n_col + 1, dtype=indptr.dtype)
    indices_t = np.empty(nnz, dtype=indices.dtype)
    perm = np.empty(nnz, dtype=indptr.dtype)
    _csr.csr_transpose(n_col, indptr, indices, indptr_t, indices_t, perm)
    return indptr_t, indices_t, perm


def csr_row_faults(n_col, indptr, indices):
    """(code, row) of the first structural fault: 0 ok, 1 out of range, 2 unsorted, 3 duplicate."""
    require_host("csr_row_faults", indptr, indices)
    code, row = _csr.csr_row_faults(n_col, indptr, indices)
    return int(code), int(row)


# ---------------------------------------------------------------------------------------------
# Optimizer updates (sparsenet.optim).  Parameters and state are updated in place.
# ---------------------------------------------------------------------------------------------
from .cpu import update as _update  # noqa: E402

__all__ += ["sgd_update", "adam_update"]


def _flat(a):
    """1-D view of a C-contiguous array: the update kernels need views, never copies."""
    if not a.flags.c_contiguous:
        raise ValueError("optimizer kernels update in place and need C-contiguous arrays")
    return a.reshape(-1)


def _flat_grad(grad, param):
    """The gradient as a contiguous 1-D array of the parameter's dtype (a copy only if needed)."""
    return np.ascontiguousarray(grad, dtype=param.dtype).reshape(-1)


def sgd_update(param, grad, buf, *, lr, momentum, dampening, weight_decay, nesterov, first):
    """In-place SGD step on one parameter array (any shape); ``buf`` same shape or None."""
    if _on_cuda(param=param, grad=grad, buf=buf):
        return _gpu().sgd_update(lr, momentum, dampening, weight_decay, nesterov, first, param, grad, buf)
    p = _flat(param)
    b = _flat(buf) if buf is not None else p[:0]
    _update.sgd_update(float(lr), float(momentum), float(dampening), float(weight_decay),
                       bool(nesterov), bool(first), p, _flat_grad(grad, param), b)


def adam_update(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, decoupled, step):
    """In-place Adam/AdamW step on one parameter array; ``step`` is the 1-based count after this step."""
    if _on_cuda(param=param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq):
        return _gpu().adam_update(lr, beta1, beta2, eps, weight_decay, decoupled, step,
                                  param, grad, exp_avg, exp_avg_sq)
    _update.adam_update(float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
                        bool(decoupled), int(step), _flat(param), _flat_grad(grad, param),
                        _flat(exp_avg), _flat(exp_avg_sq))


# ---------------------------------------------------------------------------------------------
# Convolution (dense, weight-sparse, locally connected) and pooling, NCHW (sparsenet.functional).
# Geometry arrives validated and normalised to int pairs; arrays are host float32/float64.
# ---------------------------------------------------------------------------------------------
from .cpu import conv as _conv  # noqa: E402
from .cpu import pool as _pool  # noqa: E402

__all__ += [
    "conv2d_output_size", "conv2d", "conv2d_backward", "sparse_conv2d", "sparse_conv2d_backward",
    "local2d", "local2d_backward", "max_pool2d", "max_pool2d_backward", "avg_pool2d",
    "avg_pool2d_backward",
]


def conv2d_output_size(size, kernel, stride, padding, dilation):
    """PyTorch's floor((size + 2 padding - dilation (kernel - 1) - 1) / stride) + 1 (may be < 1)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pad(x, padding):
    """Zero-bordered C-contiguous copy (or x itself when unpadded and contiguous)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return np.ascontiguousarray(x)
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    return xp


def _crop(gxp, padding, shape):
    ph, pw = padding
    if ph == 0 and pw == 0 and gxp.shape == tuple(shape):
        return gxp
    return np.ascontiguousarray(gxp[:, :, ph:ph + shape[2], pw:pw + shape[3]])


def _n_chunks(n_tasks):
    # A few chunks per thread balance the load; chunks only decide who computes a plane,
    # never the order of a sum, so results do not depend on this number.
    return max(1, min(n_tasks, 4 * numba.get_num_threads()))


def _conv_geometry(x_shape, kernel, stride, padding, dilation):
    out_h = conv2d_output_size(x_shape[2], kernel[0], stride[0], padding[0], dilation[0])
    out_w = conv2d_output_size(x_shape[3], kernel[1], stride[1], padding[1], dilation[1])
    hq = -(-(x_shape[2] + 2 * padding[0]) // stride[0])
    wq = -(-(x_shape[3] + 2 * padding[1]) // stride[1])
    return out_h, out_w, hq, wq


def _stack_size(n, hq, wq):
    """Images stacked per plane: small planes are stacked into loops of about 2K elements,
    long enough to amortise the per-entry loop set-up, short enough to stay in L1."""
    return max(1, min(n, 2048 // (hq * wq)))


def _phase_split(x, padding, stride, hq, wq, stack):
    """(G, C, sh*sw, stack*Hq*Wq): the zero-padded input split into its stride phases, with
    ``stack`` images one above the other in each plane (G = ceil(N / stack))."""
    n, c = x.shape[:2]
    if stride == (1, 1) and stack == 1:
        xp = _pad(x, padding)
        return xp.reshape(n, c, 1, -1)
    sh, sw = stride
    n_grp = -(-n // stack)
    xq = np.zeros((n_grp * stack, c, sh * sw, hq, wq), dtype=x.dtype)
    xp = _pad(x, padding)
    for p in range(sh):
        for q in range(sw):
            part = xp[:, :, p::sh, q::sw]
            xq[:n, :, p * sw + q, :part.shape[2], :part.shape[3]] = part
    if stack > 1:
        xq = np.ascontiguousarray(xq.reshape(n_grp, stack, c, sh * sw, hq, wq).transpose(0, 2, 3, 1, 4, 5))
    return xq.reshape(n_grp, c, sh * sw, stack * hq * wq)


def _phase_merge(gxq, x_shape, padding, stride, hq, wq):
    """Inverse of :func:`_phase_split` for gradients: (N, C*P, Hq, Wq) -> (N, C, H, W)."""
    n, c, h, w = x_shape
    sh, sw = stride
    gxq = gxq.reshape(n, c, sh * sw, hq, wq)
    gxp = np.empty((n, c, hq * sh, wq * sw), dtype=gxq.dtype)
    for p in range(sh):
        for q in range(sw):
            gxp[:, :, p::sh, q::sw] = gxq[:, :, p * sw + q]
    ph, pw = padding
    return np.ascontiguousarray(gxp[:, :, ph:ph + h, pw:pw + w])


def _tap_tables(indptr, indices, kernel, stride, dilation, n_cg, n_og, wq):
    """Per stored tap: output row, (global) input channel, phase and offset on the wide grid."""
    kh, kw = kernel
    rows = np.repeat(np.arange(indptr.shape[0] - 1, dtype=np.int64), np.diff(indptr))
    cols = indices.astype(np.int64)
    c, tap = np.divmod(cols, kh * kw)
    ki, kj = np.divmod(tap, kw)
    vi, vj = ki * dilation[0], kj * dilation[1]
    phase = (vi % stride[0]) * stride[1] + vj % stride[1]
    off = (vi // stride[0]) * wq + vj // stride[1]
    return rows, (rows // n_og) * n_cg + c, phase, off


def _dense_pattern(o, k):
    indptr = np.arange(0, (o + 1) * k, k, dtype=np.int64)
    return indptr, np.tile(np.arange(k, dtype=np.int64), o)


def _conv_forward(x, indptr, indices, data, kernel, bias, stride, padding, dilation, groups):
    n, c = x.shape[:2]
    o = indptr.shape[0] - 1
    out_h, out_w, hq, wq = _conv_geometry(x.shape, kernel, stride, padding, dilation)
    if n == 0:  # an empty batch (the phase split cannot reshape it)
        return np.empty((0, o, out_h, out_w), dtype=x.dtype)
    stack = _stack_size(n, hq, wq)
    xq = _phase_split(x, padding, stride, hq, wq, stack)
    _, plane, phase, off = _tap_tables(indptr, indices, kernel, stride, dilation, c // groups, o // groups, wq)
    bias = np.zeros(o, dtype=x.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    out = np.empty((n, o, out_h, out_w), dtype=x.dtype)
    chunks = _n_chunks(xq.shape[0] * o)
    scratch = np.empty((chunks, ((stack - 1) * hq + out_h) * wq), dtype=x.dtype)
    _conv.conv_planes(xq, indptr.astype(np.int64), plane, phase, off, np.ascontiguousarray(data, dtype=x.dtype),
                      bias, stack, hq, wq, chunks, scratch, out)
    return out


def _conv_backward(g, x, indptr, indices, data, kernel, stride, padding, dilation, groups, need_input, need_weight):
    n, c = x.shape[:2]
    o = indptr.shape[0] - 1
    out_h, out_w, hq, wq = _conv_geometry(x.shape, kernel, stride, padding, dilation)
    if n == 0:  # an empty batch contributes nothing
        return (np.zeros(x.shape, x.dtype) if need_input else None,
                np.zeros(indices.shape[0], x.dtype) if need_weight else None)
    n_cg, n_og = c // groups, o // groups
    rows, plane, phase, off = _tap_tables(indptr, indices, kernel, stride, dilation, n_cg, n_og, wq)
    # grad_out on the stacked wide grid (rows Hq, width Wq), zeros in the dropped rows and
    # columns so they add nothing, after a margin that lets every tap's offset be subtracted.
    stack = _stack_size(n, hq, wq)
    n_grp = -(-n // stack)
    margin = int(off.max()) if off.size else 0
    gext = np.zeros((n_grp, o, margin + stack * hq * wq), dtype=x.dtype)
    gpad = g if n_grp * stack == n else np.concatenate([g, np.zeros((n_grp * stack - n,) + g.shape[1:], g.dtype)])
    grid = gext[:, :, margin:].reshape(n_grp, o, stack, hq, wq)
    grid[:, :, :, :out_h, :out_w] = gpad.reshape(n_grp, stack, o, out_h, out_w).transpose(0, 2, 1, 3, 4)
    grad_x = grad_w = None
    if need_input:
        # The adjoint is again a sum of shifted planes: input plane (c, phase) gathers
        # w * gext[g, o, margin - off + j] over the taps (o, ki, kj) that read it.
        n_phase = stride[0] * stride[1]
        key = plane * n_phase + phase
        order = np.argsort(key, kind="stable")
        row_ptr = np.zeros(c * n_phase + 1, dtype=np.int64)
        np.cumsum(np.bincount(key, minlength=c * n_phase), out=row_ptr[1:])
        zeros = np.zeros(order.shape[0], dtype=np.int64)
        gxq = np.empty((n, c * n_phase, hq, wq), dtype=x.dtype)
        chunks = _n_chunks(n_grp * c * n_phase)
        scratch = np.empty((chunks, stack * hq * wq), dtype=x.dtype)
        _conv.conv_planes(gext.reshape(n_grp, o, 1, -1), row_ptr, rows[order], zeros, margin - off[order],
                          np.ascontiguousarray(data, dtype=x.dtype)[order], np.zeros(c * n_phase, x.dtype),
                          stack, hq, wq, chunks, scratch, gxq)
        grad_x = _phase_merge(gxq, x.shape, padding, stride, hq, wq)
    if need_weight:
        xq = _phase_split(x, padding, stride, hq, wq, stack)
        grad_w = np.empty(indices.shape[0], dtype=x.dtype)
        gwide = np.ascontiguousarray(gext[:, :, margin:])
        # Rows per task: enough to reuse each image's planes from cache, few enough to keep
        # every thread busy.
        rows_per_task = max(1, min(8, o // (4 * numba.get_num_threads())))
        _conv.conv_planes_grad_weight(gwide, xq, indptr.astype(np.int64), plane, phase, off,
                                      ((stack - 1) * hq + out_h - 1) * wq + out_w, rows_per_task, grad_w)
    return grad_x, grad_w


def conv2d(x, weight, bias, stride, padding, dilation, relu=False):
    """Direct convolution: x (N, C, H, W), weight (O, C/groups, KH, KW) -> (N, O, OH, OW).

    ``groups`` is implied by ``C // weight.shape[1]``.  No im2col matrix: the only copy is
    the zero-padded, phase-split input.  ``relu``: max(., 0) of the result, as
    :func:`activation` computes it on each device (in place on the host, in the kernel's store
    on the GPU).
    """
    if _on_cuda(x=x, weight=weight, bias=bias):
        return _gpu().conv2d(x, weight, bias, stride, padding, dilation, relu)
    o, cg, kh, kw = weight.shape
    indptr, indices = _dense_pattern(o, cg * kh * kw)
    y = _conv_forward(x, indptr, indices, np.ascontiguousarray(weight).reshape(-1), (kh, kw), bias,
                      stride, padding, dilation, x.shape[1] // cg)
    return np.maximum(y, 0, out=y) if relu else y


def conv2d_backward(g, x, weight, stride, padding, dilation, need_input=True, need_weight=True, gate=None):
    """(grad_x or None, grad_weight or None) of :func:`conv2d` for grad_out ``g``; ``gate`` (x's
    shape), a ReLU's output, multiplies grad_x by ``gate > 0`` (as in :func:`spmm_t`)."""
    if _on_cuda(g=g, x=x, weight=weight, gate=gate):
        return _gpu().conv2d_backward(g, x, weight, stride, padding, dilation, need_input, need_weight, gate)
    o, cg, kh, kw = weight.shape
    indptr, indices = _dense_pattern(o, cg * kh * kw)
    gx, gw = sparse_conv2d_backward(g, x, indptr, indices, np.ascontiguousarray(weight).reshape(-1), (kh, kw),
                                    stride, padding, dilation, x.shape[1] // cg, need_input, need_weight, gate)
    return gx, None if gw is None else gw.reshape(weight.shape)


def sparse_conv2d(x, indptr, indices, data, kernel, bias, stride, padding, dilation, groups):
    """Weight-sparse direct convolution; the CSR weight is (O, C/groups*KH*KW), never densified."""
    if _on_cuda(x=x, indptr=indptr, indices=indices, data=data, bias=bias):
        return _gpu().sparse_conv2d(x, indptr, indices, data, kernel, bias, stride, padding, dilation, groups)
    return _conv_forward(x, indptr, indices, data, kernel, bias, stride, padding, dilation, groups)


def sparse_conv2d_backward(g, x, indptr, indices, data, kernel, stride, padding, dilation, groups,
                           need_input=True, need_weight=True, gate=None):
    """(grad_x or None, grad_data (nnz,) or None) of :func:`sparse_conv2d`; ``gate`` as in
    :func:`conv2d_backward`."""
    if _on_cuda(g=g, x=x, indptr=indptr, indices=indices, data=data, gate=gate):
        return _gpu().sparse_conv2d_backward(g, x, indptr, indices, data, kernel, stride, padding, dilation,
                                             groups, need_input, need_weight, gate)
    if need_input:
        _check_gate(gate, x.shape, x.dtype)
    gx, gw = _conv_backward(g, x, indptr, indices, data, kernel, stride, padding, dilation, groups,
                            need_input, need_weight)
    return (None if gx is None else _apply_gate(gx, gate)), gw


def local2d(x, weight, bias, kernel, stride, padding):
    """Locally connected layer: weight (OH, OW, O, C*KH*KW), bias (O, OH, OW) or None."""
    if _on_cuda(x=x, weight=weight, bias=bias):
        return _gpu().local2d(x, weight, bias, kernel, stride, padding)
    n = x.shape[0]
    out_h, out_w, o, k = weight.shape
    xp = _pad(x, padding)
    bias = np.zeros((o, out_h, out_w), x.dtype) if bias is None else np.ascontiguousarray(bias)
    out = np.empty((n, o, out_h, out_w), dtype=x.dtype)
    chunks = _n_chunks(out_h * out_w)
    scratch = np.empty((chunks, k), dtype=x.dtype)
    _conv.local2d_fwd(xp, np.ascontiguousarray(weight), bias, *kernel, *stride, chunks, scratch, out)
    return out


def local2d_backward(g, x, weight, kernel, stride, padding, need_input=True, need_weight=True):
    """(grad_x or None, grad_weight or None) of :func:`local2d`."""
    if _on_cuda(g=g, x=x, weight=weight):
        return _gpu().local2d_backward(g, x, weight, kernel, stride, padding, need_input, need_weight)
    n, c, h, w = x.shape
    out_h, out_w, o, k = weight.shape
    g = np.ascontiguousarray(g)
    weight = np.ascontiguousarray(weight)
    grad_x = grad_w = None
    if need_input:
        gxp = np.empty((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=x.dtype)
        _conv.local2d_grad_input(g, weight, *kernel, *stride, np.empty((n, k), x.dtype), gxp)
        grad_x = _crop(gxp, padding, x.shape)
    if need_weight:
        grad_w = np.empty(weight.shape, dtype=x.dtype)
        chunks = _n_chunks(out_h * out_w)
        _conv.local2d_grad_weight(g, _pad(x, padding), *kernel, *stride, chunks,
                                  np.empty((chunks, k), x.dtype), grad_w)
    return grad_x, grad_w


def _pool_out(x_shape, kernel, stride, padding):
    return (conv2d_output_size(x_shape[2], kernel[0], stride[0], padding[0], 1),
            conv2d_output_size(x_shape[3], kernel[1], stride[1], padding[1], 1))


def max_pool2d(x, kernel, stride, padding):
    """Max pooling, NCHW; padding acts as -inf."""
    if _on_cuda(x=x):
        return _gpu().max_pool2d(x, kernel, stride, padding)
    x = np.ascontiguousarray(x)
    out = np.empty(x.shape[:2] + _pool_out(x.shape, kernel, stride, padding), dtype=x.dtype)
    _pool.max_pool2d_fwd(x, *kernel, *stride, *padding, out)
    return out


def max_pool2d_backward(g, x, kernel, stride, padding):
    """grad_x of :func:`max_pool2d`: each window's grad goes to its (first) maximum."""
    if _on_cuda(g=g, x=x):
        return _gpu().max_pool2d_backward(g, x, kernel, stride, padding)
    gx = np.empty(x.shape, dtype=x.dtype)
    _pool.max_pool2d_bwd(np.ascontiguousarray(g), np.ascontiguousarray(x), *kernel, *stride, *padding, gx)
    return gx


def avg_pool2d(x, kernel, stride, padding):
    """Average pooling, NCHW, padding counted in the divisor (count_include_pad=True)."""
    if _on_cuda(x=x):
        return _gpu().avg_pool2d(x, kernel, stride, padding)
    x = np.ascontiguousarray(x)
    out = np.empty(x.shape[:2] + _pool_out(x.shape, kernel, stride, padding), dtype=x.dtype)
    _pool.avg_pool2d_fwd(x, *kernel, *stride, *padding, out)
    return out


def avg_pool2d_backward(g, x_shape, dtype, kernel, stride, padding):
    """grad_x of :func:`avg_pool2d` for an input of shape ``x_shape``."""
    if _on_cuda(g=g):
        return _gpu().avg_pool2d_backward(g, x_shape, dtype, kernel, stride, padding)
    gx = np.empty(x_shape, dtype=dtype)
    _pool.avg_pool2d_bwd(np.ascontiguousarray(g), *kernel, *stride, *padding, gx)
    return gx


# ---------------------------------------------------------------------------------------------
# Sparsity-pattern changes (sparsenet.sparsity): filter, merge, lookup, streaming RigL top-k.
# Patterns arrive canonical; each call returns where old entries went so optimizer state follows.
# ---------------------------------------------------------------------------------------------
from .cpu import topology as _topology  # noqa: E402

__all__ += ["csr_lookup", "csr_filter", "csr_merge", "csr_row_norms", "topk_abs_grad"]


def csr_lookup(indptr, indices, rows, cols):
    """Position of each (rows[q], cols[q]) in the pattern, -1 where not stored; int64 (Q,)."""
    require_host("csr_lookup", indptr, indices, rows, cols)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    cols = np.ascontiguousarray(cols, dtype=np.int64)
    out = np.empty(rows.shape[0], dtype=np.int64)
    if rows.shape[0]:
        _topology.csr_lookup(indptr, indices, rows, cols, out)
    return out


def csr_filter(indptr, indices, n_col, *, keep=None, row_sel=None, col_map=None):
    """Keep entries (bool ``keep``), rows (old row of each new row) and columns (old -> new or -1).

    Returns ``(indptr, indices, src)``: the new canonical pattern and, for each new entry, its
    old position (so ``new_data = data[src]``).  ``col_map`` must be increasing on kept columns.
    """
    require_host("csr_filter", indptr, indices, keep)
    nnz = indices.shape[0]
    n_row = indptr.shape[0] - 1
    keep = np.ones(nnz, np.bool_) if keep is None else np.ascontiguousarray(keep, dtype=np.bool_)
    row_sel = (np.arange(n_row, dtype=np.int64) if row_sel is None
               else np.ascontiguousarray(row_sel, dtype=np.int64))
    col_map = (np.arange(n_col, dtype=np.int64) if col_map is None
               else np.ascontiguousarray(col_map, dtype=np.int64))
    counts = np.empty(row_sel.shape[0], dtype=np.int64)
    _topology.csr_filter_count(indptr, indices, row_sel, col_map, keep, counts)
    out_indptr = np.zeros(row_sel.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=out_indptr[1:])
    out_indices = np.empty(out_indptr[-1], dtype=np.int64)
    src = np.empty(out_indptr[-1], dtype=np.int64)
    _topology.csr_filter_fill(indptr, indices, row_sel, col_map, keep, out_indptr, out_indices, src)
    return out_indptr, out_indices, src


def csr_merge(indptr_a, indices_a, indptr_b, indices_b):
    """Union of two disjoint canonical patterns with the same number of rows.

    Returns ``(indptr, indices, pos_a, pos_b)``; entry k of A is at ``pos_a[k]`` in the result.
    """
    require_host("csr_merge", indptr_a, indices_a, indptr_b, indices_b)
    indptr_a = np.ascontiguousarray(indptr_a, dtype=np.int64)
    indptr_b = np.ascontiguousarray(indptr_b, dtype=np.int64)
    out_indptr = indptr_a + indptr_b
    out_indices = np.empty(out_indptr[-1], dtype=np.int64)
    pos_a = np.empty(indices_a.shape[0], dtype=np.int64)
    pos_b = np.empty(indices_b.shape[0], dtype=np.int64)
    _topology.csr_merge(indptr_a, np.ascontiguousarray(indices_a, dtype=np.int64), indptr_b,
                        np.ascontiguousarray(indices_b, dtype=np.int64), out_indptr, out_indices, pos_a, pos_b)
    return out_indptr, out_indices, pos_a, pos_b


def csr_row_norms(indptr, data, ord=2):
    """L1 (``ord=1``) or L2 (``ord=2``) norm of each row's stored values, float64 (n_row,)."""
    require_host("csr_row_norms", indptr, data)
    out = np.empty(indptr.shape[0] - 1, dtype=np.float64)
    _topology.csr_row_norms(indptr, data, int(ord), out)
    return out


def _select_topk(val, idx, k):
    """The k largest ``val`` (ties: smallest ``idx``) in O(len) by partition; unordered."""
    if val.shape[0] <= k:
        return val, idx
    t = np.partition(val, val.shape[0] - k)[val.shape[0] - k]  # the k-th largest score
    above = val > t
    need = k - int(np.count_nonzero(above))
    ties = np.flatnonzero(val == t)
    ties = ties[np.argsort(idx[ties], kind="stable")[:need]]
    keep = np.flatnonzero(above)
    keep = np.concatenate([keep, ties])
    return val[keep], idx[keep]


def _tile_bound(buf, indptr, r0, k):
    """A score below which no entry of this tile can be among the k best free ones.

    The (k + stored)-th largest |score| of the tile leaves at least k *free* entries at or above
    it, so anything strictly below ranks after k others.  It keeps the first tile's candidate
    list at about k entries instead of the whole tile.  Returns -1 (admit all) when the tile is
    too small or the bound is NaN.
    """
    m = k + int(indptr[r0 + buf.shape[0]] - indptr[r0])
    if m >= buf.size:
        return -1.0
    a = np.abs(buf).reshape(-1)
    t = np.partition(a, a.size - m)[a.size - m]
    return float(np.nextafter(t, -np.inf)) if np.isfinite(t) else -1.0


def topk_abs_grad(indptr, indices, g, x, k, *, tile_rows=None):
    """The ``k`` largest |(G^T X)[i, j]| outside the pattern, streamed over row tiles.

    G (B, n_row) is the gradient of the layer output, X (B, n_col) its input; G^T X is the
    dense gradient of the (n_row, n_col) weight, never materialised: only a (tile_rows, n_col)
    buffer (and its candidate list) is.  Per tile: one BLAS product, a filter against
    the current k-th best score, a linear-time selection.  Returns ``(rows, cols, scores)``
    sorted by (row, col); ties in score go to the smaller flat index; NaN scores are skipped.
    """
    require_host("topk_abs_grad", indptr, indices, g, x)
    n_row, n_col = g.shape[1], x.shape[1]
    dtype = np.result_type(g.dtype, x.dtype)
    k = int(max(0, min(k, n_row * n_col - indices.shape[0])))
    if k == 0 or n_row == 0:
        empty = np.empty(0, np.int64)
        return empty, empty.copy(), np.empty(0, dtype)
    if tile_rows is None:
        # ~4 MiB of scratch: tiles of a few hundred rows keep BLAS at full speed and stay far
        # below a dense gradient's size.
        tile_rows = max(1, min(n_row, (1 << 22) // max(1, n_col * dtype.itemsize)))
    tile_rows = max(1, min(int(tile_rows), n_row))
    tile = np.empty((tile_rows, n_col), dtype=dtype)
    cand = np.empty((tile_rows, n_col), dtype=np.int32)
    n_cand = np.empty(tile_rows, dtype=np.int64)
    g_t = np.ascontiguousarray(g.T, dtype=dtype)
    x = np.ascontiguousarray(x, dtype=dtype)
    top_val = np.empty(0, dtype)
    top_idx = np.empty(0, np.int64)
    # A loop over n_row / tile_rows tiles, not over entries: each step is one BLAS product and
    # O(tile + k) compiled work.
    for r0 in range(0, n_row, tile_rows):
        buf = tile[: min(n_row, r0 + tile_rows) - r0]
        np.matmul(g_t[r0:r0 + buf.shape[0]], x, out=buf)
        thr = top_val.min() if top_val.shape[0] == k else _tile_bound(buf, indptr, r0, k)
        _topology.topk_tile_filter(buf, r0, indptr, indices, dtype.type(thr), cand, n_cand)
        offsets = np.zeros(buf.shape[0] + 1, np.int64)
        np.cumsum(n_cand[: buf.shape[0]], out=offsets[1:])
        new_val = np.empty(offsets[-1], dtype)
        new_idx = np.empty(offsets[-1], np.int64)
        _topology.topk_tile_gather(buf, r0, cand, n_cand, offsets, new_val, new_idx)
        top_val, top_idx = _select_topk(np.concatenate([top_val, new_val]),
                                        np.concatenate([top_idx, new_idx]), k)
    order = np.argsort(top_idx, kind="stable")
    rows, cols = np.divmod(top_idx[order], n_col)
    return rows, cols, top_val[order]


# ---------------------------------------------------------------------------------------------
# The rest of a training step: element-wise maps, bias, reductions, dense products, losses.
# Host arrays get NumPy (these are memory-bound one-liners BLAS or ufuncs already do well;
# dropout, whose mask generator is integer work, has a kernel), device arrays the kernels of
# kernels/cuda/ops.py, so a model on the GPU never leaves it.
# ---------------------------------------------------------------------------------------------
from .cpu import dropout as _dropout  # noqa: E402

__all__ += [
    "on_device", "ascontiguous", "reshape", "copy", "add_", "bias_add_", "batch_sum", "channel_sum", "matmul",
    "ACTIVATIONS", "activation", "activation_backward", "dropout", "cross_entropy",
    "cross_entropy_backward", "mse_loss", "mse_loss_backward",
]


def on_device(**arrays):
    """True when the named arrays are CUDA device arrays (ValueError when devices are mixed)."""
    return _on_cuda(**arrays)


def ascontiguous(a):
    """C-contiguous array with ``a``'s values on ``a``'s device (``a`` itself when it already is)."""
    if _device.is_device_array(a):
        return _gpu().contiguous(a)
    return np.ascontiguousarray(a)


def product_operand(a):
    """A 2-D (batch, features) operand in the layout the sparse products read as it is.

    On the device that is F-ordered (feature-major memory): converting an operand once here,
    with one transpose kernel, spares a transpose in each product it feeds (``grad_out`` feeds
    both ``spmm_t`` and ``sddmm``; a layer's input feeds ``spmm`` and, at backward, ``sddmm``).
    Host arrays and other shapes are returned unchanged: the CPU kernels pack their own tiles.
    """
    if _device.is_device_array(a) and len(getattr(a, "shape", ())) == 2:
        return _gpu().batch_operand(a)
    return a


def reshape(a, shape):
    """``a.reshape(shape)`` in C order on ``a``'s device.

    A device array is made C-contiguous first: numba's reshape reinterprets an F-ordered
    array's memory (the sparse products' output) instead of copying it as NumPy does.
    """
    if _device.is_device_array(a):
        return _gpu().contiguous(a).reshape(shape)
    return a.reshape(shape)


def copy(a):
    """A new array equal to ``a``, on ``a``'s device."""
    if _device.is_device_array(a):
        return _gpu().copy(a)
    return np.array(a, copy=True)


def add_(dst, src):
    """``dst += src`` in place (gradient accumulation); returns dst."""
    if _on_cuda(dst=dst, src=src):
        return _gpu().add_(dst, src)
    dst += src
    return dst


def mul_(dst, src):
    """``dst *= src`` in place (re-applying a pruning mask of dst's shape); returns dst."""
    if _on_cuda(dst=dst, src=src):
        return _gpu().mul_(dst, src)
    dst *= src
    return dst


def soft_threshold_(x, t):
    """``x <- sign(x) * max(|x| - t, 0)`` in place (the L1 proximal step); returns x."""
    if _device.is_device_array(x):
        return _gpu().soft_threshold_(x, t)
    return np.multiply(np.sign(x), np.maximum(np.abs(x) - x.dtype.type(t), 0), out=x)


def group_soft_threshold_(x, indptr, t, *, perm=None):
    """Group soft threshold in place: ``x_g *= max(0, 1 - t * sqrt(n_g) / ||x_g||)`` (0 for a
    zero group) over the groups ``x.ravel()[src(k)]``, k in [indptr[g], indptr[g+1]), of a
    C-contiguous ``x``; ``src`` is ``perm`` when given (a weight's columns through its transpose
    permutation) and the identity otherwise (runs: a weight's output units).  Returns x.
    ``indptr`` non-decreasing within [0, len(perm) or x.size], perm within [0, x.size) (checked
    on the host only: on the device they come from a CSR pattern or the trainer's own layouts)."""
    if _on_cuda(x=x, indptr=indptr, **({} if perm is None else {"perm": perm})):
        return _gpu().group_soft_threshold_(x, indptr, t, perm=perm)
    if not x.flags.c_contiguous:
        raise ValueError("group_soft_threshold_ works in place on a C-contiguous x")
    indptr = np.asarray(indptr, dtype=np.int64)
    if indptr.size < 2:
        return x
    sizes = np.diff(indptr)
    limit = x.size if perm is None else len(perm)
    if indptr[0] < 0 or indptr[-1] > limit or (sizes < 0).any():
        raise ValueError(f"indptr must be non-decreasing within [0, {limit}]")
    ids = np.repeat(np.arange(sizes.size), sizes)
    flat = x.reshape(-1)
    if perm is None:
        group_scale_(flat[indptr[0]:indptr[-1]], ids, sizes.size, t)  # the groups tile this span
        return x
    src = np.asarray(perm, dtype=np.int64)[indptr[0]:indptr[-1]]
    if src.size and (src.min() < 0 or src.max() >= x.size):
        raise ValueError(f"perm must index x's {x.size} entries")
    flat[src] = group_scale_(flat[src], ids, sizes.size, t)
    return x


def _check_taps(n, taps, what):
    if taps < 1 or n % taps:
        raise ValueError(f"taps must be a positive divisor of {what}={n}; got {taps}")


def column_groups(n_col, indptr, indices, taps=1):
    """(bounds, perm): a CSR weight's stored entries grouped by blocks of ``taps`` columns (an
    input feature; a conv input channel's taps), group g being ``data[perm[bounds[g]:bounds[g+1]]]``.
    On the pattern's device; there derived once per pattern (``kernels.cuda.column_groups``)."""
    if _on_cuda(indptr=indptr, indices=indices):
        return _gpu().column_groups(n_col, indptr, indices, taps)
    _check_taps(n_col, taps, "n_col")
    indptr_t, _, perm = csr_transpose(n_col, indptr, indices)
    return indptr_t[::taps].copy(), perm


def dense_groups(x, taps=1, *, by_input):
    """(bounds, perm or None) grouping a C-contiguous weight ``x`` (n_out, ...) seen as an
    (n_out, fan_in) matrix: its output units (runs of fan_in entries, no permutation) or,
    ``by_input``, blocks of ``taps`` columns gathered through ``perm``.  On x's device."""
    if _device.is_device_array(x):
        return _gpu().dense_groups(x, taps, by_input=by_input)
    return dense_group_layout(x.shape, taps, by_input)


def dense_group_layout(shape, taps, by_input):
    """Host int64 arrays of :func:`dense_groups` for a weight of ``shape``."""
    n_out = shape[0] if len(shape) else 1
    fan_in = int(np.prod(shape[1:], dtype=np.int64))
    _check_taps(fan_in, taps, "fan_in")
    if not by_input:
        return np.arange(n_out + 1, dtype=np.int64) * fan_in, None
    n_groups = fan_in // taps
    perm = np.arange(n_out * fan_in, dtype=np.int64).reshape(n_out, n_groups, taps).transpose(1, 0, 2)
    return np.arange(n_groups + 1, dtype=np.int64) * (n_out * taps), perm.ravel()


def group_scale_(x, groups, n_groups, t):
    """Host: ``x_g *= max(0, 1 - t * sqrt(n_g) / ||x_g||)`` in place for any group ids
    ``groups`` (one per entry, in [0, n_groups)); norms in float64.  Returns x."""
    norms = np.sqrt(np.bincount(groups, weights=np.square(x, dtype=np.float64), minlength=n_groups))
    sizes = np.bincount(groups, minlength=n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(norms > 0, np.maximum(0.0, 1.0 - t * np.sqrt(sizes) / norms), 0.0)
    x *= scale[groups].astype(x.dtype)
    return x


def hard_threshold_(x, t):
    """``x <- 0`` where ``|x| < t``, in place (the L0 proximal step); returns x."""
    if _device.is_device_array(x):
        return _gpu().hard_threshold_(x, t)
    x[np.abs(x) < t] = 0
    return x


def magnitude_keys(dtype):
    """(integer dtype, mask, nan_key) ordering floats of ``dtype`` by magnitude through their bits.

    ``min(bits & mask, nan_key)`` of a float's bits (viewed as the integer dtype) is ordered
    exactly like its absolute value; every NaN maps to ``nan_key``, one above +inf: the largest
    magnitude, all NaNs alike.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"magnitude selection needs float32 or float64 values; got {dtype}")
    ints = np.dtype(np.int32 if dtype == np.float32 else np.int64)
    inf_bits = int(np.array(np.inf, dtype).view(ints))
    return ints, (1 << (8 * dtype.itemsize - 1)) - 1, inf_bits + 1


def zero_smallest_(x, n):
    """Zero the ``n`` entries of smallest magnitude of a contiguous ``x`` in place; returns x.

    NaN counts as the largest magnitude; among equal magnitudes the entries first in memory
    order are zeroed first, so exactly ``min(n, x.size)`` entries are selected and the result
    is the same on every device.  O(x.size) (a partition on the host, a radix select on the
    device).
    """
    if _device.is_device_array(x):
        return _gpu().zero_smallest_(x, n)
    if not (x.flags.c_contiguous or x.flags.f_contiguous):
        raise ValueError(f"zero_smallest_ works in place on a contiguous x; got strides {x.strides}")
    ints, mask, nan_key = magnitude_keys(x.dtype)
    flat = x.ravel(order="K")  # a view, in memory order
    n = min(int(n), flat.size)
    if n <= 0:
        return x
    bits = flat.view(ints)
    keys = np.minimum(bits & mask, nan_key)
    kth = np.partition(keys, n - 1)[n - 1]
    keep = keys >= kth
    ties = n - (keys.size - np.count_nonzero(keep))  # entries equal to kth that go too
    # bits * keep zeroes the rest (0 bits: +0.0) without the branches of a masked assignment
    np.multiply(bits, keep, out=bits, casting="unsafe")
    bits[np.flatnonzero(keys == kth)[:ties]] = 0
    return x


ACTIVITY_EPS = 1e-7  # the KL penalty clips the code's column means to [eps, 1 - eps]


def activity_penalty_grad_(g, h, kind, rho, beta):
    """``g += beta * d penalty(h) / dh`` in place for a code ``h`` (batch, hidden); returns g.

    ``kind`` "kl": ``sum_f KL(rho || m_f)``, m_f the column means of h clipped to
    [ACTIVITY_EPS, 1 - ACTIVITY_EPS]; "l1": ``sum |h| / batch``.  The host computes the KL
    coefficients in float64, the device in h's dtype.
    """
    if _on_cuda(g=g, h=h):
        return _gpu().activity_penalty_grad_(g, h, kind, rho, beta)
    if h.ndim != 2 or g.shape != h.shape:
        raise ValueError(f"g and h must be (batch, hidden) of one shape; got {g.shape} and {h.shape}")
    n = h.shape[0]
    if kind == "kl":
        m = np.clip(h.mean(axis=0, dtype=np.float64), ACTIVITY_EPS, 1 - ACTIVITY_EPS)
        d = ((-rho / m + (1 - rho) / (1 - m)) / n).astype(h.dtype)  # per unit, broadcast over the batch
    elif kind == "l1":
        d = (np.sign(h) / n).astype(h.dtype)
    else:
        raise ValueError(f"kind must be 'kl' or 'l1'; got {kind!r}")
    g += beta * d
    return g


def bias_add_(y, bias):
    """``y += bias`` in place for y (B, F), bias (F,); returns y."""
    if _on_cuda(y=y, bias=bias):
        return _gpu().bias_add_(y, bias)
    y += bias
    return y


def batch_sum(g):
    """Sum over the batch axis of (B, F): the bias gradient of a linear layer."""
    if _on_cuda(g=g):
        return _gpu().batch_sum(g)
    return g.sum(axis=0)


def channel_sum(g):
    """Sum of (N, O, H, W) over all but the channel axis: the bias gradient of a convolution."""
    if _on_cuda(g=g):
        return _gpu().conv2d_grad_bias(g)
    return g.sum(axis=(0, 2, 3))


def matmul(a, b, *, transpose_a=False, transpose_b=False, bias=None, relu=False, gate=None):
    """``op(a) @ op(b)`` (+ bias along the columns) for 2-D arrays, op = transpose where asked (a
    view, never a copy); on the GPU the product kernel adds the bias as it stores.  ``relu``:
    max(., 0) of the result, as in :func:`conv2d`.  ``gate``: a ReLU's output, of the result's
    shape; the result is multiplied by ``gate > 0``, the ReLU's backward (as in :func:`spmm_t`)."""
    if _on_cuda(a=a, b=b, bias=bias, gate=gate):
        kc = _gpu()
        return kc.matmul(kc.transpose(a) if transpose_a else a, kc.transpose(b) if transpose_b else b, bias, relu,
                         gate)
    a, b = (a.T if transpose_a else a), (b.T if transpose_b else b)
    _check_gate(gate, (a.shape[0], b.shape[1]), np.result_type(a, b))
    out = a @ b
    if bias is not None:
        out += bias
    if relu:
        np.maximum(out, 0, out=out)
    return _apply_gate(out, gate)


ACTIVATIONS = {"relu": 0, "leaky_relu": 1, "tanh": 2, "sigmoid": 3}  # codes of kernels/cuda/ops.py


def activation(name, x, slope=0.0):
    """Element-wise activation ``name`` in ACTIVATIONS (``slope``: LeakyReLU's negative slope)."""
    kind = ACTIVATIONS[name]
    if _on_cuda(x=x):
        return _gpu().activation(kind, slope, x)
    if name == "relu":
        return np.maximum(x, 0)
    if name == "leaky_relu":
        return np.where(x > 0, x, x * x.dtype.type(slope))
    if name == "tanh":
        return np.tanh(x)
    from scipy.special import expit  # noqa: PLC0415  (overflow-free logistic)

    return expit(x)


def activation_backward(name, saved, g, slope=0.0):
    """``g * act'`` from what the forward kept: its output, or its input for ``leaky_relu``."""
    kind = ACTIVATIONS[name]
    if _on_cuda(saved=saved, g=g):
        return _gpu().activation_backward(kind, slope, saved, g)
    if name == "relu":
        return g * (saved > 0)
    if name == "leaky_relu":
        return np.where(saved > 0, g, g * g.dtype.type(slope))
    if name == "tanh":
        return g * (1 - saved * saved)
    return g * (saved * (1 - saved))


def dropout(x, p, seed):
    """Inverted dropout of ``x``: each element zeroed with probability ``p``, the rest scaled by
    ``1 / (1 - p)``; same shape, dtype and device as ``x``.

    The mask is a pure function of ``seed`` and each element's position (Philox4x32-10; see
    kernels/cpu/dropout.py): the same seed gives the same mask on the CPU and the GPU, and the
    backward of dropout is ``dropout(grad_out, p, seed)``, with no mask kept in between.
    ``p`` in [0, 1], ``seed`` an int in [0, 2**64).  Positions are those of the (rows, columns)
    view that keeps the first axis and merges the others: a sample's features, however shaped,
    form one long row (long rows vectorise on the CPU).
    """
    # 2**32 * p is exact in float64; keeping words >= its ceiling keeps with probability 1 - p
    # (to within 2**-32).  p == 1 gives 2**32: no word reaches it.
    threshold = math.ceil(p * 2.0**32)
    scale = 1.0 / (1.0 - p) if p < 1 else 0.0
    key0, key1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    n_row = x.shape[0] if x.ndim else 1
    if x.size and x.size // n_row >= 2**34:  # the group index is one 32-bit counter word
        raise NotImplementedError(f"dropout takes at most 2**34 elements a sample; got shape {x.shape}")
    if _on_cuda(x=x):
        return _gpu().dropout(x, key0, key1, threshold, scale)
    if x.ndim == 2 and not x.flags.c_contiguous and x.T.flags.c_contiguous:
        # F-ordered, as a sparse layer returns it: read in place, returned F-ordered too.
        out_t = np.empty(x.T.shape, x.dtype)
        if x.size:
            _dropout.dropout_t(key0, key1, threshold, scale, x.T, out_t)
        return out_t.T
    out = np.empty(x.shape, x.dtype)
    if x.size:
        rows = np.ascontiguousarray(x).reshape(n_row, -1)  # (ascontiguousarray makes a 0-d array 1-d)
        _dropout.dropout(key0, key1, threshold, scale, rows, out.reshape(n_row, -1))
    return out


def cross_entropy(logits, target):
    """Mean cross-entropy of integer targets; a scalar on the host, a (1,) array on the device.

    Targets out of range are the caller's to reject on the host; on the device they give NaN.
    """
    if _on_cuda(logits=logits, target=target):
        return _gpu().cross_entropy(logits, target)
    shifted = logits - logits.max(axis=1, keepdims=True)
    per_sample = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(logits.shape[0]), target]
    return logits.dtype.type(np.mean(per_sample))


def cross_entropy_backward(logits, target, grad_out=1.0):
    """``grad_out * (softmax(logits) - onehot(target)) / batch``."""
    if _on_cuda(logits=logits, target=target):
        return _gpu().cross_entropy_backward(logits, target, grad_out / logits.shape[0])
    # Subtracting the row maximum keeps exp() in [0, 1]: no overflow, no NaN.
    shifted = logits - logits.max(axis=1, keepdims=True)
    grad = np.exp(shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))
    grad[np.arange(logits.shape[0]), target] -= 1
    grad /= logits.shape[0]
    if grad_out != 1.0:
        grad *= logits.dtype.type(grad_out)
    return grad


def mse_loss(x, t):
    """Mean squared error; a scalar on the host, a (1,) array on the device."""
    if _on_cuda(input=x, target=t):
        return _gpu().mse_loss(x, t)
    diff = x - t
    return x.dtype.type(np.mean(diff * diff))


def mse_loss_backward(x, t, grad_out=1.0):
    """``2 grad_out (x - t) / x.size``."""
    if _on_cuda(input=x, target=t):
        return _gpu().mse_loss_backward(x, t, 2.0 * grad_out / x.size)
    grad = (x - t) * x.dtype.type(2.0 / x.size)
    if grad_out != 1.0:
        grad *= x.dtype.type(grad_out)
    return grad


# Batch normalisation, the input viewed as (N, C, S): S = 1, L or H*W.
__all__ += ["channel_moments", "batch_norm_running", "batch_norm_apply", "batch_norm_backward"]


def channel_moments(x3):
    """(mean, biased variance) per channel over the N and S axes of (N, C, S)."""
    if _on_cuda(x=x3):
        return _gpu().channel_moments(x3)
    return x3.mean(axis=(0, 2)), x3.var(axis=(0, 2))


def batch_norm_running(running_mean, running_var, mean, var, momentum, unbias):
    """``running = (1 - momentum) running + momentum batch``, the variance times ``unbias``.

    Returns the new ``(running_mean, running_var)``: fresh arrays on the host (buffers are
    rebound, as before), the same arrays updated in place on the device.
    """
    if _on_cuda(running_mean=running_mean, running_var=running_var, mean=mean, var=var):
        _gpu().batch_norm_running_(running_mean, running_var, mean, var, momentum, unbias)
        return running_mean, running_var
    new_mean = ((1 - momentum) * running_mean + momentum * mean).astype(running_mean.dtype)
    new_var = ((1 - momentum) * running_var + momentum * var * unbias).astype(running_var.dtype)
    return new_mean, new_var


def batch_norm_apply(x3, mean, var, eps, weight=None, bias=None):
    """``(y, xhat, invstd)``: ``xhat = (x - mean) / sqrt(var + eps)``, ``y = xhat weight + bias``."""
    if _on_cuda(x=x3, mean=mean, var=var, weight=weight, bias=bias):
        return _gpu().batch_norm_apply(x3, mean, var, eps, weight, bias)
    invstd = (1.0 / np.sqrt(var + eps)).astype(x3.dtype)
    xhat = (x3 - mean[:, None]) * invstd[:, None]
    y = xhat * weight[:, None] + bias[:, None] if weight is not None else xhat
    return y.astype(x3.dtype, copy=False), xhat, invstd


def batch_norm_backward(g3, xhat3, invstd, weight=None, use_batch=True):
    """``(grad_x, sum(g xhat), sum(g))`` per channel; with ``use_batch`` the statistics' own
    gradient is included (training mode), else they are constants (running statistics)."""
    if _on_cuda(g=g3, xhat=xhat3, invstd=invstd, weight=weight):
        return _gpu().batch_norm_backward(g3, xhat3, invstd, weight, use_batch)
    sum_gx, sum_g = np.sum(g3 * xhat3, axis=(0, 2)), np.sum(g3, axis=(0, 2))
    if weight is not None:
        g3 = g3 * weight[:, None]
    if use_batch:
        mean_g = np.mean(g3, axis=(0, 2))[:, None]
        mean_gx = np.mean(g3 * xhat3, axis=(0, 2))[:, None]
        g3 = g3 - mean_g - xhat3 * mean_gx
    return (g3 * invstd[:, None]).astype(xhat3.dtype, copy=False), sum_gx, sum_g


__all__ += ["softmax", "softmax_backward"]


def softmax(x, axis=-1):
    """Softmax along ``axis``, the maximum subtracted first.  On the device: the last axis only."""
    if _on_cuda(x=x):
        shape = tuple(x.shape)
        if axis not in (-1, len(shape) - 1):
            raise NotImplementedError(f"softmax on CUDA runs along the last axis only; got axis={axis}")
        return _gpu().softmax_rows(reshape(x, (-1, shape[-1]))).reshape(shape)
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def softmax_backward(y, g, axis=-1):
    """``y * (g - sum(g y, axis))``: the gradient of :func:`softmax` given its output ``y``."""
    if _on_cuda(y=y, g=g):
        shape = tuple(y.shape)
        if axis not in (-1, len(shape) - 1):
            raise NotImplementedError(f"softmax on CUDA runs along the last axis only; got axis={axis}")
        flat = (-1, shape[-1])
        return _gpu().softmax_rows_backward(reshape(y, flat), reshape(g, flat)).reshape(shape)
    return y * (g - np.sum(g * y, axis=axis, keepdims=True))


__all__ += ["metrics_accumulator", "accumulate_metrics"]


def metrics_accumulator():
    """A zeroed (3,) float64 device array for :func:`accumulate_metrics` (GPU training loops)."""
    return _gpu().metrics_accumulator()


def accumulate_metrics(acc, loss, batch, logits=None, target=None):
    """On the device: ``acc += [loss * batch, #correct argmax (when target is given), batch]``."""
    return _gpu().accumulate_metrics(acc, loss, batch, logits, target)
