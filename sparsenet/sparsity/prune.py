"""Pruning: magnitude (unstructured, per layer or global), structured (neurons / channels),
gradual on Zhu & Gupta's cubic schedule, gradient saliency (SNIP), lottery-ticket rewinding.

On a CSR weight a pruned connection is *removed* from the pattern (it cannot come back through
an optimizer step, and costs nothing).  A dense weight is pruned with a mask that the pruner
re-applies after every optimizer step until the layer is sparse enough
(``density <= to_sparse_below``); it is then converted to its CSR counterpart
(:class:`~sparsenet.nn.Linear` -> :class:`~sparsenet.nn.SparseLinear`, ``Conv2d`` ->
``SparseConv2d``), keeping its values, its bias object and its optimizer state.
"""
import math
import numbers

import numpy as np

from .. import kernels
from ..csr import CSRMatrix
from ..nn.conv import Conv2d, SparseConv2d
from ..nn.linear import Linear, SparseLinear
from ..nn.module import Parameter
from ..train import Callback
from .._validation import runs_own
from ._topology import (check_fraction, check_model, check_positive_int, filter_pattern,
                        resolve_layers, swap_parameter, weight_layers)

__all__ = ["cubic_sparsity", "MagnitudePruner", "GradualMagnitudePruner", "magnitude_prune",
           "structured_prune", "GradualStructuredPruner", "to_sparse", "snip_scores", "saliency_scores",
           "snip_prune", "LotteryTicket"]


def cubic_sparsity(step, final_sparsity, *, initial_sparsity=0.0, begin_step=0, end_step):
    """Zhu & Gupta (2017): ``s_t = s_f + (s_0 - s_f) (1 - (t - t_0) / (n dt))^3``, clamped to [t_0, t_end].

    Parameters
    ----------
    step : int
    final_sparsity : float in [0, 1)
    initial_sparsity : float in [0, 1), default=0
    begin_step : int, default=0
    end_step : int
        ``t_0 + n dt``: the sparsity reaches ``final_sparsity`` there and stays.

    Examples
    --------
    >>> [round(cubic_sparsity(t, 0.9, end_step=100), 3) for t in (0, 50, 100, 200)]
    [0.0, 0.787, 0.9, 0.9]
    """
    s_f = check_fraction(final_sparsity, "final_sparsity")
    s_0 = check_fraction(initial_sparsity, "initial_sparsity")
    if end_step <= begin_step:
        raise ValueError(f"end_step must be > begin_step; got begin_step={begin_step}, end_step={end_step}")
    frac = min(1.0, max(0.0, (step - begin_step) / (end_step - begin_step)))
    return s_f + (s_0 - s_f) * (1.0 - frac) ** 3


# ------------------------------------------------------------------ dense -> CSR conversion
def _parent_of(model, layer):
    for _, m in model.named_modules():
        for name, child in m._modules.items():
            if child is layer:
                return m, name
    return None, None


def _sparse_twin(layer, csr):
    """A SparseLinear / SparseConv2d computing what ``layer`` does with weight ``csr``."""
    if isinstance(layer, Linear):
        twin = SparseLinear(layer.in_features, layer.out_features, bias=False, pattern=csr, dtype=layer.dtype)
    else:
        twin = SparseConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                            layer.padding, layer.dilation, layer.groups, bias=False, density=1.0,
                            dtype=layer.dtype)
    return twin  # its weight is replaced by the converted one


