"""Stateless NumPy-in/NumPy-out operations, forward and backward, for embedding in other code.

Shapes follow PyTorch: ``x`` is ``(*, in_features)`` and the output ``(*, out_features)``.
Outputs keep the inputs' dtype (float32 stays float32); mixing float32 and float64 raises.

Outputs of the sparse ops are returned *F-ordered* (batch index fastest) when 2-D: that is the
layout the kernels compute in, and feeding such an array to the next sparse layer costs no copy.
Use ``np.ascontiguousarray`` if C order matters to you.

CUDA device arrays (numba device arrays, or CuPy/torch CUDA tensors through
``__cuda_array_interface__``; a :class:`~sparsenet.CSRMatrix` moved with ``.to("cuda")``) run the
same ops in CUDA kernels and come back as device arrays; losses then return a (1,) device array.
Mixing host and device arguments raises ``ValueError``; nothing is copied to the host behind
your back.
"""
from .linear import linear, linear_backward, sparse_linear, sparse_linear_backward

__all__ = ["sparse_linear", "sparse_linear_backward", "linear", "linear_backward"]

from .loss import cross_entropy, cross_entropy_backward, mse_loss, mse_loss_backward  # noqa: E402

__all__ += ["cross_entropy", "cross_entropy_backward", "mse_loss", "mse_loss_backward"]

from .conv import (  # noqa: E402
    conv2d, conv2d_backward, locally_connected2d, locally_connected2d_backward, sparse_conv2d,
    sparse_conv2d_backward,
)
from .pool import avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward  # noqa: E402

__all__ += [
    "conv2d", "conv2d_backward", "sparse_conv2d", "sparse_conv2d_backward", "locally_connected2d",
    "locally_connected2d_backward", "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
]

from .dropout import dropout, dropout_backward  # noqa: E402

__all__ += ["dropout", "dropout_backward"]
