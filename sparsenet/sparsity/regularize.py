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
from .._validation import runs_own
from ._topology import check_fraction, check_model, check_nonneg, lr_of, resolve_layers

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

    def _steps_on_device(self):
        return runs_own(self, GroupLassoProx, "step", "groups")

    def step(self):
        """Apply the block soft threshold in place to every weight."""
        for layer in self.layers:
            p = layer.weight
            bounds, perm = self.groups(layer, self.group)
            kernels.group_soft_threshold_(p.data, bounds, self._step_size(p) * self.lam, perm=perm)

    @staticmethod
    def groups(layer, group):
        """(bounds, perm or None) of a layer's weight for ``group``, on the weight's device: group
        g is ``data[perm[bounds[g]:bounds[g+1]]]`` (``data[bounds[g]:bounds[g+1]]`` without perm).
        On the GPU they are derived once per pattern or weight array, so a step reads nothing back."""
        p = layer.weight
        taps = layer.kernel_size[0] * layer.kernel_size[1] if hasattr(layer, "kernel_size") else 1
        if not p.is_sparse:
            return kernels.dense_groups(p.data, taps, by_input=group == "input")
        csr = p.csr
        if group == "output":
            return csr.indptr, None
        return kernels.column_groups(csr.shape[1], csr.indptr, csr.indices, taps)


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
        (counting entries absent from a CSR weight as zeros already; among equal magnitudes
        the entries first in memory order go first, NaN counts as the largest).
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
        return runs_own(self, HardThreshold, "step")

    def step(self):
        for layer in self.layers:
            p = layer.weight
            if self.threshold is not None:
                kernels.hard_threshold_(p.data, self.threshold)
                continue
            size = int(np.prod(p.dense_shape))
            n_keep = size - int(round(self.sparsity * size))
            # entries absent from a CSR weight are zeros already; ties go in memory order, so
            # the result is the same on the host and on the device
            kernels.zero_smallest_(p.data, p.data.size - n_keep)