def to_sparse(model, optimizer=None, *, layers=None, max_density=1.0):
    """Convert dense Linear / Conv2d layers to SparseLinear / SparseConv2d holding their nonzeros.

    Layers denser than ``max_density`` are left dense.  The new layer reuses the old bias
    Parameter and takes over the weight's optimizer state (gathered to the nnz entries).
    Returns the model (a bare layer is converted and returned in place of ``model``).

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn
    >>> model = nn.Sequential(nn.Linear(4, 3, rng=0))
    >>> model[0].weight.data[:, :2] = 0
    >>> to_sparse(model)[0]
    SparseLinear(in_features=4, out_features=3, bias=True, nnz=6, density=0.5)
    """
    check_model(model)
    targets = layers if layers is not None else [m for _, m in weight_layers(model)]
    result = model
    for layer in targets:
        if not isinstance(layer, (Linear, Conv2d)):
            continue
        w2 = layer.weight.data.reshape(layer.weight.data.shape[0], -1)
        if np.count_nonzero(w2) > max_density * w2.size:
            continue
        csr = CSRMatrix.from_dense(w2, dtype=layer.dtype)
        rows, cols = np.nonzero(w2)
        flat = rows * w2.shape[1] + cols
        twin = _sparse_twin(layer, csr)
        swap_parameter(layer, Parameter(csr), optimizer, gather=lambda v: v.reshape(-1)[flat])
        twin.weight = layer.weight
        twin.bias = layer.bias
        twin.train(layer.training)
        parent, name = _parent_of(model, layer)
        if parent is None:
            if layer is not model:
                raise ValueError("layer to convert is not part of model")
            result = twin
        else:
            # assign in place: Module.__setattr__ would move the child to the end of a Sequential
            parent._modules[name] = twin
            object.__setattr__(parent, name, twin)
    return result


# ------------------------------------------------------------------ magnitude pruning
def _keep_top(scores, n_keep):
    """Bool mask of the ``n_keep`` largest scores (ties: the earlier entry wins)."""
    keep = np.zeros(scores.size, bool)
    if n_keep >= scores.size:
        keep[:] = True
    elif n_keep > 0:
        order = np.lexsort((np.arange(scores.size), -scores))
        keep[order[:n_keep]] = True
    return keep


