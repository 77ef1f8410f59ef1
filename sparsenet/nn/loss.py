"""Loss modules: ``loss = crit(output, target)`` then ``grad = crit.backward()``."""
import numbers

from .. import functional as F
from .module import Module

__all__ = ["CrossEntropyLoss", "MSELoss"]


class _Loss(Module):
    _supports_cuda = True

    def forward(self, input, target):
        loss = self._loss(input, target)
        self._save((input, target))
        return loss

    def backward(self, grad_out=1.0):
        """Gradient of the loss with respect to ``input``, times ``grad_out`` (a scalar)."""
        input, target = self._saved()
        if not isinstance(grad_out, numbers.Real):
            raise TypeError(f"a loss's backward takes a scalar grad_out; got {type(grad_out).__name__}")
        return self._grad(input, target, float(grad_out))


class CrossEntropyLoss(_Loss):
    """Mean cross-entropy between logits (N, C) and integer class targets (N,).

    Numerically stable for logits of any magnitude (log-sum-exp with the maximum subtracted).
    See :func:`sparsenet.functional.cross_entropy`.

    Examples
    --------
    >>> import numpy as np
    >>> crit = CrossEntropyLoss()
    >>> loss = crit(np.array([[2.0, 0.0]]), np.array([1]))
    >>> round(float(loss), 4)
    2.1269
    >>> crit.backward().round(4)
    array([[ 0.8808, -0.8808]])
    """

    _loss = staticmethod(F.cross_entropy)
    _grad = staticmethod(F.cross_entropy_backward)


class MSELoss(_Loss):
    """Mean squared error; see :func:`sparsenet.functional.mse_loss`.

    Examples
    --------
    >>> import numpy as np
    >>> crit = MSELoss()
    >>> float(crit(np.array([1.0, 2.0]), np.array([1.0, 0.0])))
    2.0
    >>> crit.backward()
    array([0., 2.])
    """

    _loss = staticmethod(F.mse_loss)
    _grad = staticmethod(F.mse_loss_backward)
