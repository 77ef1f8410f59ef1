"""Fully connected layers: dense ``Linear`` and CSR-weighted ``SparseLinear``."""
import numbers

import numpy as np

from .. import functional as F
from .. import kernels
from .._validation import check_random_state, float_dtype
from ..csr import CSRMatrix
from . import init
from .module import Parameter, _WeightedLayer, fusable_forward, gated_backward

__all__ = ["Linear", "SparseLinear"]


def _check_features(**sizes):
    for name, v in sizes.items():
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer; got {v!r}")


class Linear(_WeightedLayer):
    """Dense fully connected layer: ``y = x @ weight.T + bias``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default=True
    rng : None, int or numpy.random.Generator
        Source of the initial values.
    dtype : {float32, float64}, default=float32

    Notes
    -----
    Input shape ``(*, in_features)``, output ``(*, out_features)``.  Weight and bias start as
    U(-1/sqrt(in_features), 1/sqrt(in_features)), PyTorch's default.

    Examples
    --------
    >>> import numpy as np
    >>> layer = Linear(4, 2, rng=0)
    >>> layer(np.ones((3, 4), np.float32)).shape
    (3, 2)
    """

    _supports_cuda = True

    def __init__(self, in_features, out_features, bias=True, *, rng=None, dtype=np.float32):
        super().__init__()
        _check_features(in_features=in_features, out_features=out_features)
        rng = check_random_state(rng)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.dtype = float_dtype(dtype)
        bound = init.default_bound(in_features)
        self.weight = Parameter(init.uniform((out_features, in_features), bound, rng=rng, dtype=self.dtype))
        self.bias = Parameter(init.uniform((out_features,), bound, rng=rng, dtype=self.dtype)) if bias else None

    @fusable_forward
    def forward(self, x):
        return self._forward_fused(x, relu=False)

    def _forward_fused(self, x, relu):
        """forward, with ``relu`` also the following ReLU's (``Sequential`` fuses the pair)."""
        y = F.linear(x, self.weight.data, None if self.bias is None else self.bias.data, relu=relu)
        self._save(x)
        return y

    @gated_backward
    def _backward(self, grad_out, need_input, relu_output=None):
        x = self._saved()
        grad_x, grad_w, grad_b = F.linear_backward(grad_out, x, self.weight.data, need_input=need_input,
                                                   relu_output=relu_output)
        self.weight.accumulate_grad(grad_w, owned=True)
        if self.bias is not None:
            self.bias.accumulate_grad(grad_b, owned=True)
        return grad_x

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "dtype": str(self.dtype)}


class SparseLinear(_WeightedLayer):
    """Fully connected layer with a CSR weight: ``y = x @ W.T + bias``, cost O(batch * nnz).

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default=True
    density : float in [0, 1], optional
        Fraction of connections kept, uniformly at random.
    epsilon : float, optional
        Erdős–Rényi sparsity (SET): density ``epsilon * (in + out) / (in * out)``.
        Default 20 when neither ``density`` nor ``pattern`` is given.
    pattern : CSRMatrix or bool array of shape (out_features, in_features), optional
        An explicit pattern (values ignored).
    rng : None, int or numpy.random.Generator
    dtype : {float32, float64}, default=float32

    Attributes
    ----------
    weight : Parameter
        Sparse: ``weight.data`` is the nnz value vector, ``weight.csr`` the
        ``(out_features, in_features)`` :class:`~sparsenet.CSRMatrix`.  Sparsity methods
        replace the pattern with ``weight.set_csr(new)``.

    Notes
    -----
    Values start U(-b, b) with ``b = 1/sqrt(nnz / out_features)``: PyTorch's default bound with
    the sparse fan-in (see :func:`sparsenet.nn.init.sparse_uniform`); the bias uses the same ``b``.

    Examples
    --------
    >>> import numpy as np
    >>> layer = SparseLinear(100, 50, density=0.1, rng=0)
    >>> layer.weight.csr.nnz, layer.weight.shape
    (500, (500,))
    >>> layer(np.ones((2, 100), np.float32)).shape
    (2, 50)
    """

    _supports_cuda = True

    def __init__(self, in_features, out_features, bias=True, *, density=None, epsilon=None, pattern=None,
                 rng=None, dtype=np.float32):
        super().__init__()
        _check_features(in_features=in_features, out_features=out_features)
        given = [name for name, v in (("density", density), ("epsilon", epsilon), ("pattern", pattern)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of density, epsilon and pattern; got {given}")
        if density is None and pattern is None:
            epsilon = 20.0 if epsilon is None else epsilon
            density = init.er_density(in_features, out_features, epsilon)
        elif density is not None and (not isinstance(density, numbers.Real) or not 0 <= density <= 1):
            raise ValueError(f"density must be a number in [0, 1]; got {density!r}")
        rng = check_random_state(rng)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.dtype = float_dtype(dtype)
        self.epsilon = epsilon
        weight, bound = init.sparse_uniform((out_features, in_features), density, rng=rng, dtype=self.dtype,
                                            pattern=pattern)
        self.init_density = weight.density
        self.weight = Parameter(weight)
        self.bias = Parameter(init.uniform((out_features,), bound, rng=rng, dtype=self.dtype)) if bias else None

    @property
    def weight_csr(self):
        """The current CSR weight (``weight.csr``)."""
        return self.weight.csr

    @fusable_forward
    def forward(self, x):
        return self._forward_fused(x, relu=False)

    def _forward_fused(self, x, relu):
        """forward, with ``relu`` also the following ReLU's (``Sequential`` fuses the pair)."""
        x = kernels.product_operand(x)  # read by spmm now and by sddmm at backward: lay it out once
        y = F.sparse_linear(x, self.weight.csr, None if self.bias is None else self.bias.data, relu=relu)
        self._save((x, self.weight.csr))
        return y

    @gated_backward
    def _backward(self, grad_out, need_input, relu_output=None):
        x, w = self._saved()
        if w is not self.weight.csr:
            raise RuntimeError("the sparsity pattern changed between forward and backward; run forward again")
        grad_x, grad_w, grad_b = F.sparse_linear_backward(grad_out, x, w, need_input=need_input,
                                                          relu_output=relu_output)
        self.weight.accumulate_grad(grad_w, owned=True)
        if self.bias is not None:
            self.bias.accumulate_grad(grad_b, owned=True)
        return grad_x

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "density": float(self.init_density), "dtype": str(self.dtype)}

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, nnz={self.weight.csr.nnz}, density={self.weight.csr.density:.4g}")
