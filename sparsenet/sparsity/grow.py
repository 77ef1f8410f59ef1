"""Growing sparse networks (after Feng, Li & Li 2008, "Growing Sparse Neural Networks").

Start with a small, sparse network; while the fit is not good enough, add *connections* where
the gradient says they help most (the largest |dL/dW| outside the pattern, computed by the
streamed top-k of RigL) and add *hidden units*: a new row in the producer's CSR weight (a few
random incoming connections) and a new column in the consumer's with **zero** outgoing
weights, so the network's function is unchanged at the moment of growth and training decides
what the unit becomes.  The counterpart, neuron-importance pruning, removes the hidden units
with the smallest summed |incoming weights|.
"""
import math

import numpy as np

from .. import kernels
from .._validation import check_random_state
from ..nn.linear import SparseLinear
from ..train import Callback
from ._topology import (Recorder, check_model, check_nonneg, check_positive_int, drop_and_add,
                        resize_dense)
from .compact import remove_units, unit_pairs

__all__ = ["grow_connections", "add_units", "prune_units", "unit_importance", "GrowingNetwork"]


def _check_sparse_linear(*layers):
    for m in layers:
        if not isinstance(m, SparseLinear):
            raise TypeError(f"growth works on SparseLinear layers; got {type(m).__name__}")


def grow_connections(layer, n, x, grad_out, optimizer=None, *, tile_rows=None):
    """Add the ``n`` absent connections with the largest |dense gradient| (value 0, zero state).

    Parameters
    ----------
    layer : SparseLinear
    n : int >= 0
    x, grad_out : ndarray (B, in), (B, out)
        The layer's input and output gradient on a batch.

    Returns
    -------
    int
        Connections added (fewer than ``n`` only when the layer is full).

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn
    >>> layer = nn.SparseLinear(6, 4, density=0.25, rng=0)
    >>> rng = np.random.default_rng(0)
    >>> grow_connections(layer, 5, rng.standard_normal((3, 6)), rng.standard_normal((3, 4))), layer.weight.csr.nnz
    (5, 11)
    """
    _check_sparse_linear(layer)
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    csr = layer.weight.csr
    rows, cols, _ = kernels.topk_abs_grad(csr.indptr, csr.indices, np.asarray(grad_out, csr.dtype),
                                          np.asarray(x, csr.dtype), n, tile_rows=tile_rows)
    if rows.size:
        drop_and_add(layer.weight, np.ones(csr.nnz, bool), rows, cols, np.zeros(rows.size), optimizer)
    return int(rows.size)


def add_units(producer, consumer, n, optimizer=None, *, fan_in=None, fan_out=None, bound=None, rng=None):
    """Append ``n`` hidden units between two SparseLinear layers without changing the function.

    Each new unit gets ``fan_in`` random incoming connections (values U(-bound, bound), bias 0)
    and ``fan_out`` outgoing connections to random outputs with value **0** (stored, so they
    train); the consumer's output is therefore unchanged.  Optimizer state of the new entries
    is zero; ``producer.out_features`` and ``consumer.in_features`` grow by ``n``.

    Parameters
    ----------
    producer : SparseLinear (in -> h)
    consumer : SparseLinear (h -> out)
    n : int > 0
    fan_in : int, optional
        Default: the producer's average connections per unit (at least 1).
    fan_out : int, optional
        Default: all ``out`` outputs.
    bound : float, optional
        Default ``1/sqrt(fan_in)``.
    rng : None, int or Generator

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn
    >>> a, b = nn.SparseLinear(8, 4, density=0.5, rng=0), nn.SparseLinear(4, 3, density=0.5, rng=1)
    >>> x = np.ones((2, 8), np.float32)
    >>> y0 = b(np.maximum(a(x), 0))
    >>> add_units(a, b, 2, rng=0)
    >>> a.out_features, b.in_features, bool(np.allclose(b(np.maximum(a(x), 0)), y0))
    (6, 6, True)
    """
    _check_sparse_linear(producer, consumer)
    n = check_positive_int(n, "n", " (hidden units to add)")
    if producer.out_features != consumer.in_features:
        raise ValueError(
            f"producer.out_features ({producer.out_features}) must equal consumer.in_features "
            f"({consumer.in_features})"
        )
    rng = check_random_state(rng)
    a, b = producer.weight.csr, consumer.weight.csr
    h, n_in, n_out = a.shape[0], a.shape[1], b.shape[0]
    if fan_in is None:
        fan_in = max(1, int(round(a.nnz / max(h, 1))))
    fan_in = min(check_positive_int(fan_in, "fan_in"), n_in)
    fan_out = n_out if fan_out is None else min(check_positive_int(fan_out, "fan_out"), n_out)
    bound = 1.0 / math.sqrt(fan_in) if bound is None else check_nonneg(bound, "bound")
    # incoming: new rows h..h+n-1 of the producer
    in_cols = np.concatenate([np.sort(rng.choice(n_in, fan_in, replace=False)) for _ in range(n)])
    in_rows = np.repeat(np.arange(h, h + n), fan_in)
    vals = rng.uniform(-bound, bound, size=in_rows.size)
    drop_and_add(producer.weight, np.ones(a.nnz, bool), in_rows, in_cols, vals, optimizer,
                 shape=(h + n, n_in))
    if producer.bias is not None:
        bias = producer.bias
        resize_dense(bias, np.concatenate([bias.data, np.zeros(n, bias.dtype)]), np.arange(h), np.arange(h),
                     optimizer)
    producer.out_features = h + n
    # outgoing: new columns h..h+n-1 of the consumer, zero weights.  Growing the column count
    # keeps every old entry (and column index) where it was.
    b_grown = b.__class__(b.data, b.indices, b.indptr, (n_out, h + n), check=False)
    consumer.weight.csr = b_grown
    out_rows = np.concatenate([np.sort(rng.choice(n_out, fan_out, replace=False)) for _ in range(n)])
    out_cols = np.repeat(np.arange(h, h + n), fan_out)
    drop_and_add(consumer.weight, np.ones(b.nnz, bool), out_rows, out_cols, np.zeros(out_rows.size), optimizer)
    consumer.in_features = h + n


