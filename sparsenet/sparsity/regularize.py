"""Regularisers as proximal steps: L1, group lasso, hard thresholding.

A proximal step runs *after* the optimizer step (proximal gradient descent): the weight is
replaced by ``prox_{lr * lam * R}(w)``, which sets small weights (L1) or whole groups (group
lasso) to *exact* zeros, where adding ``lam * sign(w)`` to the gradient would only make them
small.  The zeros stay stored in a CSR weight until :func:`~sparsenet.sparsity.compact`
removes them (and whole dead neurons/channels with them).

Each regulariser is a :class:`~sparsenet.train.Callback` (its ``on_batch_end`` applies the step
after each optimizer step inside :func:`~sparsenet.train.fit`) and can be called by hand:
``reg.step()`` after ``optimizer.step()``.
"""
import numpy as np

from .. import kernels
from ..train import Callback
from ._topology import (check_fraction, check_nonneg, check_model, csr_rows, lr_of,
                        resolve_layers, runs_own)

__all__ = ["soft_threshold", "group_soft_threshold", "L1Prox", "GroupLassoProx", "HardThreshold"]


def soft_threshold(w, t, out=None):
    """``sign(w) * max(|w| - t, 0)``: the proximal map of ``t * ||w||_1``.

    Parameters
    ----------
    w : ndarray or CUDA device array
    t : float >= 0
    out : ndarray, optional
        Where to write (``w`` itself for an in-place step; on the device, ``w`` or None).

    Examples
    --------
    >>> import numpy as np
    >>> soft_threshold(np.array([-2.0, 0.5, 1.5]), 1.0)
    array([-1. ,  0. ,  0.5])
    """
    t = check_nonneg(t, "threshold t")
    if kernels.on_device(w=w):
        if out is not None and out is not w:
            raise ValueError("on the device, soft_threshold's out must be None or w itself")
        return kernels.soft_threshold_(kernels.copy(w) if out is None else w, t)
    return _into(kernels.soft_threshold_(np.array(w, copy=True), t), w, out)


def _into(result, w, out):
    """Host results of the proximal maps: computed in ``w``'s dtype, then written to ``out``
    (which may be ``w`` itself) when one is given; a scalar for a 0-d ``w``, as NumPy returns."""
    if out is None:
        return result[()] if result.ndim == 0 else result
    np.copyto(out, result)
    return out


def group_soft_threshold(w, groups, n_groups, t, *, out=None):
    """Block soft threshold: ``w_g * max(0, 1 - t * sqrt(n_g) / ||w_g||)`` for every group g.

    The proximal map of ``t * sum_g sqrt(n_g) ||w_g||_2`` (group lasso with the usual
    ``sqrt(group size)`` weighting); a group with ``||w_g|| <= t sqrt(n_g)`` becomes exactly zero.

    Parameters
    ----------
    w : ndarray (n,)
    groups : int ndarray (n,)
        Group id in [0, n_groups) of each entry.
    n_groups : int
    t : float >= 0
    out : ndarray, optional

    Returns
    -------
    ndarray (n,)

    Examples
    --------
    >>> import numpy as np
    >>> w = np.array([3.0, 4.0, 0.1, 0.1])
    >>> group_soft_threshold(w, np.array([0, 0, 1, 1]), 2, 1.0).round(3)
    array([2.151, 2.869, 0.   , 0.   ])
    """
    t = check_nonneg(t, "threshold t")
    return _into(kernels.group_scale_(np.array(w, copy=True), groups, n_groups, t), w, out)


class _Prox(Callback):
    """Shared plumbing: the layers acted on, the step size, the callback hook."""

    host_only = True  # NumPy on parameters: the trainer brings the model to the host around its hooks

    def __init__(self, model, optimizer, layers, lr):
        check_model(model)
        self.model = model
        self.optimizer = optimizer
        self._layers = layers
        self.lr = None if lr is None else check_nonneg(lr, "lr")

    @property
    def layers(self):
        # resolved at each step: compaction and dense->sparse conversion replace weights
        return resolve_layers(self.model, self._layers)

    def _step_size(self, param):
        return self.lr if self.lr is not None else lr_of(self.optimizer, param)

    def on_batch_end(self, trainer, batch, logs):
        if self.optimizer is None:
            self.optimizer = trainer.optimizer
        self.step()

    def _steps_on_device(self):
        """Whether :meth:`step` works on the weights' device (then training on the GPU needs
        no host round trip per batch)."""
        return False

    def needs_host(self, hook, trainer):
        if hook == "on_batch_end" and runs_own(self, _Prox, "on_batch_end") and self._steps_on_device():
            return False
        return super().needs_host(hook, trainer)


class L1Prox(_Prox):
    """L1 regularisation ``lam * sum |w|`` by soft thresholding after each optimizer step.

    Parameters
    ----------
    model : Module
    lam : float >= 0
        Penalty weight λ; the threshold per step is ``lr * lam``.
    optimizer : Optimizer, optional
        Supplies the learning rate of each weight's group (or pass ``lr``); inside ``fit`` the
        trainer's optimizer is used.
    layers : list of layers, optional
        Default: every Linear/SparseLinear/Conv2d/SparseConv2d weight (biases are not penalised).
    lr : float, optional
        Fixed step size instead of the optimizer's.

    Raises
    ------
    ValueError
        Negative λ or lr.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn
    >>> layer = nn.SparseLinear(8, 4, density=0.5, rng=0)
    >>> L1Prox(layer, lam=10.0, lr=0.1).step()
    >>> int(np.count_nonzero(layer.weight.data))
    0
    """

    def __init__(self, model, lam, *, optimizer=None, layers=None, lr=None):
        super().__init__(model, optimizer, layers, lr)
        self.lam = check_nonneg(lam, "lam", " (the L1 penalty weight)")

    def _steps_on_device(self):
        return runs_own(self, L1Prox, "step")

    def step(self):
        """Apply ``w <- soft_threshold(w, lr * lam)`` in place to every weight."""
        for layer in self.layers:
            p = layer.weight
            soft_threshold(p.data, self._step_size(p) * self.lam, out=p.data)


