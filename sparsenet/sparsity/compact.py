"""Physically remove what sparsity methods zeroed: stored zeros, dead neurons and channels.

After L1 / group lasso / structured pruning a CSR weight still *stores* its zeros, and a
neuron whose weights are all zero still costs a row and a column.  :func:`compact` drops the
stored zeros and deletes dead units from the two layers around them, so the layer shapes
shrink and the model computes the same function, faster.
"""
import numpy as np

from ..nn.activation import LeakyReLU, ReLU, Sigmoid, Tanh
from ..nn.conv import Conv2d, SparseConv2d
from ..nn.dropout import Dropout, Flatten
from ..nn.linear import Linear, SparseLinear
from ..nn.pool import AvgPool2d, MaxPool2d
from ._topology import (check_model, csr_rows, filter_pattern, leaf_sequence, resize_dense,
                        weight_layers)

__all__ = ["remove_zeros", "compact", "unit_pairs", "remove_units"]

_ELEMENTWISE = (ReLU, LeakyReLU, Tanh, Sigmoid, Dropout)
# Zero-preserving, but a non-zero constant map is changed at the borders (padding) or spread
# over many columns: only units whose constant output is exactly 0 pass through these.
_ZERO_PRESERVING = (MaxPool2d, AvgPool2d, Flatten)


def remove_zeros(model, optimizer=None):
    """Drop the explicitly stored zeros of every CSR weight in ``model``; returns how many.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn
    >>> layer = nn.SparseLinear(10, 10, density=0.5, rng=0)
    >>> layer.weight.data[:20] = 0
    >>> remove_zeros(layer), layer.weight.csr.nnz
    (20, 30)
    """
    removed = 0
    for _, layer in weight_layers(model, sparse_only=True):
        keep = layer.weight.data != 0
        n = int(keep.size - np.count_nonzero(keep))
        if n:
            filter_pattern(layer.weight, optimizer, keep=keep)
            removed += n
    return removed


def _n_units(layer):
    return layer.out_features if isinstance(layer, (Linear, SparseLinear)) else layer.out_channels


def _fan_in_cols(layer):
    """Number of columns of the (out, fan_in) weight matrix."""
    if layer.weight.is_sparse:
        return layer.weight.csr.shape[1]
    return int(np.prod(layer.weight.data.shape[1:]))


def unit_pairs(model):
    """Consecutive (producer, between, consumer) layer triples whose shared units can be removed.

    ``model`` must be a (possibly nested) Sequential.  Between the two weight layers only
    element-wise activations, dropout, pooling and Flatten may appear; a grouped convolution or
    any other module breaks the pair.
    """
    leaves = leaf_sequence(model)
    pairs = []
    for a_pos, a in enumerate(leaves):
        if not isinstance(a, (Linear, SparseLinear, Conv2d, SparseConv2d)):
            continue
        if getattr(a, "groups", 1) != 1:
            continue
        between = []
        for b in leaves[a_pos + 1:]:
            if isinstance(b, (Linear, SparseLinear, Conv2d, SparseConv2d)):
                if getattr(b, "groups", 1) == 1 and _fan_in_cols(b) % _n_units(a) == 0:
                    pairs.append((a, tuple(between), b))
                break
            if not isinstance(b, _ELEMENTWISE + _ZERO_PRESERVING):
                break
            between.append(b)
    return pairs


def _row_abs_sum(layer):
    p = layer.weight
    if p.is_sparse:
        return np.bincount(csr_rows(p.csr), weights=np.abs(p.data), minlength=p.csr.shape[0])
    return np.abs(p.data.reshape(p.data.shape[0], -1)).sum(axis=1)


def _col_abs_sum(layer):
    p = layer.weight
    if p.is_sparse:
        return np.bincount(p.csr.indices, weights=np.abs(p.data), minlength=p.csr.shape[1])
    return np.abs(p.data.reshape(p.data.shape[0], -1)).sum(axis=0)


def _constant_output(a, between):
    """Output of each unit of ``a`` whose incoming weights are all zero: act(bias)."""
    n = _n_units(a)
    c = np.zeros((1, n), dtype=a.dtype) if a.bias is None else a.bias.data.reshape(1, n).copy()
    for m in between:
        if isinstance(m, _ELEMENTWISE[:-1]):
            c = m.forward(c)
            object.__setattr__(m, "_ctx", None)  # a probe, not a training forward
    return c.reshape(n)


