"""Convolution layers: dense ``Conv2d``, CSR-weighted ``SparseConv2d``, ``LocallyConnected2d``.

Stateful shells over ``sparsenet.functional``; inputs are (N, C, H, W) as in PyTorch.
"""
import numbers

import numpy as np

from .. import functional as F
from .._validation import check_random_state, float_dtype
from . import init
from .module import Parameter, _WeightedLayer, fusable_forward, gated_backward

__all__ = ["Conv2d", "SparseConv2d", "LocallyConnected2d"]


def _pair(v, name):
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return int(v), int(v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(a, numbers.Integral) for a in v):
        return int(v[0]), int(v[1])
    raise ValueError(f"{name} must be an int or a pair of ints; got {v!r}")


def _check_channels(in_channels, out_channels, groups):
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive integer; got {v!r}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be divisible by "
            f"groups ({groups})"
        )


class _ConvBase(_WeightedLayer):
    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, dtype):
        super().__init__()
        _check_channels(in_channels, out_channels, groups)
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        if min(self.kernel_size + self.stride + self.dilation) <= 0 or min(self.padding) < 0:
            raise ValueError(
                f"kernel_size, stride and dilation must be positive and padding non-negative; got "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}"
            )
        self.dtype = float_dtype(dtype)

    def _geometry(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "dilation": list(self.dilation), "groups": self.groups,
                "bias": self.bias is not None, "dtype": str(self.dtype)}


