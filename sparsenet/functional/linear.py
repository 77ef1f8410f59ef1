"""Fully connected layers: sparse (CSR weight) and dense, forward and backward."""
import numpy as np

from .. import kernels
from .._validation import as_float_array
from ..csr import CSRMatrix

__all__ = ["sparse_linear", "sparse_linear_backward", "linear", "linear_backward"]


def _check_sparse_weight(weight):
    if not isinstance(weight, CSRMatrix):
        raise TypeError(
            f"weight must be a sparsenet.CSRMatrix of shape (out_features, in_features); got "
            f"{type(weight).__name__} (use CSRMatrix.from_scipy / from_dense, or F.linear for dense weights)"
        )


def _shape(a):
    """``a.shape`` as a plain tuple (device arrays of the CUDA simulator have a tuple-like shape)."""
    return tuple(np.shape(a))


def _as_batch(a, name, features, dtype, what):
    """Validate a (*, features) array and flatten its leading dimensions to one batch axis."""
    a = as_float_array(a, name, dtype)
    shape = _shape(a)
    if len(shape) == 0 or shape[-1] != features:
        raise ValueError(f"{name} must have shape (*, {what}={features}); got shape {a.shape}")
    return _reshape(a, (-1, features))


def _reshape(a, shape):
    """``kernels.reshape(a, shape)``, skipped when nothing changes: the usual 2-D case keeps the
    sparse products' F-ordered output as it is."""
    if len(shape) == len(_shape(a)) and all(s in (-1, t) for s, t in zip(shape, _shape(a))):
        return a
    return kernels.reshape(a, shape)


def _check_bias(bias, out_features, dtype):
    if bias is None:
        return None
    bias = as_float_array(bias, "bias", dtype)
    if bias.shape != (out_features,):
        raise ValueError(f"bias must have shape (out_features={out_features},); got shape {bias.shape}")
    return bias


def _check_backward_args(grad_out, x, out_features, in_features, dtype):
    x2 = _as_batch(x, "x", in_features, dtype, "in_features")
    g2 = _as_batch(grad_out, "grad_out", out_features, dtype, "out_features")
    if _shape(grad_out)[:-1] != _shape(x)[:-1]:
        raise ValueError(
            f"grad_out's leading dimensions must match x's; got grad_out {_shape(grad_out)} and x {_shape(x)}"
        )
    return g2, x2


def _check_relu_output(relu_output, x, in_features, dtype):
    """The 2-D gate of a fused ReLU backward (None passes through); x's shape is required."""
    if relu_output is None:
        return None
    if _shape(relu_output) != _shape(x):
        raise ValueError(f"relu_output must have x's shape {_shape(x)}; got {_shape(relu_output)}")
    return _as_batch(relu_output, "relu_output", in_features, dtype, "in_features")


def sparse_linear(x, weight, bias=None, *, relu=False):
    """y = x @ weight.T + bias with a CSR weight.

    Parameters
    ----------
    x : ndarray, shape (*, in_features), float32 or float64
    weight : CSRMatrix, shape (out_features, in_features), same dtype as ``x``
    bias : ndarray, shape (out_features,), optional
    relu : bool, default False
        Return ``max(y, 0)`` (as ``nn.ReLU`` computes it on the same device): on the GPU as ``y``
        is stored, on the host in place; no second array either way.

    Returns
    -------
    y : ndarray, shape (*, out_features)
        F-ordered when 2-D.  Cost O(batch * nnz).

    Raises
    ------
    TypeError
        ``weight`` not a CSRMatrix, non-float or mixed dtypes.
    ValueError
        ``x.shape[-1] != in_features`` or a bias of the wrong shape.

    Examples
    --------
    >>> import numpy as np
    >>> import sparsenet.functional as F
    >>> from sparsenet import CSRMatrix
    >>> w = CSRMatrix.from_dense(np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]))
    >>> F.sparse_linear(np.array([[1.0, 1.0]]), w, bias=np.array([0.0, 0.5, 0.0]))
    array([[1. , 2.5, 3. ]])
    """
    _check_sparse_weight(weight)
    out_features, in_features = weight.shape
    x2 = _as_batch(x, "x", in_features, weight.dtype, "in_features")
    bias = _check_bias(bias, out_features, weight.dtype)
    y = kernels.spmm(weight.indptr, weight.indices, weight.data, x2, bias, relu=relu)
    return _reshape(y, _shape(x)[:-1] + (out_features,))


