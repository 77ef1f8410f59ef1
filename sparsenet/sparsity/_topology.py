"""The one place where sparsity methods change a weight's pattern or shape.

Every method (pruning, SET, RigL, growth, compaction) builds the new canonical CSR with the
kernels in ``sparsenet.kernels``, obtains the map *old entry -> new entry* (-1 for a dropped
entry), installs the new matrix in the :class:`~sparsenet.nn.Parameter` and calls the
optimizer's ``remap`` with that map, so momentum and Adam moments follow their connections and
new connections start from zero state.
"""
import numbers

import numpy as np

from .. import kernels
from .._validation import check_random_state
from ..csr import CSRMatrix
from ..nn.conv import Conv2d, SparseConv2d
from ..nn.linear import Linear, SparseLinear
from ..nn.module import Module

WEIGHT_LAYERS = (Linear, SparseLinear, Conv2d, SparseConv2d)


# ------------------------------------------------------------------ validation
def check_fraction(value, name, *, low_open=False, high_open=True, hint=""):
    """``value`` must be a real in [0, 1) (or (0, 1) with ``low_open``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    if ok:
        ok = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        lo = "(0" if low_open else "[0"
        hi = "1)" if high_open else "1]"
        raise ValueError(f"{name} must be a number in {lo}, {hi}; got {value!r}{hint}")
    return float(value)


def check_nonneg(value, name, hint=""):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}{hint}")
    return float(value)


def check_positive_int(value, name, hint=""):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value!r}{hint}")
    return int(value)


def check_model(model, name="model"):
    if not isinstance(model, Module):
        raise TypeError(f"{name} must be a sparsenet.nn.Module; got {type(model).__name__}")
    return model


# ------------------------------------------------------------------ layer discovery
def weight_layers(model, *, sparse_only=False):
    """(dotted name, layer) of every Linear/SparseLinear/Conv2d/SparseConv2d in ``model``."""
    check_model(model)
    out = []
    for name, m in model.named_modules():
        if isinstance(m, WEIGHT_LAYERS) and (not sparse_only or m.weight.is_sparse):
            out.append((name, m))
    return out


def resolve_layers(model, layers, *, sparse_only=False):
    """``layers`` None -> all weight layers of ``model``; else a list of those layers."""
    if layers is None:
        found = [m for _, m in weight_layers(model, sparse_only=sparse_only)]
    else:
        found = list(layers)
        for m in found:
            if not isinstance(m, WEIGHT_LAYERS):
                raise TypeError(
                    f"layers must be Linear, SparseLinear, Conv2d or SparseConv2d modules; got {type(m).__name__}"
                )
            if sparse_only and not m.weight.is_sparse:
                raise TypeError(
                    f"{type(m).__name__} has a dense weight; this method needs CSR weights "
                    "(use SparseLinear/SparseConv2d, or sparsenet.sparsity.to_sparse(model))"
                )
    if not found and sparse_only and weight_layers(model):
        raise TypeError(
            f"{type(model).__name__} has only dense weight layers; this method needs CSR weights "
            "(use SparseLinear/SparseConv2d, or sparsenet.sparsity.to_sparse(model))"
        )
    if not found:
        kind = "sparse (CSR) " if sparse_only else ""
        raise ValueError(f"the model has no {kind}weight layers to act on; got {type(model).__name__}")
    return found


def leaf_sequence(model):
    """Flatten nested Sequentials into the list of leaf modules run in order."""
    from ..nn.module import Sequential

    if isinstance(model, Sequential):
        out = []
        for child in model:
            out += leaf_sequence(child)
        return out
    return [model]


def weight_matrix_view(layer):
    """Dense weight as a 2-D (out, fan_in) view: Linear as is, Conv2d's (O, C, KH, KW) flattened."""
    w = layer.weight.data
    return w.reshape(w.shape[0], -1)


# ------------------------------------------------------------------ optimizer bookkeeping
def manages(optimizer, param):
    if optimizer is None:
        return False
    return any(p is param for g in optimizer.param_groups for p in g["params"])


def lr_of(optimizer, param, default=None):
    """The learning rate of the group holding ``param``."""
    if optimizer is not None:
        for g in optimizer.param_groups:
            if any(p is param for p in g["params"]):
                return float(g["lr"])
    if default is None:
        raise ValueError(
            "a proximal step needs a step size: pass lr=..., or an optimizer that manages the parameter"
        )
    return float(default)


def install_csr(param, csr):
    """Put ``csr`` in a sparse parameter; allows a shape change (growth, compaction)."""
    if csr.shape == param.csr.shape:
        param.set_csr(csr)
    else:
        # Parameter.set_csr guards the shape for ordinary users; topology code that changes the
        # layer's shape updates the layer's size attributes itself.
        if not csr.data.flags.c_contiguous:
            csr.data = np.ascontiguousarray(csr.data)
        param.csr = csr
        param.grad = None