def remove_units(a, b, keep, optimizer=None):
    """Delete the units ``~keep`` of ``a``'s output (rows of ``a``, column blocks of ``b``).

    ``keep`` is a bool array over ``a``'s output units.  Optimizer state follows.
    """
    keep = np.asarray(keep, bool)
    n = keep.size
    kept_units = np.flatnonzero(keep)
    n_new = kept_units.size
    # producer: rows
    pa = a.weight
    if pa.is_sparse:
        filter_pattern(pa, optimizer, row_sel=kept_units)
    else:
        idx = np.arange(pa.data.size).reshape(pa.data.shape[0], -1)[kept_units].ravel()
        resize_dense(pa, pa.data[kept_units], idx, np.arange(idx.size), optimizer)
    if a.bias is not None:
        resize_dense(a.bias, a.bias.data[kept_units], kept_units, np.arange(n_new), optimizer)
    if isinstance(a, (Linear, SparseLinear)):
        a.out_features = n_new
    else:
        a.out_channels = n_new
    # consumer: column blocks
    pb = b.weight
    n_cols = _fan_in_cols(b)
    block = n_cols // n
    col_keep = np.repeat(keep, block)
    if pb.is_sparse:
        col_map = np.where(col_keep, np.cumsum(col_keep) - 1, -1)
        filter_pattern(pb, optimizer, col_map=col_map, n_col=int(col_keep.sum()))
    else:
        w2 = pb.data.reshape(pb.data.shape[0], -1)
        idx = np.arange(pb.data.size).reshape(w2.shape)[:, col_keep].ravel()
        new = w2[:, col_keep]
        if isinstance(b, Conv2d):
            new = new.reshape(pb.data.shape[0], n_new, *pb.data.shape[2:])
        resize_dense(pb, new, idx, np.arange(idx.size), optimizer)
    if isinstance(b, (Linear, SparseLinear)):
        b.in_features = int(col_keep.sum())
    else:
        b.in_channels = n_new


def compact(model, optimizer=None, *, zeros=True, units=True):
    """Remove stored zeros and dead units; the function computed is unchanged.

    A hidden unit is *dead* when all its outgoing weights are zero (its output is never used),
    or all its incoming weights are zero: its output is then the constant ``act(bias)``, which
    is folded into the next layer's bias (Linear pairs) or must be 0 (conv / pool / Flatten
    between).  Dead units are deleted from both layers (at least one unit is always kept).

    Parameters
    ----------
    model : Module
        Zeros are removed in any model; unit removal needs a (nested) Sequential.
    optimizer : Optimizer, optional
        Its state is remapped so surviving weights keep their momentum / moments.
    zeros, units : bool, default=True
        What to remove.

    Returns
    -------
    dict
        ``{"zeros": n_removed_entries, "units": [n_removed per (producer, consumer) pair]}``.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn
    >>> model = nn.Sequential(nn.SparseLinear(6, 5, density=1.0, rng=0), nn.ReLU(),
    ...                       nn.SparseLinear(5, 2, density=1.0, rng=1))
    >>> model[0].weight.data[:12] = 0          # units 0 and 1 lose their incoming weights...
    >>> model[0].bias.data[:2] = -1.0          # ...and ReLU(bias) = 0: they are dead
    >>> x = np.ones((3, 6), np.float32); y0 = model(x)
    >>> compact(model)["units"], model[0].out_features, model[2].in_features
    ([2], 3, 3)
    >>> bool(np.allclose(model(x), y0))
    True
    """
    check_model(model)
    report = {"zeros": 0, "units": []}
    if units:
        for a, between, b in unit_pairs(model):
            n = _n_units(a)
            block = _fan_in_cols(b) // n
            out_dead = _col_abs_sum(b).reshape(n, block).sum(axis=1) == 0
            in_dead = _row_abs_sum(a) == 0
            c = _constant_output(a, between)
            foldable = block == 1 and not any(isinstance(m, _ZERO_PRESERVING) for m in between) \
                and b.bias is not None
            removable = out_dead | (in_dead & ((c == 0) | foldable))
            if removable.all():
                removable[np.argmax(_row_abs_sum(a) + ~in_dead)] = False
            if not removable.any():
                report["units"].append(0)
                continue
            fold = removable & ~out_dead & (c != 0)
            if fold.any():
                pb = b.weight
                cols = np.flatnonzero(fold)
                if pb.is_sparse:
                    csr = pb.csr
                    sel = np.isin(csr.indices, cols)
                    contrib = np.bincount(csr_rows(csr)[sel], weights=csr.data[sel] * c[csr.indices[sel]],
                                          minlength=csr.shape[0])
                else:
                    contrib = pb.data[:, cols] @ c[cols]
                b.bias.data += contrib.astype(b.bias.dtype)
            remove_units(a, b, ~removable, optimizer)
            report["units"].append(int(removable.sum()))
    if zeros:
        report["zeros"] = remove_zeros(model, optimizer)
    return report
