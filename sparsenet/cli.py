"""The ``sparsenet`` command: ``train``, ``evaluate``, ``bench``, ``info``.

``sparsenet train`` trains a preset model on the bundled digits (or MNIST / Fashion-MNIST from
a folder of IDX files) and prints test accuracy, weight sparsity and wall time.
"""
import argparse
import os
import platform
import sys
import time

import numpy as np

__all__ = ["main", "build_preset", "PRESETS"]

PRESETS = ("mlp", "lenet")


def build_preset(name, input_shape, n_classes, *, density=0.1, hidden=512, rng=None):
    """The models behind ``sparsenet train --preset``.

    ``mlp``: three :class:`~sparsenet.nn.SparseLinear` layers (``hidden`` units, ``density``) with
    ReLU.  ``lenet``: LeNet-style CNN, two 3x3 conv + max-pool blocks then two dense layers.

    Examples
    --------
    >>> model = build_preset("mlp", (64,), 10, density=0.1, hidden=32, rng=0)
    >>> [type(m).__name__ for m in model]
    ['Flatten', 'SparseLinear', 'ReLU', 'SparseLinear', 'ReLU', 'SparseLinear']
    """
    from . import nn
    from ._validation import check_random_state

    rng = check_random_state(rng)
    n_in = int(np.prod(input_shape))
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.SparseLinear(n_in, hidden, density=density, rng=rng), nn.ReLU(),
            nn.SparseLinear(hidden, hidden, density=density, rng=rng), nn.ReLU(),
            nn.SparseLinear(hidden, n_classes, density=density, rng=rng),
        )
    if name == "lenet":
        c, h, w = input_shape
        side = (h // 2) // 2, (w // 2) // 2
        return nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * side[0] * side[1], 128, rng=rng), nn.ReLU(),
            nn.Linear(128, n_classes, rng=rng),
        )
    raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")


def _load_dataset(name, data_dir, images, seed):
    """(x_train, x_test, y_train, y_test), standardised with training statistics."""
    from .data import Standardizer, load_digits, load_mnist, train_test_split

    if name == "digits":
        x, y = load_digits(images=images)
        xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, rng=seed, stratify=True)
    elif name in ("mnist", "fashion-mnist"):
        if data_dir is None:
            raise SystemExit(f"--dataset {name} needs --data-dir FOLDER holding the four IDX files")
        xtr, ytr = load_mnist(data_dir, "train", images=images)
        xte, yte = load_mnist(data_dir, "test", images=images)
    else:
        raise SystemExit(f"unknown dataset {name!r}; choose digits, mnist or fashion-mnist")
    # One mean and scale per pixel position (images: per (c, h, w)), fitted on the training split.
    scaler = Standardizer().fit(xtr)
    return scaler.transform(xtr), scaler.transform(xte), ytr, yte


class _PrintEpoch:
    def __init__(self, stream):
        self.stream = stream

    def __getattr__(self, name):  # the Callback hooks we do not use
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_epoch_end(self, trainer, epoch, logs):
        val = logs.get("val_accuracy")
        print(f"epoch {epoch + 1:3d}/{trainer.epochs}  loss {logs['loss']:.4f}  acc {logs['accuracy']:.4f}"
              + (f"  test_acc {val:.4f}" if val is not None else "") + f"  {logs['time']:.2f}s",
              file=self.stream, flush=True)


def _set_threads(n):
    """Cap Numba's and (when threadpoolctl is installed) BLAS's thread pools at ``n``.

    Returns a callable restoring the previous limits (``main`` calls it, so calling ``main``
    from Python leaves the process as it was).  On a machine shared with other busy processes,
    spinning thread teams can make small kernels 10-100x slower; ``--threads 1`` avoids that.
    """
    if n is None:
        return lambda: None
    import numba

    if n < 1:
        raise ValueError(f"--threads must be at least 1; got {n}")
    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return lambda: numba.set_num_threads(before)
    limits = threadpool_limits(n)

    def restore():
        numba.set_num_threads(before)
        limits.restore_original_limits()

    return restore