def replace_pattern(param, new_csr, old_to_new, optimizer=None):
    """Install ``new_csr`` in ``param`` and realign ``optimizer`` state with ``old_to_new``.

    ``old_to_new[k]`` is the position in ``new_csr.data`` of the old entry ``k`` or -1 when the
    entry was dropped; every new position not hit starts with zero state.
    """
    old_to_new = np.asarray(old_to_new, dtype=np.int64)
    kept_old = np.flatnonzero(old_to_new >= 0)
    kept_new = old_to_new[kept_old]
    install_csr(param, new_csr)
    if manages(optimizer, param):
        optimizer.remap(param, kept_old, kept_new, new_csr.nnz)
    return param


def resize_dense(param, new_value, kept_old, kept_new, optimizer=None):
    """Replace a dense parameter by ``new_value`` (any shape); flat entry ``kept_old[i]`` of the old
    state moves to flat ``kept_new[i]``, other new entries start at zero state."""
    new_value = np.ascontiguousarray(new_value, dtype=param.dtype)
    old_shape = param.data.shape
    param.data = new_value
    param.grad = None
    if not manages(optimizer, param):
        return param
    state = optimizer.state.get(param)
    if not state:
        return param
    for key, v in list(state.items()):
        if isinstance(v, np.ndarray) and v.shape == old_shape and v.ndim:
            nv = np.zeros(new_value.shape, dtype=v.dtype)
            nv.reshape(-1)[kept_new] = v.reshape(-1)[kept_old]
            state[key] = nv
    return param


def swap_parameter(layer, new_param, optimizer=None, gather=None):
    """Replace ``layer.weight`` by ``new_param`` everywhere the optimizer knows the old one.

    ``gather(old_state_array) -> new_state_array`` converts array state (e.g. the dense
    (out, in) momentum to the nnz-shaped one of a CSR weight); scalar state is copied.
    """
    old = layer.weight
    layer.weight = new_param
    if optimizer is None:
        return new_param
    for g in optimizer.param_groups:
        g["params"] = [new_param if p is old else p for p in g["params"]]
    state = optimizer.state.pop(old, None)
    if state:
        optimizer.state[new_param] = {
            k: (np.ascontiguousarray(gather(v)) if isinstance(v, np.ndarray) and v.ndim and gather else v)
            for k, v in state.items()
        }
    return new_param


# ------------------------------------------------------------------ pattern edits
def csr_rows(csr):
    """Row index of every stored entry (int64, nnz)."""
    return np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))


def make_csr(data, indices, indptr, shape):
    return CSRMatrix(np.ascontiguousarray(data), indices, indptr, shape, check=False)


def pattern_from_coo(rows, cols, n_row, n_col):
    """Canonical pattern (indptr, indices, order) of distinct (row, col) pairs; ``order`` sorts them."""
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    order = np.argsort(rows * max(n_col, 1) + cols, kind="stable")  # a no-op pass when already sorted
    indptr = np.zeros(n_row + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n_row), out=indptr[1:])
    return indptr, cols[order], order


def drop_and_add(param, keep, add_rows, add_cols, add_vals, optimizer=None, *, shape=None):
    """Keep the entries where ``keep`` is True, add new (row, col, value) entries, remap state.

    The added positions must be distinct and not among the kept entries.  ``shape`` may grow
    the matrix (new rows/columns at the end).  Returns the new positions of the added entries
    (in the order given).
    """
    old = param.csr
    shape = old.shape if shape is None else tuple(shape)
    f_indptr, f_indices, src = kernels.csr_filter(old.indptr, old.indices, old.shape[1], keep=keep)
    if shape[0] > old.shape[0]:
        f_indptr = np.concatenate([f_indptr, np.full(shape[0] - old.shape[0], f_indptr[-1], np.int64)])
    a_indptr, a_indices, order = pattern_from_coo(add_rows, add_cols, shape[0], shape[1])
    indptr, indices, pos_a, pos_b = kernels.csr_merge(f_indptr, f_indices, a_indptr, a_indices)
    data = np.empty(indices.shape[0], dtype=old.dtype)
    data[pos_a] = old.data[src]
    data[pos_b] = np.asarray(add_vals, dtype=old.dtype)[order]
    old_to_new = np.full(old.nnz, -1, np.int64)
    old_to_new[src] = pos_a
    replace_pattern(param, make_csr(data, indices, indptr, shape), old_to_new, optimizer)
    added_pos = np.empty(len(order), np.int64)
    added_pos[order] = pos_b
    return added_pos


def filter_pattern(param, optimizer=None, *, keep=None, row_sel=None, col_map=None, n_col=None):
    """Drop entries / rows / columns of a sparse weight (shapes may shrink) and remap state."""
    old = param.csr
    indptr, indices, src = kernels.csr_filter(old.indptr, old.indices, old.shape[1], keep=keep,
                                              row_sel=row_sel, col_map=col_map)
    shape = (indptr.shape[0] - 1, old.shape[1] if n_col is None else int(n_col))
    old_to_new = np.full(old.nnz, -1, np.int64)
    old_to_new[src] = np.arange(src.shape[0])
    replace_pattern(param, make_csr(old.data[src], indices, indptr, shape), old_to_new, optimizer)
    return old_to_new


