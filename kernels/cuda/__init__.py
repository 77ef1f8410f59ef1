"""CUDA launch wrappers: device arrays in, device arrays out, no host round trip.

Import this package freely: ``numba.cuda`` and the kernel modules are imported on the first
call of a wrapper, i.e. when a device array has arrived.  Every wrapper takes the same logical
shapes as the host dispatch in ``sparsenet.kernels`` (X as (batch, features) and so on), accepts
numba device arrays and anything with ``__cuda_array_interface__`` (CuPy, torch CUDA tensors;
wrapped without a copy), and returns numba device arrays.  Host (NumPy) arguments raise
instead of being copied implicitly: numba would otherwise copy them to the device and back at
every launch.

Layout: the kernels want dense operands feature-major (features, batch) C-contiguous, like the
CPU kernels.  A (batch, features) F-ordered device array is exactly that and is used as is;
any other layout is transposed on the device by a shared-memory tile kernel.  Outputs of
``spmm``/``spmm_t`` are returned as F-ordered (batch, features) views of the feature-major
result, so a chain of sparse layers never transposes.

Besides the CSR products, convolutions (dense and weight-sparse), pooling and optimizer updates,
``ops.py`` holds the rest of a training step (activations, bias, batch sums, dense products,
losses, a device-side loss/accuracy accumulator), so that a model moved with ``.to("cuda")``
runs forward, backward and update without leaving the device.

Transposed products (``spmm_t``) are race-free and deterministic without atomics: they run
the forward kernel over the transposed *pattern* of W (CSC of W), reading W's values through
the transpose permutation.  The pattern is fixed across training steps (pruning and regrowth
make a new one), so it is computed once per pattern (``transpose_pattern``, one host transpose
on first use) and cached against the device ``indices`` array; optimizer updates of ``data``
need no re-transpose.

Every kernel is compiled with ``cache=True``: numba keeps the machine code on disk (beside the
kernel modules, or under ``NUMBA_CACHE_DIR``), keyed on the argument types and the GPU's compute
capability, so a new process loads a training step's kernels instead of compiling each (about a
second apiece).  The key covers a kernel's own file only: after editing a device function or
constant another module supplies (``block.py``, ``scalar.py``, ``philox.py``), clear the cache.
"""
import math
import weakref

import numpy as np

__all__ = [
    "to_device", "to_host", "as_device_array", "feature_major", "empty", "zeros",
    "spmm", "spmm_t", "sddmm", "transpose_pattern", "column_groups", "dense_groups",
    "sgd_update", "adam_update", "empty_cache", "memory_stats",
]

_FMT = "{name} must be a CUDA device array (numba device array or __cuda_array_interface__); got {got}"


_NUMBA_CUDA = []


def _cuda():
    """numba.cuda, imported on first use, with the caching allocator installed first."""
    if not _NUMBA_CUDA:
        from . import memory  # noqa: PLC0415

        memory.install()  # before any context exists, so that numba allocates through it
        from numba import cuda  # noqa: PLC0415  (lazy: only when a device array has arrived)

        _NUMBA_CUDA.append(cuda)
    return _NUMBA_CUDA[0]


def _csr():
    from . import csr  # noqa: PLC0415

    return csr


def _update():
    from . import update  # noqa: PLC0415

    return update


def _is_simulator():
    import numba  # noqa: PLC0415

    return bool(numba.config.ENABLE_CUDASIM)


# ----------------------------------------------------------------------------- arrays
def as_device_array(a, name="array"):
    """A numba device array for ``a`` without copying; TypeError for host arrays."""
    cuda = _cuda()
    if cuda.devicearray.is_cuda_ndarray(a):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        if not hasattr(cuda, "as_cuda_array"):  # the simulator cannot wrap foreign device memory
            raise TypeError(f"{name}: foreign CUDA arrays cannot be used under the CUDA simulator")
        return cuda.as_cuda_array(a)
    raise TypeError(_FMT.format(name=name, got=f"{type(a).__name__} (host memory); move it with to_device"))


def to_device(a):
    """Copy a host array to the GPU (a device array is returned unchanged)."""
    cuda = _cuda()
    if cuda.devicearray.is_cuda_ndarray(a) or hasattr(a, "__cuda_array_interface__"):
        return as_device_array(a)
    return cuda.to_device(np.ascontiguousarray(a))


def to_host(a):
    """Copy a device array back to a NumPy array (a NumPy array is returned unchanged)."""
    if isinstance(a, np.ndarray):
        return a
    return as_device_array(a).copy_to_host()


def empty(shape, dtype):
    """Uninitialised device array (C order)."""
    return _cuda().device_array(shape, dtype=np.dtype(dtype))


def empty_cache():
    """Give the device blocks cached by sparsenet's allocator back to the driver (see
    ``kernels/cuda/memory.py``; like ``torch.cuda.empty_cache``)."""
    _cuda()
    from . import memory  # noqa: PLC0415

    memory.empty_cache()


def memory_stats():
    """``{"pool": whether the caching allocator is in use, "cached_bytes": bytes it holds}``."""
    _cuda()
    from . import memory  # noqa: PLC0415

    return memory.memory_stats()


def _transposed_view(a):
    """(R, C) device array -> its (C, R) transpose as a view (no copy, no kernel).

    ``DeviceNDArray.T`` on a real GPU launches a copy kernel; this swaps shape and strides on
    the same memory instead.  The simulator's arrays are NumPy arrays underneath, whose ``.T``
    is already a view.
    """
    if _is_simulator():
        return a.T
    return _view(a, (a.shape[1], a.shape[0]), (a.strides[1], a.strides[0]))


def _view(a, shape, strides):
    """Another shape/strides over the memory of device array ``a`` (no copy, no kernel)."""
    if _is_simulator():
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray  # noqa: PLC0415

        return FakeCUDAArray(np.lib.stride_tricks.as_strided(a._ary, shape, strides))
    from numba.cuda.cudadrv.devicearray import DeviceNDArray  # noqa: PLC0415

    return DeviceNDArray(shape=shape, strides=strides, dtype=a.dtype, stream=a.stream, gpu_data=a.gpu_data)


def _is_c_contiguous(shape, strides, itemsize):
    expected = itemsize
    for n, s in zip(shape[::-1], strides[::-1]):
        if n > 1 and s != expected:
            return False
        expected *= n
    return True


def feature_major(a, name="x"):
    """(batch, features) device array -> (features, batch) C-contiguous device array.

    Free (a view) when ``a`` is F-ordered, e.g. the output of ``spmm``; otherwise one tiled
    transpose kernel on the device.
    """
    a = as_device_array(a, name)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (batch, features); got shape {a.shape}")
    t_shape = (a.shape[1], a.shape[0])
    t_strides = (a.strides[1], a.strides[0])
    if _is_c_contiguous(t_shape, t_strides, a.dtype.itemsize):
        return _transposed_view(a)
    out = empty(t_shape, a.dtype)
    _launch_transpose(a, out)
    return out


def batch_operand(a, name="x"):
    """(batch, features) device array -> the same values F-ordered, i.e. as the
    :func:`feature_major` array seen through a transposed view (free when already F-ordered)."""
    return _transposed_view(feature_major(a, name))


def _launch_transpose(a, out):
    csr = _csr()
    n_r, n_c = a.shape
    if n_r == 0 or n_c == 0:
        return
    block = (csr.TILE, csr.TILE_ROWS)
    grid = (math.ceil(n_c / csr.TILE), math.ceil(n_r / csr.TILE))
    csr.transpose_2d[grid, block](a, out)


def _fill(out, value):
    csr = _csr()
    n = out.shape[0]
    if n == 0:
        return
    blocks = min(math.ceil(n / csr.FILL_THREADS), csr.FILL_MAX_BLOCKS)
    csr.fill[blocks, csr.FILL_THREADS](out, value)


def zeros(shape, dtype):
    """Zero-filled device array (C order)."""
    out = empty(shape, dtype)
    _fill(out.reshape(out.size), 0.0)
    return out


def _same_dtype(**arrays):
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{name} {dt}" for name, dt in dtypes.items())
        raise TypeError(f"CUDA kernels need one float dtype for all operands; got {listing}")


