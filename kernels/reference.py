"""Slow, obvious NumPy/SciPy references for every kernel: for tests and benchmarks only.

They compute in float64 from the same raw arrays the kernels take, and are never used as a
fallback by the library.
"""
import math

import numpy as np
import scipy.sparse as sp


def dense_from_csr(indptr, indices, data, shape):
    """Densify a CSR matrix with a Python loop (independent of scipy's conversion)."""
    out = np.zeros(shape, dtype=np.float64)
    for i in range(shape[0]):
        for k in range(indptr[i], indptr[i + 1]):
            out[i, indices[k]] += data[k]
    return out


def spmm(indptr, indices, data, shape, x):
    """Y = X W^T."""
    return np.asarray(x, np.float64) @ dense_from_csr(indptr, indices, data, shape).T


def spmm_t(indptr, indices, data, shape, g):
    """grad_X = G W."""
    return np.asarray(g, np.float64) @ dense_from_csr(indptr, indices, data, shape)


def sddmm(indptr, indices, shape, g, x):
    """grad_W[k] = (G^T X)[row_k, col_k] for each stored k."""
    rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
    full = np.asarray(g, np.float64).T @ np.asarray(x, np.float64)
    return full[rows, np.asarray(indices)]


def csr_transpose(indptr, indices, shape):
    """W^T's pattern and the permutation of data, via scipy."""
    m = sp.csr_matrix((np.arange(len(indices), dtype=np.float64) + 1, indices, indptr), shape=shape)
    t = m.T.tocsr()
    t.sort_indices()
    return t.indptr, t.indices, t.data.astype(np.int64) - 1


# ---------------------------------------------------------------------------------------------
# Convolution, locally connected, pooling (NCHW).  Geometry as int pairs; float64 throughout.
# ---------------------------------------------------------------------------------------------
def _conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _tap(a, ki, kj, out_h, out_w, stride, dilation):
    """The (N, C, OH, OW) slice of a padded array that kernel tap (ki, kj) multiplies."""
    r0, c0 = ki * dilation[0], kj * dilation[1]
    return a[:, :, r0:r0 + stride[0] * (out_h - 1) + 1:stride[0], c0:c0 + stride[1] * (out_w - 1) + 1:stride[1]]


def conv2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """PyTorch conv2d semantics as a sum over kernel taps of channel contractions."""
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    og = o // groups
    out_h = _conv_out(h, kh, stride[0], padding[0], dilation[0])
    out_w = _conv_out(w, kw, stride[1], padding[1], dilation[1])
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    out = np.zeros((n, o, out_h, out_w))
    for gi in range(groups):
        xs = xp[:, gi * cg:(gi + 1) * cg]
        for ki in range(kh):
            for kj in range(kw):
                patch = _tap(xs, ki, kj, out_h, out_w, stride, dilation)
                out[:, gi * og:(gi + 1) * og] += np.einsum("nchw,oc->nohw", patch, weight[gi * og:(gi + 1) * og, :, ki, kj])
    if bias is not None:
        out += np.asarray(bias, np.float64)[:, None, None]
    return out


def conv2d_backward(g, x, weight, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """(grad_x, grad_weight, grad_bias) of :func:`conv2d`: the same tap loop, transposed."""
    g = np.asarray(g, np.float64)
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    og = o // groups
    out_h, out_w = g.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(weight)
    for gi in range(groups):
        cs, os_ = slice(gi * cg, (gi + 1) * cg), slice(gi * og, (gi + 1) * og)
        for ki in range(kh):
            for kj in range(kw):
                _tap(gxp[:, cs], ki, kj, out_h, out_w, stride, dilation)[...] += np.einsum(
                    "nohw,oc->nchw", g[:, os_], weight[os_, :, ki, kj])
                gw[os_, :, ki, kj] = np.einsum("nohw,nchw->oc", g[:, os_],
                                               _tap(xp[:, cs], ki, kj, out_h, out_w, stride, dilation))
    gx = gxp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w]
    return gx, gw, g.sum(axis=(0, 2, 3))


def _patches(xp, kh, kw, out_h, out_w, stride):
    """(N, OH, OW, C*KH*KW) receptive fields, flattened (c, ki, kj) like a conv filter."""
    n, c = xp.shape[:2]
    out = np.empty((n, out_h, out_w, c, kh, kw))
    for r in range(out_h):
        for j in range(out_w):
            out[:, r, j] = xp[:, :, r * stride[0]:r * stride[0] + kh, j * stride[1]:j * stride[1] + kw]
    return out.reshape(n, out_h, out_w, -1)


