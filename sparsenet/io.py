"""Checkpoints: one ``.npz`` with the weights, sparse patterns, optimizer state and JSON metadata.

Nothing is pickled: the architecture is stored as JSON (``Module.describe()``) and rebuilt from
the module registry, arrays are plain ``.npy`` members, and files are read with
``allow_pickle=False``.  Every array carries a SHA-256 in the metadata, so a truncated or
tampered file raises instead of loading wrong weights.  Writes are atomic: a temporary file in
the same folder is written, fsynced and renamed over the target, so a save killed midway leaves
the previous checkpoint intact.
"""
import hashlib
import json
import os
import tempfile
import zipfile

import numpy as np

from .nn.module import Module, from_config

__all__ = ["save", "load", "Checkpoint", "CheckpointError"]

FORMAT = "sparsenet-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "__meta__"


class CheckpointError(ValueError):
    """A file that is not a valid, intact sparsenet checkpoint."""


def _digest(a):
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) and obj.size <= 1024:
        return obj.tolist()
    raise TypeError(
        f"checkpoint metadata must be JSON-serialisable; got {type(obj).__name__} (store arrays in the model, "
        "or convert to lists/numbers)"
    )


def _rng_states(model):
    states = {}
    for name, m in model.named_modules():
        rng = m.__dict__.get("rng")
        if isinstance(rng, np.random.Generator):
            states[name] = rng.bit_generator.state
    return states


def save(path, model, optimizer=None, **meta):
    """Write ``model`` (and ``optimizer``) to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Conventionally ending in ``.npz``.
    model : Module
        Every module in it must be a registered class (all sparsenet layers are; subclasses of
        Module register themselves by class name).
    optimizer : Optimizer, optional
        Its hyperparameters and per-parameter state (momentum, Adam moments) are saved too.
    **meta
        JSON-serialisable extras (epoch, history, data set, seed...).

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from sparsenet import nn, optim, io
    >>> model = nn.Sequential(nn.SparseLinear(8, 4, density=0.5, rng=0), nn.ReLU())
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
    >>> io.save(path, model, optim.SGD(model.parameters(), lr=0.1), epoch=3)
    >>> ckpt = io.load(path)
    >>> ckpt.meta["epoch"], ckpt.model[0].weight.csr.nnz
    (3, 16)
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a sparsenet.nn.Module; got {type(model).__name__}")
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt_info = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalar_state = {}
        for idx, s in sd["state"].items():
            for k, v in s.items():
                if isinstance(v, np.ndarray):
                    arrays[f"optim/{idx}/{k}"] = v
                else:
                    scalar_state.setdefault(str(idx), {})[k] = v
        opt_info = {"class": type(optimizer).__name__, "param_groups": sd["param_groups"],
                    "scalar_state": scalar_state}
    from . import __version__

    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "sparsenet_version": __version__,
        "architecture": model.describe(), "optimizer": opt_info, "rng_states": _rng_states(model),
        "meta": meta, "checksums": {k: _digest(v) for k, v in arrays.items()},
    }
    blob = json.dumps(header, default=_json_default).encode()
    arrays[_META_KEY] = np.frombuffer(blob, dtype=np.uint8)

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (POSIX); not possible on every platform
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


class Checkpoint:
    """What :func:`load` returns.

    Attributes
    ----------
    model : Module
        Rebuilt from the stored architecture with the stored weights and patterns (eval mode).
    optimizer : Optimizer or None
        Rebuilt over ``model.parameters()`` with its state, when one was saved.
    meta : dict
        The keyword arguments given to :func:`save`.
    architecture : dict
        The JSON description of the model.
    """

    def __init__(self, model, optimizer, meta, architecture, header):
        self.model, self.optimizer, self.meta, self.architecture = model, optimizer, meta, architecture
        self.header = header

    def __repr__(self):
        return f"Checkpoint(model={type(self.model).__name__}, optimizer={type(self.optimizer).__name__}, meta keys={sorted(self.meta)})"


def _open(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{path!r} is not a readable sparsenet checkpoint (truncated, corrupt or another format): {err}"
        ) from err
    if _META_KEY not in arrays:
        raise CheckpointError(f"{path!r} has no sparsenet metadata; it was not written by sparsenet.io.save")
    try:
        header = json.loads(arrays.pop(_META_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path!r}: the metadata is corrupt ({err})") from err
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a sparsenet checkpoint (format {header.get('format')!r})")
    if header.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path!r} uses checkpoint format {header['format_version']}; this sparsenet reads up to "
            f"{FORMAT_VERSION}: upgrade sparsenet"
        )
    sums = header.get("checksums", {})
    if set(sums) != set(arrays):
        raise CheckpointError(
            f"{path!r} was modified: arrays {sorted(set(sums) ^ set(arrays))} are missing or were added"
        )
    for k, v in arrays.items():
        if _digest(v) != sums[k]:
            raise CheckpointError(f"{path!r} was modified or is corrupt: checksum mismatch for {k!r}")
    return arrays, header


def load(path):
    """Read a checkpoint written by :func:`save` and rebuild the model (and optimizer).

    Raises
    ------
    FileNotFoundError
        No such file.
    CheckpointError (a ValueError)
        Truncated, corrupt, tampered, foreign or newer-format file.
    """
    from . import optim

    arrays, header = _open(path)
    try:
        model = from_config(header["architecture"])
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"cannot rebuild the model stored in {os.fspath(path)!r}: {err}") from err
    model.load_state_dict({k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")})
    for name, m in model.named_modules():
        state = header.get("rng_states", {}).get(name)
        if state is not None and isinstance(m.__dict__.get("rng"), np.random.Generator):
            m.rng.bit_generator.state = state
    optimizer = None
    info = header.get("optimizer")
    if info is not None:
        classes = {"SGD": optim.SGD, "Adam": optim.Adam, "AdamW": optim.AdamW}
        if info["class"] not in classes:
            raise CheckpointError(f"unknown optimizer class {info['class']!r}; known: {sorted(classes)}")
        params = model.parameters()
        groups = []
        for g in info["param_groups"]:
            hyper = {k: (tuple(v) if isinstance(v, list) else v) for k, v in g.items() if k not in ("params", "initial_lr")}
            groups.append({"params": [params[i] for i in g["params"]], **hyper})
        optimizer = classes[info["class"]](groups)
        state = {}
        for k, v in arrays.items():
            if k.startswith("optim/"):
                _, idx, key = k.split("/", 2)
                state.setdefault(int(idx), {})[key] = v
        for idx, s in info.get("scalar_state", {}).items():
            state.setdefault(int(idx), {}).update(s)
        optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    model.eval()
    return Checkpoint(model, optimizer, header.get("meta", {}), header["architecture"], header)