def _gate(gate, shape, dtype, layout=None):
    """A ReLU-backward gate, or None: a device array of the gated result's shape and dtype,
    checked before it is laid out for its kernel (default C-contiguous: one compiled variant)."""
    if gate is None:
        return None
    gate = as_device_array(gate, "gate")
    if tuple(gate.shape) != tuple(shape):
        raise ValueError(f"gate (a ReLU's output) must have the gated result's shape {tuple(shape)}; "
                         f"got {tuple(gate.shape)}")
    if gate.dtype != dtype:
        raise TypeError(f"gate must have the result's dtype {np.dtype(dtype)}; got {gate.dtype}")
    return (layout or contiguous)(gate, "gate")


def _pattern(indptr, indices):
    return as_device_array(indptr, "indptr"), as_device_array(indices, "indices")


# ----------------------------------------------------------------------------- CSR products
def _epilogue_bias(bias, n, dtype):
    """A layer's bias (n,) as the product kernels add it when they store (contiguous, of the
    operands' dtype), or None."""
    if bias is None:
        return None
    bias = contiguous(bias, "bias")
    if tuple(bias.shape) != (n,):
        raise ValueError(f"bias must have shape ({n},); got {tuple(bias.shape)}")
    if bias.dtype != dtype:
        raise TypeError(f"CUDA kernels need one float dtype for all operands; got operands {dtype}, bias {bias.dtype}")
    return bias


def _launch_spmm(indptr, indices, perm, gather, data, x_t, out_t, bias=None, relu=False, gate_t=None):
    csr = _csr()
    n_row, batch = out_t.shape
    if n_row == 0 or batch == 0:
        return
    block = (csr.WARP, csr.SPMM_WARPS)  # one warp per row, lanes along the batch
    grid = (math.ceil(n_row / csr.SPMM_WARPS), math.ceil(batch / csr.SPMM_BATCH_TILE))
    has_bias = bias is not None
    gated = gate_t is not None
    csr.csr_spmm[grid, block](indptr, indices, perm, gather, data, x_t, bias if has_bias else data, has_bias,
                              bool(relu), gated, gate_t if gated else out_t, out_t)


def spmm(indptr, indices, data, x, bias=None, relu=False):
    """Y = X W^T (+ bias) for device X (B, n_col) and device CSR W (n_row, n_col); returns Y (B, n_row).

    Y is an F-ordered view of a (n_row, B) C-contiguous device array, so passing it on to the
    next sparse layer costs no transpose.  The bias (n_row,) is added by the product kernel,
    and with ``relu`` the kernel stores max(Y, 0).
    """
    indptr, indices = _pattern(indptr, indices)
    data = as_device_array(data, "data")
    x_t = feature_major(x, "x")
    _same_dtype(data=data, x=x_t)
    n_row = indptr.shape[0] - 1
    bias = _epilogue_bias(bias, n_row, data.dtype)
    out_t = empty((n_row, x_t.shape[1]), data.dtype)
    _launch_spmm(indptr, indices, indices, False, data, x_t, out_t, bias, relu)  # perm unused: gather=False
    return _transposed_view(out_t)


# Layouts derived from an immutable device array (a pattern, a weight's shape), cached per array
# object for as long as it lives: (id(array), what) -> (weakref to array, value).  Keyed by
# identity, not by hash (device arrays may define elementwise ``__eq__``); an entry leaves with
# its array, so a context reset, which kills the arrays, cannot leave stale device memory here.
_DERIVED = {}


def _recall(array, what):
    hit = _DERIVED.get((id(array), what))
    if hit is not None and hit[0]() is array:
        return hit[1]
    return None


def _remember(array, what, value):
    key = (id(array), what)
    try:
        _DERIVED[key] = (weakref.ref(array, lambda _, key=key: _DERIVED.pop(key, None)), value)
    except TypeError:  # not weak-referenceable: not cached
        pass
    return value


def transpose_pattern(n_col, indptr, indices, groups=1):
    """W^T's pattern on the device: (indptr_t, indices_t, perm), W^T's data being ``data[perm]``.

    Computed once per pattern with the host ``csr_transpose`` (one device-to-host copy of the
    pattern, at the first transposed product), then cached against the ``indices`` device array
    object for as long as it lives.  Arrays wrapped afresh at each call (CuPy, torch) miss the
    cache: pass the result to ``spmm_t(..., pattern_t=...)`` and keep it yourself.

    With ``groups`` > 1 the rows are a grouped convolution's filters (row o in group
    o // (n_row/groups)) and W^T gets a column per group and column, ``groups * n_col`` in
    all: column (grp, j) lists the rows of group grp that store j.  Indexed by input channel,
    that is what ``sparse_conv2d_grad_input`` walks, reading no other group's entries.
    """
    indptr, indices = _pattern(indptr, indices)
    n_col, groups = int(n_col), int(groups)
    if groups < 1 or (indptr.shape[0] - 1) % groups:  # rows past the last whole group: columns past the end
        raise ValueError(f"groups={groups} must be positive and divide the {indptr.shape[0] - 1} rows")
    what = ("transpose", n_col) if groups == 1 else ("transpose", n_col, groups)
    hit = _recall(indices, what)
    if hit is not None and hit[0]() is indptr:
        return hit[1]
    from .. import csr_transpose  # noqa: PLC0415  (the host kernel: a one-off per pattern)

    ptr, cols = indptr.copy_to_host(), indices.copy_to_host()
    if groups > 1:  # shift each row's columns into its group's block of columns
        rows = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))
        wide = cols.astype(np.int64) + rows // max((ptr.size - 1) // groups, 1) * n_col
        cols = wide.astype(cols.dtype) if groups * n_col <= np.iinfo(cols.dtype).max else wide
    indptr_t, indices_t, perm = csr_transpose(groups * n_col, ptr, cols)
    if groups > 1:
        indices_t = indices_t.astype(indices.dtype)  # row numbers: they fit the pattern's dtype
    cuda = _cuda()
    result = (cuda.to_device(indptr_t), cuda.to_device(indices_t), cuda.to_device(perm))
    try:
        _remember(indices, what, (weakref.ref(indptr), result))
    except TypeError:  # indptr not weak-referenceable: not cached
        pass
    return result


def column_groups(n_col, indptr, indices, taps=1):
    """Device ``kernels.column_groups``: from the cached transposed pattern; the bounds of blocks
    wider than one column are derived once per pattern."""
    from .. import _check_taps  # noqa: PLC0415

    _check_taps(n_col, taps, "n_col")
    indptr_t, _, perm = transpose_pattern(n_col, indptr, indices)
    if taps == 1:
        return indptr_t, perm
    bounds = _recall(indptr_t, ("columns", taps))
    if bounds is None:
        bounds = _remember(indptr_t, ("columns", taps), _cuda().to_device(indptr_t.copy_to_host()[::taps].copy()))
    return bounds, perm


def dense_groups(x, taps=1, *, by_input):
    """Device ``kernels.dense_groups``: the host layout uploaded once per weight array."""
    from .. import dense_group_layout  # noqa: PLC0415

    x = as_device_array(x, "x")
    what = ("dense", by_input, taps)
    hit = _recall(x, what)
    if hit is None:
        bounds, perm = dense_group_layout(x.shape, taps, by_input)
        hit = _remember(x, what, (to_device(bounds), None if perm is None else to_device(perm)))
    return hit


def spmm_t(indptr, indices, data, n_col, g, gate=None, *, pattern_t=None):
    """grad_X = G W for device G (B, n_row) and device CSR W (n_row, n_col); returns (B, n_col).

    Runs the forward kernel over W's transposed pattern (``pattern_t``, default: the cached
    ``transpose_pattern``) and gathers W's values through its permutation: every output
    element has one writer, no atomics, deterministic.  Result F-ordered like ``spmm``.
    With ``gate`` (B, n_col), the output of a ReLU, returns ``grad_X * (gate > 0)``, that
    ReLU's backward applied as the kernel stores (an F-ordered gate is read in place).
    """
    indptr, indices = _pattern(indptr, indices)
    data = as_device_array(data, "data")
    if pattern_t is None:
        pattern_t = transpose_pattern(n_col, indptr, indices)
    indptr_t, indices_t, perm = (as_device_array(a, n) for a, n in zip(pattern_t, ("indptr_t", "indices_t", "perm")))
    if indptr_t.shape[0] != n_col + 1 or indices_t.shape[0] != indices.shape[0]:
        raise ValueError(
            f"pattern_t does not match W: expected indptr_t of length n_col + 1 = {n_col + 1} and "
            f"{indices.shape[0]} indices; got {indptr_t.shape[0]} and {indices_t.shape[0]}"
        )
    g_t = feature_major(g, "g")
    _same_dtype(data=data, g=g_t)
    out_t = empty((n_col, g_t.shape[1]), data.dtype)
    gate_t = _gate(gate, (g_t.shape[1], n_col), data.dtype, feature_major)
    _launch_spmm(indptr_t, indices_t, perm, True, data, g_t, out_t, gate_t=gate_t)
    return _transposed_view(out_t)


