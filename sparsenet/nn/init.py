"""Initialisation rules: PyTorch's defaults, and Erdős–Rényi (ER / ERK) sparse patterns.

All functions return new arrays and take ``rng=`` (None, int seed or Generator); nothing here
touches NumPy's global random state.
"""
import math
import numbers

import numpy as np

from .._validation import check_random_state, float_dtype
from ..csr import CSRMatrix

__all__ = ["uniform", "default_bound", "er_density", "erk_density", "sparse_uniform"]


def default_bound(fan_in):
    """``1 / sqrt(fan_in)``: PyTorch's ``kaiming_uniform_(a=sqrt(5))`` bound, also used for biases.

    Examples
    --------
    >>> default_bound(4)
    0.5
    """
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0


def uniform(shape, bound, *, rng=None, dtype=np.float32):
    """Samples of U(-bound, bound) with the given shape and dtype.

    Examples
    --------
    >>> w = uniform((2, 3), 0.1, rng=0)
    >>> w.dtype, bool(abs(w).max() <= 0.1)
    (dtype('float32'), True)
    """
    rng = check_random_state(rng)
    return rng.uniform(-bound, bound, size=shape).astype(float_dtype(dtype))


def er_density(n_in, n_out, epsilon):
    """Erdős–Rényi density of a (n_out, n_in) layer: ``epsilon * (n_in + n_out) / (n_in * n_out)``, capped at 1.

    This is SET's rule (Mocanu et al. 2018): the expected number of connections is
    ``epsilon * (n_in + n_out)``, linear rather than quadratic in the layer width.

    Examples
    --------
    >>> round(er_density(784, 1000, 20), 4)
    0.0455
    """
    _check_epsilon(epsilon)
    if n_in * n_out == 0:
        return 0.0
    return min(1.0, epsilon * (n_in + n_out) / (n_in * n_out))


def erk_density(in_channels, out_channels, kernel_size, epsilon):
    """Erdős–Rényi-Kernel density of a convolution (RigL, Evci et al. 2020), capped at 1.

    ``epsilon * (c_in + c_out + k_h + k_w) / (c_in * c_out * k_h * k_w)``.

    Examples
    --------
    >>> round(erk_density(16, 32, (3, 3), 1.0), 4)
    0.0117
    """
    _check_epsilon(epsilon)
    kh, kw = kernel_size
    size = in_channels * out_channels * kh * kw
    if size == 0:
        return 0.0
    return min(1.0, epsilon * (in_channels + out_channels + kh + kw) / size)


def _check_epsilon(epsilon):
    if not isinstance(epsilon, numbers.Real) or not math.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(f"epsilon must be a positive number (SET uses 20); got {epsilon!r}")


def sparse_uniform(shape, density, *, rng=None, dtype=np.float32, pattern=None):
    """A CSR weight with a random (or given) pattern and values U(-b, b), b = 1/sqrt(fan-in per row).

    The fan-in used is the *average number of stored entries per row*, ``nnz / n_rows``, not
    the dense ``n_cols``.  A dense layer's ``1/sqrt(n_cols)`` bound would shrink a sparse
    layer's output variance by the density; with the sparse fan-in each output unit sees the
    same variance as PyTorch's dense default, so deep sparse stacks neither vanish nor blow up.

    Parameters
    ----------
    shape : (n_rows, n_cols)
    density : float in [0, 1]
        Ignored when ``pattern`` is given.
    pattern : CSRMatrix or array_like of bool, optional
        Use this pattern (its values, if any, are ignored).

    Returns
    -------
    weight : CSRMatrix
    bound : float

    Examples
    --------
    >>> w, b = sparse_uniform((10, 20), 0.25, rng=0)
    >>> w.nnz, b
    (50, 0.4472135954999579)
    """
    rng = check_random_state(rng)
    dtype = float_dtype(dtype)
    if pattern is None:
        w = CSRMatrix.random(shape, density, rng=rng, dtype=dtype)
    elif isinstance(pattern, CSRMatrix):
        if pattern.shape != tuple(shape):
            raise ValueError(f"pattern must have shape {tuple(shape)}; got {pattern.shape}")
        w = CSRMatrix(np.zeros(pattern.nnz, dtype), pattern.indices, pattern.indptr, shape, copy=True)
    else:
        mask = np.asarray(pattern)
        if mask.shape != tuple(shape):
            raise ValueError(f"pattern must have shape {tuple(shape)}; got {mask.shape}")
        w = CSRMatrix.from_dense(mask.astype(bool).astype(dtype), dtype=dtype)
    fan_in = w.nnz / shape[0] if shape[0] else 0.0
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    w.data[:] = rng.uniform(-bound, bound, size=w.nnz)
    return w, bound
