"""Stateless NumPy-in/NumPy-out operations, forward and backward, for embedding in other code.

Shapes follow PyTorch: ``x`` is ``(*, in_features)`` and the output ``(*, out_features)``.
Outputs keep the inputs' dtype (float32 stays float32); mixing float32 and float64 raises.

Outputs of the sparse ops are returned *F-ordered* (batch index fastest) when 2-D: that is the
layout the kernels compute in, and feeding such an array to the next sparse layer costs no copy.
Use ``np.ascontiguousarray`` if C order matters to you.
"""
from .linear import linear, linear_backward, sparse_linear, sparse_linear_backward

__all__ = ["sparse_linear", "sparse_linear_backward", "linear", "linear_backward"]

from .loss import cross_entropy, cross_entropy_backward, mse_loss, mse_loss_backward  # noqa: E402

__all__ += ["cross_entropy", "cross_entropy_backward", "mse_loss", "mse_loss_backward"]
