"""RigL (Evci et al. 2020, "Rigging the Lottery") on truly sparse CSR weights.

Every ΔT steps each sparse layer drops the fraction f(t) of its connections with the smallest
magnitude and grows as many where the *dense* gradient |dL/dW| is largest, new weights zero
(so the function is unchanged at the moment of growth).  f(t) is cosine annealed:
``f(t) = f_0 / 2 (1 + cos(pi t / T_end))``, no updates after ``T_end``.

The dense gradient of a fully connected layer is ``G^T X`` (G: output gradient, X: input, one
batch); a convolution's is the same product with X the (N*OH*OW, C*KH*KW) input patches and G
the (N*OH*OW, O) output gradient (:func:`conv_patches`).  It is computed tile by tile with a bounded heap (``sparsenet.kernels.topk_abs_grad``):
peak extra memory O(tile_rows * in + k) instead of the O(out * in) that RigL implementations
on dense masks pay.
"""
import math
import numbers

import numpy as np

from .. import kernels
from ..nn.conv import SparseConv2d
from ..nn.linear import SparseLinear
from ..train import Callback
from ._topology import (Recorder, check_fraction, check_model, check_positive_int, drop_and_add,
                        magnitude_drop_mask, resolve_layers)

__all__ = ["rigl_update", "cosine_drop_fraction", "conv_patches", "RigL"]


def cosine_drop_fraction(step, drop_fraction, end_step):
    """``drop_fraction / 2 * (1 + cos(pi * step / end_step))``, 0 from ``end_step`` on.

    Examples
    --------
    >>> [round(cosine_drop_fraction(t, 0.3, 100), 3) for t in (0, 50, 100)]
    [0.3, 0.15, 0.0]
    """
    if end_step is None:
        return float(drop_fraction)
    if step >= end_step:
        return 0.0
    return drop_fraction / 2 * (1 + math.cos(math.pi * step / end_step))


def conv_patches(x, kernel_size, stride, padding, dilation):
    """im2col: the (N*OH*OW, C*KH*KW) matrix of input patches of a convolution.

    Column ``c*KH*KW + i*KW + j`` matches the CSR column layout of
    :class:`~sparsenet.nn.SparseConv2d`, so the dense weight gradient is ``G^T P`` with G the
    output gradient as an (N*OH*OW, O) matrix.

    Examples
    --------
    >>> import numpy as np
    >>> conv_patches(np.arange(16.0).reshape(1, 1, 4, 4), (3, 3), (1, 1), (0, 0), (1, 1)).shape
    (4, 9)
    """
    x = np.asarray(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    iy = np.arange(kh)[:, None] * dh + np.arange(oh)[None, :] * sh  # (kh, oh)
    ix = np.arange(kw)[:, None] * dw + np.arange(ow)[None, :] * sw  # (kw, ow)
    cols = xp[:, :, iy[:, None, :, None], ix[None, :, None, :]]  # (n, c, kh, kw, oh, ow)
    return np.ascontiguousarray(cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, c * kh * kw))


def _as_matrices(layer, x, grad_out):
    """(X, G) of the dense-gradient product G^T X for a SparseLinear or SparseConv2d."""
    x = np.asarray(x)
    grad_out = np.asarray(grad_out)
    if isinstance(layer, SparseConv2d):
        if layer.groups != 1:
            raise NotImplementedError("RigL on grouped convolutions is not supported yet (groups must be 1)")
        if x.ndim != 4 or grad_out.ndim != 4 or x.shape[0] != grad_out.shape[0]:
            raise ValueError(
                f"for a SparseConv2d, x must be (N, C, H, W) and grad_out (N, O, OH, OW) with the same N; "
                f"got {x.shape} and {grad_out.shape}"
            )
        patches = conv_patches(x, layer.kernel_size, layer.stride, layer.padding, layer.dilation)
        g = grad_out.transpose(0, 2, 3, 1).reshape(-1, grad_out.shape[1])
        return patches, g
    return x, grad_out


