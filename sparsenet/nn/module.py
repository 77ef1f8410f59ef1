"""Parameter, Module and Sequential: the layer protocol of sparsenet.

A layer computes ``y = forward(x)``, keeps by name what its backward needs, and
``grad_x = backward(grad_y)`` *accumulates* gradients into its parameters' ``.grad``.  A model
is a tree of modules; ``Sequential.backward`` runs its children in reverse.
"""
import numbers

import numpy as np

from .. import kernels
from .._validation import float_dtype
from ..csr import CSRMatrix
from ..kernels.device import DEVICES, cuda_available, device_of, is_device_array

__all__ = ["Parameter", "Module", "Sequential", "from_config", "register_module"]

_REGISTRY = {}


def register_module(cls):
    """Make ``cls`` reconstructible by :func:`from_config` (done automatically for Module subclasses)."""
    _REGISTRY[cls.__name__] = cls
    return cls


def from_config(description):
    """Build a module from the JSON-able description returned by :meth:`Module.describe`.

    Parameters are freshly initialised; load them with :meth:`Module.load_state_dict`.

    Examples
    --------
    >>> from sparsenet import nn
    >>> model = nn.Sequential(nn.Linear(4, 3, rng=0), nn.ReLU())
    >>> nn.from_config(model.describe())
    Sequential(
      (0): Linear(in_features=4, out_features=3, bias=True, dtype='float32')
      (1): ReLU()
    )
    """
    if not isinstance(description, dict) or "class" not in description:
        raise ValueError(
            "a module description must be a dict {'class': name, 'config': {...}} as returned by "
            f"Module.describe(); got {description!r}"
        )
    name = description["class"]
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown module class {name!r}; known: {sorted(_REGISTRY)}. Import the module that "
            "defines it before loading (subclasses of Module register themselves)"
        )
    return _REGISTRY[name].from_config(description.get("config", {}))