def sparse_linear_backward(grad_out, x, weight, *, need_input=True, relu_output=None):
    """Gradients of :func:`sparse_linear` with respect to x, weight and bias.

    Parameters
    ----------
    grad_out : ndarray, shape (*, out_features)
    x : ndarray, shape (*, in_features)
        The forward input.
    weight : CSRMatrix, shape (out_features, in_features)
    need_input : bool, default True
        False skips the input gradient (a first layer's, which training never uses): one
        transposed product fewer.
    relu_output : ndarray, shape (*, in_features), optional
        When x came out of a ReLU, that ReLU's output (x itself, or what the ReLU kept):
        ``grad_x`` is then multiplied by ``relu_output > 0``, the ReLU's backward, as it is
        computed (one kernel on the GPU instead of two).  Not read when ``need_input`` is False.

    Returns
    -------
    grad_x : ndarray, shape (*, in_features), or None when ``need_input`` is False
    grad_weight : ndarray, shape (nnz,)
        Aligned with ``weight.data``: the gradient on the stored pattern only.
    grad_bias : ndarray, shape (out_features,)
        Sum of ``grad_out`` over the batch (returned whether or not a bias was used).
    """
    _check_sparse_weight(weight)
    out_features, in_features = weight.shape
    g2, x2 = _check_backward_args(grad_out, x, out_features, in_features, weight.dtype)
    if not need_input:
        return (None,) + kernels.sddmm(weight.indptr, weight.indices, g2, x2, bias_grad=True)
    gate = _check_relu_output(relu_output, x, in_features, weight.dtype)
    g2 = kernels.product_operand(g2)  # feeds two products: lay it out once
    grad_x = kernels.spmm_t(weight.indptr, weight.indices, weight.data, in_features, g2, gate)
    grad_weight, grad_bias = kernels.sddmm(weight.indptr, weight.indices, g2, x2, bias_grad=True)
    return _reshape(grad_x, _shape(x)), grad_weight, grad_bias


def _check_dense_weight(weight):
    weight = as_float_array(weight, "weight")
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features); got shape {weight.shape}")
    return weight


def linear(x, weight, bias=None, *, relu=False):
    """y = x @ weight.T + bias with a dense weight (BLAS); same contract as :func:`sparse_linear`
    (``relu`` included).

    Examples
    --------
    >>> import numpy as np
    >>> linear(np.ones((1, 2)), np.array([[1.0, 2.0]]), np.array([0.5]))
    array([[3.5]])
    """
    weight = _check_dense_weight(weight)
    out_features, in_features = weight.shape
    x2 = _as_batch(x, "x", in_features, weight.dtype, "in_features")
    bias = _check_bias(bias, out_features, weight.dtype)
    y = kernels.matmul(x2, weight, transpose_b=True, bias=bias, relu=relu)
    return _reshape(y, _shape(x)[:-1] + (out_features,))


def linear_backward(grad_out, x, weight, *, need_input=True, relu_output=None):
    """Gradients of :func:`linear`: ``(grad_x, grad_weight (out, in), grad_bias (out,))``;
    ``grad_x`` is None with ``need_input=False``, and ``relu_output`` gates it, as in
    :func:`sparse_linear_backward`."""
    weight = _check_dense_weight(weight)
    out_features, in_features = weight.shape
    g2, x2 = _check_backward_args(grad_out, x, out_features, in_features, weight.dtype)
    grad_x = None
    if need_input:
        gate = _check_relu_output(relu_output, x, in_features, weight.dtype)
        grad_x = _reshape(kernels.matmul(g2, weight, gate=gate), _shape(x))
    return grad_x, kernels.matmul(g2, x2, transpose_a=True), kernels.batch_sum(g2)
