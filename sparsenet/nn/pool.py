"""Pooling layers over (N, C, H, W) inputs: thin stateful shells over ``sparsenet.functional``."""
from .. import functional as F
from .module import Module

__all__ = ["MaxPool2d", "AvgPool2d"]


def _pair_config(v):
    return list(v) if isinstance(v, (tuple, list)) else v


class _Pool2d(Module):
    _supports_cuda = True

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def _args(self):
        return self.kernel_size, self.stride, self.padding

    def get_config(self):
        return {"kernel_size": _pair_config(self.kernel_size), "stride": _pair_config(self.stride),
                "padding": _pair_config(self.padding)}


class MaxPool2d(_Pool2d):
    """2-D max pooling; ``stride`` defaults to ``kernel_size`` (as in PyTorch).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
    padding : int or (int, int), default=0
        Implicit ``-inf`` padding.

    Notes
    -----
    Input shape (N, C, H, W); output (N, C, H_out, W_out) with
    ``H_out = (H + 2 * padding - kernel_size) // stride + 1``.

    Examples
    --------
    >>> import numpy as np
    >>> MaxPool2d(2)(np.arange(16.0).reshape(1, 1, 4, 4))
    array([[[[ 5.,  7.],
             [13., 15.]]]])
    """

    def forward(self, x):
        y = F.max_pool2d(x, *self._args())
        self._save(x)
        return y

    def backward(self, grad_out):
        x = self._saved()
        return F.max_pool2d_backward(grad_out, x, *self._args())


class AvgPool2d(_Pool2d):
    """2-D average pooling; ``stride`` defaults to ``kernel_size``.  Parameters as :class:`MaxPool2d`.

    Examples
    --------
    >>> import numpy as np
    >>> AvgPool2d(2)(np.ones((1, 1, 4, 4)))
    array([[[[1., 1.],
             [1., 1.]]]])
    """

    def forward(self, x):
        y = F.avg_pool2d(x, *self._args())
        self._save(x)
        return y

    def backward(self, grad_out):
        x = self._saved()
        return F.avg_pool2d_backward(grad_out, x, *self._args())
