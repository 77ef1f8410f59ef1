"""Training loop: ``fit`` with callbacks, history and early stopping; ``evaluate``.

Sparsity methods (pruning, SET, RigL, regularisers) plug in as :class:`Callback` objects:
``on_after_backward`` sees the gradients before the optimizer step (add a regulariser's
gradient there), ``on_batch_end`` runs after the step, ``on_epoch_end`` after each epoch (change
patterns there and call ``trainer.optimizer.remap``).
"""
import math
import time

import numpy as np

from . import kernels
from ._validation import check_random_state, runs_own
from .data import DataLoader
from .kernels.device import DEVICES
from .nn.module import Module

__all__ = ["fit", "evaluate", "Trainer", "Callback", "EarlyStopping", "ModelCheckpoint", "History",
           "model_sparsity"]


def model_sparsity(model):
    """Fraction of zero weights over all weight matrices/filters (biases and norms excluded).

    A sparse weight counts its missing entries (and stored zeros) as zero.

    Examples
    --------
    >>> from sparsenet import nn
    >>> round(model_sparsity(nn.SparseLinear(100, 100, density=0.1, rng=0)), 3)
    0.9
    """
    total = zeros = 0
    for p in model.parameters():
        if p.is_sparse:
            size = p.csr.shape[0] * p.csr.shape[1]
            total += size
            zeros += size - int(np.count_nonzero(kernels.to_host(p.data)))
        elif p.name == "weight" and p.data.ndim >= 2:
            total += p.data.size
            zeros += p.data.size - int(np.count_nonzero(kernels.to_host(p.data)))
    return zeros / total if total else 0.0


class History:
    """Per-epoch records: ``history.records`` is a list of dicts, ``history["loss"]`` a list of values.

    Keys: ``epoch``, ``loss``, ``accuracy``, ``sparsity``, ``time`` (seconds), ``lr``, and
    ``val_loss``/``val_accuracy`` when validation data is given.
    """

    def __init__(self, records=None):
        self.records = list(records or [])

    def append(self, record):
        self.records.append(dict(record))

    def __getitem__(self, key):
        return [r.get(key) for r in self.records]

    def __len__(self):
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    @property
    def last(self):
        return self.records[-1] if self.records else {}

    def __repr__(self):
        return f"History({len(self.records)} epochs, last={self.last})"


