"""Batch normalisation over the batch (and spatial) axes, with running statistics."""
import numbers

import numpy as np

from .. import kernels
from .._validation import as_float_array, float_dtype
from .module import Module, Parameter

__all__ = ["BatchNorm1d", "BatchNorm2d"]


class _BatchNorm(Module):
    _ndims = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 dtype=np.float32):
        super().__init__()
        if not isinstance(num_features, numbers.Integral) or num_features <= 0:
            raise ValueError(f"num_features must be a positive integer; got {num_features!r}")
        if not isinstance(eps, numbers.Real) or not eps > 0:
            raise ValueError(f"eps must be a positive number; got {eps!r}")
        if momentum is not None and (not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1):
            raise ValueError(f"momentum must be a number in [0, 1] or None (cumulative average); got {momentum!r}")
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self.dtype = float_dtype(dtype)
        if affine:
            self.weight = Parameter(np.ones(num_features, self.dtype))
            self.bias = Parameter(np.zeros(num_features, self.dtype))
        else:
            self.weight = self.bias = None
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, self.dtype))
            self.register_buffer("running_var", np.ones(num_features, self.dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    _supports_cuda = True

    def _check_input(self, x):
        x = as_float_array(x, "x")
        if x.ndim not in self._ndims or x.shape[1] != self.num_features:
            dims = " or ".join(f"{n}-D" for n in self._ndims)
            raise ValueError(
                f"{type(self).__name__} expects a {dims} input (N, C={self.num_features}, ...); got shape {x.shape}"
            )
        return x

    @staticmethod
    def _as_ncs(a):
        """(N, C, S) view (or copy) of an (N, C, *spatial) array: the kernels' one layout."""
        shape = tuple(a.shape)
        return kernels.reshape(a, (shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64))))

    def forward(self, x):
        x = self._check_input(x)
        if kernels.on_device(x=x) and x.dtype != self.dtype:
            # The host promotes mixed dtypes silently; the device kernels keep one dtype.
            raise TypeError(f"{type(self).__name__} is {self.dtype} but x is {x.dtype}; build the layer with "
                            f"dtype={x.dtype} (or cast the model) to run it on the GPU")
        shape = tuple(x.shape)
        x3 = self._as_ncs(x)
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            n = x.size // self.num_features
            if n <= 1:
                raise ValueError(
                    f"expected more than 1 value per channel when training; got input shape {shape} "
                    "(use a larger batch or call model.eval())"
                )
            mean, var = kernels.channel_moments(x3)
            if self.training and self.track_running_stats:
                self.num_batches_tracked = self.num_batches_tracked + 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                # PyTorch keeps the *unbiased* variance in the running estimate.
                self.running_mean, self.running_var = kernels.batch_norm_running(
                    self.running_mean, self.running_var, mean, var, m, n / (n - 1))
        elif kernels.on_device(x=x):
            mean, var = self.running_mean, self.running_var
        else:
            mean, var = self.running_mean.astype(x.dtype), self.running_var.astype(x.dtype)
        y3, xhat3, invstd = kernels.batch_norm_apply(x3, mean, var, self.eps,
                                                     *((self.weight.data, self.bias.data) if self.affine else ()))
        self._save((xhat3, invstd, use_batch, shape))
        return y3.reshape(shape)

    def backward(self, grad_out):
        xhat3, invstd, use_batch, shape = self._saved()
        g = as_float_array(grad_out, "grad_out")
        if tuple(g.shape) != shape:
            raise ValueError(f"grad_out must have the output's shape {shape}; got {tuple(g.shape)}")
        grad_x, sum_gx, sum_g = kernels.batch_norm_backward(self._as_ncs(g), xhat3, invstd,
                                                            self.weight.data if self.affine else None, use_batch)
        if self.affine:
            self.weight.accumulate_grad(sum_gx, owned=True)
            self.bias.accumulate_grad(sum_g, owned=True)
        return grad_x.reshape(shape)

    def get_config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "track_running_stats": self.track_running_stats, "dtype": str(self.dtype)}


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs per channel C.

    Parameters
    ----------
    num_features : int
        C.
    eps : float, default=1e-5
    momentum : float or None, default=0.1
        Weight of the new batch in the running statistics; None: cumulative average.
    affine : bool, default=True
        Learnable ``weight`` (ones) and ``bias`` (zeros).
    track_running_stats : bool, default=True
        Keep ``running_mean``/``running_var`` (buffers) and use them in eval mode.
    dtype : {float32, float64}, default=float32

    Notes
    -----
    Training: ``y = (x - mean_B) / sqrt(var_B + eps) * weight + bias`` with biased batch
    variance; the running variance is updated with the unbiased one (as in PyTorch).

    Examples
    --------
    >>> import numpy as np
    >>> bn = BatchNorm1d(2, dtype=np.float64)
    >>> y = bn(np.array([[1.0, 2.0], [3.0, 6.0]]))
    >>> np.round(y, 3)
    array([[-1., -1.],
           [ 1.,  1.]])
    >>> bn.running_mean
    array([0.2, 0.4])
    """

    _ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs per channel; parameters as :class:`BatchNorm1d`.

    Examples
    --------
    >>> import numpy as np
    >>> BatchNorm2d(3)(np.ones((2, 3, 4, 4), np.float32)).shape
    (2, 3, 4, 4)
    """

    _ndims = (4,)
