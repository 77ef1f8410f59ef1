"""Element-wise activations and Softmax.  Output dtype = input dtype; no parameters."""
import numbers

import numpy as np
from scipy.special import expit

from .._validation import as_float_array
from .module import Module

__all__ = ["ReLU", "LeakyReLU", "Tanh", "Sigmoid", "Softmax"]


def _check_grad(grad_out, shape):
    grad_out = as_float_array(grad_out, "grad_out")
    if grad_out.shape != shape:
        raise ValueError(f"grad_out must have the output's shape {shape}; got {grad_out.shape}")
    return grad_out


class ReLU(Module):
    """``max(x, 0)`` element-wise; gradient 0 at 0.

    Examples
    --------
    >>> import numpy as np
    >>> ReLU()(np.array([-1.0, 2.0]))
    array([0., 2.])
    """

    def forward(self, x):
        x = as_float_array(x, "x")
        y = np.maximum(x, 0)
        self._save(y)
        return y

    def backward(self, grad_out):
        y = self._saved()
        return _check_grad(grad_out, y.shape) * (y > 0)


class LeakyReLU(Module):
    """``x if x > 0 else negative_slope * x``.

    Examples
    --------
    >>> import numpy as np
    >>> LeakyReLU(0.1)(np.array([-1.0, 2.0]))
    array([-0.1,  2. ])
    """

    def __init__(self, negative_slope=0.01):
        super().__init__()
        if not isinstance(negative_slope, numbers.Real) or not np.isfinite(negative_slope):
            raise ValueError(f"negative_slope must be a finite number; got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        x = as_float_array(x, "x")
        positive = x > 0
        self._save(positive)
        return np.where(positive, x, x * self.negative_slope)

    def backward(self, grad_out):
        positive = self._saved()
        g = _check_grad(grad_out, positive.shape)
        return np.where(positive, g, g * self.negative_slope)

    def get_config(self):
        return {"negative_slope": self.negative_slope}


class Tanh(Module):
    """Hyperbolic tangent.

    Examples
    --------
    >>> import numpy as np
    >>> Tanh()(np.array([0.0]))
    array([0.])
    """

    def forward(self, x):
        y = np.tanh(as_float_array(x, "x"))
        self._save(y)
        return y

    def backward(self, grad_out):
        y = self._saved()
        return _check_grad(grad_out, y.shape) * (1 - y * y)


class Sigmoid(Module):
    """Logistic function ``1 / (1 + exp(-x))``, overflow-free (``scipy.special.expit``).

    Examples
    --------
    >>> import numpy as np
    >>> Sigmoid()(np.array([0.0, -1000.0]))
    array([0.5, 0. ])
    """

    def forward(self, x):
        y = expit(as_float_array(x, "x"))
        self._save(y)
        return y

    def backward(self, grad_out):
        y = self._saved()
        return _check_grad(grad_out, y.shape) * (y * (1 - y))


def softmax(x, dim=-1):
    """Numerically stable softmax along ``dim`` (the maximum is subtracted first)."""
    z = x - np.max(x, axis=dim, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=dim, keepdims=True)


class Softmax(Module):
    """Softmax along ``dim`` (default the last).

    For classification train on logits with :class:`CrossEntropyLoss` instead: it is stabler.

    Examples
    --------
    >>> import numpy as np
    >>> Softmax()(np.array([[0.0, 0.0]]))
    array([[0.5, 0.5]])
    """

    def __init__(self, dim=-1):
        super().__init__()
        if not isinstance(dim, numbers.Integral):
            raise TypeError(f"dim must be an integer; got {type(dim).__name__}")
        self.dim = int(dim)

    def forward(self, x):
        x = as_float_array(x, "x")
        if not -x.ndim <= self.dim < max(x.ndim, 1):
            raise ValueError(f"dim={self.dim} is out of range for an input of shape {x.shape}")
        y = softmax(x, self.dim)
        self._save(y)
        return y

    def backward(self, grad_out):
        y = self._saved()
        g = _check_grad(grad_out, y.shape)
        return y * (g - np.sum(g * y, axis=self.dim, keepdims=True))

    def get_config(self):
        return {"dim": self.dim}