class Parameter:
    """A trainable array and its gradient.

    Parameters
    ----------
    data : ndarray or CSRMatrix
        The values.  A :class:`~sparsenet.CSRMatrix` makes a *sparse* parameter: ``.data`` is
        then the matrix's ``data`` vector (shape ``(nnz,)``, the same array object, updated in
        place by optimizers), ``.grad`` is nnz-shaped and ``.csr`` is the matrix.
    name : str, optional
        Set by the owning module (``"weight"``, ``"bias"``).

    Attributes
    ----------
    grad : ndarray or None
        Accumulated gradient, same shape and dtype as ``data``; None until a backward.

    Examples
    --------
    >>> import numpy as np
    >>> p = Parameter(np.zeros(3))
    >>> p.shape, p.grad, p.is_sparse
    ((3,), None, False)
    """

    def __init__(self, data, *, name=None):
        if isinstance(data, CSRMatrix):
            self.csr = data
            self._data = None
        else:
            data = data if is_device_array(data) else np.asarray(data)
            float_dtype(data.dtype, "Parameter dtype")
            self.csr = None
            self._data = kernels.ascontiguous(data)
        self.grad = None
        self.name = name

    @property
    def is_sparse(self):
        """True when the parameter is the value vector of a CSR weight."""
        return self.csr is not None

    @property
    def data(self):
        """The values (for a sparse parameter, ``csr.data``)."""
        return self.csr.data if self.csr is not None else self._data

    @data.setter
    def data(self, value):
        value = kernels.ascontiguous(value if is_device_array(value) else np.asarray(value))
        float_dtype(value.dtype, "Parameter dtype")
        if device_of(value) != self.device:
            raise ValueError(
                f"new data is on {device_of(value)} but the parameter on {self.device}; move it first "
                "(or move the whole model with Module.to(device))"
            )
        if self.csr is not None:
            if tuple(value.shape) != tuple(self.csr.data.shape):
                raise ValueError(
                    f"a sparse parameter's data must have shape (nnz,) = {self.csr.data.shape}; got "
                    f"{value.shape}. To change the sparsity pattern call set_csr(new_matrix)"
                )
            self.csr.data = value
        else:
            self._data = value

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def device(self):
        """``"cpu"`` or ``"cuda"``: where ``data`` lives."""
        return device_of(self.data)

    def to(self, device, *, keep_device_arrays=False):
        """Move ``data`` (and ``grad``) to ``device`` in place; returns self.  Explicit copies.

        ``keep_device_arrays`` (moving to the host, for the trainer's host-side callbacks):
        the device arrays are kept, and a return to the GPU that finds the host object still in
        place (values edited in place, the sparsity pattern unchanged) reuses them, uploading
        only the values: the device pattern, and the transposed pattern ``spmm_t`` caches
        against it, survive the round trip.
        """
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}; got {device!r}")
        if device == self.device:
            return self
        value = self.csr if self.csr is not None else self._data
        twin = self.__dict__.get("_device_twin")
        self._device_twin = None
        if device == "cpu":
            moved = value.to("cpu") if self.csr is not None else kernels.to_host(value)
            if keep_device_arrays:
                self._device_twin = (moved, value)  # host copy, device original
        elif twin is not None and twin[0] is value:
            moved = twin[1]
            dst, src = (moved.data, value.data) if self.csr is not None else (moved, value)
            if src.size:
                dst.copy_to_device(src)
        else:
            moved = value.to("cuda") if self.csr is not None else kernels.to_device(value)
        if self.csr is not None:
            self.csr = moved
        else:
            self._data = moved
        if self.grad is not None:
            self.grad = kernels.to_device(self.grad, device)
        return self

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    @property
    def dense_shape(self):
        """Shape of the full weight: ``csr.shape`` for a sparse parameter, else ``shape``."""
        return self.csr.shape if self.csr is not None else self.data.shape

    def set_csr(self, csr):
        """Replace the sparsity pattern and values of a sparse parameter; resets ``grad``.

        Optimizer state must then be realigned with ``optimizer.remap(param, kept_old, kept_new)``.
        """
        if self.csr is None:
            raise TypeError("set_csr is only for sparse parameters (created from a CSRMatrix)")
        if not isinstance(csr, CSRMatrix):
            raise TypeError(f"set_csr expects a CSRMatrix; got {type(csr).__name__}")
        if csr.shape != self.csr.shape:
            raise ValueError(f"the new pattern must keep the shape {self.csr.shape}; got {csr.shape}")
        if csr.device != self.csr.device:
            raise ValueError(
                f"the new pattern is on {csr.device} but the parameter on {self.csr.device}; move it with "
                f"csr.to({self.csr.device!r}) first"
            )
        if csr.device == "cpu" and not csr.data.flags.c_contiguous:
            csr.data = np.ascontiguousarray(csr.data)
        self.csr = csr
        self.grad = None

    def __getstate__(self):
        # Kept device arrays belong to one trainer round trip, not to copies or pickles.
        state = dict(self.__dict__)
        state.pop("_device_twin", None)
        return state

    def zero_grad(self, set_to_none=True):
        """Drop the gradient (default) or set it to zeros in place."""
        if set_to_none or self.grad is None:
            self.grad = None
        elif is_device_array(self.grad):
            self.grad = kernels.zeros_like(self.grad)
        else:
            self.grad[...] = 0

    def accumulate_grad(self, grad, *, owned=False):
        """Add ``grad`` into ``.grad`` (a fresh copy on the first call, never an alias).

        With ``owned=True`` the caller hands ``grad`` over: it was made for this call and
        nothing else refers to it (a layer's freshly computed gradient).  On the first call it
        then becomes ``.grad`` itself when it already has the parameter's dtype and C order,
        sparing the copy (on the GPU an allocation and a device-to-device copy per parameter
        and step); otherwise it is copied as usual.
        """
        if not is_device_array(grad):
            grad = np.asarray(grad)
        if tuple(grad.shape) != self.shape:
            raise ValueError(f"gradient of {self.name or 'parameter'} has shape {tuple(grad.shape)}, expected {self.shape}")
        if device_of(grad) != self.device:
            raise ValueError(f"gradient of {self.name or 'parameter'} is on {device_of(grad)}, the parameter on {self.device}")
        if self.grad is None:
            if self.device == "cuda":
                if grad.dtype != self.dtype:
                    raise TypeError(f"gradient of {self.name or 'parameter'} is {grad.dtype}, the parameter {self.dtype}")
                contiguous = kernels.ascontiguous(grad)
                self.grad = contiguous if contiguous is not grad or owned else kernels.copy(grad)
            elif (owned and type(grad) is np.ndarray and grad.dtype == self.dtype and grad.flags.c_contiguous
                  and grad.flags.writeable):
                self.grad = grad
            else:
                self.grad = np.array(grad, dtype=self.dtype, order="C", copy=True)
        else:
            kernels.add_(self.grad, grad)

    def __repr__(self):
        kind = f"sparse, nnz={self.size}, dense_shape={self.dense_shape}" if self.is_sparse else f"shape={self.shape}"
        where = ", device='cuda'" if self.device == "cuda" else ""
        return f"Parameter({kind}, dtype={self.dtype}{where})"


