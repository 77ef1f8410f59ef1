"""2-D convolutions, NCHW, as stateless functions: dense, weight-sparse (CSR) and locally connected.

The three share one geometry (PyTorch ``conv2d`` semantics) and differ only in connectivity:

* :func:`conv2d`: local receptive fields, weights *tied* across positions (one filter slid
  over the input);
* :func:`sparse_conv2d`: the same, with most filter taps removed; the filters are stored as a
  :class:`~sparsenet.CSRMatrix` and the kernels visit only the stored taps;
* :func:`locally_connected2d`: local receptive fields, weights *unshared* (one filter per
  output position).

See :func:`sparsenet.connectivity.connectivity_costs` for what each costs in parameters and
multiply-adds.
"""
import numbers

import numpy as np

from .. import kernels
from .._validation import as_float_array
from ..csr import CSRMatrix

__all__ = [
    "conv2d", "conv2d_backward", "sparse_conv2d", "sparse_conv2d_backward",
    "locally_connected2d", "locally_connected2d_backward",
]


# --------------------------------------------------------------------------- boundary helpers
def _is_int(v):
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def _pair(value, name, minimum):
    """Normalise an int or a pair of ints to a tuple, each entry >= ``minimum``."""
    if _is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints; got {value!r}")
    if min(pair) < minimum:
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return pair


def _check_input(x, name="x", dtype=None):
    """A 4-D float32/float64 NCHW array, C-contiguous (copied only if it was not)."""
    x = as_float_array(x, name, dtype)
    if x.ndim != 4:
        raise ValueError(f"{name} must be 4-D (batch, channels, height, width); got shape {x.shape}")
    return kernels.ascontiguous(x)


def _check_relu_output(relu_output, x):
    """The gate of a fused ReLU backward: an array of x's shape and dtype (None passes through)."""
    if relu_output is None:
        return None
    gate = _check_input(relu_output, "relu_output", x.dtype)
    if tuple(gate.shape) != tuple(x.shape):
        raise ValueError(f"relu_output must have x's shape {tuple(x.shape)}; got {tuple(gate.shape)}")
    return gate


def _output_size(x_shape, kernel, stride, padding, dilation, what):
    """(OH, OW), raising when the (dilated) kernel does not fit in the padded input."""
    out = tuple(kernels.conv2d_output_size(x_shape[2 + a], kernel[a], stride[a], padding[a], dilation[a])
                for a in range(2))
    if min(out) < 1:
        eff = tuple(dilation[a] * (kernel[a] - 1) + 1 for a in range(2))
        padded = (x_shape[2] + 2 * padding[0], x_shape[3] + 2 * padding[1])
        raise ValueError(
            f"{what} (effective size {eff}) is larger than the padded input {padded} of x with shape "
            f"{tuple(x_shape)}; use a smaller kernel or dilation, or more padding"
        )
    return out


def _check_groups(groups, in_channels, out_channels, x_shape, w_shape):
    if not _is_int(groups):
        raise TypeError(f"groups must be an int; got {groups!r}")
    if groups < 1:
        raise ValueError(f"groups must be positive; got {groups}")
    if in_channels < 1:  # no channel to convolve (and C/groups would divide by zero downstream)
        raise ValueError(f"x must have at least one channel; got shape {tuple(x_shape)}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide both in_channels={in_channels} and out_channels={out_channels} "
            f"(x shape {tuple(x_shape)}, weight shape {tuple(w_shape)})"
        )
    return int(groups)


def _check_bias(bias, shape, dtype):
    if bias is None:
        return None
    bias = as_float_array(bias, "bias", dtype)
    if bias.shape != shape:
        raise ValueError(f"bias must have shape {shape}; got shape {bias.shape}")
    return bias


def _check_grad_out(grad_out, expected, dtype):
    g = _check_input(grad_out, "grad_out", dtype)
    if g.shape != expected:
        raise ValueError(f"grad_out must have the forward output's shape {expected}; got shape {g.shape}")
    return g


def _check_dense_conv(x, weight, stride, padding, dilation, groups):
    weight = as_float_array(weight, "weight")
    x = _check_input(x, "x", weight.dtype)
    if weight.ndim != 4:
        raise ValueError(
            f"weight must be 4-D (out_channels, in_channels/groups, kh, kw); got shape {weight.shape}"
        )
    stride = _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    dilation = _pair(dilation, "dilation", 1)
    groups = _check_groups(groups, x.shape[1], weight.shape[0], x.shape, weight.shape)
    if weight.shape[1] * groups != x.shape[1]:
        raise ValueError(
            f"x has {x.shape[1]} channels but weight of shape {weight.shape} with groups={groups} expects "
            f"in_channels = weight.shape[1] * groups = {weight.shape[1] * groups}"
        )
    if min(weight.shape[2:]) < 1:
        raise ValueError(f"kernel size must be positive; got weight shape {weight.shape}")
    out_hw = _output_size(x.shape, weight.shape[2:], stride, padding, dilation, f"kernel {weight.shape[2:]}")
    return x, kernels.ascontiguous(weight), stride, padding, dilation, out_hw