def _cmd_train(args):
    from . import io, nn, optim
    from .data import DataLoader
    from .train import ModelCheckpoint, Trainer, evaluate, model_sparsity

    images = args.preset == "lenet"
    if args.device == "cuda":
        from .kernels.device import cuda_available

        ok, reason = cuda_available()
        if not ok:
            raise ValueError(f"cannot train on 'cuda': {reason}")
    args.restore_threads = _set_threads(args.threads)
    t_start = time.perf_counter()
    xtr, xte, ytr, yte = _load_dataset(args.dataset, args.data_dir, images, args.seed)
    loader = DataLoader(xtr, ytr, batch_size=args.batch_size, shuffle=True, rng=args.seed)
    history, initial_epoch = None, 0
    if args.resume:
        if not args.checkpoint or not os.path.exists(args.checkpoint):
            raise SystemExit("--resume needs --checkpoint PATH pointing to an existing checkpoint")
        ckpt = io.load(args.checkpoint)
        model, optimizer = ckpt.model, ckpt.optimizer
        initial_epoch = int(ckpt.meta.get("epoch", 0))
        history = ckpt.meta.get("history")
        if ckpt.meta.get("loader_rng") is not None:
            loader.rng.bit_generator.state = ckpt.meta["loader_rng"]
        print(f"resumed from {args.checkpoint} at epoch {initial_epoch}", flush=True)
    else:
        model = build_preset(args.preset, xtr.shape[1:], int(ytr.max()) + 1, density=args.density,
                             hidden=args.hidden, rng=args.seed)
        opt_cls = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW}[args.optimizer]
        kwargs = {"momentum": 0.9} if args.optimizer == "sgd" else {}
        optimizer = opt_cls(model.parameters(), lr=args.lr, **kwargs)
    scheduler = optim.CosineAnnealingLR(optimizer, T_max=args.epochs)
    if initial_epoch:
        # The cosine rate is a closed form of (epoch, T_max): fast-forward instead of loading the
        # saved scheduler, so a resumed run may also extend --epochs.
        scheduler.last_epoch = initial_epoch - 1
        scheduler.step()
    callbacks = [_PrintEpoch(sys.stdout)] if args.verbose else []
    if args.checkpoint:
        callbacks.append(ModelCheckpoint(args.checkpoint, preset=args.preset, dataset=args.dataset,
                                         data_dir=args.data_dir, seed=args.seed))
    trainer = Trainer(model, nn.CrossEntropyLoss(), optimizer, loader, (xte, yte) if args.verbose else None,
                      epochs=args.epochs, callbacks=callbacks, scheduler=scheduler, progress=args.progress,
                      initial_epoch=initial_epoch, history=history, device=args.device)
    trainer.run()
    result = evaluate(model, (xte, yte))
    elapsed = time.perf_counter() - t_start
    n_params = sum(p.size for p in model.parameters())
    print(f"{args.preset} on {args.dataset}: {len(xtr)} train / {len(xte)} test samples, "
          f"{args.epochs} epochs, {n_params} trainable parameters, device {model.device}")
    print(f"test accuracy {result['accuracy']:.4f} | sparsity {model_sparsity(model):.4f} | "
          f"time {elapsed:.1f} s")
    if args.checkpoint:
        print(f"checkpoint: {args.checkpoint}")
    return 0


def _cmd_evaluate(args):
    from . import io
    from .train import evaluate, model_sparsity

    ckpt = io.load(args.checkpoint)
    dataset = args.dataset or ckpt.meta.get("dataset", "digits")
    seed = ckpt.meta.get("seed", 0) if args.seed is None else args.seed
    images = ckpt.meta.get("preset") == "lenet"
    _, xte, _, yte = _load_dataset(dataset, args.data_dir or ckpt.meta.get("data_dir"), images, seed)
    result = evaluate(ckpt.model, (xte, yte))
    print(f"{args.checkpoint}: epoch {ckpt.meta.get('epoch', '?')}, {dataset} test set ({result['n']} samples)")
    print(f"test accuracy {result['accuracy']:.4f} | loss {result['loss']:.4f} | "
          f"sparsity {model_sparsity(ckpt.model):.4f}")
    return 0


def _cmd_bench(args):
    from . import nn, optim
    from .data import DataLoader, make_classification
    from .nn.init import er_density

    args.restore_threads = _set_threads(args.threads)
    sizes = [784] + [args.hidden] * args.layers + [10]
    x, y = make_classification(args.samples, sizes[0], sizes[-1], rng=0)
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.SparseLinear(sizes[i], sizes[i + 1], epsilon=args.epsilon, rng=i))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    crit = nn.CrossEntropyLoss()

    def epoch(n_batches=None):
        for i, (xb, yb) in enumerate(DataLoader(x, y, args.batch_size, rng=0)):
            if n_batches is not None and i >= n_batches:
                break
            optimizer.zero_grad()
            crit(model(xb), yb)
            model.backward_params(crit.backward())
            optimizer.step()

    t0 = time.perf_counter()
    epoch(2)  # JIT compilation (or loading the on-disk cache) is not part of the epoch
    warm = time.perf_counter() - t0
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - t0)
    best = min(times)
    density = [er_density(sizes[i], sizes[i + 1], args.epsilon) for i in range(len(sizes) - 1)]
    print(f"SparseLinear MLP {'-'.join(map(str, sizes))}, epsilon={args.epsilon} "
          f"(densities {', '.join(f'{d:.3f}' for d in density)}), {args.samples} samples, batch {args.batch_size}")
    print(f"one training epoch: best {best:.2f} s of {args.repeat} ({args.samples / best:,.0f} samples/s); "
          f"warm-up {warm:.2f} s; numba threads {_numba_threads()}")
    return 0


