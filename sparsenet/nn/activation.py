"""Element-wise activations and Softmax.  Output dtype = input dtype; no parameters."""
import numbers

import numpy as np

from .. import kernels
from .._validation import as_float_array
from .module import Module, fusable_backward, fusable_forward

__all__ = ["ReLU", "LeakyReLU", "Tanh", "Sigmoid", "Softmax"]


def _check_grad(grad_out, shape):
    grad_out = as_float_array(grad_out, "grad_out")
    if tuple(grad_out.shape) != tuple(shape):
        raise ValueError(f"grad_out must have the output's shape {tuple(shape)}; got {tuple(grad_out.shape)}")
    return grad_out


class ReLU(Module):
    """``max(x, 0)`` element-wise; gradient 0 at 0.

    In a :class:`~sparsenet.nn.Sequential`, a ReLU right after a ``SparseLinear``, ``Linear`` or
    ``Conv2d`` is computed by that layer's product as it stores its output (no pass and no array
    of its own), and the backward of a ReLU right before one of them is applied by that layer's
    input-gradient kernel as it stores (``relu_output=`` of its functional backward).

    Examples
    --------
    >>> import numpy as np
    >>> ReLU()(np.array([-1.0, 2.0]))
    array([0., 2.])
    """

    _supports_cuda = True
    _fusable_activation = "relu"  # what Sequential may fold into the layer before (exact class only)

    def _save_fused(self, y):
        """Keep what forward would have kept, when the layer before computed this ReLU."""
        self._save(y)

    @fusable_forward
    def forward(self, x):
        y = kernels.activation("relu", as_float_array(x, "x"))
        self._save(y)
        return y

    @fusable_backward
    def backward(self, grad_out):
        y = self._saved()
        return kernels.activation_backward("relu", y, _check_grad(grad_out, y.shape))


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

    _supports_cuda = True

    def forward(self, x):
        x = as_float_array(x, "x")
        self._save(x)
        return kernels.activation("leaky_relu", x, self.negative_slope)

    def backward(self, grad_out):
        x = self._saved()
        return kernels.activation_backward("leaky_relu", x, _check_grad(grad_out, x.shape), self.negative_slope)

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

    _supports_cuda = True

    def forward(self, x):
        y = kernels.activation("tanh", as_float_array(x, "x"))
        self._save(y)
        return y

    def backward(self, grad_out):
        y = self._saved()
        return kernels.activation_backward("tanh", y, _check_grad(grad_out, y.shape))


class Sigmoid(Module):
    """Logistic function ``1 / (1 + exp(-x))``, overflow-free (``scipy.special.expit``).

    Examples
    --------
    >>> import numpy as np
    >>> Sigmoid()(np.array([0.0, -1000.0]))
    array([0.5, 0. ])
    """

    _supports_cuda = True

    def forward(self, x):
        y = kernels.activation("sigmoid", as_float_array(x, "x"))
        self._save(y)
        return y

    def backward(self, grad_out):
        y = self._saved()
        return kernels.activation_backward("sigmoid", y, _check_grad(grad_out, y.shape))


class Softmax(Module):
    """Softmax along ``dim`` (default the last).

    For classification train on logits with :class:`CrossEntropyLoss` instead: it is stabler.
    On CUDA device arrays only ``dim`` = the last axis is implemented (others raise
    ``NotImplementedError``).

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

    _supports_cuda = True

    def forward(self, x):
        x = as_float_array(x, "x")
        if not -x.ndim <= self.dim < max(x.ndim, 1):
            raise ValueError(f"dim={self.dim} is out of range for an input of shape {x.shape}")
        y = kernels.softmax(x, self.dim)
        self._save(y)
        return y

    def backward(self, grad_out):
        y = self._saved()
        return kernels.softmax_backward(y, _check_grad(grad_out, y.shape), self.dim)

    def get_config(self):
        return {"dim": self.dim}
