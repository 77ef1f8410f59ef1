"""Optimizers over :class:`~sparsenet.nn.Parameter` lists, dense or CSR-shaped.

The classes are stateful shells (hyperparameters, lazily created per-parameter state); the
update math is in ``sparsenet.kernels`` (``sgd_update``, ``adam_update``) and follows
PyTorch's rules exactly.
"""
import math
import numbers

import numpy as np

from .. import kernels
from ..csr import CSRMatrix
from ..kernels.device import DEVICES, device_of, is_device_array
from ..nn.module import Parameter

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "match_patterns"]


def _check_real(value, message):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(message.format(value))


class Optimizer:
    """Base class: parameter groups, lazy per-parameter state, ``zero_grad``, ``state_dict``, ``remap``.

    Parameters
    ----------
    params : iterable of Parameter, or of dicts ``{"params": [...], **overrides}``
    defaults : dict
        Default hyperparameters of every group.
    """

    _state_keys = ()

    def __init__(self, params, defaults):
        if isinstance(params, Parameter):
            raise TypeError("params must be an iterable of Parameters (e.g. model.parameters()), not one Parameter")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group):
        """Add ``{"params": [...], hyperparameter overrides}``; a parameter may be in one group only."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("a parameter group must be a dict with a 'params' list")
        group = dict(group)
        params = [group["params"]] if isinstance(group["params"], Parameter) else list(group["params"])
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer params must be sparsenet.nn.Parameter; got {type(p).__name__}")
            if id(p) in seen:
                raise ValueError("some parameters appear in more than one parameter group")
            seen.add(id(p))
        unknown = set(group) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            raise ValueError(f"unknown hyperparameters {sorted(unknown)}; valid: {sorted(self.defaults)}")
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self._validate(group)
        group["params"] = params
        self.param_groups.append(group)

    def _validate(self, group):
        raise NotImplementedError

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none=True):
        """Clear the gradients of all parameters (to None by default, as PyTorch does)."""
        for p in self._params():
            p.zero_grad(set_to_none)

    def step(self):
        """Update every parameter that has a gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.shape != p.shape:
                    raise ValueError(
                        f"parameter {p.name!r} has shape {p.shape} but its gradient has shape {p.grad.shape}"
                    )
                state = self.state.setdefault(p, {})
                for key in self._state_keys:
                    if key in state and state[key].shape != p.shape:
                        raise RuntimeError(
                            f"optimizer state {key!r} of parameter {p.name!r} has shape {state[key].shape} "
                            f"but the parameter now has shape {p.shape}: its sparsity pattern changed; call "
                            "optimizer.remap(param, kept_old, kept_new) when changing a pattern"
                        )
                self._update(p, group, state)

    def remap(self, param, kept_old, kept_new, new_size=None):
        """Realign a parameter's state after its sparsity pattern changed.

        Entry ``kept_old[i]`` of the old state moves to ``kept_new[i]``; every other entry of the
        new state is zero (a new connection starts with no momentum and no Adam moments).
        Scalar state (Adam's step count) is kept.

        Parameters
        ----------
        param : Parameter
            Typically already holding the new pattern (``param.set_csr(new)``).
        kept_old, kept_new : array_like of int, same length
            Positions of the surviving connections in the old and in the new ``data`` vector;
            :func:`match_patterns` computes them from two CSR matrices.
        new_size : int, optional
            Length of the new state; default ``param.size``.

        Examples
        --------
        >>> import numpy as np
        >>> from sparsenet import CSRMatrix, nn, optim
        >>> p = nn.Parameter(CSRMatrix.from_dense(np.array([[1.0, 2.0, 0.0]])))
        >>> opt = optim.SGD([p], lr=0.1, momentum=0.9)
        >>> p.grad = np.ones(2); opt.step()
        >>> new = CSRMatrix.from_dense(np.array([[0.0, 2.0, 3.0]]))
        >>> kept_old, kept_new = optim.match_patterns(p.csr, new)
        >>> p.set_csr(new); opt.remap(p, kept_old, kept_new)
        >>> opt.state[p]["momentum_buffer"]
        array([1., 0.])
        """
        if not isinstance(param, Parameter):
            raise TypeError(f"remap expects a Parameter; got {type(param).__name__}")
        if all(param is not q for q in self._params()):
            raise ValueError("remap: this parameter is not managed by this optimizer")
        kept_old = np.asarray(kept_old, dtype=np.int64)
        kept_new = np.asarray(kept_new, dtype=np.int64)
        if kept_old.shape != kept_new.shape or kept_old.ndim != 1:
            raise ValueError(f"kept_old and kept_new must be 1-D of equal length; got {kept_old.shape} and {kept_new.shape}")
        size = param.size if new_size is None else int(new_size)
        if kept_new.size and (kept_new.min() < 0 or kept_new.max() >= size):
            raise ValueError(f"kept_new indices must lie in [0, {size})")
        state = self.state.get(param)
        if not state:
            return
        for key in self._state_keys:
            if key not in state:
                continue
            # A pattern change is rare (once per epoch or prune step): device state takes a trip
            # through the host here rather than needing scatter kernels of its own.
            device = device_of(state[key])
            old = kernels.to_host(state[key])
            if kept_old.size and (kept_old.min() < 0 or kept_old.max() >= old.shape[0]):
                raise ValueError(f"kept_old indices must lie in [0, {old.shape[0]}) (the old state's length)")
            new = np.zeros(size, dtype=old.dtype)
            new[kept_new] = old[kept_old]
            state[key] = kernels.to_device(new, device)

    def to(self, device):
        """Move every per-parameter state array to ``device`` ("cpu" or "cuda"); returns self.

        State created later follows its parameter's device by itself; this is for state loaded
        or created before a model moved (e.g. when resuming a checkpoint on the GPU).
        """
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}; got {device!r}")
        for state in self.state.values():
            for k, v in state.items():
                if isinstance(v, np.ndarray) or is_device_array(v):
                    state[k] = kernels.to_device(v, device)
        return self

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}`` (copies), as in PyTorch."""
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {}
        for p, s in self.state.items():
            if s:
                state[index[id(p)]] = {k: (np.array(kernels.to_host(v), copy=True)
                                           if isinstance(v, np.ndarray) or is_device_array(v) else v)
                                       for k, v in s.items()}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
                  for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and per-parameter state saved by :meth:`state_dict`."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if groups is None or "state" not in state_dict:
            raise ValueError("state_dict must have 'state' and 'param_groups' (from Optimizer.state_dict())")
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(s["params"]) for g, s in zip(groups, self.param_groups)):
            raise ValueError(
                "loaded state_dict has a different number of parameter groups or parameters than this optimizer; "
                "build the optimizer over the same model"
            )
        params = self._params()
        new_state = {}
        for key, s in state_dict["state"].items():
            i = int(key)
            if not 0 <= i < len(params):
                raise ValueError(f"state for parameter index {i}, but the optimizer has {len(params)} parameters")
            p = params[i]
            entry = {}
            for k, v in s.items():
                if isinstance(v, np.ndarray) and v.ndim:
                    if v.shape != p.shape:
                        raise ValueError(
                            f"optimizer state {k!r} of parameter {i} has shape {v.shape}, the parameter {p.shape}"
                        )
                    entry[k] = kernels.to_device(np.array(kernels.to_host(v), dtype=p.dtype, order="C", copy=True),
                                                 p.device)
                else:
                    entry[k] = v.item() if isinstance(v, np.ndarray) else v
            new_state[p] = entry
        for g, saved in zip(self.param_groups, groups):
            for k, v in saved.items():
                if k != "params":
                    g[k] = tuple(v) if isinstance(v, list) else v
        self.state = new_state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join(lines + [")"])


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, weight decay and Nesterov.

    Exactly PyTorch's rule: ``d = g + wd * p``; ``buf = d`` at the first step, then
    ``buf = momentum * buf + (1 - dampening) * d``; ``d = d + momentum * buf`` (Nesterov) or
    ``d = buf``; ``p -= lr * d``.

    Parameters
    ----------
    params : iterable of Parameter or of parameter-group dicts
    lr : float
    momentum, dampening, weight_decay : float, default=0
    nesterov : bool, default=False

    Raises
    ------
    ValueError
        Negative or non-finite hyperparameters ("Invalid learning rate: -1.0"), Nesterov
        without momentum or with dampening.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn, optim
    >>> p = nn.Parameter(np.array([1.0]))
    >>> opt = optim.SGD([p], lr=0.1)
    >>> p.grad = np.array([2.0]); opt.step(); p.data
    array([0.8])
    >>> optim.SGD([p], lr=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: Invalid learning rate: -1.0
    """

    _state_keys = ("momentum_buffer",)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _validate(self, g):
        _check_real(g["lr"], "Invalid learning rate: {}")
        if g["lr"] < 0:
            raise ValueError(f"Invalid learning rate: {g['lr']}")
        for key in ("momentum", "dampening", "weight_decay"):
            _check_real(g[key], f"Invalid {key} value: {{}}")
            if g[key] < 0:
                raise ValueError(f"Invalid {key} value: {g[key]}")
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _update(self, p, g, state):
        buf = None
        first = False
        if g["momentum"] != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = kernels.zeros_like(p.data)
                first = True
        kernels.sgd_update(p.data, p.grad, buf, lr=g["lr"], momentum=g["momentum"], dampening=g["dampening"],
                           weight_decay=g["weight_decay"], nesterov=g["nesterov"], first=first)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's rule; ``weight_decay`` is coupled L2 (added to the gradient).

    Parameters
    ----------
    params : iterable of Parameter or of parameter-group dicts
    lr : float, default=1e-3
    betas : (float, float), default=(0.9, 0.999)
    eps : float, default=1e-8
    weight_decay : float, default=0

    Notes
    -----
    State per parameter, created at its first step: ``step`` (int), ``exp_avg`` and
    ``exp_avg_sq`` (parameter-shaped; nnz-shaped for a sparse weight).

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn, optim
    >>> p = nn.Parameter(np.array([1.0]))
    >>> opt = optim.Adam([p], lr=0.1)
    >>> p.grad = np.array([5.0]); opt.step(); p.data.round(6)
    array([0.9])
    """

    _state_keys = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _validate(self, g):
        _check_real(g["lr"], "Invalid learning rate: {}")
        if g["lr"] < 0:
            raise ValueError(f"Invalid learning rate: {g['lr']}")
        _check_real(g["eps"], "Invalid epsilon value: {}")
        if g["eps"] < 0:
            raise ValueError(f"Invalid epsilon value: {g['eps']}")
        betas = g["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2); got {betas!r}")
        for i, b in enumerate(betas):
            _check_real(b, f"Invalid beta parameter at index {i}: {{}}")
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b}")
        g["betas"] = (float(betas[0]), float(betas[1]))
        _check_real(g["weight_decay"], "Invalid weight_decay value: {}")
        if g["weight_decay"] < 0:
            raise ValueError(f"Invalid weight_decay value: {g['weight_decay']}")

    def _update(self, p, g, state):
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = kernels.zeros_like(p.data)
            state["exp_avg_sq"] = kernels.zeros_like(p.data)
        state["step"] += 1
        beta1, beta2 = g["betas"]
        kernels.adam_update(p.data, p.grad, state["exp_avg"], state["exp_avg_sq"], lr=g["lr"], beta1=beta1,
                            beta2=beta2, eps=g["eps"], weight_decay=g["weight_decay"],
                            decoupled=self._decoupled, step=state["step"])


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * weight_decay`` before the Adam step.

    Parameters as :class:`Adam`, with ``weight_decay=1e-2`` by default (PyTorch's).

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn, optim
    >>> p = nn.Parameter(np.array([1.0]))
    >>> opt = optim.AdamW([p], lr=0.1, weight_decay=0.5)
    >>> p.grad = np.array([0.0]); opt.step(); p.data
    array([0.95])
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def match_patterns(old, new):
    """Positions of the connections present in both CSR patterns.

    Returns ``(kept_old, kept_new)``: ``old.data[kept_old[i]]`` and ``new.data[kept_new[i]]`` are
    the same (row, column) entry.  Feed them to :meth:`Optimizer.remap`.  O(nnz log nnz).

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import CSRMatrix
    >>> a = CSRMatrix.from_dense(np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    >>> b = CSRMatrix.from_dense(np.array([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]))
    >>> match_patterns(a, b)
    (array([1, 2]), array([0, 2]))
    """
    for name, m in (("old", old), ("new", new)):
        if not isinstance(m, CSRMatrix):
            raise TypeError(f"{name} must be a CSRMatrix; got {type(m).__name__}")
    if old.shape != new.shape:
        raise ValueError(f"patterns must have the same shape; got {old.shape} and {new.shape}")

    def keys(m):
        rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
        return rows * m.shape[1] + m.indices  # canonical CSR: already sorted

    _, kept_old, kept_new = np.intersect1d(keys(old), keys(new), assume_unique=True, return_indices=True)
    return kept_old.astype(np.int64), kept_new.astype(np.int64)