def _numba_threads():
    import numba

    return numba.get_num_threads()


def _cmd_info(args):
    import numba
    import scipy

    from . import __version__

    print(f"sparsenet {__version__}")
    print(f"python    {platform.python_version()} ({platform.machine()}, {platform.system()})")
    print(f"numpy     {np.__version__}")
    print(f"scipy     {scipy.__version__}")
    print(f"numba     {numba.__version__}")
    try:
        layer = numba.threading_layer()
    except ValueError:  # raised until a parallel kernel has run once
        layer = "not initialised yet"
    print(f"threads   {numba.get_num_threads()} (numba), threading layer: {layer}, cpu count {os.cpu_count()}")
    from importlib import metadata

    for dist in ("scikit-learn", "tqdm", "matplotlib", "torch"):  # optional; versions without importing
        try:
            print(f"{dist:<9} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            print(f"{dist:<9} not installed")
    from .kernels.device import _simulator_enabled, cuda_available

    ok, reason = cuda_available()
    detail = f"{'yes' if ok else 'no'}: {reason}"
    print(f"CUDA      {detail}")
    if ok and not _simulator_enabled():
        from .kernels.cuda import memory

        pool = "caching pool" if memory.install() else "numba's (SPARSENET_CUDA_POOL=1: a caching pool)"
        print(f"allocator {pool}")
    return 0


def _parser():
    parser = argparse.ArgumentParser(prog="sparsenet", description="Sparse and convolutional networks in NumPy + Numba.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a preset model and report test accuracy, sparsity and time")
    t.add_argument("--preset", choices=PRESETS, default="mlp")
    t.add_argument("--dataset", choices=("digits", "mnist", "fashion-mnist"), default="digits")
    t.add_argument("--data-dir", default=None, help="folder with the IDX files (mnist, fashion-mnist)")
    t.add_argument("--density", type=float, default=0.1, help="SparseLinear density of the mlp preset (default 0.1)")
    t.add_argument("--hidden", type=int, default=512, help="hidden units of the mlp preset")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam")
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint", default=None, help="save a resumable checkpoint here after every epoch")
    t.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    # The presets are small (a few 10k weights, batch 32): a kernel call lasts microseconds, so a
    # thread team's fork/join costs more than it saves, and on a busy machine it can stall for
    # milliseconds (measured 3 s on one thread vs 39 s on two for the mlp preset, shared 2-core host).
    t.add_argument("--threads", type=int, default=1,
                   help="Numba/BLAS threads (default 1: fastest for the small presets; raise for big models)")
    t.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="train on the CPU (default) or on the GPU (needs numba-cuda: pip install 'sparsenet[cuda]')")
    t.add_argument("--verbose", "-v", action="store_true", help="print one line per epoch")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="test accuracy of a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--dataset", choices=("digits", "mnist", "fashion-mnist"), default=None)
    e.add_argument("--data-dir", default=None)
    e.add_argument("--seed", type=int, default=None, help="split seed (default: the one used in training)")
    e.set_defaults(func=_cmd_evaluate)

    b = sub.add_parser("bench", help="time one training epoch of a SET-style SparseLinear MLP")
    b.add_argument("--samples", type=int, default=60000)
    b.add_argument("--hidden", type=int, default=1000)
    b.add_argument("--layers", type=int, default=3)
    b.add_argument("--epsilon", type=float, default=20.0)
    b.add_argument("--batch-size", type=int, default=128)
    b.add_argument("--repeat", type=int, default=1)
    b.add_argument("--threads", type=int, default=None, help="cap Numba/BLAS threads (default: all cores)")
    b.set_defaults(func=_cmd_bench)

    i = sub.add_parser("info", help="versions, threads and CUDA availability")
    i.set_defaults(func=_cmd_info)
    return parser


def main(argv=None):
    """Entry point of the ``sparsenet`` console script and ``python -m sparsenet``."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"sparsenet {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        getattr(args, "restore_threads", lambda: None)()
