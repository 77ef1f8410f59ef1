"""Plots of training runs and sparse weights (needs matplotlib: ``pip install 'sparsenet[plot]'``).

Every function draws on ``ax`` (a new figure when None) and returns the axes.
"""
import numpy as np

__all__ = ["plot_history", "plot_accuracy_vs_sparsity", "plot_weight_histogram", "plot_degree_histogram"]


def _axes(ax):
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("sparsenet.plot needs matplotlib: pip install 'sparsenet[plot]'") from err
    if ax is None:
        _, ax = plt.subplots()
    return ax


def plot_history(history, keys=("loss", "val_loss"), *, ax=None):
    """Training curves: each of ``keys`` (present in the history) against the epoch.

    Parameters
    ----------
    history : sparsenet.train.History or list of dict
    keys : sequence of str, default=("loss", "val_loss")

    Examples
    --------
    >>> matplotlib = __import__("pytest").importorskip("matplotlib"); matplotlib.use("Agg")
    >>> ax = plot_history([{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}])
    >>> ax.get_xlabel()
    'epoch'
    """
    ax = _axes(ax)
    records = list(getattr(history, "records", history))
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(records)]
    for key in keys:
        values = [r.get(key) for r in records]
        if any(v is not None for v in values):
            ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.legend()
    return ax


def plot_accuracy_vs_sparsity(sparsity, accuracy, *, labels=None, ax=None):
    """Accuracy against weight sparsity, one point per run (optionally labelled).

    Examples
    --------
    >>> matplotlib = __import__("pytest").importorskip("matplotlib"); matplotlib.use("Agg")
    >>> plot_accuracy_vs_sparsity([0.5, 0.9], [0.98, 0.97]).get_ylabel()
    'test accuracy'
    """
    ax = _axes(ax)
    ax.plot(sparsity, accuracy, marker="o")
    for s, a, label in zip(sparsity, accuracy, labels or []):
        ax.annotate(str(label), (s, a))
    ax.set_xlabel("sparsity (fraction of zero weights)")
    ax.set_ylabel("test accuracy")
    return ax


def _weights(model):
    for name, p in model.named_parameters():
        if p.is_sparse or (p.name == "weight" and p.data.ndim >= 2):
            yield name, p


def plot_weight_histogram(model, *, bins=50, ax=None):
    """Histogram of the stored weight values of every weight matrix / filter bank.

    Examples
    --------
    >>> matplotlib = __import__("pytest").importorskip("matplotlib"); matplotlib.use("Agg")
    >>> from sparsenet import nn
    >>> ax = plot_weight_histogram(nn.SparseLinear(20, 10, density=0.5, rng=0))
    """
    ax = _axes(ax)
    for name, p in _weights(model):
        ax.hist(np.ravel(p.data), bins=bins, histtype="step", label=name)
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    ax.legend()
    return ax


def plot_degree_histogram(layer, *, kind="in", bins=30, ax=None):
    """Histogram of connections per unit of a sparse layer: ``kind="in"`` per output unit (row), ``"out"`` per input.

    Examples
    --------
    >>> matplotlib = __import__("pytest").importorskip("matplotlib"); matplotlib.use("Agg")
    >>> from sparsenet import nn
    >>> ax = plot_degree_histogram(nn.SparseLinear(20, 10, density=0.5, rng=0))
    """
    if kind not in ("in", "out"):
        raise ValueError(f"kind must be 'in' or 'out'; got {kind!r}")
    w = getattr(getattr(layer, "weight", None), "csr", None)
    if w is None:
        raise TypeError(f"plot_degree_histogram needs a layer with a sparse weight; got {type(layer).__name__}")
    degree = np.diff(w.indptr) if kind == "in" else np.bincount(w.indices, minlength=w.shape[1])
    ax = _axes(ax)
    ax.hist(degree, bins=bins)
    ax.set_xlabel(f"{kind}-degree (connections per {'output' if kind == 'in' else 'input'} unit)")
    ax.set_ylabel("units")
    return ax