class GroupLassoProx(_Prox):
    """Group lasso ``lam * sum_g sqrt(n_g) ||w_g||`` by block soft thresholding after each step.

    Parameters
    ----------
    model : Module
    lam : float >= 0
    group : {"output", "input"}, default="output"
        ``"output"``: one group per output neuron / conv output channel (a row of the weight);
        zero groups are dead units that :func:`~sparsenet.sparsity.compact` removes.
        ``"input"``: one group per input feature / conv input channel (feature selection).
    optimizer, layers, lr
        As :class:`L1Prox`.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn
    >>> layer = nn.Linear(6, 3, rng=0)
    >>> GroupLassoProx(layer, lam=1.0, lr=1.0).step()
    >>> np.abs(layer.weight.data).sum(axis=1).tolist()
    [0.0, 0.0, 0.0]
    """

    GROUPS = ("output", "input")

    def __init__(self, model, lam, *, group="output", optimizer=None, layers=None, lr=None):
        super().__init__(model, optimizer, layers, lr)
        self.lam = check_nonneg(lam, "lam", " (the group lasso penalty weight)")
        if group not in self.GROUPS:
            raise ValueError(f"group must be one of {self.GROUPS}; got {group!r}")
        self.group = group
        self._bounds = {}  # (n_out, fan_in) -> device indptr of a dense weight's output groups

    @staticmethod
    def group_ids(layer, group):
        """(ids per stored entry, number of groups) of a layer's weight for ``group``."""
        p = layer.weight
        taps = layer.kernel_size[0] * layer.kernel_size[1] if hasattr(layer, "kernel_size") else 1
        if p.is_sparse:
            csr = p.csr
            if group == "output":
                return csr_rows(csr), csr.shape[0]
            return csr.indices.astype(np.int64) // taps, csr.shape[1] // taps
        shape = p.data.shape
        n_out, fan_in = shape[0], int(np.prod(shape[1:]))
        if group == "output":
            return np.repeat(np.arange(n_out), fan_in), n_out
        return np.tile(np.arange(fan_in) // taps, n_out), fan_in // taps

    def _steps_on_device(self):
        # Output groups are contiguous runs of the weight's values: thresholded on its device.
        return self.group == "output" and runs_own(self, GroupLassoProx, "step", "_unit_bounds")

    def step(self):
        """Apply the block soft threshold in place to every weight."""
        for layer in self.layers:
            p = layer.weight
            t = self._step_size(p) * self.lam
            if self.group == "output" and kernels.on_device(data=p.data):
                kernels.group_soft_threshold_(p.data, self._unit_bounds(p), t)
                continue
            ids, n = self.group_ids(layer, self.group)
            flat = p.data.reshape(-1)
            group_soft_threshold(flat, ids, n, t, out=flat)

    def _unit_bounds(self, p):
        """Device ``indptr`` of the output groups of a device weight: the CSR row pointer, or
        multiples of the fan-in for a dense weight (uploaded once per shape)."""
        if p.is_sparse:
            return p.csr.indptr
        n_out = p.data.shape[0]
        fan_in = p.data.size // max(n_out, 1)
        key = (n_out, fan_in)
        if key not in self._bounds:
            self._bounds[key] = kernels.to_device(np.arange(n_out + 1, dtype=np.int64) * fan_in)
        return self._bounds[key]


class HardThreshold(_Prox):
    """Hard thresholding: zero every weight with ``|w| < threshold``, or keep the top fraction.

    The proximal map of the L0 penalty (iterative hard thresholding when applied every step).

    Parameters
    ----------
    model : Module
    threshold : float >= 0, optional
        Absolute magnitude below which weights become zero.
    sparsity : float in [0, 1), optional
        Instead: per layer, zero the smallest ``sparsity`` fraction of the weight matrix
        (counting entries absent from a CSR weight as zeros already).
    layers : list of layers, optional

    Raises
    ------
    ValueError
        Neither or both of threshold and sparsity; threshold < 0; sparsity outside [0, 1).

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn
    >>> layer = nn.Linear(10, 10, rng=0)
    >>> HardThreshold(layer, sparsity=0.9).step()
    >>> int(np.count_nonzero(layer.weight.data))
    10
    """

    def __init__(self, model, threshold=None, *, sparsity=None, layers=None):
        super().__init__(model, None, layers, None)
        if (threshold is None) == (sparsity is None):
            raise ValueError("give exactly one of threshold and sparsity")
        self.threshold = None if threshold is None else check_nonneg(threshold, "threshold")
        self.sparsity = None if sparsity is None else check_fraction(sparsity, "sparsity")

    def _steps_on_device(self):
        # A fixed threshold runs on the weights' device; keeping a top fraction sorts on the host.
        return self.threshold is not None and runs_own(self, HardThreshold, "step")

    def step(self):
        for layer in self.layers:
            p = layer.weight
            if self.threshold is not None:
                kernels.hard_threshold_(p.data, self.threshold)
                continue
            flat = p.data.reshape(-1)
            size = int(np.prod(p.dense_shape))
            n_keep = size - int(round(self.sparsity * size))
            n_zero = flat.size - n_keep
            if n_zero > 0:
                flat[np.argpartition(np.abs(flat), n_zero - 1)[:n_zero]] = 0