def local2d(x, weight, bias=None, kernel=(1, 1), stride=(1, 1), padding=(0, 0)):
    """Locally connected layer; weight (OH, OW, O, C*KH*KW), bias (O, OH, OW)."""
    x = np.asarray(x, np.float64)
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    out_h, out_w = weight.shape[:2]
    out = np.einsum("nrjq,rjoq->norj", _patches(xp, *kernel, out_h, out_w, stride), np.asarray(weight, np.float64))
    return out if bias is None else out + np.asarray(bias, np.float64)


def local2d_backward(g, x, weight, kernel=(1, 1), stride=(1, 1), padding=(0, 0)):
    """(grad_x, grad_weight, grad_bias) of :func:`local2d`."""
    g = np.asarray(g, np.float64)
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    n, c, h, w = x.shape
    kh, kw = kernel
    out_h, out_w = weight.shape[:2]
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    gw = np.einsum("norj,nrjq->rjoq", g, _patches(xp, kh, kw, out_h, out_w, stride))
    gpatch = np.einsum("norj,rjoq->nrjq", g, weight).reshape(n, out_h, out_w, c, kh, kw)
    gxp = np.zeros_like(xp)
    for r in range(out_h):
        for j in range(out_w):
            gxp[:, :, r * stride[0]:r * stride[0] + kh, j * stride[1]:j * stride[1] + kw] += gpatch[:, r, j]
    return gxp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w], gw, g.sum(axis=0)


def _pool_windows(x, kernel, stride, padding, fill):
    """Yield (r, j, window (N, C, KH*KW)) over a padded copy filled with ``fill``."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2), constant_values=fill)
    out_h = _conv_out(h, kernel[0], stride[0], padding[0], 1)
    out_w = _conv_out(w, kernel[1], stride[1], padding[1], 1)
    for r in range(out_h):
        for j in range(out_w):
            r0, j0 = r * stride[0], j * stride[1]
            yield r, j, r0, j0, xp[:, :, r0:r0 + kernel[0], j0:j0 + kernel[1]].reshape(n, c, -1)


def max_pool2d(x, kernel, stride, padding):
    """Max over each window, padding = -inf."""
    n, c = np.shape(x)[:2]
    res = {}
    for r, j, _, _, win in _pool_windows(x, kernel, stride, padding, -np.inf):
        res[r, j] = win.max(axis=2)
    out_h, out_w = max(k[0] for k in res) + 1, max(k[1] for k in res) + 1
    out = np.empty((n, c, out_h, out_w))
    for (r, j), v in res.items():
        out[:, :, r, j] = v
    return out


def max_pool2d_backward(g, x, kernel, stride, padding):
    """Each window's gradient to the first maximum of the window (row-major order)."""
    n, c, h, w = np.shape(x)
    g = np.asarray(g, np.float64)
    gxp = np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]))
    for r, j, r0, j0, win in _pool_windows(x, kernel, stride, padding, -np.inf):
        a, b = np.divmod(win.argmax(axis=2), kernel[1])
        for ni in range(n):
            for ci in range(c):
                gxp[ni, ci, r0 + a[ni, ci], j0 + b[ni, ci]] += g[ni, ci, r, j]
    return gxp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w]


def avg_pool2d(x, kernel, stride, padding):
    """Mean over each window, zeros for padding counted in the divisor."""
    n, c = np.shape(x)[:2]
    res = {}
    for r, j, _, _, win in _pool_windows(x, kernel, stride, padding, 0.0):
        res[r, j] = win.sum(axis=2) / (kernel[0] * kernel[1])
    out_h, out_w = max(k[0] for k in res) + 1, max(k[1] for k in res) + 1
    out = np.empty((n, c, out_h, out_w))
    for (r, j), v in res.items():
        out[:, :, r, j] = v
    return out


def avg_pool2d_backward(g, x_shape, kernel, stride, padding):
    """Each window's gradient spread evenly over its KH*KW (padded) cells."""
    n, c, h, w = x_shape
    g = np.asarray(g, np.float64)
    gxp = np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]))
    out_h, out_w = g.shape[2:]
    for r in range(out_h):
        for j in range(out_w):
            r0, j0 = r * stride[0], j * stride[1]
            gxp[:, :, r0:r0 + kernel[0], j0:j0 + kernel[1]] += g[:, :, r, j, None, None] / (kernel[0] * kernel[1])
    return gxp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w]


