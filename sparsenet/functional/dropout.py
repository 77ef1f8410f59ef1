"""Inverted dropout with a counter-based mask: reproducible from a seed, nothing stored."""
import numbers

from .. import kernels
from .._validation import as_float_array

__all__ = ["dropout", "dropout_backward"]


def check_probability(p):
    """``p`` as a float in [0, 1], or ValueError (PyTorch's message)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")
    return float(p)


def _check(p, seed):
    p = check_probability(p)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64); got {seed!r}")
    return p, int(seed)


def dropout(x, p=0.5, *, seed):
    """Zero each element of ``x`` with probability ``p`` and scale the rest by ``1 / (1 - p)``.

    The mask is a pure function of ``seed`` and each element's position (Philox4x32-10, the
    generator of cuRAND and of PyTorch's GPU dropout): the same seed gives the same mask on the
    CPU and on the GPU, whatever the memory order of ``x``.  Draw a fresh seed per call, e.g.
    ``rng.integers(2**64, dtype=np.uint64)``, and pass the same one to :func:`dropout_backward`.

    Parameters
    ----------
    x : ndarray, float32 or float64, any shape (or a CUDA device array)
    p : float in [0, 1], default=0.5
        Probability of zeroing an element (to within 2**-32).
    seed : int in [0, 2**64)

    Returns
    -------
    y : ndarray, x's shape and dtype
        Dropped elements are exactly 0 (also where ``x`` is inf or NaN).

    Raises
    ------
    TypeError
        Non-float ``x``.
    ValueError
        ``p`` outside [0, 1] or ``seed`` outside [0, 2**64).

    Examples
    --------
    >>> import numpy as np
    >>> import sparsenet.functional as F
    >>> y = F.dropout(np.ones((2, 4)), 0.5, seed=7)
    >>> sorted(set(y.ravel().tolist())) == [0.0, 2.0]
    True
    >>> np.array_equal(F.dropout_backward(np.ones((2, 4)), 0.5, seed=7), y)
    True
    """
    p, seed = _check(p, seed)
    return kernels.dropout(as_float_array(x, "x"), p, seed)


def dropout_backward(grad_out, p=0.5, *, seed):
    """Gradient of :func:`dropout` with the same ``p`` and ``seed``: the same mask and scale
    applied to ``grad_out``.  Parameters as in :func:`dropout`; ``grad_out`` has the input's shape.
    """
    p, seed = _check(p, seed)
    return kernels.dropout(as_float_array(grad_out, "grad_out"), p, seed)
