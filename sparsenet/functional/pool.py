"""2-D max and average pooling, NCHW, forward and backward (PyTorch semantics, floor mode)."""
import numpy as np

from .. import kernels
from .conv import _check_grad_out, _check_input, _output_size, _pair

__all__ = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward"]


def _check_pool(x, kernel_size, stride, padding, dtype=None):
    x = _check_input(x, "x", dtype)
    kernel = _pair(kernel_size, "kernel_size", 1)
    stride = kernel if stride is None else _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(
            f"padding must be at most half of kernel_size (as in PyTorch); got padding {padding} for "
            f"kernel_size {kernel}; reduce the padding"
        )
    out_hw = _output_size(x.shape, kernel, stride, padding, (1, 1), f"pooling window {kernel}")
    return x, kernel, stride, padding, out_hw


_POOL_DOC = """
    Parameters
    ----------
    x : ndarray, shape (N, C, H, W), float32 or float64
    kernel_size : int or pair of int
    stride : int or pair of int, optional
        Defaults to ``kernel_size`` (non-overlapping windows).
    padding : int or pair of int, default=0
        At most half the kernel size.{pad}

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
        ``OH = (H + 2*ph - KH) // sh + 1`` (floor mode), likewise OW.

    Raises
    ------
    TypeError
        Non-float ``x`` or non-int geometry.
    ValueError
        ``x`` not 4-D, non-positive kernel or stride, padding negative or above half the
        kernel, window larger than the padded input.
"""


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Maximum over each window; padding never wins (it acts as -inf) and NaN propagates.
    {doc}
    Examples
    --------
    >>> import numpy as np
    >>> import sparsenet.functional as F
    >>> F.max_pool2d(np.arange(16.0).reshape(1, 1, 4, 4), 2)
    array([[[[ 5.,  7.],
             [13., 15.]]]])
    """
    x, kernel, stride, padding, _ = _check_pool(x, kernel_size, stride, padding)
    return kernels.max_pool2d(x, kernel, stride, padding)


def max_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0):
    """Gradient of :func:`max_pool2d` with respect to ``x``.

    Each window's gradient goes to its maximum (the first one in row-major order on ties),
    recomputed from ``x``; overlapping windows accumulate.

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)

    Examples
    --------
    >>> import numpy as np
    >>> max_pool2d_backward(np.ones((1, 1, 1, 1)), np.array([[[[1.0, 3.0], [2.0, 0.0]]]]), 2)
    array([[[[0., 1.],
             [0., 0.]]]])
    """
    x, kernel, stride, padding, out_hw = _check_pool(x, kernel_size, stride, padding)
    g = _check_grad_out(grad_out, x.shape[:2] + out_hw, x.dtype)
    return kernels.max_pool2d_backward(g, x, kernel, stride, padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Mean over each window, padding counted as zeros (PyTorch's ``count_include_pad=True``).
    {doc}
    Examples
    --------
    >>> import numpy as np
    >>> import sparsenet.functional as F
    >>> F.avg_pool2d(np.arange(16.0).reshape(1, 1, 4, 4), 2)
    array([[[[ 2.5,  4.5],
             [10.5, 12.5]]]])
    """
    x, kernel, stride, padding, _ = _check_pool(x, kernel_size, stride, padding)
    return kernels.avg_pool2d(x, kernel, stride, padding)


def avg_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0):
    """Gradient of :func:`avg_pool2d` with respect to ``x`` (only ``x``'s shape and dtype are used).

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)

    Examples
    --------
    >>> import numpy as np
    >>> avg_pool2d_backward(np.ones((1, 1, 1, 1)), np.zeros((1, 1, 2, 2)), 2)
    array([[[[0.25, 0.25],
             [0.25, 0.25]]]])
    """
    x, kernel, stride, padding, out_hw = _check_pool(x, kernel_size, stride, padding)
    g = _check_grad_out(grad_out, x.shape[:2] + out_hw, x.dtype)
    return kernels.avg_pool2d_backward(g, x.shape, x.dtype, kernel, stride, padding)


max_pool2d.__doc__ = max_pool2d.__doc__.format(doc=_POOL_DOC.format(pad=" Padding acts as -inf."))
avg_pool2d.__doc__ = avg_pool2d.__doc__.format(doc=_POOL_DOC.format(pad=" Padding counts as zeros."))
