"""Losses: cross-entropy from logits and mean squared error, forward and backward (mean reduction)."""
import numpy as np

from .._validation import as_float_array

__all__ = ["cross_entropy", "cross_entropy_backward", "mse_loss", "mse_loss_backward"]


def _check_ce(logits, target):
    logits = as_float_array(logits, "logits")
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (batch, n_classes); got shape {logits.shape}")
    target = np.asarray(target)
    if target.dtype.kind not in "iu":
        raise TypeError(
            f"target must hold integer class indices; got dtype {target.dtype} (e.g. y.astype(np.int64))"
        )
    if target.shape != logits.shape[:1]:
        raise ValueError(f"target must have shape (batch,) = {logits.shape[:1]}; got {target.shape}")
    if target.size and (target.min() < 0 or target.max() >= logits.shape[1]):
        bad = target[(target < 0) | (target >= logits.shape[1])][0]
        raise ValueError(f"target class {bad} is out of range [0, {logits.shape[1]})")
    if logits.shape[0] == 0:
        raise ValueError("cross_entropy needs a non-empty batch; got 0 samples")
    return logits, target


def _log_softmax(logits):
    # Subtracting the row maximum keeps exp() in [0, 1]: logits of 1e4 neither overflow nor give NaN.
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


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
    logits, target = _check_ce(logits, target)
    shifted = logits - logits.max(axis=1, keepdims=True)
    per_sample = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(logits.shape[0]), target]
    return logits.dtype.type(np.mean(per_sample))


def cross_entropy_backward(logits, target):
    """Gradient of :func:`cross_entropy` with respect to the logits: ``(softmax(logits) - onehot) / batch``.

    Examples
    --------
    >>> import numpy as np
    >>> cross_entropy_backward(np.zeros((1, 2)), np.array([0]))
    array([[-0.5,  0.5]])
    """
    logits, target = _check_ce(logits, target)
    grad = np.exp(_log_softmax(logits))
    grad[np.arange(logits.shape[0]), target] -= 1
    grad /= logits.shape[0]
    return grad


def _check_mse(input, target):
    input = as_float_array(input, "input")
    target = np.asarray(target)
    if target.shape != input.shape:
        raise ValueError(f"target must have the input's shape {input.shape}; got {target.shape}")
    if input.size == 0:
        raise ValueError("mse_loss needs a non-empty input")
    return input, target.astype(input.dtype, copy=False)


def mse_loss(input, target):
    """Mean squared error ``mean((input - target) ** 2)``.

    Examples
    --------
    >>> import numpy as np
    >>> float(mse_loss(np.array([1.0, 3.0]), np.array([0.0, 0.0])))
    5.0
    """
    input, target = _check_mse(input, target)
    diff = input - target
    return input.dtype.type(np.mean(diff * diff))


def mse_loss_backward(input, target):
    """Gradient of :func:`mse_loss` with respect to ``input``: ``2 (input - target) / input.size``."""
    input, target = _check_mse(input, target)
    return (input - target) * input.dtype.type(2.0 / input.size)