def unit_importance(producer):
    """Summed |incoming weights| of each unit of a layer (Feng et al.'s neuron importance)."""
    p = producer.weight
    if p.is_sparse:
        return kernels.csr_row_norms(p.csr.indptr, p.csr.data, 1)
    return np.abs(p.data.reshape(p.data.shape[0], -1)).sum(axis=1)


def prune_units(producer, consumer, n, optimizer=None):
    """Remove the ``n`` hidden units with the smallest :func:`unit_importance` (at least one stays).

    Returns the indices (before removal) of the removed units.

    Examples
    --------
    >>> from sparsenet import nn
    >>> a, b = nn.SparseLinear(8, 6, density=0.5, rng=0), nn.SparseLinear(6, 3, density=0.5, rng=1)
    >>> len(prune_units(a, b, 2)), a.out_features, b.in_features
    (2, 4, 4)
    """
    imp = unit_importance(producer)
    n = min(int(n), imp.size - 1)
    if n <= 0:
        return np.empty(0, np.int64)
    order = np.lexsort((np.arange(imp.size), imp))
    removed = np.sort(order[:n])
    keep = np.ones(imp.size, bool)
    keep[removed] = False
    remove_units(producer, consumer, keep, optimizer)
    return removed


class GrowingNetwork(Callback):
    """Grow a sparse MLP during ``fit`` until a target or a budget is reached.

    At the end of each epoch: stop training when ``monitor`` reached ``target``; otherwise, when
    ``monitor`` improved by less than ``min_delta`` over the last ``patience`` epochs and the
    budget allows, grow: every hidden layer gets ``units`` new units (function-preserving) and
    every sparse layer ``connections`` (a fraction of its nnz) new gradient-chosen connections.
    Optionally prunes units whose importance fell below ``prune_below``.

    Parameters
    ----------
    model : Sequential of SparseLinear layers and element-wise activations
    optimizer : Optimizer, optional
    monitor : str, default="val_accuracy"
        History key (``*loss`` minimised, others maximised).
    target : float, optional
        Stop when reached.
    patience : int, default=1
    min_delta : float, default=0.005
        Smallest improvement that counts (absolute, or a fraction of the best value with ``relative``).
    relative : bool, default=False
    units : int, default=4
        Hidden units added per hidden layer per growth.
    connections : float, default=0.1
        Connections added per layer per growth, as a fraction of its nnz.
    max_units : int, optional
        Budget on each hidden layer's width.
    max_params : int, optional
        Budget on the total number of stored weights.
    prune_below : float, optional
        Remove units whose summed |incoming weights| is below this (neuron importance pruning).
    rng : None, int or Generator

    Attributes
    ----------
    log : list of dict
        Per epoch: epoch, hidden units per layer, connections (total nnz), grown (bool), monitor value.
    """

    host_only = True  # NumPy on parameters: the trainer brings the model to the host around its hooks

    def __init__(self, model, optimizer=None, *, monitor="val_accuracy", target=None, patience=1, min_delta=0.005,
                 units=4, connections=0.1, max_units=None, max_params=None, prune_below=None, relative=False, rng=None):
        self.model = check_model(model)
        self.optimizer = optimizer
        self.monitor = monitor
        self.minimise = monitor.endswith("loss")
        self.target = target
        self.patience = check_positive_int(patience, "patience")
        self.min_delta = check_nonneg(min_delta, "min_delta")
        self.relative = bool(relative)
        self.units = int(units)
        if self.units < 0:
            raise ValueError(f"units must be >= 0; got {units!r}")
        self.connections = check_nonneg(connections, "connections")
        self.max_units = max_units
        self.max_params = max_params
        self.prune_below = None if prune_below is None else check_nonneg(prune_below, "prune_below")
        self.rng = check_random_state(rng)
        self.pairs = [(a, b) for a, _, b in unit_pairs(model)]
        layers = [m for p in self.pairs for m in p]
        _check_sparse_linear(*layers)
        self.layers = list(dict.fromkeys(layers))
        self.log = []
        self._best = None
        self._since = 0
        self._recorder = None

    def hidden_units(self):
        return [a.out_features for a, _ in self.pairs]

    def n_connections(self):
        return int(sum(m.weight.csr.nnz for m in self.layers))

    def grow(self):
        """Add units and connections now (within the budget); returns True if anything grew."""
        grew = False
        # connections first: the recorded batch matches the layer shapes only before units are added
        if self._recorder is not None and self.connections > 0:
            for m in self.layers:
                if self.max_params is not None and self.n_connections() >= self.max_params:
                    break
                act = self._recorder.get(m)
                if act is None or act[0].shape[1] != m.in_features or act[1].shape[1] != m.out_features:
                    continue  # the layer grew since this batch was recorded
                k = int(round(self.connections * m.weight.csr.nnz))
                if self.max_params is not None:
                    k = min(k, self.max_params - self.n_connections())
                grew |= grow_connections(m, k, act[0], act[1], self.optimizer) > 0
        for a, b in self.pairs:
            if self.units and (self.max_units is None or a.out_features < self.max_units):
                n = self.units if self.max_units is None else min(self.units, self.max_units - a.out_features)
                if self.max_params is not None:
                    # a unit costs its fan-in plus one (zero) outgoing weight per output
                    per_unit = max(1, round(a.weight.csr.nnz / max(a.out_features, 1))) + b.out_features
                    n = min(n, (self.max_params - self.n_connections()) // per_unit)
                if n > 0:
                    add_units(a, b, n, self.optimizer, rng=self.rng)
                    grew = True
        return grew

    def _budget_left(self):
        return self.max_params is None or self.n_connections() < self.max_params

    def on_train_begin(self, trainer):
        if self.optimizer is None:
            self.optimizer = trainer.optimizer
        self._recorder = Recorder(self.layers)

    def on_epoch_end(self, trainer, epoch, logs):
        value = logs.get(self.monitor)
        if value is None:
            raise ValueError(
                f"GrowingNetwork monitors {self.monitor!r}, which the logs do not have; available: "
                f"{sorted(logs)} (pass val_data to fit for val_* keys)"
            )
        delta = self.min_delta * abs(self._best) if self.relative and self._best is not None else self.min_delta
        better = self._best is None or (value < self._best - delta if self.minimise else value > self._best + delta)
        if better:
            self._best, self._since = value, 0
        else:
            self._since += 1
        reached = self.target is not None and (value <= self.target if self.minimise else value >= self.target)
        grew = False
        if reached:
            trainer.stop_training = True
        elif self._since >= self.patience and self._budget_left():
            grew = self.grow()
            self._since = 0
            self._best = None  # the grown network starts a new plateau search
        if self.prune_below is not None:
            for a, b in self.pairs:
                imp = unit_importance(a)
                prune_units(a, b, int(np.sum(imp < self.prune_below)), self.optimizer)
        self.log.append({"epoch": epoch + 1, "hidden_units": self.hidden_units(),
                         "connections": self.n_connections(), "grown": grew, self.monitor: value})

    def on_train_end(self, trainer):
        if self._recorder is not None:
            self._recorder.close()
            self._recorder = None