def rigl_update(layer, x, grad_out, fraction, optimizer=None, *, tile_rows=None):
    """One RigL update of a sparse layer: drop ``fraction`` of nnz by |w|, grow as many by |G^T X|.

    Parameters
    ----------
    layer : SparseLinear or SparseConv2d (groups=1)
    x : ndarray (B, in_features) or (N, C, H, W)
        The layer's input on a batch.
    grad_out : ndarray (B, out_features) or (N, O, OH, OW)
        The gradient of the loss with respect to the layer's output on that batch.
    fraction : float in [0, 1)
    optimizer : Optimizer, optional
    tile_rows : int, optional
        Rows of the dense gradient computed at a time (default: a ~4 MiB tile).

    Returns
    -------
    dict
        ``{"dropped": n, "added": n}``; new weights are zero with zero optimizer state.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn
    >>> layer = nn.SparseLinear(30, 20, density=0.1, rng=0)
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((8, 30)).astype(np.float32)
    >>> g = rng.standard_normal((8, 20)).astype(np.float32)
    >>> rigl_update(layer, x, g, 0.5), layer.weight.csr.nnz
    ({'dropped': 30, 'added': 30}, 60)
    """
    if not isinstance(layer, (SparseLinear, SparseConv2d)):
        raise TypeError(
            f"rigl_update supports SparseLinear and SparseConv2d layers; got {type(layer).__name__}"
        )
    fraction = check_fraction(fraction, "fraction", hint=" (RigL's drop fraction)")
    csr = layer.weight.csr
    x, grad_out = _as_matrices(layer, x, grad_out)
    if x.ndim != 2 or x.shape[1] != csr.shape[1] or grad_out.shape != (x.shape[0], csr.shape[0]):
        raise ValueError(
            f"x must be (batch, {csr.shape[1]}) and grad_out (batch, {csr.shape[0]}); "
            f"got {x.shape} and {grad_out.shape}"
        )
    n = int(round(fraction * csr.nnz))
    if n == 0:
        return {"dropped": 0, "added": 0}
    keep = magnitude_drop_mask(csr.data, n)
    f_indptr, f_indices, _ = kernels.csr_filter(csr.indptr, csr.indices, csr.shape[1], keep=keep)
    rows, cols, _ = kernels.topk_abs_grad(f_indptr, f_indices, grad_out.astype(csr.dtype, copy=False),
                                          x.astype(csr.dtype, copy=False), n, tile_rows=tile_rows)
    if rows.size < n:  # NaN gradients: keep nnz constant by dropping only as many as can grow
        keep = magnitude_drop_mask(csr.data, rows.size)
        f_indptr, f_indices, _ = kernels.csr_filter(csr.indptr, csr.indices, csr.shape[1], keep=keep)
        rows, cols, _ = kernels.topk_abs_grad(f_indptr, f_indices, grad_out.astype(csr.dtype, copy=False),
                                              x.astype(csr.dtype, copy=False), rows.size, tile_rows=tile_rows)
    drop_and_add(layer.weight, keep, rows, cols, np.zeros(rows.size), optimizer)
    return {"dropped": int(rows.size), "added": int(rows.size)}


