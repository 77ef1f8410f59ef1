"""Losses: cross-entropy from logits and mean squared error, forward and backward (mean reduction)."""
import numpy as np

from .. import kernels
from .._validation import as_float_array
from ..kernels.device import is_device_array

__all__ = ["cross_entropy", "cross_entropy_backward", "mse_loss", "mse_loss_backward"]


def _check_ce(logits, target):
    logits = as_float_array(logits, "logits")
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (batch, n_classes); got shape {logits.shape}")
    on_device = is_device_array(target)
    target = target if on_device else np.asarray(target)
    if np.dtype(target.dtype).kind not in "iu":
        raise TypeError(
            f"target must hold integer class indices; got dtype {target.dtype} (e.g. y.astype(np.int64))"
        )
    if tuple(target.shape) != tuple(logits.shape[:1]):
        raise ValueError(f"target must have shape (batch,) = {tuple(logits.shape[:1])}; got {tuple(target.shape)}")
    # Device targets are not read back to check their range (a host round trip per batch); an
    # out-of-range class there makes the loss and its gradient NaN instead.
    if not on_device and target.size and (target.min() < 0 or target.max() >= logits.shape[1]):
        bad = target[(target < 0) | (target >= logits.shape[1])][0]
        raise ValueError(f"target class {bad} is out of range [0, {logits.shape[1]})")
    if logits.shape[0] == 0:
        raise ValueError("cross_entropy needs a non-empty batch; got 0 samples")
    return logits, target


def cross_entropy(logits, target):
    """Mean cross-entropy of integer class targets given unnormalised logits.

    ``mean_i( logsumexp(logits[i]) - logits[i, target[i]] )``, computed stably.

    Parameters
    ----------
    logits : ndarray, shape (batch, n_classes), float32 or float64
    target : ndarray of int, shape (batch,)
        Class indices in ``[0, n_classes)``.

    Returns
    -------
    loss : numpy scalar of ``logits.dtype``
        For device arrays, a (1,) device array (read it with ``.copy_to_host()`` when needed:
        leaving it on the device spares a synchronisation per batch).

    Raises
    ------
    TypeError
        Non-integer targets.
    ValueError
        Shapes that do not match, a class index out of range, an empty batch.

    Examples
    --------
    >>> import numpy as np
    >>> float(cross_entropy(np.array([[1e4, 0.0]]), np.array([0])))
    0.0
    >>> round(float(cross_entropy(np.zeros((2, 4)), np.array([1, 3]))), 6)
    1.386294
    """
    return kernels.cross_entropy(*_check_ce(logits, target))


def cross_entropy_backward(logits, target, grad_out=1.0):
    """Gradient of :func:`cross_entropy` with respect to the logits: ``grad_out (softmax(logits) - onehot) / batch``.

    Examples
    --------
    >>> import numpy as np
    >>> cross_entropy_backward(np.zeros((1, 2)), np.array([0]))
    array([[-0.5,  0.5]])
    """
    return kernels.cross_entropy_backward(*_check_ce(logits, target), grad_out)


def _check_mse(input, target):
    input = as_float_array(input, "input")
    if is_device_array(target):
        target = as_float_array(target, "target", input.dtype)
    else:
        target = np.asarray(target)
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"target must have the input's shape {tuple(input.shape)}; got {tuple(target.shape)}")
    if input.size == 0:
        raise ValueError("mse_loss needs a non-empty input")
    return input, target if is_device_array(target) else target.astype(input.dtype, copy=False)


def mse_loss(input, target):
    """Mean squared error ``mean((input - target) ** 2)``.

    Examples
    --------
    >>> import numpy as np
    >>> float(mse_loss(np.array([1.0, 3.0]), np.array([0.0, 0.0])))
    5.0
    """
    return kernels.mse_loss(*_check_mse(input, target))


def mse_loss_backward(input, target, grad_out=1.0):
    """Gradient of :func:`mse_loss` with respect to ``input``: ``2 grad_out (input - target) / input.size``."""
    return kernels.mse_loss_backward(*_check_mse(input, target), grad_out)