# --------------------------------------------------------------------------- dense convolution
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, relu=False):
    """2-D cross-correlation with PyTorch's ``conv2d`` semantics, computed directly.

    ``y[n, o, r, j] = bias[o] + sum_{c, ki, kj} weight[o, c, ki, kj] *
    xpad[n, g*C/groups + c, r*sh + ki*dh, j*sw + kj*dw]`` with ``g = o // (O/groups)``.
    No im2col matrix is formed: the only temporary is the zero-padded input.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
    weight : ndarray, shape (O, C/groups, KH, KW), same dtype as ``x``
    bias : ndarray, shape (O,), optional
    stride, padding, dilation : int or pair of int, default=1, 0, 1
        Positive stride and dilation, non-negative zero padding, as ``(height, width)``.
    groups : int, default=1
        Divides C and O; ``groups == C`` is a depthwise convolution.
    relu : bool, default False
        Return ``max(y, 0)`` (as ``nn.ReLU`` computes it on the same device): on the GPU as ``y``
        is stored (in place right after, for groups of up to 8 output channels, which run on
        the direct kernels), on the host in place; no second array either way.

    Returns
    -------
    y : ndarray, shape (N, O, OH, OW), C-contiguous
        ``OH = (H + 2*ph - dh*(KH-1) - 1) // sh + 1``, likewise OW.

    Raises
    ------
    TypeError
        Non-float or mixed dtypes, non-int geometry.
    ValueError
        Wrong ndim, channel mismatch, ``groups`` not dividing the channels, non-positive
        stride/dilation, negative padding, kernel larger than the padded input.

    Examples
    --------
    >>> import numpy as np
    >>> import sparsenet.functional as F
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> F.conv2d(x, np.ones((1, 1, 2, 2)), stride=2)
    array([[[[10., 18.],
             [42., 50.]]]])
    """
    x, weight, stride, padding, dilation, _ = _check_dense_conv(x, weight, stride, padding, dilation, groups)
    bias = _check_bias(bias, (weight.shape[0],), weight.dtype)
    return kernels.conv2d(x, weight, bias, stride, padding, dilation, relu=relu)


def conv2d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, groups=1, *, need_input=True,
                    relu_output=None):
    """Gradients of :func:`conv2d` with respect to x, weight and bias.

    Parameters
    ----------
    grad_out : ndarray, shape (N, O, OH, OW)
    x : ndarray, shape (N, C, H, W)
        The forward input.
    weight : ndarray, shape (O, C/groups, KH, KW)
    stride, padding, dilation, groups
        As in the forward call.
    need_input : bool, default True
        False skips the input gradient (a first layer's, which training never uses).
    relu_output : ndarray, shape (N, C, H, W), optional
        When x came out of a ReLU, that ReLU's output: ``grad_x`` is then multiplied by
        ``relu_output > 0``, the ReLU's backward, as it is computed (one kernel on the GPU).
        Not read when ``need_input`` is False.

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W), or None when ``need_input`` is False
    grad_weight : ndarray, shape (O, C/groups, KH, KW)
    grad_bias : ndarray, shape (O,)
        ``grad_out`` summed over batch and positions (returned whether or not a bias was used).

    Examples
    --------
    >>> import numpy as np
    >>> gx, gw, gb = conv2d_backward(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)))
    >>> gx[0, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    >>> gw[0, 0], gb
    (array([[4., 4.],
           [4., 4.]]), array([4.]))
    """
    x, weight, stride, padding, dilation, out_hw = _check_dense_conv(x, weight, stride, padding, dilation, groups)
    g = _check_grad_out(grad_out, (x.shape[0], weight.shape[0]) + out_hw, weight.dtype)
    gate = _check_relu_output(relu_output, x) if need_input else None
    grad_x, grad_w = kernels.conv2d_backward(g, x, weight, stride, padding, dilation, need_input, gate=gate)
    return grad_x, grad_w, kernels.channel_sum(g)