class Module:
    """Base class of every layer and model.

    Subclasses call ``super().__init__()`` first, assign :class:`Parameter` and sub-:class:`Module`
    attributes (registered in assignment order), register buffers with :meth:`register_buffer`,
    and implement ``forward``, ``backward`` and ``get_config``.

    Notes
    -----
    ``forward`` keeps what ``backward`` needs; ``backward`` consumes it, so a backward without
    a forward (or a second backward for one forward) raises ``RuntimeError``.  ``backward``
    accumulates into ``p.grad`` and never modifies its argument.

    Examples
    --------
    >>> import numpy as np
    >>> class Scale(Module):
    ...     def __init__(self, factor=2.0):
    ...         super().__init__()
    ...         self.factor = factor
    ...     def forward(self, x):
    ...         self._save(np.shape(x))
    ...         return x * self.factor
    ...     def backward(self, grad_out):
    ...         self._saved()
    ...         return grad_out * self.factor
    ...     def get_config(self):
    ...         return {"factor": self.factor}
    >>> layer = Scale()
    >>> layer(np.ones(2)), layer.backward(np.ones(2))
    (array([2., 2.]), array([2., 2.]))
    >>> from_config(layer.describe())
    Scale(factor=2.0)
    """

    # Whether forward/backward run on CUDA device arrays; Module.to("cuda") refuses a model with
    # a layer that cannot, before moving anything.
    _supports_cuda = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register_module(cls)

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_buffers", [])
        object.__setattr__(self, "_ctx", None)
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"call super().__init__() in {type(self).__name__}.__init__ before assigning attributes")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            value.name = value.name or name
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, array):
        """A non-trainable array saved in the state dict (e.g. BatchNorm's running mean)."""
        if name not in self._buffers:
            self._buffers.append(name)
        object.__setattr__(self, name, array)

    # ------------------------------------------------------------------ protocol
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, grad_out):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def backward_params(self, grad_out):
        """Accumulate the parameters' gradients from ``grad_out``, without the gradient with
        respect to the input; returns None.

        What a training step needs from a model: the input gradient of its first layer feeds
        nothing (the data is not trained), and for a sparse or convolutional first layer it
        costs as much as that layer's weight gradient.  Layers with parameters skip it;
        :class:`Sequential` skips it for its first layer with parameters and the layers before
        that one (their saved forward context is dropped).  The default runs :meth:`backward`
        and drops its result.  Like ``backward``, it consumes what the forward saved.
        """
        self.backward(grad_out)

    def _drop_saved(self):
        """Forget what the last forward saved (and so the pending backward) here and below."""
        object.__setattr__(self, "_ctx", None)
        for child in self._modules.values():
            child._drop_saved()

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _save(self, ctx):
        object.__setattr__(self, "_ctx", ctx)

    def _saved(self):
        """What forward kept; raises when there is none (backward without forward, or twice)."""
        ctx = self._ctx
        if ctx is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called without a matching forward: run "
                "y = layer(x) before each backward (one backward per forward)"
            )
        object.__setattr__(self, "_ctx", None)
        return ctx

    # ------------------------------------------------------------------ traversal
    def children(self):
        """Direct sub-modules in definition order."""
        return iter(self._modules.values())

    def named_modules(self, prefix=""):
        """(dotted name, module) for this module and all descendants, depth first."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) in definition order (weight before bias), recursively."""
        for name, p in self._parameters.items():
            yield (f"{prefix}.{name}" if prefix else name), p
        for name, child in self._modules.items():
            yield from child.named_parameters(f"{prefix}.{name}" if prefix else name)

    def parameters(self):
        """All parameters in definition order."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for name in self._buffers:
            yield (f"{prefix}.{name}" if prefix else name), self, name
        for name, child in self._modules.items():
            yield from child.named_buffers(f"{prefix}.{name}" if prefix else name)

    # ------------------------------------------------------------------ modes and grads
    def train(self, mode=True):
        """Set training mode (dropout active, batch statistics) on this module and its children."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        """Clear gradients (to None by default, as PyTorch does)."""
        for p in self.parameters():
            p.zero_grad(set_to_none)

    @property
    def device(self):
        """``"cuda"`` when the parameters live on the GPU, else ``"cpu"`` (also for no parameters)."""
        return next((p.device for p in self.parameters()), "cpu")

    def to(self, target):
        """Move to a device or cast to a dtype, in place, like PyTorch's ``module.to``; returns self.

        Parameters
        ----------
        target : {"cpu", "cuda"} or dtype
            A device: parameters (dense arrays and CSR weights), gradients and buffers are copied
            there.  A dtype (float32 or float64): parameters and floating buffers are cast.

        Raises
        ------
        NotImplementedError
            ``"cuda"`` for a model containing a layer without CUDA kernels (the layers are named;
            nothing is moved).
        RuntimeError
            ``"cuda"`` without numba-cuda or a GPU (the reason is given).
        """
        if isinstance(target, str) and target in DEVICES:
            return self._to_device(target)
        if isinstance(target, str) and target.startswith(("cuda", "gpu")):
            raise ValueError(f"device must be one of {DEVICES}; got {target!r}")
        return self._to_dtype(target)

    def _to_host_for_a_while(self):
        """``to("cpu")`` keeping the device arrays for a return that changes no pattern (the
        trainer's round trip around host-only callbacks)."""
        for p in self.parameters():
            p.to("cpu", keep_device_arrays=True)
        self._move_buffers("cpu")
        return self

    def _move_buffers(self, device):
        for _, owner, attr in self.named_buffers():
            buf = getattr(owner, attr)
            if np.dtype(buf.dtype).kind == "f":  # counters (num_batches_tracked) stay host integers
                object.__setattr__(owner, attr, kernels.to_device(buf, device))

    def _to_device(self, device):
        if device == "cuda":
            missing = sorted({type(m).__name__ for m in self.modules() if not m._supports_cuda})
            if missing:
                raise NotImplementedError(
                    f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no CUDA implementation yet; "
                    "train this model on the CPU (device='cpu')"
                )
            ok, reason = cuda_available()
            if not ok:
                raise RuntimeError(f"cannot move the model to 'cuda': {reason}")
        for p in self.parameters():
            p.to(device)
        self._move_buffers(device)
        return self

    def _to_dtype(self, dtype):
        dtype = float_dtype(dtype)
        if self.device != "cpu":
            raise NotImplementedError("casting parameters on the GPU is not supported; cast on the CPU, then move")
        for m in self.modules():
            for p in m._parameters.values():
                if p.is_sparse:
                    p.set_csr(p.csr.astype(dtype))
                else:
                    p.data = p.data.astype(dtype)
                p.grad = None
            for name in m._buffers:
                b = getattr(m, name)
                if b.dtype.kind == "f":
                    object.__setattr__(m, name, b.astype(dtype))
            if "dtype" in m.__dict__:
                object.__setattr__(m, "dtype", dtype)
        return self

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """Copies of all parameters and buffers by dotted name.

        A sparse parameter ``name`` contributes ``name`` (the nnz values) plus ``name.indices``
        and ``name.indptr`` (its pattern), so a changed pattern round-trips.
        """
        out = {}
        for name, p in self.named_parameters():
            out[name] = _host_copy(p.data)
            if p.is_sparse:
                out[name + ".indices"] = _host_copy(p.csr.indices)
                out[name + ".indptr"] = _host_copy(p.csr.indptr)
        for name, owner, attr in self.named_buffers():
            out[name] = _host_copy(getattr(owner, attr))
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy values (and sparse patterns) from ``state_dict`` into this module.

        Raises
        ------
        ValueError
            With ``strict``: missing or unexpected keys.  Always: an array whose shape does not
            match the parameter, or a sparse pattern that is not a valid CSR structure.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict of arrays; got {type(state_dict).__name__}")
        expected = set(self.state_dict_keys())
        given = set(state_dict)
        missing = sorted(expected - given)
        unexpected = sorted(given - expected)
        if strict and (missing or unexpected):
            raise ValueError(
                f"error loading state_dict into {type(self).__name__}: missing keys {missing}, "
                f"unexpected keys {unexpected}; the checkpoint was saved from a different architecture "
                "(build the model with the same layers, or pass strict=False to load the matching keys)"
            )
        for name, p in self.named_parameters():
            if name not in state_dict:
                continue
            value = kernels.to_host(state_dict[name])
            if p.is_sparse:
                indices = kernels.to_host(state_dict.get(name + ".indices", p.csr.indices))
                indptr = kernels.to_host(state_dict.get(name + ".indptr", p.csr.indptr))
                try:
                    csr = CSRMatrix(value.astype(p.dtype), indices, indptr, p.csr.shape, copy=True)
                except (ValueError, TypeError) as err:
                    raise ValueError(f"invalid sparse pattern for {name!r} (dense shape {p.csr.shape}): {err}") from err
                p.set_csr(csr.to(p.device))
            else:
                if value.shape != p.shape:
                    raise ValueError(
                        f"size mismatch for {name!r}: the checkpoint has shape {value.shape}, the model "
                        f"expects {p.shape}; build the layer with the same sizes as the saved one"
                    )
                if p.device == "cpu":
                    p.data[...] = value
                else:
                    p.data.copy_to_device(np.ascontiguousarray(value, dtype=p.dtype))
        for name, owner, attr in self.named_buffers():
            if name not in state_dict:
                continue
            value = kernels.to_host(state_dict[name])
            current = getattr(owner, attr)
            if value.shape != np.shape(current):
                raise ValueError(
                    f"size mismatch for buffer {name!r}: the checkpoint has shape {value.shape}, the model "
                    f"expects {np.shape(current)}"
                )
            value = np.array(value, dtype=current.dtype, copy=True)
            object.__setattr__(owner, attr, kernels.to_device(value, device_of(current)))
        return self

    def state_dict_keys(self):
        keys = []
        for name, p in self.named_parameters():
            keys.append(name)
            if p.is_sparse:
                keys += [name + ".indices", name + ".indptr"]
        keys += [name for name, _, _ in self.named_buffers()]
        return keys

    # ------------------------------------------------------------------ description
    def get_config(self):
        """Constructor arguments as a JSON-able dict (``cls(**config)`` rebuilds the layer)."""
        return {}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "dtype" in config:
            config["dtype"] = np.dtype(config["dtype"])
        return cls(**config)

    def describe(self):
        """``{"class": name, "config": get_config()}``: the architecture, without values."""
        config = self.get_config()
        return {"class": type(self).__name__, "config": config}

    def extra_repr(self):
        def fmt(v):
            return repr(str(v)) if isinstance(v, np.dtype) else repr(v)
        return ", ".join(f"{k}={fmt(v)}" for k, v in self.get_config().items())

    def __repr__(self):
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        lines.append(")")
        return "\n".join(lines)


def _host_copy(a):
    """A NumPy copy of a host or device array (state dicts always live on the host)."""
    return kernels.to_host(a) if is_device_array(a) else np.array(a, copy=True)


class _WeightedLayer(Module):
    """A layer with parameters whose backward can skip the input gradient: subclasses
    implement ``_backward(grad_out, need_input)``, returning the input gradient (None when
    ``need_input`` is False) after accumulating their parameters' gradients."""

    def backward(self, grad_out):
        return self._backward(grad_out, need_input=True)

    def backward_params(self, grad_out):
        if type(self).backward is not _PLAIN_BACKWARD:  # a subclass's own (or a patched) backward wins
            self.backward(grad_out)
        else:
            self._backward(grad_out, need_input=False)

    def _backward(self, grad_out, need_input):
        raise NotImplementedError(f"{type(self).__name__} does not implement _backward")


_PLAIN_BACKWARD = _WeightedLayer.backward  # kept: a wrapper patched onto the class is not it

_FUSABLE_FORWARDS = set()  # the functions themselves: a functools.wraps wrapper is not one of them
_FUSABLE_BACKWARDS = set()  # ReLU's backward
_GATED_BACKWARDS = set()  # weighted layers' _backward taking relu_output=


def fusable_forward(forward):
    """Register a layer class's own ``forward`` as one :class:`Sequential` may fuse (see _fusable)."""
    _FUSABLE_FORWARDS.add(forward)
    return forward


def fusable_backward(backward):
    """Register ReLU's ``backward`` as one a layer after it may apply (see _fusable_backward)."""
    _FUSABLE_BACKWARDS.add(backward)
    return backward


def gated_backward(backward):
    """Register a weighted layer's ``_backward(grad_out, need_input, relu_output=None)`` as one
    that applies the backward of a ReLU before it (see _fusable_backward)."""
    _GATED_BACKWARDS.add(backward)
    return backward


def _fusable(layer, nxt):
    """Whether ``nxt`` is a plain ReLU that ``layer`` can apply as it stores its output.

    Exact classes only (each defines the hook itself: a subclass may change what forward
    does), both ``forward`` still the marked originals (not patched on the class), and neither
    replaced on the instance (a recorder or a user's wrapper must see its call).
    """
    def plain(m):
        return type(m).forward in _FUSABLE_FORWARDS and "forward" not in m.__dict__

    return ("_forward_fused" in type(layer).__dict__ and type(nxt).__dict__.get("_fusable_activation") == "relu"
            and plain(layer) and plain(nxt))


def _fusable_backward(relu, layer):
    """Whether ``layer``'s input gradient can come out already through ``relu``'s backward
    (``relu`` the module before it): the marked functions themselves, on the class and not
    replaced on the instance (a recorder must see its call), the layer's ``backward`` the
    plain ``_WeightedLayer`` one.  The gate is the ReLU's own saved output, so what ran between
    the two forwards does not matter."""
    def plain(m, name, marked):
        return getattr(type(m), name, None) in marked and name not in m.__dict__

    return (plain(relu, "backward", _FUSABLE_BACKWARDS) and plain(layer, "_backward", _GATED_BACKWARDS)
            and type(layer).backward is _PLAIN_BACKWARD and "backward" not in layer.__dict__)


def _backward_chain(layers, grad_out):
    """Backward through ``layers`` in reverse; a layer after a ReLU applies that ReLU's
    backward as it computes its input gradient when it can (_fusable_backward)."""
    i = len(layers) - 1
    while i >= 0:
        # A ReLU with nothing saved runs its own backward, which says so.
        if i > 0 and _fusable_backward(layers[i - 1], layers[i]) and layers[i - 1]._ctx is not None:
            grad_out = layers[i]._backward(grad_out, need_input=True, relu_output=layers[i - 1]._ctx)
            layers[i - 1]._drop_saved()  # consumed, as its own backward would have
            i -= 2
        else:
            grad_out = layers[i].backward(grad_out)
            i -= 1
    return grad_out


class Sequential(Module):
    """A chain of modules: ``forward`` runs them in order, ``backward`` in reverse.

    Parameters
    ----------
    *layers : Module
        Named ``"0"``, ``"1"``, ... in :meth:`named_parameters` and the state dict.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn
    >>> model = nn.Sequential(nn.Linear(3, 2, rng=0, dtype=np.float64), nn.ReLU())
    >>> y = model(np.ones((4, 3)))
    >>> y.shape
    (4, 2)
    >>> model.backward(np.ones_like(y)).shape
    (4, 3)
    >>> [name for name, _ in model.named_parameters()]
    ['0.weight', '0.bias']
    """

    _supports_cuda = True

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential takes Module instances; argument {i} is {type(layer).__name__}")
            setattr(self, str(i), layer)

    def append(self, layer):
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential.append takes a Module; got {type(layer).__name__}")
        setattr(self, str(len(self._modules)), layer)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        layers = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(*layers[index])
        if not isinstance(index, numbers.Integral):
            raise TypeError(f"Sequential indices must be integers or slices; got {type(index).__name__}")
        return layers[index]

    def forward(self, x):
        layers = list(self._modules.values())
        i = 0
        while i < len(layers):
            if i + 1 < len(layers) and _fusable(layers[i], layers[i + 1]):
                x = layers[i]._forward_fused(x, relu=True)  # the pair in one kernel
                layers[i + 1]._save_fused(x)
                i += 2
            else:
                x = layers[i](x)
                i += 1
        return x

    def backward(self, grad_out):
        return _backward_chain(list(self._modules.values()), grad_out)

    def backward_params(self, grad_out):
        layers = list(self._modules.values())
        first = next((i for i, layer in enumerate(layers) if layer.parameters()), len(layers))
        grad_out = _backward_chain(layers[first + 1:], grad_out)
        if first < len(layers):
            layers[first].backward_params(grad_out)
        for layer in layers[:first]:  # parameter-free layers before it: their gradients feed nothing
            layer._drop_saved()

    def get_config(self):
        return {"layers": [layer.describe() for layer in self._modules.values()]}

    @classmethod
    def from_config(cls, config):
        return cls(*(from_config(d) for d in config.get("layers", [])))
