"""Dropout and Flatten: shape and noise layers without parameters."""
import numpy as np

from .. import functional as F
from .. import kernels
from ..functional.dropout import check_probability
from .._validation import as_float_array, check_random_state
from .module import Module

__all__ = ["Dropout", "Flatten"]


class Dropout(Module):
    """Inverted dropout: in training zero each element with probability ``p``, scale the rest by ``1/(1-p)``.

    In eval mode (``model.eval()``) it is the identity, so no rescaling is needed at test time.

    Parameters
    ----------
    p : float in [0, 1], default=0.5
    rng : None, int or numpy.random.Generator
        Source of the masks: one 64-bit seed drawn per forward, from which the kernel computes
        the mask (:func:`sparsenet.functional.dropout`).  A seeded layer gives the same masks on
        every run, on the CPU and on the GPU alike; backward recomputes the mask from the seed,
        so nothing of the size of the input is kept between forward and backward.

    Examples
    --------
    >>> import numpy as np
    >>> d = Dropout(0.5, rng=0)
    >>> y = d(np.ones(8))
    >>> sorted(set(y.tolist()))
    [0.0, 2.0]
    >>> d.eval()(np.ones(2))
    array([1., 1.])
    """

    def __init__(self, p=0.5, *, rng=None):
        super().__init__()
        self.p = check_probability(p)
        self.rng = check_random_state(rng)

    _supports_cuda = True

    def forward(self, x):
        x = as_float_array(x, "x")
        shape = tuple(x.shape)
        if not self.training or self.p == 0:
            self._save((shape, None, None))  # identity gradient
            return kernels.copy(x)
        # One draw from the layer's generator per call: the seed of a counter-based mask that
        # the kernel computes on either device (the same mask on CPU and GPU, no upload) and
        # recomputes at backward (nothing stored).
        seed = int(self.rng.integers(2**64, dtype=np.uint64))
        self._save((shape, self.p, seed))  # p too: backward must use forward's, even if p changes
        return F.dropout(x, self.p, seed=seed)

    def backward(self, grad_out):
        shape, p, seed = self._saved()
        grad_out = as_float_array(grad_out, "grad_out")
        if seed is None:  # the identity: any grad_out passes through, as a copy
            return kernels.copy(grad_out)
        if tuple(grad_out.shape) != shape:
            raise ValueError(f"grad_out must have the output's shape {shape}; got {tuple(grad_out.shape)}")
        return F.dropout_backward(grad_out, p, seed=seed)

    def get_config(self):
        return {"p": self.p}


class Flatten(Module):
    """Flatten dimensions ``start_dim..end_dim`` into one (default: all but the batch).

    Examples
    --------
    >>> import numpy as np
    >>> Flatten()(np.zeros((2, 3, 4, 5))).shape
    (2, 60)
    """

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    _supports_cuda = True

    def forward(self, x):
        x = as_float_array(x, "x")
        nd = x.ndim
        start = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        end = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not 0 <= start <= end < nd:
            raise ValueError(
                f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) needs an input with more "
                f"dimensions; got shape {x.shape}"
            )
        shape = tuple(x.shape)
        self._save(shape)
        return kernels.reshape(x, shape[:start] + (-1,) + shape[end + 1:])

    def backward(self, grad_out):
        shape = self._saved()
        return kernels.reshape(as_float_array(grad_out, "grad_out"), shape)

    def get_config(self):
        return {"start_dim": self.start_dim, "end_dim": self.end_dim}