# --------------------------------------------------------------------------- weight-sparse convolution
def _check_sparse_conv(x, weight, kernel_size, stride, padding, dilation, groups):
    if not isinstance(weight, CSRMatrix):
        raise TypeError(
            "weight must be a sparsenet.CSRMatrix of shape (out_channels, in_channels/groups*kh*kw); got "
            f"{type(weight).__name__} (e.g. CSRMatrix.from_dense(w.reshape(w.shape[0], -1)), or use F.conv2d)"
        )
    x = _check_input(x, "x", weight.dtype)
    kernel = _pair(kernel_size, "kernel_size", 1)
    stride = _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    dilation = _pair(dilation, "dilation", 1)
    groups = _check_groups(groups, x.shape[1], weight.shape[0], x.shape, weight.shape)
    cols = x.shape[1] // groups * kernel[0] * kernel[1]
    if weight.shape[1] != cols:
        raise ValueError(
            f"weight must have shape (out_channels, in_channels/groups*kh*kw) = ({weight.shape[0]}, {cols}) "
            f"for x of shape {x.shape}, kernel_size {kernel} and groups={groups}; got shape {weight.shape}"
        )
    out_hw = _output_size(x.shape, kernel, stride, padding, dilation, f"kernel_size {kernel}")
    return x, kernel, stride, padding, dilation, groups, out_hw