class MagnitudePruner(Callback):
    """Unstructured pruning by |w| (or any score), per layer or global; a fit callback.

    Parameters
    ----------
    model : Module
    optimizer : Optimizer, optional
        State of pruned CSR weights and converted layers is remapped; inside ``fit`` the trainer's
        optimizer is used.
    scope : {"layer", "global"}, default="layer"
        ``"layer"``: every layer reaches the sparsity; ``"global"``: one threshold over all layers.
    layers : list of layers, optional
        Default: every weight layer.
    to_sparse_below : float, default=0.5
        A dense layer whose density falls to this or below becomes a CSR layer.

    Attributes
    ----------
    masks : dict
        Parameter -> bool mask of the dense weights still pruned by masking.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn
    >>> model = nn.Sequential(nn.Linear(20, 10, rng=0), nn.ReLU(), nn.Linear(10, 2, rng=1))
    >>> pruner = MagnitudePruner(model).prune(0.8)
    >>> model[0].weight.csr.nnz, model[2].weight.csr.nnz
    (40, 4)
    """

    SCOPES = ("layer", "global")

    host_only = True  # NumPy on parameters: the trainer brings the model to the host around its hooks

    def __init__(self, model, optimizer=None, *, scope="layer", layers=None, to_sparse_below=0.5):
        self.model = check_model(model)
        self.optimizer = optimizer
        if scope not in self.SCOPES:
            raise ValueError(f"scope must be one of {self.SCOPES}; got {scope!r}")
        self.scope = scope
        self._layer_names = None if layers is None else [self._name_of(m) for m in layers]
        self.to_sparse_below = check_fraction(to_sparse_below, "to_sparse_below", high_open=False)
        self.masks = {}
        self._device_masks = {}  # Parameter -> (host mask, its device copy)

    def _name_of(self, layer):
        for name, m in weight_layers(self.model):
            if m is layer:
                return name
        raise ValueError(f"{type(layer).__name__} is not a weight layer of the model")

    @property
    def layers(self):
        """The layers pruned (looked up by name: conversion to CSR replaces layer objects)."""
        named = dict(weight_layers(self.model))
        if self._layer_names is None:
            return resolve_layers(self.model, None)
        return [named[n] for n in self._layer_names]

    def _alive(self, p):
        """Bool over p.data of the entries not pruned yet."""
        if p.is_sparse:
            return np.ones(p.size, bool)
        mask = self.masks.get(p)
        return np.ones(p.size, bool) if mask is None else mask.reshape(-1)

    def prune(self, sparsity, scores=None):
        """Prune every layer to ``sparsity`` (fraction of zeros of the full weight matrix).

        Never un-prunes: a layer already sparser keeps its pattern.

        Parameters
        ----------
        sparsity : float in [0, 1)
        scores : dict Parameter -> ndarray, optional
            Importance of each stored weight (same shape as ``p.data``); default ``|w|``.

        Returns
        -------
        self
        """
        sparsity = check_fraction(sparsity, "sparsity")
        layers = self.layers
        params = [m.weight for m in layers]
        kernels.require_host("pruning (move the model with .to('cpu') first)", *(p.data for p in params))
        score = []
        for p in params:
            s = np.abs(p.data) if scores is None or p not in scores else np.asarray(scores[p])
            if s.shape != p.data.shape:
                raise ValueError(f"scores for {p.name!r} must have shape {p.data.shape}; got {s.shape}")
            s = s.reshape(-1).astype(np.float64)
            score.append(np.where(self._alive(p), s, -np.inf))
        sizes = [int(np.prod(p.dense_shape)) for p in params]
        if self.scope == "layer":
            keeps = [_keep_top(s, min(int(self._alive(p).sum()), n - int(round(sparsity * n))))
                     for p, s, n in zip(params, score, sizes)]
        else:
            total = sum(sizes)
            alive = sum(int(self._alive(p).sum()) for p in params)
            flat = _keep_top(np.concatenate(score), min(alive, total - int(round(sparsity * total))))
            keeps = np.split(flat, np.cumsum([s.size for s in score])[:-1])
        for layer, p, keep in zip(layers, params, keeps):
            self._apply(layer, p, keep)
        return self

    def _apply(self, layer, p, keep):
        if p.is_sparse:
            if not keep.all():
                filter_pattern(p, self.optimizer, keep=keep)
            return
        mask = keep.reshape(p.data.shape)
        p.data *= mask
        self.masks[p] = mask
        if keep.sum() <= self.to_sparse_below * keep.size:
            self.masks.pop(p)
            self._device_masks.pop(p, None)
            to_sparse(self.model, self.optimizer, layers=[layer], max_density=1.0)

    def apply_masks(self):
        """Re-zero the masked dense weights (call after each optimizer step), on their device."""
        for p in [p for p in self._device_masks if p not in self.masks]:  # converted to CSR since
            del self._device_masks[p]
        for p, mask in self.masks.items():
            kernels.mul_(p.data, self._mask_like(p, mask))

    def _mask_like(self, p, mask):
        """``mask`` as p.data's dtype, on p.data's device (uploaded once per mask and dtype)."""
        if not kernels.on_device(data=p.data):
            return mask
        cached = self._device_masks.get(p)
        if cached is None or cached[0] is not mask or cached[1].dtype != p.data.dtype:
            cached = (mask, kernels.to_device(mask.astype(p.data.dtype)))
            self._device_masks[p] = cached
        return cached[1]

    def needs_host(self, hook, trainer):
        # Re-applying masks (on_batch_end) and taking the trainer's optimizer run wherever the
        # weights are; only pruning needs the host.  A subclass's own hooks: the default rule.
        if hook in ("on_batch_end", "on_train_begin") and runs_own(self, MagnitudePruner, hook, "apply_masks"):
            return False
        return super().needs_host(hook, trainer)

    # callback protocol
    def on_train_begin(self, trainer):
        if self.optimizer is None:
            self.optimizer = trainer.optimizer

    def on_batch_end(self, trainer, batch, logs):
        self.apply_masks()


