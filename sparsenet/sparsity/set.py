"""Sparse Evolutionary Training (SET, Mocanu et al. 2018) on truly sparse CSR weights.

Every ΔT steps (or every epoch) each sparse layer drops the fraction ζ of its connections with
the smallest magnitude and regrows as many at uniformly random free positions, with values
from the initialisation distribution.  The number of connections is conserved and the update
costs O(nnz) (plus O(ζ nnz) random draws): the dense weight matrix never exists.
"""
import math

import numpy as np

from .._validation import check_random_state
from ..train import Callback
from ._topology import (check_fraction, check_model, check_positive_int, drop_and_add, magnitude_drop_mask,
                        pattern_view, resolve_layers, sample_free)
from .. import kernels

__all__ = ["set_update", "SET", "erdos_renyi_densities"]


def erdos_renyi_densities(shapes, density):
    """Per-layer densities of the Erdős–Rényi(-Kernel) rule for an overall ``density``.

    Layer ``l`` gets ``eps * sum(shape_l) / prod(shape_l)``: (out, in) shapes give SET's ER rule,
    (out, in, kh, kw) shapes RigL's ERK.  ``eps`` is chosen so the total number of connections is
    ``density * sum(prod(shape_l))``; layers that would exceed 1 are made dense and the rest
    re-balanced (as in the RigL reference code).

    Parameters
    ----------
    shapes : list of tuple of int
    density : float in (0, 1]

    Returns
    -------
    list of float

    Examples
    --------
    >>> [round(d, 4) for d in erdos_renyi_densities([(256, 64), (10, 256)], 0.1)]
    [0.0631, 0.3359]
    """
    density = check_fraction(density, "density", low_open=True, high_open=False)
    sizes = np.array([float(np.prod(s)) for s in shapes])
    raw = np.array([float(np.sum(s)) for s in shapes]) / np.maximum(sizes, 1)
    dense = np.zeros(len(shapes), bool)
    budget = density * sizes.sum()
    while True:
        free = ~dense
        eps = (budget - sizes[dense].sum()) / max((raw[free] * sizes[free]).sum(), 1e-300)
        d = np.where(dense, 1.0, eps * raw)
        if (d <= 1.0).all():
            return [float(v) for v in d]
        dense |= d > 1.0


def set_update(param, zeta, *, rng=None, bound=None, optimizer=None):
    """One SET topology update of a sparse weight: drop ζ·nnz smallest |w|, regrow as many at random.

    Parameters
    ----------
    param : Parameter
        A sparse (CSR) weight.
    zeta : float in (0, 1)
        Fraction of connections replaced.
    rng : None, int or Generator
        Source of the new positions and values.
    bound : float, optional
        New values ~ U(-bound, bound); default ``1/sqrt(nnz / n_rows)`` (the sparse fan-in rule of
        :func:`sparsenet.nn.init.sparse_uniform`).
    optimizer : Optimizer, optional
        Kept connections keep their state, new ones start at zero.

    Returns
    -------
    dict
        ``{"dropped": n, "added": n}``.

    Raises
    ------
    ValueError
        ζ outside (0, 1).

    Examples
    --------
    >>> from sparsenet import nn
    >>> layer = nn.SparseLinear(50, 40, density=0.1, rng=0)
    >>> set_update(layer.weight, 0.3, rng=0), layer.weight.csr.nnz
    ({'dropped': 60, 'added': 60}, 200)
    """
    zeta = check_fraction(zeta, "zeta", low_open=True, hint=" (the fraction of connections SET replaces)")
    if not getattr(param, "is_sparse", False):
        raise TypeError("set_update needs a sparse (CSR) weight Parameter, e.g. SparseLinear(...).weight")
    rng = check_random_state(rng)
    csr = param.csr
    nnz = csr.nnz
    n = int(round(zeta * nnz))
    if n == 0:
        return {"dropped": 0, "added": 0}
    if bound is None:
        bound = 1.0 / math.sqrt(nnz / csr.shape[0])
    keep = magnitude_drop_mask(csr.data, n)
    f_indptr, f_indices, _ = kernels.csr_filter(csr.indptr, csr.indices, csr.shape[1], keep=keep)
    rows, cols = sample_free(pattern_view(f_indptr, f_indices, csr.shape), n, rng)
    vals = rng.uniform(-bound, bound, size=n)
    drop_and_add(param, keep, rows, cols, vals, optimizer)
    return {"dropped": n, "added": n}


class SET(Callback):
    """SET topology evolution as a ``fit`` callback (or call :meth:`step` yourself).

    Parameters
    ----------
    model : Module
    optimizer : Optimizer, optional
        Default: the trainer's optimizer inside ``fit``.
    zeta : float in (0, 1), default=0.3
        Fraction of each layer's connections replaced per update.
    update_every : int, optional
        ΔT in optimizer steps; default: once per epoch (the original SET).
    layers : list of sparse layers, optional
        Default: every SparseLinear / SparseConv2d of ``model``.
    rng : None, int or Generator
        Seed of the regrowth.

    Attributes
    ----------
    bounds : dict
        Per layer, the U(-b, b) bound of new weights (the layer's initial sparse fan-in bound).

    Examples
    --------
    >>> from sparsenet import nn
    >>> model = nn.Sequential(nn.SparseLinear(20, 30, density=0.2, rng=0), nn.ReLU(),
    ...                       nn.SparseLinear(30, 5, density=0.3, rng=1))
    >>> set_ = SET(model, zeta=0.2, rng=0)
    >>> before = [m.weight.csr.nnz for m in set_.layers]
    >>> set_.step()
    >>> [m.weight.csr.nnz for m in set_.layers] == before
    True
    """

    host_only = True  # NumPy on parameters: the trainer brings the model to the host around its hooks

    def __init__(self, model, optimizer=None, *, zeta=0.3, update_every=None, layers=None, rng=None):
        self.model = check_model(model)
        self.optimizer = optimizer
        self.zeta = check_fraction(zeta, "zeta", low_open=True, hint=" (the fraction of connections SET replaces)")
        self.update_every = None if update_every is None else check_positive_int(update_every, "update_every")
        self.layers = resolve_layers(model, layers, sparse_only=True)
        self.rng = check_random_state(rng)
        self.bounds = {id(m): 1.0 / math.sqrt(max(m.weight.csr.nnz, 1) / max(m.weight.csr.shape[0], 1))
                       for m in self.layers}
        self.step_count = 0
        self.n_updates = 0

    def step(self):
        """Run one topology update on every layer now."""
        for layer in self.layers:
            set_update(layer.weight, self.zeta, rng=self.rng, bound=self.bounds[id(layer)],
                       optimizer=self.optimizer)
        self.n_updates += 1

    def on_train_begin(self, trainer):
        if self.optimizer is None:
            self.optimizer = trainer.optimizer

    def on_batch_end(self, trainer, batch, logs):
        self.step_count += 1
        if self.update_every is not None and self.step_count % self.update_every == 0:
            self.step()

    def needs_host(self, hook, trainer):
        # On the GPU, only the steps that change the topology bring the model to the host.
        if hook == "on_batch_end":
            return self.update_every is not None and (self.step_count + 1) % self.update_every == 0
        return hook == "on_epoch_end"

    def on_epoch_end(self, trainer, epoch, logs):
        if self.update_every is None and epoch + 1 < trainer.epochs:
            self.step()