def sparse_conv2d(x, weight, kernel_size, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution with a weight-sparse filter bank stored as a CSR matrix.

    Row ``o`` of ``weight`` is filter ``o`` flattened in ``(c, ki, kj)`` order, i.e.
    ``weight.to_dense().reshape(O, C/groups, KH, KW)`` is the dense filter bank.  The kernel
    walks each row's stored taps and adds ``w * (shifted input plane)`` to the output plane
    (a direct sparse convolution, Park et al., ICLR 2017): the cost is proportional to nnz
    and the dense filters are never formed.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
    weight : CSRMatrix, shape (O, C/groups * KH * KW), same dtype as ``x``
    kernel_size : int or pair of int
        ``(KH, KW)``.
    bias : ndarray, shape (O,), optional
    stride, padding, dilation, groups
        As in :func:`conv2d`.

    Returns
    -------
    y : ndarray, shape (N, O, OH, OW)

    Raises
    ------
    TypeError, ValueError
        As in :func:`conv2d`; also a weight that is not a CSRMatrix of the right shape.

    Examples
    --------
    >>> import numpy as np
    >>> import sparsenet.functional as F
    >>> from sparsenet import CSRMatrix
    >>> w = CSRMatrix.from_dense(np.array([[0.0, 0.0, 0.0, 2.0]]))   # one 2x2 filter, one tap
    >>> F.sparse_conv2d(np.arange(9.0).reshape(1, 1, 3, 3), w, kernel_size=2)
    array([[[[ 8., 10.],
             [14., 16.]]]])
    """
    x, kernel, stride, padding, dilation, groups, _ = _check_sparse_conv(
        x, weight, kernel_size, stride, padding, dilation, groups)
    bias = _check_bias(bias, (weight.shape[0],), weight.dtype)
    return kernels.sparse_conv2d(x, weight.indptr, weight.indices, weight.data, kernel, bias, stride,
                                 padding, dilation, groups)


def sparse_conv2d_backward(grad_out, x, weight, kernel_size, stride=1, padding=0, dilation=1, groups=1, *,
                           need_input=True, relu_output=None):
    """Gradients of :func:`sparse_conv2d`; the weight gradient lives on the stored pattern.

    ``need_input=False`` skips the input gradient (returned as None), and ``relu_output`` gates
    it, as in :func:`conv2d_backward`.

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W), or None
    grad_weight : ndarray, shape (nnz,)
        Aligned with ``weight.data``; entries not stored get no gradient (the pattern is fixed).
    grad_bias : ndarray, shape (O,)

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import CSRMatrix
    >>> w = CSRMatrix.from_dense(np.array([[0.0, 0.0, 0.0, 2.0]]))
    >>> gx, gw, gb = sparse_conv2d_backward(np.ones((1, 1, 2, 2)), np.arange(9.0).reshape(1, 1, 3, 3), w, 2)
    >>> gw, gb
    (array([24.]), array([4.]))
    """
    x, kernel, stride, padding, dilation, groups, out_hw = _check_sparse_conv(
        x, weight, kernel_size, stride, padding, dilation, groups)
    g = _check_grad_out(grad_out, (x.shape[0], weight.shape[0]) + out_hw, weight.dtype)
    gate = _check_relu_output(relu_output, x) if need_input else None
    grad_x, grad_w = kernels.sparse_conv2d_backward(g, x, weight.indptr, weight.indices, weight.data, kernel,
                                                    stride, padding, dilation, groups, need_input, gate=gate)
    return grad_x, grad_w, kernels.channel_sum(g)


# --------------------------------------------------------------------------- locally connected
def _check_local(x, weight, stride, padding):
    weight = as_float_array(weight, "weight")
    x = _check_input(x, "x", weight.dtype)
    if weight.ndim != 6:
        raise ValueError(
            f"weight must be 6-D (out_h, out_w, out_channels, in_channels, kh, kw); got shape {weight.shape}"
        )
    stride = _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    if weight.shape[3] != x.shape[1]:
        raise ValueError(
            f"x has {x.shape[1]} channels but weight of shape {weight.shape} expects in_channels = "
            f"weight.shape[3] = {weight.shape[3]}"
        )
    kernel = weight.shape[4:]
    if min(kernel) < 1:
        raise ValueError(f"kernel size must be positive; got weight shape {weight.shape}")
    out_hw = _output_size(x.shape, kernel, stride, padding, (1, 1), f"kernel {kernel}")
    if weight.shape[:2] != out_hw:
        raise ValueError(
            f"weight must have one filter per output position, shape[:2] = (out_h, out_w) = {out_hw} for "
            f"x of shape {x.shape}, stride {stride}, padding {padding}; got weight shape {weight.shape}"
        )
    flat = kernels.ascontiguous(weight).reshape(weight.shape[:3] + (-1,))
    return x, flat, kernel, stride, padding, out_hw


def locally_connected2d(x, weight, bias=None, stride=1, padding=0):
    """Locally connected 2-D layer: a convolution's receptive fields without weight sharing.

    ``y[n, o, r, j] = bias[o, r, j] + sum_{c, ki, kj} weight[r, j, o, c, ki, kj] *
    xpad[n, c, r*sh + ki, j*sw + kj]``.  With ``weight[r, j] = w`` for every position it equals
    ``conv2d(x, w)``; in general it has ``OH*OW`` times the convolution's parameters.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
    weight : ndarray, shape (OH, OW, O, C, KH, KW)
        One ``(O, C, KH, KW)`` filter bank per output position; ``weight[r, j]`` is laid out
        like a :func:`conv2d` weight.
    bias : ndarray, shape (O, OH, OW), optional
        One bias per output unit (unshared, like the weights).
    stride, padding : int or pair of int, default=1, 0

    Returns
    -------
    y : ndarray, shape (N, O, OH, OW)

    Raises
    ------
    TypeError, ValueError
        As in :func:`conv2d`; also ``weight.shape[:2]`` different from the output size.

    Examples
    --------
    >>> import numpy as np
    >>> import sparsenet.functional as F
    >>> w = np.ones((2, 2, 1, 1, 2, 2))          # 4 positions, each its own 2x2 filter
    >>> w[0, 0] *= 10
    >>> F.locally_connected2d(np.ones((1, 1, 3, 3)), w)
    array([[[[40.,  4.],
             [ 4.,  4.]]]])
    """
    x, flat, kernel, stride, padding, out_hw = _check_local(x, weight, stride, padding)
    bias = _check_bias(bias, (flat.shape[2],) + out_hw, flat.dtype)
    return kernels.local2d(x, flat, bias, kernel, stride, padding)


def locally_connected2d_backward(grad_out, x, weight, stride=1, padding=0, *, need_input=True):
    """Gradients of :func:`locally_connected2d`.

    ``need_input=False`` skips the input gradient (returned as None), as in :func:`conv2d_backward`.

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W), or None
    grad_weight : ndarray, shape (OH, OW, O, C, KH, KW)
    grad_bias : ndarray, shape (O, OH, OW)

    Examples
    --------
    >>> import numpy as np
    >>> gx, gw, gb = locally_connected2d_backward(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3)),
    ...                                           np.ones((2, 2, 1, 1, 2, 2)))
    >>> gx[0, 0], gb.shape
    (array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]]), (1, 2, 2))
    """
    x, flat, kernel, stride, padding, out_hw = _check_local(x, weight, stride, padding)
    g = _check_grad_out(grad_out, (x.shape[0], flat.shape[2]) + out_hw, flat.dtype)
    grad_x, grad_w = kernels.local2d_backward(g, x, flat, kernel, stride, padding, need_input)
    grad_b = kernels.batch_sum(g.reshape(g.shape[0], int(np.prod(g.shape[1:])))).reshape(g.shape[1:])
    return grad_x, grad_w.reshape(tuple(np.shape(weight))), grad_b