class GradualMagnitudePruner(MagnitudePruner):
    """Gradual magnitude pruning (Zhu & Gupta 2017) on the cubic schedule, as a ``fit`` callback.

    Every ``frequency`` optimizer steps between ``begin_step`` and ``end_step`` the model is
    pruned to :func:`cubic_sparsity` of the current step; training in between (and after
    ``end_step``: fine-tuning) recovers the accuracy.

    Parameters
    ----------
    model : Module
    final_sparsity : float in [0, 1)
    optimizer : Optimizer, optional
    initial_sparsity : float in [0, 1), default=0
    begin_step : int, default=0
    end_step : int
    frequency : int, default=100
        Δt, steps between pruning events.
    scope, layers, to_sparse_below
        As :class:`MagnitudePruner`.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn
    >>> model = nn.SparseLinear(10, 10, density=1.0, rng=0)
    >>> gmp = GradualMagnitudePruner(model, 0.9, end_step=4, frequency=1)
    >>> for _ in range(5):
    ...     gmp.step()
    >>> model.weight.csr.nnz
    10
    """

    def __init__(self, model, final_sparsity, optimizer=None, *, initial_sparsity=0.0, begin_step=0,
                 end_step, frequency=100, scope="layer", layers=None, to_sparse_below=0.5):
        super().__init__(model, optimizer, scope=scope, layers=layers, to_sparse_below=to_sparse_below)
        self.final_sparsity = check_fraction(final_sparsity, "final_sparsity")
        self.initial_sparsity = check_fraction(initial_sparsity, "initial_sparsity")
        if not isinstance(begin_step, numbers.Integral) or begin_step < 0:
            raise ValueError(f"begin_step must be a non-negative integer; got {begin_step!r}")
        if not isinstance(end_step, numbers.Integral) or end_step <= begin_step:
            raise ValueError(f"end_step must be an integer > begin_step={begin_step}; got {end_step!r}")
        self.begin_step, self.end_step = int(begin_step), int(end_step)
        self.frequency = check_positive_int(frequency, "frequency")
        self.step_count = 0
        self.history = []

    def sparsity_at(self, step):
        return cubic_sparsity(step, self.final_sparsity, initial_sparsity=self.initial_sparsity,
                              begin_step=self.begin_step, end_step=self.end_step)

    def needs_host(self, hook, trainer):
        # On the GPU only the pruning steps bring the model to the host.
        if hook == "on_batch_end" and runs_own(self, GradualMagnitudePruner, hook, "step", "apply_masks"):
            return _pruning_step(self, self.step_count)
        return super().needs_host(hook, trainer)

    def step(self):
        """Advance one optimizer step: prune when the schedule says so, then re-apply masks."""
        t = self.step_count
        if _pruning_step(self, t):
            s = self.sparsity_at(t)
            self.prune(s)
            self.history.append((t, s))
        self.apply_masks()
        self.step_count += 1

    def on_batch_end(self, trainer, batch, logs):
        self.step()


def magnitude_prune(model, sparsity, optimizer=None, *, scope="layer", layers=None, to_sparse_below=0.5):
    """One-shot magnitude pruning to ``sparsity``; returns the :class:`MagnitudePruner` (its masks
    keep dense layers pruned: pass it to ``fit`` as a callback while fine-tuning).

    Examples
    --------
    >>> from sparsenet import nn
    >>> layer = nn.SparseLinear(10, 10, density=0.5, rng=0)
    >>> _ = magnitude_prune(layer, 0.9)
    >>> layer.weight.csr.nnz
    10
    """
    return MagnitudePruner(model, optimizer, scope=scope, layers=layers,
                           to_sparse_below=to_sparse_below).prune(sparsity)


# ------------------------------------------------------------------ structured pruning
def structured_prune(model, amount, optimizer=None, *, norm=1):
    """Delete the fraction ``amount`` of hidden neurons / conv channels with the smallest weight norm.

    Every producer layer followed (through activations / pooling / Flatten) by another weight
    layer loses the units whose incoming weight rows have the smallest L1 or L2 norm; the units
    are removed from both layers (shapes shrink, see :func:`~sparsenet.sparsity.remove_units`).
    The output layer is never pruned.

    Parameters
    ----------
    model : Sequential
    amount : float in [0, 1)
    optimizer : Optimizer, optional
    norm : {1, 2}, default=1

    Returns
    -------
    list of int
        Units removed per layer pair.

    Examples
    --------
    >>> from sparsenet import nn
    >>> model = nn.Sequential(nn.Linear(8, 10, rng=0), nn.ReLU(), nn.SparseLinear(10, 3, rng=1))
    >>> structured_prune(model, 0.5), model[0].out_features, model[2].in_features
    ([5], 5, 5)
    """
    from .compact import remove_units, unit_pairs

    amount = check_fraction(amount, "amount")
    if norm not in (1, 2):
        raise ValueError(f"norm must be 1 or 2; got {norm!r}")
    removed = []
    for a, _, b in unit_pairs(check_model(model)):
        norms = _unit_norms(a, norm)
        n = norms.size
        n_drop = min(n - 1, int(math.floor(amount * n)))
        keep = _keep_top(norms, n - n_drop)
        if n_drop:
            remove_units(a, b, keep, optimizer)
        removed.append(n_drop)
    return removed