# Up to this many multiply-adds (batch * nnz) a layer's bias gradient is summed by its SDDMM
# launch (csr_sddmm_bias), which spares the batch_sum launch (~20 µs of host time on the H200)
# but runs at lower occupancy (48 registers instead of 32).  Above it the kernel's own time
# dominates and the two launches stay apart.  A guess pending a GPU run: at this size the
# plain kernel took about 60 µs on the H200 (BENCHMARKS.md); bench/gpu_bench.py times both.
SDDMM_BIAS_FUSED_MAX = 1 << 24


def sddmm(indptr, indices, g, x, bias_grad=False):
    """grad_W[k] = sum_b G[b, row_k] X[b, col_k] on W's pattern; G (B, n_row), X (B, n_col).

    Returns a (nnz,) device array of G's dtype; with ``bias_grad`` also G's sum over the batch
    (n_row,), ``(grad_w, grad_b)``: from the same launch for layers up to SDDMM_BIAS_FUSED_MAX
    multiply-adds, else from ``batch_sum`` (the same bits either way).
    """
    csr = _csr()
    indptr, indices = _pattern(indptr, indices)
    g_t = feature_major(g, "g")
    x_t = feature_major(x, "x")
    _same_dtype(g=g_t, x=x_t)
    n_row = indptr.shape[0] - 1
    if g_t.shape[1] != x_t.shape[1]:
        raise ValueError(f"sddmm: g and x must have the same batch; got {g_t.shape[1]} and {x_t.shape[1]}")
    if g_t.shape[0] != n_row:
        raise ValueError(f"sddmm: g must have one feature per row of W ({n_row}); got {g_t.shape[0]}")
    if g_t.shape[1] >= 2**31:  # the kernel counts the batch in 32 bits
        raise ValueError(f"sddmm on the GPU takes a batch below 2**31; got {g_t.shape[1]}")
    if csr.SDDMM_THREADS != csr.WARP * csr.SDDMM_WARPS:  # the bias sum's thread ids and barriers
        raise RuntimeError("kernels/cuda/csr.py: SDDMM_THREADS must equal WARP * SDDMM_WARPS")
    out = empty((indices.shape[0],), g_t.dtype)
    fused = bias_grad and 0 < indices.shape[0] * g_t.shape[1] <= SDDMM_BIAS_FUSED_MAX
    bias = empty((n_row,), g_t.dtype) if fused else None
    if indices.shape[0]:
        block = (csr.WARP, csr.SDDMM_WARPS)  # one block per row: 4 entries per warp, lanes along the batch
        grid = (n_row,)
        if fused:
            csr.csr_sddmm_bias[grid, block](indptr, indices, g_t, x_t, out, bias)
        else:
            csr.csr_sddmm[grid, block](indptr, indices, g_t, x_t, out)
    if bias_grad and not fused:
        bias = batch_sum(_transposed_view(g_t))
    return (out, bias) if bias_grad else out


# ----------------------------------------------------------------------------- optimizers
def _flat(a, name):
    a = as_device_array(a, name)
    if a.ndim != 1:
        if not _is_c_contiguous(a.shape, a.strides, a.dtype.itemsize):
            raise ValueError(f"{name} must be C-contiguous to be updated in place; got strides {a.strides}")
        a = a.reshape(a.size)
    return a


def _update_grid(n):
    upd = _update()
    return min(math.ceil(n / upd.UPDATE_THREADS), upd.UPDATE_MAX_BLOCKS), upd.UPDATE_THREADS


def sgd_update(lr, momentum, dampening, weight_decay, nesterov, first, param, grad, buf):
    """One SGD step in place on device buffers; same arguments as ``kernels.cpu.update.sgd_update``.

    ``buf`` may be ``None`` (or empty) when ``momentum == 0``.
    """
    param, grad = _flat(param, "param"), _flat(grad, "grad")
    buf = grad if buf is None or momentum == 0 else _flat(buf, "buf")
    n = param.shape[0]
    if n == 0:
        return
    blocks, threads = _update_grid(n)
    _update().sgd_update[blocks, threads](
        float(lr), float(momentum), float(dampening), float(weight_decay), bool(nesterov), bool(first),
        param, grad, buf,
    )


def adam_update(lr, beta1, beta2, eps, weight_decay, decoupled, step, param, grad, exp_avg, exp_avg_sq):
    """One Adam/AdamW step in place on device buffers; same arguments as the CPU kernel.

    ``step`` is the 1-based step count after incrementing, a host integer: the bias
    corrections are computed here on the host and passed as scalars.
    """
    param, grad = _flat(param, "param"), _flat(grad, "grad")
    exp_avg, exp_avg_sq = _flat(exp_avg, "exp_avg"), _flat(exp_avg_sq, "exp_avg_sq")
    n = param.shape[0]
    if n == 0:
        return
    step_size = lr / (1 - beta1 ** step)
    bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
    blocks, threads = _update_grid(n)
    _update().adam_update[blocks, threads](
        float(lr), float(beta1), float(beta2), float(eps), float(weight_decay), bool(decoupled),
        float(step_size), float(bias_correction2_sqrt), param, grad, exp_avg, exp_avg_sq,
    )


# ----------------------------------------------------------------------------- conv and pool
# Same signatures as the host dispatch in sparsenet.kernels (NCHW; geometry already validated
# and normalised to int pairs).  Device arrays in, device arrays out.
def _conv():
    from . import conv  # noqa: PLC0415

    return conv


def _pool():
    from . import pool  # noqa: PLC0415

    return pool


def _out_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _check_groups(n_in, n_out, groups):
    """The conv kernels index channels by group: refuse groups that do not divide both channel
    counts (the kernels would read and write past their arrays), as sparsenet.functional does."""
    if n_in < 1 or groups < 1 or n_in % groups or n_out % groups:
        raise ValueError(f"groups={groups} must be positive and divide both in_channels={n_in} (at least 1) "
                         f"and out_channels={n_out}")
    return int(groups)


def _dense_groups(x, weight):
    """groups of a dense conv, implied by x's channels over the weight's (O, C/groups, KH, KW)."""
    c, (o, c_g) = x.shape[1], weight.shape[:2]
    if c_g < 1 or c % c_g:
        raise ValueError(f"x's {c} channels must be a positive multiple of weight.shape[1] = {c_g} "
                         f"(in_channels/groups); weight shape {tuple(weight.shape)}")
    return _check_groups(c, o, c // c_g)


def _check_grad_out(g, x, n_out, kernel, stride, padding, dilation):
    """The backward kernels read g over x's batch and the output plane: refuse any other shape
    (on the GPU a short g would be read past its end)."""
    expected = (x.shape[0], n_out) + tuple(
        max(_out_size(x.shape[2 + i], kernel[i], stride[i], padding[i], dilation[i]), 0) for i in range(2))
    if tuple(g.shape) != expected:
        raise ValueError(f"g must have the output's shape {expected}; got {tuple(g.shape)}")


def _nchw(a, name):
    a = as_device_array(a, name)
    if a.ndim != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W); got shape {a.shape}")
    return a


def _tiled_grid(planes, height, width):
    conv = _conv()
    block = (conv.CONV_TX, conv.CONV_TY)
    grid = (planes * math.ceil(height / conv.CONV_TY) * math.ceil(width / conv.CONV_TX),)  # flat: see conv.py
    return grid, block