class Callback:
    """Hooks called by :class:`Trainer`; override any subset.  ``trainer`` exposes ``model``,
    ``loss``, ``optimizer``, ``epoch``, ``history``, ``device`` and ``stop_training``.

    ``on_batch_end``'s ``logs["loss"]`` is a float on the CPU and, when training on the GPU, the
    loss as a (1,) device array (reading it on the host costs a synchronisation per batch).

    A callback that computes with NumPy on parameters, gradients or optimizer state sets
    ``host_only = True`` (the sparsity methods do): when training on the GPU, the trainer then
    moves the model and the optimizer state to the host around its hooks and back afterwards,
    so it sees NumPy arrays and a float ``logs["loss"]`` (values are copied; unchanged sparsity
    patterns keep their device arrays).  :meth:`needs_host` narrows that to the calls that do
    work.  Callbacks that only read ``logs`` or call ``state_dict`` need nothing.
    """

    host_only = False

    def needs_host(self, hook, trainer):
        """Whether this call of ``hook`` must see the model on the host (GPU training only).

        Default: for a ``host_only`` callback, every hook its class implements.  Override to
        skip the round trip on calls that do nothing (e.g. steps between two topology updates).
        """
        return self.host_only and getattr(type(self), hook, None) is not getattr(Callback, hook, None)

    def on_train_begin(self, trainer):
        pass

    def on_epoch_begin(self, trainer, epoch):
        pass

    def on_after_backward(self, trainer):
        pass

    def on_batch_end(self, trainer, batch, logs):
        pass

    def on_epoch_end(self, trainer, epoch, logs):
        pass

    def on_train_end(self, trainer):
        pass


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    Parameters
    ----------
    monitor : str, default="val_loss"
        A history key; ``*loss`` is minimised, anything else maximised.
    patience : int, default=5
    min_delta : float, default=0
    restore_best : bool, default=True
        Load the best epoch's weights back at the end.
    """

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, restore_best=True):
        self.monitor, self.patience, self.min_delta, self.restore_best = monitor, int(patience), float(min_delta), restore_best
        self.minimise = monitor.endswith("loss")

    def on_train_begin(self, trainer):
        self.best, self.best_state, self.wait, self.best_epoch = None, None, 0, None

    def on_epoch_end(self, trainer, epoch, logs):
        if self.monitor not in logs or logs[self.monitor] is None:
            raise ValueError(
                f"EarlyStopping monitors {self.monitor!r}, which the history does not have; available: "
                f"{sorted(logs)} (pass val_data to fit for val_* keys)"
            )
        value = logs[self.monitor]
        better = self.best is None or (value < self.best - self.min_delta if self.minimise
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.wait, self.best_epoch = value, 0, epoch
            if self.restore_best:
                self.best_state = trainer.model.state_dict()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.stop_training = True

    def on_train_end(self, trainer):
        if self.restore_best and self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)


class ModelCheckpoint(Callback):
    """Save a resumable checkpoint (model, optimizer, epoch, history, RNG states) every ``every`` epochs.

    Extra keyword arguments are stored as JSON metadata (e.g. the data set and seed).
    """

    def __init__(self, path, every=1, **meta):
        self.path, self.every, self.meta = path, int(every), meta

    def on_epoch_end(self, trainer, epoch, logs):
        if (epoch + 1) % self.every == 0:
            from . import io

            io.save(self.path, trainer.model, trainer.optimizer, epoch=epoch + 1,
                    history=trainer.history.records, loader_rng=trainer.loader_rng_state(),
                    scheduler=trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
                    **self.meta)


def _as_loader(data, batch_size, shuffle, rng, name):
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return DataLoader(data[0], data[1], batch_size=batch_size, shuffle=shuffle, rng=rng)
    raise TypeError(f"{name} must be a DataLoader or an (x, y) pair; got {type(data).__name__}")


def _is_classification(output, target):
    return output.ndim == 2 and np.ndim(target) == 1 and np.asarray(target).dtype.kind in "iu"


class _Meter:
    """Running loss sum and correct count of an epoch, where the model computes.

    On the CPU, plain Python numbers.  On the GPU, a (3,) device accumulator that a kernel
    updates after each batch: reading the loss back per batch would stall the pipeline on a
    device-to-host copy every step, so the host reads it once, in :meth:`result`.
    """

    def __init__(self, device):
        self.device = device
        self.loss = 0.0
        self.correct = 0
        self.n = 0
        self.can_score = True
        self.acc = kernels.metrics_accumulator() if device == "cuda" else None

    def add(self, value, output, target_host, target):
        """Count one batch: ``value`` is the loss (a host scalar, or a (1,) device array)."""
        batch = len(target_host)
        scored = _is_classification(output, target_host)
        self.can_score = self.can_score and scored
        if self.acc is not None:
            kernels.accumulate_metrics(self.acc, value, batch, output if scored else None,
                                       target if scored else None)
            return None
        value = float(value)
        self.loss += value * batch
        self.n += batch
        if scored:
            self.correct += int(np.sum(np.argmax(output, axis=1) == target_host))
        return value

    def result(self):
        """(mean loss, accuracy or None, samples)."""
        if self.acc is not None:
            total, correct, n = kernels.to_host(self.acc).tolist()
            self.loss, self.correct, self.n = total, int(correct), int(n)
        n = self.n
        return self.loss / max(n, 1), (self.correct / n if self.can_score and n else None), n


def _check_device(device):
    if device is not None and device not in DEVICES:
        raise ValueError(f"device must be None or one of {DEVICES}; got {device!r}")
    return device


def _to(device, a):
    return kernels.to_device(a, device) if device == "cuda" else a


def _host_logs(a):
    """A logs dict with device scalars read back (for callbacks that run on the host)."""
    if isinstance(a, dict):
        return {k: (float(kernels.to_host(v)[0]) if kernels.on_device(v=v) else v) for k, v in a.items()}
    return a


def _upload_target(device, target, output):
    """The batch's target on the model's device, checked and typed as the host losses would.

    Class labels are range-checked here, on the host copy, where it costs nothing (on the device
    an out-of-range class would only show up as a NaN loss); float targets take the output's
    dtype, as the host MSE casts them.
    """
    target = np.asarray(target)
    if device != "cuda":
        return target
    if _is_classification(output, target) and target.size:
        n_classes = output.shape[1]
        if target.min() < 0 or target.max() >= n_classes:
            bad = target[(target < 0) | (target >= n_classes)][0]
            raise ValueError(f"target class {bad} is out of range [0, {n_classes})")
    elif target.dtype.kind in "fiub":
        target = target.astype(output.dtype, copy=False)
    return kernels.to_device(target)


RESIDENT_MAX_BYTES = 1 << 30  # training sets up to 1 GiB stay on the GPU for the whole fit


class _Resident:
    """A DataLoader's arrays on the GPU for a whole run.

    A batch is a device view (stored order) or gathered by one kernel from the epoch's order,
    which goes up once per epoch; the targets go up whole at the first batch, checked and typed
    as :func:`_upload_target` does per batch.  So a step uploads nothing: an upload from pageable
    host memory first waits for the device's queued kernels, and one per batch kept the host
    from running ahead of the GPU.  Batches are those of ``DataLoader.__iter__`` (same order,
    same draws from its generator).
    """

    def __init__(self, loader):
        self.loader = loader
        self.x = kernels.to_device(loader.x)
        self.y = None

    @staticmethod
    def fits(loader, device):
        """Whether a run on ``device`` keeps ``loader``'s data on the GPU: a plain DataLoader (a
        subclass may change what a batch is) of at most RESIDENT_MAX_BYTES."""
        return (device == "cuda" and runs_own(loader, DataLoader, "__iter__", "epoch_order", "batch_slices")
                and loader.x.nbytes + loader.y.nbytes <= RESIDENT_MAX_BYTES)

    def batches(self):
        """(x batch on the device, y batch on the host, where the batch's targets are) per batch."""
        loader = self.loader
        order = loader.epoch_order()
        order_d = None if order is None else kernels.to_device(order)
        for sl in loader.batch_slices():
            if order is None:
                yield self.x[sl], loader.y[sl], sl
            else:
                where = order_d[sl]
                # F-ordered: what a first sparse layer reads, so no transpose kernel follows
                yield kernels.take(self.x, where, order="F"), loader.y[order[sl]], where

    def targets(self, where, output):
        if self.y is None:
            self.y = _upload_target("cuda", self.loader.y, output)
        return self.y[where] if isinstance(where, slice) else kernels.take(self.y, where)


def evaluate(model, data, loss=None, *, batch_size=1000):
    """Loss and accuracy of ``model`` on ``data`` in eval mode (no gradients, no parameter change).

    Parameters
    ----------
    model : Module
    data : DataLoader or (x, y)
    loss : loss module, optional
        Default :class:`~sparsenet.nn.CrossEntropyLoss`.
    batch_size : int, default=1000

    Returns
    -------
    dict
        ``{"loss": float, "accuracy": float or None, "n": int}``.

    Notes
    -----
    A model on the GPU (``model.to("cuda")``) is evaluated there: each batch is uploaded, and
    the loss and accuracy are accumulated on the device and read back once.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn
    >>> model = nn.Linear(2, 2, rng=0)
    >>> sorted(evaluate(model, (np.zeros((4, 2), np.float32), np.zeros(4, np.int64))))
    ['accuracy', 'loss', 'n']
    """
    from .nn.loss import CrossEntropyLoss

    loss = CrossEntropyLoss() if loss is None else loss
    loader = _as_loader(data, batch_size, False, None, "data")
    device = model.device
    was_training = model.training
    model.eval()
    meter = _Meter(device)
    try:
        for xb, yb in loader:
            out = model(_to(device, xb))
            yd = _upload_target(device, yb, out)
            meter.add(loss(out, yd), out, yb, yd)
    finally:
        model.train(was_training)
    mean_loss, accuracy, n = meter.result()
    if n == 0:
        raise ValueError("evaluate got no samples")
    return {"loss": mean_loss, "accuracy": accuracy, "n": n}


class Trainer:
    """The state of one training run; :func:`fit` builds one and calls :meth:`run`."""

    def __init__(self, model, loss, optimizer, train_data, val_data=None, *, epochs=10, batch_size=32,
                 callbacks=(), scheduler=None, progress=True, rng=None, initial_epoch=0, history=None, device=None):
        if not isinstance(model, Module):
            raise TypeError(f"model must be a sparsenet.nn.Module; got {type(model).__name__}")
        self._device_arg = _check_device(device)
        self.device = self._device_arg or model.device  # resolved again by run()
        if not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer; got {epochs!r}")
        self.model, self.loss, self.optimizer, self.scheduler = model, loss, optimizer, scheduler
        self.train_loader = _as_loader(train_data, batch_size, True, check_random_state(rng), "train_data")
        self.val_data = val_data
        self.epochs, self.initial_epoch = epochs, int(initial_epoch)
        self.callbacks = list(callbacks)
        self.progress = progress
        self.history = history if isinstance(history, History) else History(history)
        self.stop_training = False
        self.epoch = self.initial_epoch

    def loader_rng_state(self):
        """JSON-able state of the shuffling generator (saved in checkpoints for an exact resume)."""
        return self.train_loader.rng.bit_generator.state

    def _bar(self, total, epoch):
        if not self.progress:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:  # optional: train without a bar rather than fail
            return None
        return tqdm(total=total, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False, unit="batch")

    def _call(self, hook, *args):
        # One host round trip per hook call, and only when a host-only callback needs it now.
        needs_host = self.device == "cuda" and any(
            getattr(cb, "needs_host", lambda *_: False)(hook, self) for cb in self.callbacks)
        if needs_host:
            self.model._to_host_for_a_while()
            self._move_optimizer("cpu")
            args = tuple(_host_logs(a) for a in args)
        try:
            for cb in self.callbacks:
                getattr(cb, hook)(self, *args)
        finally:
            if needs_host:
                self.model.to("cuda")
                self._move_optimizer("cuda")

    def _move_optimizer(self, device):
        move = getattr(self.optimizer, "to", None)  # a duck-typed optimizer without state is fine
        if move is not None:
            move(device)

    def run(self):
        """Train from ``initial_epoch`` to ``epochs``; returns the :class:`History`."""
        self.device = self._device_arg or self.model.device
        if self.model.device != self.device:
            self.model.to(self.device)
        self._move_optimizer(self.device)  # state left on another device by an earlier run
        self.model.train()
        self._call("on_train_begin")
        resident = _Resident(self.train_loader) if _Resident.fits(self.train_loader, self.device) else None
        for epoch in range(self.initial_epoch, self.epochs):
            self.epoch = epoch
            self._call("on_epoch_begin", epoch)
            t0 = time.perf_counter()
            bar = self._bar(len(self.train_loader), epoch)
            meter = _Meter(self.device)
            batches = resident.batches() if resident else ((xb, yb, None) for xb, yb in self.train_loader)
            for i, (xb, yb, where) in enumerate(batches):
                self.optimizer.zero_grad()
                out = self.model(xb if resident else _to(self.device, xb))
                yd = resident.targets(where, out) if resident else _upload_target(self.device, yb, out)
                loss = self.loss(out, yd)
                value = meter.add(loss, out, yb, yd)  # None on the GPU: not read back per batch
                if value is not None and not math.isfinite(value):
                    raise FloatingPointError(
                        f"loss became {value} at epoch {epoch + 1}, batch {i}; lower the learning rate"
                    )
                self.model.backward_params(self.loss.backward())
                self._call("on_after_backward")
                self.optimizer.step()
                self._call("on_batch_end", i, {"loss": value if value is not None else loss})
                if bar is not None:
                    bar.update(1)
                    if value is not None:
                        bar.set_postfix(loss=f"{meter.loss / meter.n:.4f}", refresh=False)
            if bar is not None:
                bar.close()
            mean_loss, accuracy, _ = meter.result()
            if not math.isfinite(mean_loss):
                raise FloatingPointError(
                    f"loss became {mean_loss} during epoch {epoch + 1}; lower the learning rate"
                )
            logs = {"epoch": epoch + 1, "loss": mean_loss, "accuracy": accuracy,
                    "lr": self.optimizer.param_groups[0]["lr"]}
            if self.val_data is not None:
                val = evaluate(self.model, self.val_data, self.loss)
                self.model.train()
                logs["val_loss"], logs["val_accuracy"] = val["loss"], val["accuracy"]
            logs["time"] = time.perf_counter() - t0
            if self.scheduler is not None:
                self.scheduler.step()
            logs["sparsity"] = model_sparsity(self.model)
            self.history.append(logs)
            self._call("on_epoch_end", epoch, logs)
            # a callback may have changed the pattern (pruning, SET): record the sparsity it left
            self.history.records[-1]["sparsity"] = model_sparsity(self.model)
            if self.stop_training:
                break
        self._call("on_train_end")
        self.model.eval()
        return self.history


def fit(model, loss, optimizer, train_data, val_data=None, *, epochs=10, batch_size=32, callbacks=(),
        scheduler=None, progress=True, rng=None, initial_epoch=0, history=None, device=None):
    """Train ``model`` with mini-batch gradient descent.

    Parameters
    ----------
    model : Module
    loss : loss module (e.g. ``nn.CrossEntropyLoss()``)
    optimizer : sparsenet.optim.Optimizer
    train_data : DataLoader or (x, y)
        An (x, y) pair is batched with ``batch_size`` and reshuffled each epoch from ``rng``.
    val_data : DataLoader or (x, y), optional
        Evaluated after every epoch (``val_loss``, ``val_accuracy``).
    epochs : int, default=10
        Last epoch (exclusive) to run: with ``initial_epoch`` a resumed run continues to ``epochs``.
    batch_size : int, default=32
    callbacks : sequence of Callback
    scheduler : LR scheduler, optional
        Stepped once per epoch.
    progress : bool, default=True
        tqdm progress bar per epoch (when tqdm is installed).
    rng : None, int or numpy.random.Generator
        Shuffling when ``train_data`` is an (x, y) pair.
    initial_epoch : int, default=0
    history : History or list of dict, optional
        Records of earlier epochs (when resuming).
    device : {None, "cpu", "cuda"}, default=None
        Where to train; None keeps the model where it is.  ``"cuda"`` moves the model and the
        optimizer state to the GPU (``model.to("cuda")``) and uploads each batch; the whole
        step (forward, loss, backward, update) then runs in CUDA kernels, and loss and accuracy
        are read back once per epoch.  The model stays on the device afterwards.

    Returns
    -------
    History
        One record per epoch: loss, accuracy, val_loss, val_accuracy, sparsity, time, lr.
        The model is left in eval mode.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import nn, optim
    >>> from sparsenet.train import fit
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((64, 4)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int64)
    >>> model = nn.Sequential(nn.Linear(4, 8, rng=0), nn.ReLU(), nn.Linear(8, 2, rng=1))
    >>> hist = fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.05), (x, y),
    ...            epochs=20, batch_size=16, progress=False, rng=0)
    >>> hist["accuracy"][-1] > 0.9
    True
    """
    return Trainer(model, loss, optimizer, train_data, val_data, epochs=epochs, batch_size=batch_size,
                   callbacks=callbacks, scheduler=scheduler, progress=progress, rng=rng,
                   initial_epoch=initial_epoch, history=history, device=device).run()