class RigL(Callback):
    """RigL as a ``fit`` callback, or called by hand with :meth:`update_from_batch`.

    Inside ``fit`` the last batch's input and output gradient of every layer are kept (by
    reference, no copy) and used at each update step.

    Parameters
    ----------
    model : Module
    optimizer : Optimizer, optional
        Default: the trainer's.
    drop_fraction : float in (0, 1), default=0.3
        f_0, the initial drop fraction.
    update_every : int, default=100
        ΔT in optimizer steps.
    end_step : int, optional
        T_end: last update step (RigL uses 75% of training); None keeps f constant.
    layers : list of SparseLinear / SparseConv2d, optional
        Default: every sparse layer of the model.
    tile_rows : int, optional
        Tile height of the streamed gradient.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn
    >>> model = nn.Sequential(nn.SparseLinear(10, 16, density=0.3, rng=0), nn.ReLU(),
    ...                       nn.SparseLinear(16, 3, density=0.5, rng=1))
    >>> rigl = RigL(model, drop_fraction=0.3, update_every=1)
    >>> x = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
    >>> nnz = [m.weight.csr.nnz for m in rigl.layers]
    >>> _ = rigl.update_from_batch(x, np.arange(8) % 3, nn.CrossEntropyLoss())
    >>> [m.weight.csr.nnz for m in rigl.layers] == nnz
    True
    """

    host_only = True  # NumPy on parameters: the trainer brings the model to the host around its hooks

    def __init__(self, model, optimizer=None, *, drop_fraction=0.3, update_every=100, end_step=None,
                 layers=None, tile_rows=None):
        self.model = check_model(model)
        self.optimizer = optimizer
        self.drop_fraction = check_fraction(drop_fraction, "drop_fraction", low_open=True,
                                            hint=" (RigL's initial drop fraction)")
        self.update_every = check_positive_int(update_every, "update_every")
        if end_step is not None and (not isinstance(end_step, numbers.Integral) or end_step <= 0):
            raise ValueError(f"end_step must be a positive integer or None; got {end_step!r}")
        self.end_step = end_step
        self.layers = resolve_layers(model, layers, sparse_only=True)
        for m in self.layers:
            if not isinstance(m, (SparseLinear, SparseConv2d)):
                raise TypeError(f"RigL supports SparseLinear and SparseConv2d layers; got {type(m).__name__}")
        self.tile_rows = tile_rows
        self.step_count = 0
        self.history = []
        self._recorder = None

    def fraction_at(self, step):
        return cosine_drop_fraction(step, self.drop_fraction, self.end_step)

    def update(self, activity):
        """Topology update from ``activity``: {layer: (x, grad_out)}; returns per-layer counts."""
        f = self.fraction_at(self.step_count)
        out = []
        for layer in self.layers:
            if layer not in activity:
                continue
            x, g = activity[layer]
            out.append(rigl_update(layer, x, g, f, self.optimizer, tile_rows=self.tile_rows))
        self.history.append((self.step_count, f))
        return out

    def update_from_batch(self, x, y, loss):
        """Run forward and backward on (x, y) to get the gradients, then update (model grads restored)."""
        params = self.model.parameters()
        saved = [p.grad for p in params]
        rec = Recorder(self.layers)
        try:
            out = self.model(x)
            loss(out, y)
            self.model.backward_params(loss.backward())
            activity = {m: rec.raw(m) for m in self.layers if rec.raw(m) is not None}
        finally:
            rec.close()
            for p, g in zip(params, saved):
                p.grad = g
        return self.update(activity)

    # callback protocol
    def on_train_begin(self, trainer):
        if self.optimizer is None:
            self.optimizer = trainer.optimizer
        self._recorder = Recorder(self.layers)

    def on_batch_end(self, trainer, batch, logs):
        self.step_count += 1
        if self.step_count % self.update_every:
            return
        if self.end_step is not None and self.step_count >= self.end_step:
            return
        activity = {m: self._recorder.raw(m) for m in self.layers if self._recorder.raw(m) is not None}
        self.update(activity)

    def needs_host(self, hook, trainer):
        # On the GPU, only the update steps bring the model to the host (the recorder keeps the
        # last batch's device arrays and copies them when an update reads them).
        if hook != "on_batch_end":
            return False
        step = self.step_count + 1
        return step % self.update_every == 0 and (self.end_step is None or step < self.end_step)

    def on_train_end(self, trainer):
        if self._recorder is not None:
            self._recorder.close()
            self._recorder = None
