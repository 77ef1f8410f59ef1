"""Sparse autoencoder: SparseLinear encoder and decoder with an activity-sparsity penalty.

The objective is ``reconstruction loss + beta * penalty(code)`` with either the KL divergence
of each code unit's mean activation from a target ρ (Ng's sparse autoencoder, sigmoid code) or
the L1 norm of the code.  The penalty's gradient is added inside :meth:`SparseAutoencoder.backward`,
so ``fit(ae, nn.MSELoss(), opt, (x, x))`` trains the full objective.
"""
import numpy as np

from .. import kernels
from .._validation import as_float_array, check_random_state, float_dtype
from ..nn.activation import ReLU, Sigmoid
from ..nn.linear import SparseLinear
from ..nn.module import Module
from ._topology import check_fraction, check_nonneg

__all__ = ["kl_sparsity", "kl_sparsity_backward", "l1_activity", "l1_activity_backward", "SparseAutoencoder"]

_EPS = kernels.ACTIVITY_EPS


def _check_code(h):
    h = as_float_array(h, "code h")
    if h.ndim != 2:
        raise ValueError(f"code h must be 2-D (batch, hidden); got shape {h.shape}")
    if h.shape[0] == 0:
        raise ValueError("code h must have at least one sample")
    return h


def kl_sparsity(h, rho):
    """``sum_j KL(rho || mean_b h[b, j])`` for activations in (0, 1).

    Parameters
    ----------
    h : ndarray (batch, hidden)
        Code activations in [0, 1] (e.g. sigmoid); the means are clipped to [1e-7, 1 - 1e-7].
    rho : float in (0, 1)
        Target mean activation.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> kl_sparsity(np.full((4, 3), 0.05), 0.05)
    0.0
    """
    h = _check_code(h)
    rho = check_fraction(rho, "rho", low_open=True, hint=" (the target mean activation)")
    m = np.clip(h.mean(axis=0, dtype=np.float64), _EPS, 1 - _EPS)
    kl = rho * np.log(rho / m) + (1 - rho) * np.log((1 - rho) / (1 - m))
    return float(kl.sum())


def kl_sparsity_backward(h, rho):
    """Gradient of :func:`kl_sparsity` with respect to ``h``: ``(-rho/m + (1-rho)/(1-m)) / batch``."""
    h = _check_code(h)
    rho = check_fraction(rho, "rho", low_open=True)
    return kernels.activity_penalty_grad_(np.zeros(h.shape, h.dtype), h, "kl", rho, 1.0)


def l1_activity(h):
    """``sum |h| / batch``: the L1 activity penalty (mean over samples of the code's L1 norm).

    Examples
    --------
    >>> import numpy as np
    >>> l1_activity(np.array([[1.0, -2.0], [0.0, 1.0]]))
    2.0
    """
    h = _check_code(h)
    return float(np.abs(h).sum(dtype=np.float64) / h.shape[0])


def l1_activity_backward(h):
    """Gradient of :func:`l1_activity`: ``sign(h) / batch`` (0 at 0)."""
    h = _check_code(h)
    return kernels.activity_penalty_grad_(np.zeros(h.shape, h.dtype), h, "l1", None, 1.0)