class GradualStructuredPruner(Callback):
    """Remove hidden neurons / channels gradually on the cubic schedule, as a ``fit`` callback.

    At each pruning event the fraction of each hidden layer's *original* units removed so far is
    brought to :func:`cubic_sparsity` of the step, deleting the units with the smallest weight
    norm (see :func:`structured_prune`); the layers shrink as training goes on.

    Parameters
    ----------
    model : Sequential
    final_amount : float in [0, 1)
        Fraction of hidden units removed at ``end_step``.
    optimizer : Optimizer, optional
    begin_step, end_step, frequency
        As :class:`GradualMagnitudePruner`.
    norm : {1, 2}, default=1

    Examples
    --------
    >>> from sparsenet import nn
    >>> model = nn.Sequential(nn.Linear(8, 20, rng=0), nn.ReLU(), nn.Linear(20, 3, rng=1))
    >>> gsp = GradualStructuredPruner(model, 0.5, end_step=4, frequency=2)
    >>> for _ in range(5):
    ...     gsp.step()
    >>> model[0].out_features
    10
    """

    host_only = True  # NumPy on parameters: the trainer brings the model to the host around its hooks

    def __init__(self, model, final_amount, optimizer=None, *, begin_step=0, end_step, frequency=100, norm=1):
        from .compact import unit_pairs

        self.model = check_model(model)
        self.optimizer = optimizer
        self.final_amount = check_fraction(final_amount, "final_amount")
        if not isinstance(begin_step, numbers.Integral) or begin_step < 0:
            raise ValueError(f"begin_step must be a non-negative integer; got {begin_step!r}")
        if not isinstance(end_step, numbers.Integral) or end_step <= begin_step:
            raise ValueError(f"end_step must be an integer > begin_step={begin_step}; got {end_step!r}")
        if norm not in (1, 2):
            raise ValueError(f"norm must be 1 or 2; got {norm!r}")
        self.begin_step, self.end_step = int(begin_step), int(end_step)
        self.frequency = check_positive_int(frequency, "frequency")
        self.norm = norm
        self.original = [(a, _n_units(a)) for a, _, _ in unit_pairs(model)]
        self.step_count = 0
        self.history = []

    def step(self):
        """Advance one optimizer step; prune when the schedule says so."""
        from .compact import remove_units, unit_pairs

        t = self.step_count
        self.step_count += 1
        if not _pruning_step(self, t):
            return
        amount = cubic_sparsity(t, self.final_amount, begin_step=self.begin_step, end_step=self.end_step)
        n0 = {id(a): n for a, n in self.original}
        for a, _, b in unit_pairs(self.model):
            if id(a) not in n0:
                continue
            n = _n_units(a)
            target = max(1, n0[id(a)] - int(math.floor(amount * n0[id(a)])))
            if target < n:
                remove_units(a, b, _keep_top(_unit_norms(a, self.norm), target), self.optimizer)
        self.history.append((t, amount))

    def on_train_begin(self, trainer):
        if self.optimizer is None:
            self.optimizer = trainer.optimizer

    def on_batch_end(self, trainer, batch, logs):
        self.step()

    def needs_host(self, hook, trainer):
        # On the GPU only the pruning steps bring the model to the host; taking the trainer's
        # optimizer needs no weights.  A subclass's own hooks: the default rule.
        own = runs_own(self, GradualStructuredPruner, hook, "step")
        if hook == "on_batch_end" and own:
            return _pruning_step(self, self.step_count)
        if hook == "on_train_begin" and own:
            return False
        return super().needs_host(hook, trainer)


def _pruning_step(schedule, t):
    """Whether step ``t`` of a gradual pruner (begin_step, end_step, frequency) prunes."""
    return schedule.begin_step <= t <= schedule.end_step and (
        (t - schedule.begin_step) % schedule.frequency == 0 or t == schedule.end_step)


def _n_units(layer):
    """Number of output units (neurons or channels) of a weight layer."""
    return layer.out_features if isinstance(layer, (Linear, SparseLinear)) else layer.out_channels


def _unit_norms(layer, norm):
    p = layer.weight
    if p.is_sparse:
        return kernels.csr_row_norms(p.csr.indptr, p.csr.data, norm)
    return np.linalg.norm(p.data.reshape(p.data.shape[0], -1), ord=norm, axis=1)