# ---------------------------------------------------------------------------------------------
# Sparsity-pattern changes (kernels.topology)
# ---------------------------------------------------------------------------------------------
def topk_abs_grad(indptr, indices, g, x, k):
    """Dense reference of the RigL growth criterion: materialise G^T X, mask the pattern, sort.

    Ties go to the smaller flat index.  Returns ``(rows, cols, scores)`` sorted by (row, col).
    """
    g = np.asarray(g, np.float64)
    x = np.asarray(x, np.float64)
    n_row, n_col = g.shape[1], x.shape[1]
    score = np.abs(g.T @ x).ravel()
    rows = np.repeat(np.arange(n_row), np.diff(indptr))
    taken = np.zeros(n_row * n_col, bool)
    taken[rows * n_col + np.asarray(indices)] = True
    free = np.flatnonzero(~taken & ~np.isnan(score))
    order = np.lexsort((free, -score[free]))[:k]
    flat = np.sort(free[order])
    r, c = np.divmod(flat, n_col)
    return r, c, score[flat]


def csr_lookup(indptr, indices, rows, cols):
    """Position of (row, col) in the pattern or -1, by a Python dict."""
    where = {}
    for i in range(len(indptr) - 1):
        for k in range(indptr[i], indptr[i + 1]):
            where[i, int(indices[k])] = k
    return np.array([where.get((int(r), int(c)), -1) for r, c in zip(rows, cols)], dtype=np.int64)


def zero_smallest(x, n):
    """A copy of x with its n smallest-magnitude entries zeroed: a stable sort of |x| (NaN
    last, so the largest; ties in memory order) picks them."""
    out = np.array(x, copy=True, order="K")
    flat = out.ravel(order="K")  # a view of the contiguous copy, in memory order
    flat[np.argsort(np.abs(flat), kind="stable")[:max(int(n), 0)]] = 0
    return out


def group_soft_threshold(x, groups, t):
    """``x_g * max(0, 1 - t sqrt(n_g) / ||x_g||)`` per group, ``groups`` a list of index arrays
    into x.ravel() (a Python loop over the groups, float64)."""
    out = np.array(x, dtype=np.float64).ravel()
    for idx in groups:
        norm = np.sqrt(np.sum(out[idx] ** 2))
        out[idx] *= max(0.0, 1.0 - t * np.sqrt(len(idx)) / norm) if norm > 0 else 0.0
    return out.reshape(np.shape(x))


def philox4x32(counter, key):
    """Philox4x32-10 words, vectorised: counter (4, n) and key (2,) of 32-bit values -> (4, n)
    uint64.  Python-int arithmetic on object arrays, so no product can overflow by construction."""
    c = [np.asarray(w, dtype=object) for w in counter]
    k0, k1 = int(key[0]), int(key[1])
    for _ in range(10):
        p0, p1 = c[0] * 0xD2511F53, c[2] * 0xCD9E8D57
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ k1, p0 & 0xFFFFFFFF]
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return np.array([np.asarray(w, dtype=np.uint64) for w in c])


def dropout(x, p, seed):
    """Inverted dropout with the Philox mask of kernels.dropout: in the (first axis, the others
    merged) view, with Q = ceil(columns / 4), element (r, c) is kept iff word c // Q of counter
    (c % Q, r % 2**32, r // 2**32, 0) under key (seed % 2**32, seed // 2**32) is
    >= ceil(p * 2**32)."""
    x = np.asarray(x)
    if x.size == 0:
        return x.copy()
    cols = x.size // (x.shape[0] if x.ndim else 1)
    quarter = -(-cols // 4)
    r, c = np.divmod(np.arange(x.size), cols)
    words = philox4x32([c % quarter, r % 2**32, r // 2**32, np.zeros_like(r)], (seed % 2**32, seed // 2**32))
    keep = words[c // quarter, np.arange(r.size)].astype(np.int64) >= math.ceil(p * 2**32)
    scale = x.dtype.type(1 / (1 - p)) if p < 1 else x.dtype.type(0)
    return np.where(keep.reshape(x.shape), x * scale, x.dtype.type(0)).astype(x.dtype)