class Conv2d(_ConvBase):
    """2-D convolution (cross-correlation, as in PyTorch).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
    stride, padding, dilation : int or (int, int), default 1, 0, 1
    groups : int, default=1
    bias : bool, default=True
    rng : None, int or numpy.random.Generator
    dtype : {float32, float64}, default=float32

    Notes
    -----
    Input (N, C_in, H, W); output (N, C_out, H_out, W_out) with
    ``H_out = (H + 2 p - d (k - 1) - 1) // s + 1``.  Weight (C_out, C_in / groups, kh, kw) and
    bias start U(-1/sqrt(fan_in), 1/sqrt(fan_in)), ``fan_in = C_in / groups * kh * kw``
    (PyTorch's default).

    Examples
    --------
    >>> import numpy as np
    >>> conv = Conv2d(1, 4, 3, padding=1, rng=0)
    >>> conv(np.zeros((2, 1, 8, 8), np.float32)).shape
    (2, 4, 8, 8)
    """

    _supports_cuda = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, *, rng=None, dtype=np.float32):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, dtype)
        rng = check_random_state(rng)
        kh, kw = self.kernel_size
        fan_in = in_channels // groups * kh * kw
        bound = init.default_bound(fan_in)
        self.weight = Parameter(init.uniform((out_channels, in_channels // groups, kh, kw), bound, rng=rng,
                                             dtype=self.dtype))
        self.bias = Parameter(init.uniform((out_channels,), bound, rng=rng, dtype=self.dtype)) if bias else None

    @fusable_forward
    def forward(self, x):
        return self._forward_fused(x, relu=False)

    def _forward_fused(self, x, relu):
        """forward, with ``relu`` also the following ReLU's (``Sequential`` fuses the pair)."""
        y = F.conv2d(x, self.weight.data, None if self.bias is None else self.bias.data, **self._geometry(),
                     relu=relu)
        self._save(x)
        return y

    @gated_backward
    def _backward(self, grad_out, need_input, relu_output=None):
        x = self._saved()
        grad_x, grad_w, grad_b = F.conv2d_backward(grad_out, x, self.weight.data, **self._geometry(),
                                                   need_input=need_input, relu_output=relu_output)
        self.weight.accumulate_grad(grad_w, owned=True)
        if self.bias is not None:
            self.bias.accumulate_grad(grad_b, owned=True)
        return grad_x


class SparseConv2d(_ConvBase):
    """2-D convolution whose filters are a CSR matrix of shape (C_out, C_in / groups * kh * kw).

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        As :class:`Conv2d`.
    density : float in [0, 1], optional
        Fraction of filter taps kept.
    epsilon : float, optional
        Erdős–Rényi-Kernel density ``epsilon * (C_in + C_out + kh + kw) / (C_in C_out kh kw)``
        (capped at 1).  Default ``epsilon=1`` when ``density`` is not given.
    rng, dtype
        As :class:`Conv2d`.

    Attributes
    ----------
    weight : Parameter
        Sparse: ``weight.csr`` is the filter matrix, row ``o`` the flattened (C_in/groups, kh, kw)
        filter of output channel ``o``; ``weight.data`` its nnz values.

    Notes
    -----
    Values start U(-b, b), ``b = 1/sqrt(nnz / C_out)`` (the sparse fan-in, see
    :func:`sparsenet.nn.init.sparse_uniform`).

    Examples
    --------
    >>> import numpy as np
    >>> conv = SparseConv2d(4, 8, 3, padding=1, density=0.5, rng=0)
    >>> conv.weight.csr.shape, conv.weight.csr.nnz
    ((8, 36), 144)
    """

    _supports_cuda = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, *, density=None, epsilon=None, rng=None, dtype=np.float32):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, dtype)
        if density is not None and epsilon is not None:
            raise ValueError("give density or epsilon, not both")
        if density is None:
            density = init.erk_density(in_channels // groups, out_channels, self.kernel_size,
                                       1.0 if epsilon is None else epsilon)
        elif not isinstance(density, numbers.Real) or not 0 <= density <= 1:
            raise ValueError(f"density must be a number in [0, 1]; got {density!r}")
        rng = check_random_state(rng)
        kh, kw = self.kernel_size
        shape = (out_channels, in_channels // groups * kh * kw)
        weight, bound = init.sparse_uniform(shape, density, rng=rng, dtype=self.dtype)
        self.init_density = weight.density
        self.weight = Parameter(weight)
        self.bias = Parameter(init.uniform((out_channels,), bound, rng=rng, dtype=self.dtype)) if bias else None

    def forward(self, x):
        w = self.weight.csr
        y = F.sparse_conv2d(x, w, self.kernel_size, None if self.bias is None else self.bias.data,
                            **self._geometry())
        self._save((x, w))
        return y

    @gated_backward
    def _backward(self, grad_out, need_input, relu_output=None):
        x, w = self._saved()
        if w is not self.weight.csr:
            raise RuntimeError("the sparsity pattern changed between forward and backward; run forward again")
        grad_x, grad_w, grad_b = F.sparse_conv2d_backward(grad_out, x, w, self.kernel_size, **self._geometry(),
                                                          need_input=need_input, relu_output=relu_output)
        self.weight.accumulate_grad(grad_w, owned=True)
        if self.bias is not None:
            self.bias.accumulate_grad(grad_b, owned=True)
        return grad_x

    def get_config(self):
        config = super().get_config()
        config["density"] = float(self.init_density)
        return config


class LocallyConnected2d(_WeightedLayer):
    """Like :class:`Conv2d` but with a separate filter at every output position (no weight sharing).

    Parameters
    ----------
    in_channels, out_channels : int
    input_size : int or (int, int)
        (H, W) of the input: the number of filters depends on it.
    kernel_size : int or (int, int)
    stride, padding : int or (int, int), default 1, 0
    bias : bool, default=True
        One bias per output channel *and* position, shape (C_out, H_out, W_out).
    rng : None, int or numpy.random.Generator
    dtype : {float32, float64}, default=float32

    Notes
    -----
    Input (N, C_in, H, W); output (N, C_out, H_out, W_out).  Weight shape
    (H_out, W_out, C_out, C_in, kh, kw), initialised like a convolution with the same fan-in:
    U(-1/sqrt(C_in kh kw), 1/sqrt(C_in kh kw)).

    Examples
    --------
    >>> import numpy as np
    >>> lc = LocallyConnected2d(1, 2, 6, 3, rng=0)
    >>> lc.weight.shape, lc(np.zeros((1, 1, 6, 6), np.float32)).shape
    ((4, 4, 2, 1, 3, 3), (1, 2, 4, 4))
    """

    _supports_cuda = True

    def __init__(self, in_channels, out_channels, input_size, kernel_size, stride=1, padding=0, bias=True, *,
                 rng=None, dtype=np.float32):
        super().__init__()
        _check_channels(in_channels, out_channels, 1)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.input_size = _pair(input_size, "input_size")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        if min(self.kernel_size + self.stride + self.input_size) <= 0 or min(self.padding) < 0:
            raise ValueError(
                f"input_size, kernel_size and stride must be positive and padding non-negative; got "
                f"input_size={self.input_size}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}"
            )
        (h, w), (kh, kw), (sh, sw), (ph, pw) = self.input_size, self.kernel_size, self.stride, self.padding
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if oh <= 0 or ow <= 0:
            raise ValueError(f"kernel {self.kernel_size} is larger than the padded input {(h + 2 * ph, w + 2 * pw)}")
        self.output_size = (oh, ow)
        self.dtype = float_dtype(dtype)
        rng = check_random_state(rng)
        bound = init.default_bound(in_channels * kh * kw)
        self.weight = Parameter(init.uniform((oh, ow, out_channels, in_channels, kh, kw), bound, rng=rng,
                                             dtype=self.dtype))
        self.bias = Parameter(init.uniform((out_channels, oh, ow), bound, rng=rng, dtype=self.dtype)) if bias else None

    def forward(self, x):
        if np.ndim(x) == 4 and tuple(np.shape(x)[2:]) != self.input_size:
            raise ValueError(
                f"LocallyConnected2d was built for inputs of size {self.input_size}; got shape {np.shape(x)}"
            )
        y = F.locally_connected2d(x, self.weight.data, None if self.bias is None else self.bias.data,
                                  stride=self.stride, padding=self.padding)
        self._save(x)
        return y

    def _backward(self, grad_out, need_input):
        x = self._saved()
        grad_x, grad_w, grad_b = F.locally_connected2d_backward(grad_out, x, self.weight.data,
                                                                stride=self.stride, padding=self.padding,
                                                                need_input=need_input)
        self.weight.accumulate_grad(grad_w, owned=True)
        if self.bias is not None:
            self.bias.accumulate_grad(grad_b, owned=True)
        return grad_x

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "input_size": list(self.input_size), "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": list(self.padding), "bias": self.bias is not None,
                "dtype": str(self.dtype)}