# ------------------------------------------------------------------ saliency
def saliency_scores(model):
    """``|w * dL/dw|`` of every weight from the gradients currently in ``p.grad`` (first-order Taylor)."""
    out = {}
    for _, layer in weight_layers(model):
        p = layer.weight
        if p.grad is None:
            raise RuntimeError(f"{p.name!r} has no gradient: run a forward and backward pass first")
        out[p] = np.abs(p.data * p.grad)
    return out


def snip_scores(model, loss, x, y):
    """SNIP connection sensitivity ``|w * g|`` on one batch; model gradients are left untouched.

    Parameters
    ----------
    model : Module
    loss : loss module
    x, y : ndarray
        A batch (typically at initialisation).

    Returns
    -------
    dict Parameter -> ndarray
    """
    params = model.parameters()
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        out = model(x)
        loss(out, y)
        model.backward_params(loss.backward())
        return saliency_scores(model)
    finally:
        for p, g in zip(params, saved):
            p.grad = g


def snip_prune(model, loss, x, y, sparsity, optimizer=None, *, to_sparse_below=0.5):
    """SNIP (Lee et al. 2019): prune at initialisation by global ``|w * g|`` on one batch.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn
    >>> model = nn.Sequential(nn.Linear(8, 16, rng=0), nn.ReLU(), nn.Linear(16, 3, rng=1))
    >>> x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    >>> _ = snip_prune(model, nn.CrossEntropyLoss(), x, np.arange(32) % 3, 0.9)
    >>> model[0].weight.csr.nnz + model[2].weight.csr.nnz
    18
    """
    pruner = MagnitudePruner(model, optimizer, scope="global", to_sparse_below=to_sparse_below)
    return pruner.prune(sparsity, scores=snip_scores(model, loss, x, y))


# ------------------------------------------------------------------ lottery ticket
class LotteryTicket:
    """Remember the initial weights; after pruning, rewind the survivors to them (Frankle & Carbin 2019).

    Parameters
    ----------
    model : Module
        Snapshot taken now (call right after construction, or after k steps for late rewinding).

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn
    >>> model = nn.Sequential(nn.Linear(6, 4, rng=0))
    >>> ticket = LotteryTicket(model)
    >>> w0 = model[0].weight.data.copy()
    >>> model[0].weight.data += 1.0                 # "training"
    >>> _ = magnitude_prune(model, 0.75)
    >>> ticket.rewind()
    >>> kept = model[0].weight.csr.to_dense() != 0
    >>> bool(np.array_equal(model[0].weight.csr.to_dense()[kept], w0[kept]))
    True
    """

    def __init__(self, model):
        self.model = check_model(model)
        self.initial = {}
        for name, layer in weight_layers(model):
            p = layer.weight
            w = p.csr.to_dense() if p.is_sparse else p.data.reshape(p.data.shape[0], -1).copy()
            b = None if layer.bias is None else layer.bias.data.copy()
            self.initial[name] = (w, b)

    def rewind(self, optimizer=None, *, pruner=None):
        """Set every surviving weight (and bias) back to its initial value; optimizer state is reset.

        Pruned connections stay pruned: CSR patterns are kept, dense weights keep the pruner's
        masks (or their zeros when no pruner is given).
        """
        for name, layer in weight_layers(self.model):
            if name not in self.initial:
                continue
            w0, b0 = self.initial[name]
            p = layer.weight
            if w0.shape != (p.dense_shape[0], int(np.prod(p.dense_shape[1:]))):
                raise ValueError(
                    f"layer {name!r} changed shape since the snapshot ({w0.shape} -> {p.dense_shape}); "
                    "lottery-ticket rewinding needs the original architecture (unstructured pruning)"
                )
            if p.is_sparse:
                rows = np.repeat(np.arange(p.csr.shape[0]), np.diff(p.csr.indptr))
                p.data[...] = w0[rows, p.csr.indices]
            else:
                mask = pruner.masks.get(p) if pruner is not None else None
                mask = (p.data != 0) if mask is None else mask
                p.data[...] = w0.reshape(p.data.shape) * mask
            if b0 is not None:
                layer.bias.data[...] = b0
            if optimizer is not None:
                optimizer.state.pop(p, None)
                if layer.bias is not None:
                    optimizer.state.pop(layer.bias, None)