def sample_free(csr, n, rng, *, exclude=None):
    """``n`` distinct uniformly random positions (rows, cols) not stored in ``csr``.

    Rejection sampling costs O(n / (1 - density)) expected, independent of the layer size; a
    nearly full matrix (density > 0.5) enumerates its free positions instead.  ``exclude``
    (an extra canonical CSR of the same shape) marks further forbidden positions.
    """
    rng = check_random_state(rng)
    n_row, n_col = csr.shape
    size = n_row * n_col
    taken = csr.nnz + (exclude.nnz if exclude is not None else 0)
    n = int(n)
    if n <= 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if n > size - csr.nnz - (exclude.nnz if exclude is not None else 0):
        raise ValueError(
            f"cannot add {n} connections to a {csr.shape} weight with {taken} occupied positions; "
            "lower the fraction to regrow"
        )

    def free_mask(flat):
        r, c = np.divmod(flat, n_col)
        ok = kernels.csr_lookup(csr.indptr, csr.indices, r, c) < 0
        if exclude is not None:
            ok &= kernels.csr_lookup(exclude.indptr, exclude.indices, r, c) < 0
        return ok

    if taken > size // 2:
        mask = np.ones(size, bool)
        mask[csr_rows(csr) * n_col + csr.indices] = False
        if exclude is not None:
            mask[csr_rows(exclude) * n_col + exclude.indices] = False
        flat = rng.choice(np.flatnonzero(mask), n, replace=False)
    else:
        found = np.empty(0, np.int64)
        while found.size < n:
            draw = rng.integers(0, size, size=int(1.3 * (n - found.size)) + 16, dtype=np.int64)
            # iid draws, deduplicated and filtered, then a random subset: uniform over free sets
            cand = np.sort(np.concatenate([found, draw[free_mask(draw)]]))
            found = cand[np.concatenate([[True], cand[1:] != cand[:-1]])]
        flat = rng.choice(found, n, replace=False) if found.size > n else found
    rows, cols = np.divmod(np.sort(flat), n_col)
    return rows, cols


# ------------------------------------------------------------------ activity recording
class Recorder:
    """Keep the last input and output gradient of some layers (for RigL / growth criteria).

    The layers' ``forward``/``backward`` are wrapped per instance (no copies: references to the
    arrays of the last batch only), and restored by :meth:`close`.
    """

    def __init__(self, layers):
        self.layers = list(layers)
        self.x = {}
        self.g = {}
        for layer in self.layers:
            self._wrap(layer)

    def _wrap(self, layer):
        if "forward" in layer.__dict__:
            return
        cls = type(layer)
        x_store, g_store = self.x, self.g

        def forward(x, _layer=layer):
            if _layer.training:  # evaluation passes (no backward follows) are not recorded
                x_store[id(_layer)] = x
            return cls.forward(_layer, x)

        def backward(g, _layer=layer):
            g_store[id(_layer)] = g
            return cls.backward(_layer, g)

        def backward_params(g, _layer=layer):  # a first layer, in a training step
            g_store[id(_layer)] = g
            return cls.backward_params(_layer, g)

        object.__setattr__(layer, "forward", forward)
        object.__setattr__(layer, "backward", backward)
        object.__setattr__(layer, "backward_params", backward_params)

    def add(self, layer):
        if all(layer is not m for m in self.layers):
            self.layers.append(layer)
            self._wrap(layer)

    def raw(self, layer):
        """(x, g) of the last training batch as recorded, or None (missing, or batch sizes differ)."""
        x, g = self.x.get(id(layer)), self.g.get(id(layer))
        if x is None or g is None or np.shape(x)[0] != np.shape(g)[0]:
            return None
        return kernels.to_host(x), kernels.to_host(g)  # recorded on the GPU: an explicit copy

    def get(self, layer):
        """(x, g) of the last batch as 2-D (batch, features) arrays, or None."""
        x, g = self.x.get(id(layer)), self.g.get(id(layer))
        if x is None or g is None:
            return None
        x = kernels.to_host(x)
        g = kernels.to_host(g)
        x, g = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
        return (x, g) if x.shape[0] == g.shape[0] else None

    def close(self):
        for layer in self.layers:
            layer.__dict__.pop("forward", None)
            layer.__dict__.pop("backward", None)
            layer.__dict__.pop("backward_params", None)
        self.x.clear()
        self.g.clear()


def magnitude_drop_mask(data, n_drop):
    """Bool keep-mask dropping the ``n_drop`` entries of smallest |data|.  O(nnz)."""
    keep = np.ones(data.shape[0], bool)
    if n_drop > 0:
        keep[np.argpartition(np.abs(data), n_drop - 1)[:n_drop]] = False
    return keep


def pattern_view(indptr, indices, shape):
    """A lightweight CSR (values unused) for pattern-only helpers."""
    return CSRMatrix(np.zeros(indices.shape[0], np.float32), indices, indptr, shape, check=False)