class SparseAutoencoder(Module):
    """``x -> act(W_e x + b_e) = h -> W_d h + b_d`` (optionally sigmoid), with sparse W_e, W_d.

    Parameters
    ----------
    in_features : int
    hidden : int
        Code size.
    penalty : {"kl", "l1"}, default="kl"
        Activity-sparsity penalty on the code (KL needs the sigmoid code, L1 uses ReLU).
    rho : float in (0, 1), default=0.05
        KL target mean activation.
    beta : float >= 0, default=1.0
        Weight of the penalty.
    density : float in (0, 1], optional
        Weight density of both layers; default ER with ``epsilon``.
    epsilon : float, optional
        ER density parameter when ``density`` is not given (default 20).
    output : {"sigmoid", "linear"}, default="sigmoid"
        Decoder output activation (sigmoid for data in [0, 1]).
    rng : None, int or Generator
    dtype : {float32, float64}, default=float32

    Attributes
    ----------
    encoder, decoder : SparseLinear
    code : ndarray, CUDA device array or None
        The last forward's code h (on the model's device).
    penalty_value : float
        ``beta * penalty(code)`` of the last forward (add it to the loss when reporting);
        computed when read (on the GPU, one copy of the code to the host), not at every step.

    Notes
    -----
    Input ``(batch, in_features)``, output ``(batch, in_features)``.  ``backward(grad)`` returns
    the input gradient of ``<output, grad> + beta * penalty(h)`` and accumulates the parameter
    gradients of that objective.

    Examples
    --------
    >>> import numpy as np
    >>> ae = SparseAutoencoder(64, 16, density=0.3, rng=0)
    >>> x = np.random.default_rng(0).random((5, 64)).astype(np.float32)
    >>> ae(x).shape, ae.code.shape
    ((5, 64), (5, 16))
    """

    PENALTIES = ("kl", "l1")
    _supports_cuda = True

    def __init__(self, in_features, hidden, *, penalty="kl", rho=0.05, beta=1.0, density=None, epsilon=None,
                 output="sigmoid", rng=None, dtype=np.float32):
        super().__init__()
        if penalty not in self.PENALTIES:
            raise ValueError(f"penalty must be one of {self.PENALTIES}; got {penalty!r}")
        if output not in ("sigmoid", "linear"):
            raise ValueError(f"output must be 'sigmoid' or 'linear'; got {output!r}")
        rng = check_random_state(rng)
        self.penalty = penalty
        self.rho = check_fraction(rho, "rho", low_open=True, hint=" (the target mean activation)")
        self.beta = check_nonneg(beta, "beta", " (the penalty weight)")
        self.output = output
        self.dtype = float_dtype(dtype)
        kw = dict(density=density, epsilon=epsilon, rng=rng, dtype=self.dtype)
        self.encoder = SparseLinear(in_features, hidden, **kw)
        self.code_act = Sigmoid() if penalty == "kl" else ReLU()
        self.decoder = SparseLinear(hidden, in_features, **kw)
        self.out_act = Sigmoid() if output == "sigmoid" else None
        self.in_features, self.hidden = int(in_features), int(hidden)
        self._density, self._epsilon = density, epsilon
        object.__setattr__(self, "code", None)

    @property
    def penalty_value(self):
        if self.code is None:
            return 0.0
        h = kernels.to_host(self.code)
        return self.beta * (kl_sparsity(h, self.rho) if self.penalty == "kl" else l1_activity(h))

    def encode(self, x):
        """The code h of ``x`` (no state kept for backward)."""
        h = self.code_act(self.encoder(x))
        object.__setattr__(self.encoder, "_ctx", None)
        object.__setattr__(self.code_act, "_ctx", None)
        return h

    def forward(self, x):
        h = _check_code(self.code_act(self.encoder(x)))  # (batch, hidden): what the penalty means
        y = self.decoder(h)
        if self.out_act is not None:
            y = self.out_act(y)
        object.__setattr__(self, "code", h)
        self._save(h)
        return y

    def backward(self, grad_out):
        return self.encoder.backward(self._code_gradient(grad_out))

    def backward_params(self, grad_out):
        self.encoder.backward_params(self._code_gradient(grad_out))

    def _code_gradient(self, grad_out):
        """Through the decoder and the penalty to the gradient at the encoder's output."""
        h = self._saved()
        g = grad_out if self.out_act is None else self.out_act.backward(grad_out)
        g_h = self.decoder.backward(g)  # a new array: the penalty's gradient is added in place
        if self.beta:
            kernels.activity_penalty_grad_(g_h, h, self.penalty, self.rho, self.beta)
        return self.code_act.backward(g_h)

    def get_config(self):
        return {"in_features": self.in_features, "hidden": self.hidden, "penalty": self.penalty,
                "rho": self.rho, "beta": self.beta, "density": self._density, "epsilon": self._epsilon,
                "output": self.output, "dtype": str(self.dtype)}

    def code_sparsity(self, x, tol=1e-2):
        """Fraction of code activations of ``x`` below ``tol`` (0 exactly for ReLU codes)."""
        h = kernels.to_host(self.encode(as_float_array(x, "x")))
        return float(np.mean(np.abs(h) < tol))