def conv2d(x, weight, bias, stride, padding, dilation, relu=False):
    """Convolution on the device: x (N, C, H, W), weight (O, C/groups, KH, KW) -> (N, O, OH, OW);
    with ``relu`` max(., 0) of it, applied by the GEMM kernel as it stores, or in place right
    after the direct kernels (groups of up to GEMM_TILE / NARROW_RATIO output channels)."""
    conv = _conv()
    x, weight = _nchw(x, "x"), _nchw(weight, "weight")
    _same_dtype(x=x, weight=weight)
    n = x.shape[0]
    o, c_g, kh, kw = weight.shape
    groups = _dense_groups(x, weight)
    if _direct(o // groups):
        out = sparse_conv2d(x, *_every_tap(weight), (kh, kw), bias, stride, padding, dilation, groups)
        if relu and out.size:  # in place: the weight-sparse forward has no ReLU store (registers)
            flat = _flat_view(out)
            _ops().activation_fwd[_grid(out.size)](_ops().RELU, 0.0, flat, flat)
        return out
    out_h = _out_size(x.shape[2], kh, stride[0], padding[0], dilation[0])
    out_w = _out_size(x.shape[3], kw, stride[1], padding[1], dilation[1])
    out = empty((n, o, max(out_h, 0), max(out_w, 0)), x.dtype)
    bias = _epilogue_bias(bias, o, x.dtype)
    if out.size == 0:
        return out
    has_bias = bias is not None
    bias = bias if has_bias else out.reshape(out.size)  # not read without one
    grid, block = _gemm_grid(n * out_h * out_w, o // groups, groups)
    conv.conv2d_fwd[grid, block](x, _flat_filters(weight), kh, kw, bias, has_bias, *stride, *padding, *dilation,
                                 bool(relu), out)
    return out


def _direct(channels):
    """Whether a dense conv op with ``channels`` channels a group on its tile's channel side runs
    on the weight-sparse kernels with every tap stored (conv.NARROW_RATIO) instead of a GEMM."""
    conv = _conv()
    return channels * conv.NARROW_RATIO <= conv.GEMM_TILE


def _every_tap(weight):
    """(indptr, indices, data): (O, C/groups, KH, KW) filters as the weight-sparse kernels take
    a CSR weight, every tap stored."""
    return (*_full_pattern(weight), _flat_filters(weight).reshape(weight.size))


def _full_pattern(weight):
    """(indptr, indices) on the device of (O, C/groups, KH, KW) filters as a CSR matrix storing
    every tap, for the weight-sparse kernels.  Cached against the weight device array (a layer's
    parameter lives across steps, and so then do the transposed pattern and the grad-weight work
    list derived from this one); an array wrapped afresh at each call rebuilds it."""
    hit = _recall(weight, "full pattern")
    if hit is None:
        o, k = weight.shape[0], math.prod(weight.shape[1:])
        dtype = np.int32 if o * k <= np.iinfo(np.int32).max else np.int64
        indptr = np.arange(0, (o + 1) * k, k, dtype=dtype) if k else np.zeros(o + 1, dtype)
        indices = np.tile(np.arange(k, dtype=dtype), o)
        cuda = _cuda()
        hit = _remember(weight, "full pattern", (cuda.to_device(indptr), cuda.to_device(indices)))
    return hit


def _gemm_grid(pixels, channels, groups):
    """Grid and block of the implicit-GEMM conv kernels: pixel tiles on grid x (up to 2**31 - 1
    blocks), channel tiles on y and groups on z (up to 65,535 each)."""
    conv = _conv()
    grid = (math.ceil(pixels / conv.GEMM_TILE), math.ceil(channels / conv.GEMM_TILE), groups)
    if grid[1] > 65535 or grid[2] > 65535:
        raise ValueError(f"conv2d on the GPU takes at most {65535 * conv.GEMM_TILE} channels a group and 65535 "
                         f"groups; got {channels} and {groups}")
    return grid, (conv.GEMM_THREADS, conv.GEMM_THREADS)


def _flat_filters(weight):
    """(O, C/groups, KH, KW) -> the (O, C/groups*KH*KW) view the GEMM kernels read (its shape
    from the weight's, so that the kernels read C/groups even when O is 0)."""
    o, c_g, kh, kw = weight.shape
    return contiguous(weight, "weight").reshape(o, c_g * kh * kw)


def conv2d_backward(g, x, weight, stride, padding, dilation, need_input=True, need_weight=True, gate=None):
    """(grad_x or None, grad_weight or None) of :func:`conv2d`, on the device; with ``gate``
    (x's shape, a ReLU's output) grad_x times ``gate > 0``, in the same kernel (a gate that is
    not C-ordered is copied first)."""
    conv = _conv()
    g, x, weight = _nchw(g, "g"), _nchw(x, "x"), _nchw(weight, "weight")
    _same_dtype(g=g, x=x, weight=weight)
    o, c_g, kh, kw = weight.shape
    _check_grad_out(g, x, o, (kh, kw), stride, padding, dilation)
    groups = _dense_groups(x, weight)
    gate = _gate(gate, x.shape, x.dtype) if need_input else None  # refused before any launch
    grad_x = grad_w = None
    direct_x, direct_w = need_input and _direct(c_g), need_weight and _direct(o // groups)
    if direct_x or direct_w:  # either or both on the weight-sparse kernels, every tap stored
        grad_x, grad_w = sparse_conv2d_backward(g, x, *_every_tap(weight), (kh, kw), stride, padding, dilation,
                                                groups, direct_x, direct_w, gate if direct_x else None)
        grad_w = None if grad_w is None else grad_w.reshape(weight.shape)
    if need_input and not direct_x:
        gated = gate is not None
        grad_x = empty(x.shape, x.dtype)
        if grad_x.size:
            n, c, h, w = x.shape
            grid, block = _gemm_grid(n * h * w, c_g, c // c_g)
            conv.conv2d_grad_input[grid, block](g, _flat_filters(weight), kh, kw, *stride, *padding, *dilation,
                                                gated, gate if gated else grad_x, grad_x)
    if need_weight and not direct_w:
        grad_w = empty(weight.shape, x.dtype)
        if grad_w.size:
            _launch_grad_weight(g, x, grad_w, stride, padding, dilation)
    return grad_x, grad_w


def _launch_grad_weight(g, x, grad_w, stride, padding, dilation):
    """The implicit-GEMM weight gradient, its pixel reduction split to fill the device."""
    conv = _conv()
    o, c_g, kh, kw = grad_w.shape
    n_k = c_g * kh * kw
    groups = x.shape[1] // c_g
    n_steps = math.ceil(g.shape[0] * g.shape[2] * g.shape[3] / conv.GEMM_TILE_K)
    grid, block = _gemm_grid(n_k, o // groups, groups)  # taps on grid x here, filters on y
    tiles = grid[0] * grid[1] * groups
    splits = max(1, min(math.ceil(conv.SPLIT_BLOCKS / tiles), n_steps // conv.SPLIT_MIN_STEPS, 65535 // groups))
    per_split = max(1, math.ceil(n_steps / splits))
    splits = max(1, math.ceil(n_steps / per_split))  # no empty split
    flat = grad_w.reshape(o * n_k)
    part = flat.reshape(1, o, n_k) if splits == 1 else empty((splits, o, n_k), grad_w.dtype)
    conv.conv2d_grad_weight[(grid[0], grid[1], groups * splits), block](
        g, x, kh, kw, *stride, *padding, *dilation, per_split, part)
    if splits > 1:
        blocks = min(math.ceil(flat.size / conv.SUM_THREADS), 4096)
        conv.split_sum[blocks, conv.SUM_THREADS](part.reshape(splits, o * n_k), flat)


def conv2d_grad_bias(g):
    """grad_bias[o] = sum of g[:, o] over batch and space: (O,) device array."""
    conv = _conv()
    g = _nchw(g, "g")
    out = empty((g.shape[1],), g.dtype)
    if out.size:
        conv.channel_sum[(g.shape[1],), (conv.RED_THREADS,)](g, out)  # one block per channel
    return out


def _capped_launch(kernel, total, threads, max_blocks, *args):
    """Launch a grid-stride kernel over ``total`` items on at most ``max_blocks`` blocks."""
    if total:
        kernel[min(math.ceil(total / threads), max_blocks), threads](*args)


def _pool_launch(kernel, total, *args):
    pool = _pool()
    _capped_launch(kernel, total, pool.POOL_THREADS, pool.POOL_MAX_BLOCKS, *args)


def _pool_shape(x_shape, kernel, stride, padding):
    return (x_shape[0], x_shape[1], _out_size(x_shape[2], kernel[0], stride[0], padding[0], 1),
            _out_size(x_shape[3], kernel[1], stride[1], padding[1], 1))


def max_pool2d(x, kernel, stride, padding):
    """Max pooling, NCHW, on the device; padding acts as -inf."""
    x = _nchw(x, "x")
    out = empty(_pool_shape(x.shape, kernel, stride, padding), x.dtype)
    _pool_launch(_pool().max_pool2d_fwd, out.size, x, *kernel, *stride, *padding, out)
    return out


def max_pool2d_backward(g, x, kernel, stride, padding):
    """grad_x of :func:`max_pool2d`: each window's grad goes to its (first) maximum."""
    g, x = _nchw(g, "g"), _nchw(x, "x")
    gx = empty(x.shape, x.dtype)
    _pool_launch(_pool().max_pool2d_bwd, gx.size, g, x, *kernel, *stride, *padding, gx)
    return gx


def avg_pool2d(x, kernel, stride, padding):
    """Average pooling, NCHW, on the device (count_include_pad=True)."""
    x = _nchw(x, "x")
    out = empty(_pool_shape(x.shape, kernel, stride, padding), x.dtype)
    scale = x.dtype.type(1.0 / (kernel[0] * kernel[1]))  # in x's dtype: float32 math stays float32
    _pool_launch(_pool().avg_pool2d_fwd, out.size, x, *kernel, *stride, *padding, scale, out)
    return out


def avg_pool2d_backward(g, x_shape, dtype, kernel, stride, padding):
    """grad_x of :func:`avg_pool2d` for an input of shape ``x_shape``."""
    g = _nchw(g, "g")
    dtype = np.dtype(dtype)
    gx = empty(tuple(x_shape), dtype)
    scale = dtype.type(1.0 / (kernel[0] * kernel[1]))
    _pool_launch(_pool().avg_pool2d_bwd, gx.size, g, *kernel, *stride, *padding, scale, gx)
    return gx


def sparse_conv2d(x, indptr, indices, data, kernel, bias, stride, padding, dilation, groups):
    """Weight-sparse convolution on the device; the CSR weight (O, C/groups*KH*KW) is never densified."""
    conv = _conv()
    x = _nchw(x, "x")
    indptr, indices = _pattern(indptr, indices)
    data = as_device_array(data, "data")
    _same_dtype(x=x, data=data)
    o = indptr.shape[0] - 1
    groups = _check_groups(x.shape[1], o, groups)
    out_h = _out_size(x.shape[2], kernel[0], stride[0], padding[0], dilation[0])
    out_w = _out_size(x.shape[3], kernel[1], stride[1], padding[1], dilation[1])
    out = empty((x.shape[0], o, max(out_h, 0), max(out_w, 0)), x.dtype)
    bias = _epilogue_bias(bias, o, x.dtype)
    if out.size:
        # A bias-free layer adds zeros: a has_bias flag would cost this kernel 8 registers (86,
        # two blocks an SM instead of three).  The zeros are kept with the pattern (never
        # written), so a layer's forward does not allocate and fill them again each step.
        if bias is None:
            what = ("zero bias", x.dtype)
            bias = _recall(indptr, what)
            bias = _remember(indptr, what, zeros((o,), x.dtype)) if bias is None else bias
        grid, block = _tiled_grid(math.ceil(x.shape[0] / conv.SPARSE_NB) * o, out_h, out_w)
        conv.sparse_conv2d_fwd[grid, block](x, indptr, indices, data, int(groups), *kernel, *stride, *padding,
                                            *dilation, bias, out)
    return out


def sparse_conv2d_backward(g, x, indptr, indices, data, kernel, stride, padding, dilation, groups,
                           need_input=True, need_weight=True, gate=None):
    """(grad_x or None, grad_data (nnz,) or None) of :func:`sparse_conv2d`, on the device.

    grad_x walks W's transposed pattern (cached per pattern like ``spmm_t``'s): one writer per
    input element, no atomics.  ``gate``: as in :func:`conv2d_backward`.
    """
    conv = _conv()
    g, x = _nchw(g, "g"), _nchw(x, "x")
    indptr, indices = _pattern(indptr, indices)
    data = as_device_array(data, "data")
    _same_dtype(g=g, x=x, data=data)
    _check_grad_out(g, x, indptr.shape[0] - 1, kernel, stride, padding, dilation)
    groups = _check_groups(x.shape[1], indptr.shape[0] - 1, groups)
    n_cols = x.shape[1] // groups * kernel[0] * kernel[1]
    grad_x = grad_w = None
    if need_input:
        gate = _gate(gate, x.shape, x.dtype)
        gated = gate is not None
        grad_x = empty(x.shape, x.dtype)
        if grad_x.size:
            indptr_t, indices_t, perm = transpose_pattern(n_cols, indptr, indices, groups=int(groups))
            grid, block = _tiled_grid(math.ceil(x.shape[0] / conv.SPARSE_NB) * x.shape[1], x.shape[2], x.shape[3])
            conv.sparse_conv2d_grad_input[grid, block](g, indptr_t, indices_t, perm, data, *kernel,
                                                       *stride, *padding, *dilation, gated,
                                                       gate if gated else grad_x, grad_x)
    if need_weight:
        grad_w = empty((indices.shape[0],), x.dtype)
        if grad_w.size and 0 in x.shape[2:]:  # an empty input plane: every tap falls in the padding
            grad_w = zeros(grad_w.shape, grad_w.dtype)
        elif grad_w.size:
            chunks = _weight_chunks(indptr)
            conv.sparse_conv2d_grad_weight[(chunks.shape[0],), (conv.RED_THREADS,)](
                g, x, chunks, indices, int(groups), *kernel, *stride, *padding, *dilation, grad_w)
    return grad_x, grad_w


def _weight_chunks(indptr):
    """The weight-sparse grad-weight's work list: an (n_chunks, 3) int64 device array of (row,
    first entry, end entry), each chunk up to ``GW_ENTRIES`` consecutive entries of one row.
    Derived on the host once per pattern (cached against the ``indptr`` device array, like
    ``transpose_pattern``)."""
    conv = _conv()
    what = ("weight chunks", conv.GW_ENTRIES)
    hit = _recall(indptr, what)
    if hit is None:
        ptr = indptr.copy_to_host().astype(np.int64)
        sizes = np.diff(ptr)
        per_row = -(-sizes // conv.GW_ENTRIES)
        rows = np.repeat(np.arange(sizes.size), per_row)
        within = np.arange(rows.size) - np.repeat(np.cumsum(per_row) - per_row, per_row)
        starts = ptr[rows] + within * conv.GW_ENTRIES
        ends = np.minimum(starts + conv.GW_ENTRIES, ptr[rows + 1])
        hit = _remember(indptr, what, _cuda().to_device(np.ascontiguousarray(np.stack([rows, starts, ends], 1))))
    return hit


def _local_launch(kernel, total, *args):
    conv = _conv()
    _capped_launch(kernel, total, conv.LOCAL_THREADS, conv.LOCAL_MAX_BLOCKS, *args)


def local2d(x, weight, bias, kernel, stride, padding):
    """Locally connected layer on the device: weight (OH, OW, O, C*KH*KW), bias (O, OH, OW) or None."""
    conv = _conv()
    x = _nchw(x, "x")
    weight = as_device_array(weight, "weight")
    _same_dtype(x=x, weight=weight)
    out_h, out_w, o, _ = weight.shape
    out = empty((x.shape[0], o, out_h, out_w), x.dtype)
    bias = zeros((o, out_h, out_w), x.dtype) if bias is None else as_device_array(bias, "bias")
    _local_launch(conv.local2d_fwd, out.size, x, weight, bias, *kernel, *stride, *padding, out)
    return out


def local2d_backward(g, x, weight, kernel, stride, padding, need_input=True, need_weight=True):
    """(grad_x or None, grad_weight or None) of :func:`local2d`, on the device."""
    conv = _conv()
    g, x = _nchw(g, "g"), _nchw(x, "x")
    weight = as_device_array(weight, "weight")
    _same_dtype(g=g, x=x, weight=weight)
    grad_x = grad_w = None
    if need_input:
        grad_x = empty(x.shape, x.dtype)
        _local_launch(conv.local2d_grad_input, grad_x.size, g, weight, *kernel, *stride, *padding, grad_x)
    if need_weight:
        grad_w = empty(weight.shape, x.dtype)
        _local_launch(conv.local2d_grad_weight, grad_w.size, g, x, *kernel, *stride, *padding, grad_w)
    return grad_x, grad_w


__all__ += [
    "conv2d", "conv2d_backward", "conv2d_grad_bias", "max_pool2d", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward", "sparse_conv2d", "sparse_conv2d_backward", "local2d",
    "local2d_backward",
]


# ----------------------------------------------------------------------------- training-step ops
# Element-wise maps, bias, accumulation, dense products and losses: what a whole training step
# needs besides the sparse products and convolutions, so that it never leaves the device.
def _ops():
    from . import ops  # noqa: PLC0415

    return ops


def _order(a):
    """'C' or 'F' for a contiguous array (C wins for 1-D and size <= 1), None otherwise.

    A zero stride (a broadcast axis from CuPy or torch) counts as non-contiguous, as numba sees it.
    """
    if 0 in tuple(a.strides):
        return None
    if _is_c_contiguous(a.shape, a.strides, a.dtype.itemsize):
        return "C"
    if _is_c_contiguous(a.shape[::-1], a.strides[::-1], a.dtype.itemsize):
        return "F"
    return None


def _flat_view(a):
    """1-D view of a contiguous (C or F) device array, in memory order."""
    order = _order(a)
    if order is None:
        raise ValueError(f"expected a contiguous device array; got shape {a.shape}, strides {a.strides}")
    return a.reshape(a.size, order=order) if a.ndim != 1 else a


def _empty_like(a, order=None):
    return _cuda().device_array(a.shape, dtype=a.dtype, order=order or _order(a) or "C")


def _grid(n):
    ops = _ops()
    return min(max(1, math.ceil(n / ops.THREADS)), ops.MAX_BLOCKS), ops.THREADS


def _as_4d(a):
    """(...) -> (1, ..., 1, ...) 4-D view of a device array of at most 4 dimensions."""
    pad = 4 - a.ndim
    return _view(a, (1,) * pad + tuple(a.shape), (0,) * pad + tuple(a.strides))


def _copy_into(src, dst):
    """dst[...] = src[...] for device arrays of up to 4 dimensions and any strides."""
    if dst.size == 0:
        return dst
    if src.ndim == 2 and _order(src) == "F" and _order(dst) == "C":
        _launch_transpose(_transposed_view(src), dst)  # coalesced on both sides
    elif src.ndim == 2:
        _ops().copy_2d[_grid(dst.size)](src, dst)
    elif src.ndim <= 4:
        _ops().copy_4d[_grid(dst.size)](_as_4d(src), _as_4d(dst))
    else:
        raise NotImplementedError(f"device copies of {src.ndim}-D arrays are not implemented; got shape {src.shape}")
    return dst


def take(a, idx, order="C"):
    """``a[idx]`` for a C-contiguous device array ``a`` (n, ...) and device int ``idx`` (B,) in
    [0, n): a new (B, ...) array, gathered by one kernel; C-contiguous, or with ``order="F"``
    and a 2-D ``a`` F-ordered (feature-major memory, what the sparse products read)."""
    a, idx = as_device_array(a, "a"), as_device_array(idx, "idx")
    if _order(a) != "C" or a.ndim == 0:
        raise ValueError(f"take gathers rows of a C-contiguous array; got shape {a.shape}, strides {a.strides}")
    if order == "F" and a.ndim == 2:
        out_t = empty((a.shape[1], idx.shape[0]), a.dtype)
        if out_t.size:
            _ops().take_rows_t[_grid(out_t.size)](a, idx, out_t)
        return _transposed_view(out_t)
    out = empty((idx.shape[0],) + tuple(a.shape[1:]), a.dtype)
    if out.size:
        width = out.size // idx.shape[0]
        _ops().take_rows[_grid(out.size)](a.reshape(a.shape[0], width), idx, out.reshape(idx.shape[0], width))
    return out


def contiguous(a, name="array"):
    """A C-contiguous device array with ``a``'s values: ``a`` itself when it already is."""
    a = as_device_array(a, name)
    if _order(a) == "C":
        return a
    return _copy_into(a, empty(a.shape, a.dtype))


def copy(a, name="array"):
    """A new device array equal to ``a`` (same memory order when contiguous)."""
    a = as_device_array(a, name)
    out = _empty_like(a)
    if _order(a) is None:
        return _copy_into(a, out)
    if a.size:
        out.copy_to_device(a)  # device-to-device, same layout
    return out


def _like(a, ref, name):
    """``a`` laid out exactly as ``ref`` (a view when it already is, else one copy kernel)."""
    a = as_device_array(a, name)
    if tuple(a.shape) != tuple(ref.shape):
        raise ValueError(f"{name} must have shape {tuple(ref.shape)}; got {tuple(a.shape)}")
    if tuple(a.strides) == tuple(ref.strides) and _order(a) is not None:
        return a
    return _copy_into(a, _empty_like(ref))


def _dense(a, name):
    """``a`` as a C- or F-contiguous device array (a copy only for other strides)."""
    a = as_device_array(a, name)
    return a if _order(a) is not None else contiguous(a, name)


def _operands(x, other, x_name, other_name):
    """(x contiguous, other laid out exactly like x), same dtype: ready for flat element-wise views."""
    x = _dense(x, x_name)
    other = _like(other, x, other_name)
    _same_dtype(**{x_name: x, other_name: other})
    return x, other


def activation(kind, slope, x):
    """act(x) element-wise, same shape and memory order; kind in ops.RELU ... ops.SIGMOID."""
    x = _dense(x, "x")
    out = _empty_like(x)
    if x.size:
        _ops().activation_fwd[_grid(x.size)](int(kind), float(slope), _flat_view(x), _flat_view(out))
    return out


def activation_backward(kind, slope, saved, g):
    """g * act'(.) from what forward kept (y, or x for LeakyReLU); laid out like ``saved``."""
    saved, g = _operands(saved, g, "saved", "grad_out")
    out = _empty_like(saved)
    if g.size:
        _ops().activation_bwd[_grid(g.size)](int(kind), float(slope), _flat_view(saved), _flat_view(g),
                                              _flat_view(out))
    return out


def dropout(x, key0, key1, threshold, scale):
    """Dropout of device ``x`` with the Philox mask of key (key0, key1) (see kernels.dropout).

    Laid out like ``x`` when it is C-ordered, or F-ordered 2-D (a sparse layer's output); other
    layouts are made C-contiguous first, since the mask follows logical, not memory, positions.
    """
    x = as_device_array(x, "x")
    if not (_order(x) == "C" or (x.ndim == 2 and _order(x) == "F")):
        x = contiguous(x, "x")
    out = _empty_like(x)
    if not x.size:
        return out
    ops = _ops()
    if _order(x) == "C":  # rows = the first axis, the others merged: each row contiguous
        n_row = x.shape[0] if x.ndim else 1
        n_col = x.size // n_row
        row_stride, col_stride, rows_fast = n_col, 1, False
    else:  # F-ordered 2-D: each column contiguous
        (n_row, n_col), row_stride, col_stride, rows_fast = x.shape, 1, x.shape[0], True
    quarter = -(-n_col // 4)  # generator positions a row
    n_fast, n_slow = (n_row, quarter) if rows_fast else (quarter, n_row)
    # Threads along the contiguous axis up to its length, the rest of the block along the other:
    # warps are cut from the linear thread id, so a warp of tx = 8 covers 8 positions of 4 rows
    # and no lane idles when rows are short.
    tx = min(ops.THREADS, 1 << (n_fast - 1).bit_length())
    ty = ops.THREADS // tx
    grid = (min(-(-n_fast // tx), ops.MAX_BLOCKS), min(-(-n_slow // ty), ops.MAX_GRID_Y))
    ops.dropout[grid, (tx, ty)](key0, key1, threshold, float(scale), _flat_view(x), _flat_view(out),
                                   n_row, n_col, row_stride, col_stride, rows_fast)
    return out


def _binary_(kernel, name, dst, src):
    """dst <- dst (op) src in place through an element-wise kernel; returns dst."""
    dst = as_device_array(dst, "dst")
    if dst.size and _order(dst) is None:  # a copy would take the update, not dst
        raise ValueError(f"{name} updates in place and needs a contiguous dst; got strides {dst.strides}")
    dst, src = _operands(dst, src, "dst", "src")
    if dst.size:
        kernel[_grid(dst.size)](_flat_view(dst), _flat_view(src))
    return dst


def add_(dst, src):
    """dst += src in place (contiguous ``dst``); returns dst."""
    return _binary_(_ops().add_inplace, "add_", dst, src)


def mul_(dst, src):
    """dst *= src in place (contiguous ``dst``, e.g. a pruning mask as src); returns dst."""
    return _binary_(_ops().mul_inplace, "mul_", dst, src)


def _in_place(x, name, c_order=False):
    """1-D view of device array ``x`` for an in-place element kernel (memory order, or C order
    when the elements' positions matter), None when empty; ValueError when only a copy could
    be updated."""
    x = as_device_array(x, "x")
    if x.size == 0:
        return None
    order = _order(x)
    if order is None or (c_order and order != "C"):
        raise ValueError(f"{name} works in place on a {'C-' if c_order else ''}contiguous x; "
                         f"got strides {x.strides}")
    return _flat_view(x)


def soft_threshold_(x, t):
    """x <- sign(x) * max(|x| - t, 0) in place (contiguous ``x``); returns x."""
    flat = _in_place(x, "soft_threshold_")
    if flat is not None:
        _ops().soft_threshold_inplace[_grid(flat.size)](flat, float(t))
    return x


def hard_threshold_(x, t):
    """x <- 0 where |x| < t, in place (contiguous ``x``); returns x."""
    flat = _in_place(x, "hard_threshold_")
    if flat is not None:
        _ops().hard_threshold_inplace[_grid(flat.size)](flat, float(t))
    return x


def group_soft_threshold_(x, indptr, t, *, perm=None):
    """Group soft threshold in place over the groups ``x.ravel()[src(k)]``, k in
    [indptr[g], indptr[g+1]), of a C-contiguous device array, ``src`` being ``perm`` when given
    (see :func:`column_groups`) and the identity otherwise (runs in C order: a weight's output
    units); returns x."""
    flat, indptr = _in_place(x, "group_soft_threshold_", c_order=True), as_device_array(indptr, "indptr")
    gather = perm is not None
    perm = as_device_array(perm, "perm") if gather else indptr  # not read without gather
    if gather and perm.dtype != indptr.dtype:
        raise TypeError(f"perm and indptr must share an integer dtype; got {perm.dtype} and {indptr.dtype}")
    if flat is not None and indptr.shape[0] > 1:
        _ops().group_soft_threshold_segments[(indptr.shape[0] - 1,), (_ops().RED_THREADS,)](flat, indptr, perm,
                                                                                          gather, float(t))
    return x


def _select():
    from . import select  # noqa: PLC0415

    return select


def zero_smallest_(x, n):
    """Zero the ``n`` entries of smallest magnitude of a contiguous device array in place (ties
    in memory order, NaN largest: see ``kernels/cuda/select.py``); returns x.  No host reads."""
    from .. import magnitude_keys  # noqa: PLC0415

    ints, mask, nan_key = magnitude_keys(as_device_array(x, "x").dtype)
    flat = _in_place(x, "zero_smallest_")
    n = int(n)
    if flat is None or n <= 0:
        return x
    if n >= flat.size:
        _fill(flat, 0.0)
        return x
    sel = _select()
    if sel.RADIX % sel.SELECT_THREADS or sel.SELECT_THREADS & (sel.SELECT_THREADS - 1):
        raise RuntimeError("SELECT_THREADS must be a power of two dividing RADIX")  # radix_pick's digit ranges
    keys = flat.view(ints)
    n_blocks = min(math.ceil(flat.size / (sel.SELECT_THREADS * sel.SELECT_ITEMS)), sel.SELECT_MAX_BLOCKS)
    chunk = math.ceil(flat.size / n_blocks)
    hist = empty((n_blocks, sel.RADIX), np.int32)
    state = empty((2,), np.int64)
    value_bits = 8 * flat.dtype.itemsize - 1  # the sign bit is cleared
    top = (value_bits - 1) // sel.RADIX_BITS * sel.RADIX_BITS
    for shift in range(top, -1, -sel.RADIX_BITS):
        hi = shift + sel.RADIX_BITS
        hi_mask = (mask >> hi) << hi  # the digits already chosen (0 on the first pass)
        first = shift == top
        sel.radix_histogram[n_blocks, sel.SELECT_THREADS](keys, mask, nan_key, chunk, first, hi_mask, shift,
                                                          state, hist)
        sel.radix_pick[1, sel.SELECT_THREADS](hist, shift, first, n, state)
    sel.zero_selected[n_blocks, sel.SELECT_THREADS](keys, mask, nan_key, chunk, state, hist)
    return x


def bias_add_(y, bias):
    """y[b, f] += bias[f] in place for a (B, F) device array; returns y."""
    y, bias = as_device_array(y, "y"), as_device_array(bias, "bias")
    _same_dtype(y=y, bias=bias)
    if y.size:
        _ops().bias_add[_grid(y.size)](y, bias, bool(y.strides[0] < y.strides[1]))
    return y


def activity_penalty_grad_(g, h, kind, rho, beta):
    """g += beta * d penalty(h) / dh in place for (B, F) device arrays (see
    ``kernels.activity_penalty_grad_``); one element-wise kernel, after a column sum for "kl"."""
    g, h = as_device_array(g, "g"), as_device_array(h, "h")
    if g.ndim != 2 or tuple(g.shape) != tuple(h.shape):
        raise ValueError(f"g and h must be (batch, hidden) of one shape; got {tuple(g.shape)} and {tuple(h.shape)}")
    _same_dtype(g=g, h=h)
    if g.size == 0:
        return g
    batch_fastest = bool(g.strides[0] < g.strides[1])
    scale = float(beta) / g.shape[0]
    if kind == "kl":
        from .. import ACTIVITY_EPS  # noqa: PLC0415

        _ops().kl_code_grad_add[_grid(g.size)](float(rho), scale, ACTIVITY_EPS, batch_sum(h), g, batch_fastest)
    elif kind == "l1":
        _ops().l1_code_grad_add[_grid(g.size)](scale, h, g, batch_fastest)
    else:
        raise ValueError(f"kind must be 'kl' or 'l1'; got {kind!r}")
    return g


def batch_sum(g):
    """sum over axis 0 of a (B, F) device array: (F,) (the bias gradient)."""
    g = as_device_array(g, "g")
    out = empty((g.shape[1],), g.dtype)
    if g.shape[1] == 0:
        return out
    if g.shape[0] == 0:
        return zeros((g.shape[1],), g.dtype)
    _ops().batch_sum[(g.shape[1],), (_ops().RED_THREADS,)](g, out)
    return out


def matmul(a, b, bias=None, relu=False, gate=None):
    """a @ b (+ bias (N,), added by the kernel as it stores; with ``relu`` max(., 0) of it) for
    2-D device arrays of any strides (pass transposes as :func:`transpose` views, not
    ``DeviceNDArray.T``, which copies); C-ordered result.  With ``gate`` (M, N), a ReLU's
    output, the result times ``gate > 0`` (that ReLU's backward, in the same store; a gate
    that is not C-ordered is copied first)."""
    ops = _ops()
    a, b = as_device_array(a, "a"), as_device_array(b, "b")
    _same_dtype(a=a, b=b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: inner dimensions differ: {tuple(a.shape)} @ {tuple(b.shape)}")
    bias = _epilogue_bias(bias, b.shape[1], a.dtype)
    gate = _gate(gate, (a.shape[0], b.shape[1]), a.dtype)
    out = empty((a.shape[0], b.shape[1]), a.dtype)
    if out.size == 0:
        return out
    if a.shape[1] == 0:
        out = zeros(out.shape, out.dtype)
        out = out if bias is None else bias_add_(out, bias)
        out = activation(_ops().RELU, 0.0, out) if relu else out
        return out if gate is None else activation_backward(_ops().RELU, 0.0, gate, out)
    # Row tiles (the batch, possibly large) on grid x, whose limit is 2**31 - 1 (y's is 65,535).
    grid = (math.ceil(out.shape[0] / ops.MM_TILE), math.ceil(out.shape[1] / ops.MM_TILE))
    has_bias, gated = bias is not None, gate is not None
    ops.matmul[grid, (ops.MM_THREADS, ops.MM_THREADS)](a, b, bias if has_bias else out.reshape(out.size), has_bias,
                                                       bool(relu), gated, gate if gated else out, out)
    return out


def transpose(a):
    """The (C, R) transpose of a 2-D device array as a view (no copy)."""
    return _transposed_view(as_device_array(a, "a"))


def _one_block(kernel, *args):
    kernel[1, _ops().RED_THREADS](*args)


def _logits(logits, target):
    logits, target = as_device_array(logits, "logits"), as_device_array(target, "target")
    if logits.ndim != 2 or logits.shape[1] == 0:  # the kernels read logits[i, 0]
        raise ValueError(f"logits must be (batch, n_classes) with n_classes >= 1; got shape {logits.shape}")
    return logits, target


def cross_entropy(logits, target):
    """Mean cross-entropy as a (1,) device array; target a device int array (NaN if out of range)."""
    logits, target = _logits(logits, target)
    out = empty((1,), logits.dtype)
    _one_block(_ops().cross_entropy_fwd, logits, target, out)
    return out


def cross_entropy_backward(logits, target, scale):
    """``scale * (softmax(logits) - onehot(target))``, F-ordered (B, C); scale = grad_out / B.

    F order: the kernel's lanes (consecutive rows) store to consecutive addresses, and the last
    sparse layer's backward reads it feature-major without a transpose kernel."""
    logits, target = _logits(logits, target)
    grad = _cuda().device_array(logits.shape, dtype=logits.dtype, order="F")
    if logits.shape[0]:
        _ops().cross_entropy_bwd[_grid(logits.shape[0])](logits, target, float(scale), grad)
    return grad


def mse_loss(x, t):
    """Mean squared error as a (1,) device array; ``t`` of x's shape and dtype."""
    x, t = _operands(x, t, "input", "target")
    out = empty((1,), x.dtype)
    _one_block(_ops().mse_fwd, _flat_view(x), _flat_view(t), out)
    return out


def mse_loss_backward(x, t, scale):
    """``scale * (x - t)``, laid out like x (scale = 2 grad_out / x.size)."""
    x, t = _operands(x, t, "input", "target")
    out = _empty_like(x)
    if x.size:
        _ops().mse_bwd[_grid(x.size)](_flat_view(x), _flat_view(t), float(scale), _flat_view(out))
    return out


def _per_channel(kernel, n_channels, *args):
    if n_channels:
        kernel[(n_channels,), (_ops().RED_THREADS,)](*args)  # one block per channel


def channel_moments(x3):
    """(mean, biased variance) per channel of a device array viewed as (N, C, S)."""
    x3 = as_device_array(x3, "x")
    mean, var = empty((x3.shape[1],), x3.dtype), empty((x3.shape[1],), x3.dtype)
    _per_channel(_ops().channel_moments, x3.shape[1], x3, mean, var)
    return mean, var


def batch_norm_running_(running_mean, running_var, mean, var, momentum, unbias):
    """In place: running = (1 - momentum) running + momentum batch (variance times ``unbias``)."""
    running_mean, running_var = as_device_array(running_mean, "running_mean"), as_device_array(running_var, "running_var")
    n = running_mean.shape[0]
    if n:
        _ops().batch_norm_running[_grid(n)](mean, var, float(momentum), 1.0 - float(momentum), float(unbias),
                                           running_mean, running_var)


def batch_norm_apply(x3, mean, var, eps, weight, bias):
    """(y, xhat, invstd) of batch normalisation with the given statistics; (N, C, S) C-ordered."""
    x3 = contiguous(x3, "x")
    _same_dtype(x=x3, mean=as_device_array(mean, "mean"), var=as_device_array(var, "var"))
    n_c = x3.shape[1]
    affine = weight is not None
    if not affine:  # placeholders of the right type, not read
        weight = bias = empty((max(n_c, 1),), x3.dtype)
    xhat, y, invstd = empty(x3.shape, x3.dtype), empty(x3.shape, x3.dtype), empty((n_c,), x3.dtype)
    if x3.size or n_c:
        _ops().batch_norm_apply[_grid(max(x3.size, n_c))](x3, mean, var, float(eps), weight, bias, affine,
                                                          xhat, invstd, y)
    return y, xhat, invstd


def batch_norm_backward(g3, xhat3, invstd, weight, use_batch):
    """(grad_x, sum(g xhat), sum(g)) per channel, the last two being the weight and bias grads."""
    g3 = contiguous(g3, "grad_out")
    _same_dtype(grad_out=g3, xhat=xhat3)
    n_c = g3.shape[1]
    sum_g, sum_gx = empty((n_c,), g3.dtype), empty((n_c,), g3.dtype)
    _per_channel(_ops().batch_norm_grad_sums, n_c, g3, xhat3, sum_g, sum_gx)
    affine = weight is not None
    if not affine:
        weight = empty((max(n_c, 1),), g3.dtype)
    gx = empty(g3.shape, g3.dtype)
    m = g3.shape[0] * g3.shape[2]
    if gx.size:
        _ops().batch_norm_grad_input[_grid(gx.size)](g3, xhat3, invstd, weight, affine, sum_g, sum_gx,
                                                     bool(use_batch), 1.0 / max(m, 1), gx)
    return gx, sum_gx, sum_g


def softmax_rows(x2):
    """Row-wise softmax of a (R, K) device array (K >= 1); C-ordered result."""
    x2 = as_device_array(x2, "x")
    out = empty(x2.shape, x2.dtype)
    if x2.shape[0] and x2.shape[1]:
        _ops().softmax_rows[_grid(x2.shape[0])](x2, out)
    return out


def softmax_rows_backward(y2, g2):
    """``y * (g - sum(g y))`` row-wise for (R, K) device arrays; C-ordered result."""
    y2 = as_device_array(y2, "y")
    g2 = as_device_array(g2, "grad_out")
    _same_dtype(y=y2, grad_out=g2)
    out = empty(y2.shape, y2.dtype)
    if y2.shape[0] and y2.shape[1]:
        _ops().softmax_rows_backward[_grid(y2.shape[0])](y2, g2, out)
    return out


def metrics_accumulator():
    """A zeroed (3,) float64 device array: running [sum of loss * batch, correct, samples]."""
    return zeros((3,), np.float64)


def accumulate_metrics(acc, loss, batch, logits=None, target=None):
    """Add one batch to ``acc`` on the device (no host synchronisation); accuracy counted when
    ``target`` is given (integer class labels for (B, C) logits)."""
    loss = as_device_array(loss, "loss")
    has_target = target is not None
    if has_target:
        logits, target = as_device_array(logits, "logits"), as_device_array(target, "target")
    else:  # placeholders of the right types (one element: no zero-byte allocation); not read
        logits = empty((1, 1), loss.dtype)
        target = empty((1,), np.int64)
    _one_block(_ops().accumulate_metrics, loss, int(batch), logits, target, has_target, acc)
    return acc


__all__ += [
    "contiguous", "copy", "take", "activation", "activation_backward", "dropout", "add_", "mul_", "soft_threshold_",
    "hard_threshold_", "group_soft_threshold_", "zero_smallest_", "activity_penalty_grad_", "bias_add_",
    "batch_sum", "matmul", "transpose", "cross_entropy", "cross_entropy_backward", "mse_loss",
    "mse_loss_backward", "metrics_accumulator", "accumulate_metrics", "channel_moments",
    "batch_norm_running_", "batch_norm_apply", "batch_norm_backward", "softmax_rows", "softmax_rows_backward",
]
