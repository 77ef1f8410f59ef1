"""Data sets and batching: scikit-learn's bundled digits, MNIST-style IDX files, a DataLoader.

Nothing here imports scikit-learn until :func:`load_digits` is called (``pip install sparsenet[data]``).
"""
import gzip
import math
import numbers
import os
import struct

import numpy as np

from ._validation import check_random_state, float_dtype

__all__ = ["load_digits", "load_idx", "load_mnist", "DataLoader", "train_test_split", "Standardizer",
           "make_classification"]

# IDX type codes (http://yann.lecun.com/exdb/mnist/): big-endian element types.
_IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def load_digits(*, images=False, dtype=np.float32):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 samples, 10 classes), scaled to [0, 1].

    Parameters
    ----------
    images : bool, default=False
        Return ``x`` as (n, 1, 8, 8) images instead of (n, 64) vectors.
    dtype : {float32, float64}, default=float32

    Returns
    -------
    x : ndarray, shape (1797, 64) or (1797, 1, 8, 8)
    y : ndarray of int64, shape (1797,)

    Raises
    ------
    ImportError
        scikit-learn is not installed (``pip install "sparsenet[data]"``).

    Examples
    --------
    >>> x, y = load_digits()
    >>> x.shape, y.shape, float(x.max())
    ((1797, 64), (1797,), 1.0)
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:
        raise ImportError(
            "the bundled digits data set comes with scikit-learn; install it with "
            "pip install 'sparsenet[data]' (or pip install scikit-learn), or use load_mnist(path)"
        ) from err
    bunch = _sk_load_digits()
    x = (bunch.data / 16.0).astype(float_dtype(dtype))
    if images:
        x = x.reshape(-1, 1, 8, 8)
    return x, bunch.target.astype(np.int64)


def _read_bytes(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file not found: {path!r}")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            raise ValueError(f"{path!r} is a corrupt or truncated gzip file ({err}); download it again") from err
    return raw


def load_idx(path):
    """Read one IDX file (the MNIST / Fashion-MNIST format), raw or gzip-compressed.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    array : ndarray
        With the file's shape and element type (native byte order).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not an IDX file (bad magic number), unknown element type, or a size that does not match
        the header (truncated or trailing data).
    """
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(
            f"{os.fspath(path)!r} is not an IDX file: expected a magic number 0x0000TTDD (TT an element type "
            f"in {sorted(hex(t) for t in _IDX_TYPES)}); got {raw[:4].hex() or 'an empty file'}. Pass the MNIST "
            "files themselves (e.g. train-images-idx3-ubyte.gz)"
        )
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{os.fspath(path)!r} is truncated: the header needs {header} bytes, the file has {len(raw)}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "followed by unexpected trailing data"
        raise ValueError(
            f"{os.fspath(path)!r} is {what}: the header announces shape {shape} ({expected} bytes), the file "
            f"holds {len(raw)} bytes; download it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find(directory, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"no {stem}[.gz] in {directory!r}; download MNIST or Fashion-MNIST (same file names) into that folder"
    )


def load_mnist(path, kind="train", *, images=False, dtype=np.float32):
    """MNIST or Fashion-MNIST from a folder of IDX files, pixels scaled to [0, 1].

    Parameters
    ----------
    path : str or os.PathLike
        Folder holding ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
        ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``.
    kind : {"train", "test"}, default="train"
    images : bool, default=False
        (n, 1, 28, 28) instead of (n, 784).
    dtype : {float32, float64}, default=float32

    Returns
    -------
    x : ndarray, y : ndarray of int64

    Raises
    ------
    FileNotFoundError, ValueError
        Missing, wrong or corrupt files, or images and labels of different counts.
    """
    if kind not in _MNIST_FILES:
        raise ValueError(f"kind must be 'train' or 'test'; got {kind!r}")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"MNIST folder not found: {os.fspath(path)!r}")
    img_stem, lbl_stem = _MNIST_FILES[kind]
    x = load_idx(_find(path, img_stem))
    y = load_idx(_find(path, lbl_stem))
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"expected images (n, rows, cols) and labels (n,) of equal n in {os.fspath(path)!r}; got "
            f"{x.shape} and {y.shape} (are the image and label files swapped or from different sets?)"
        )
    x = x.astype(float_dtype(dtype)) / 255.0
    x = x.reshape(x.shape[0], 1, x.shape[1], x.shape[2]) if images else x.reshape(x.shape[0], -1)
    return x, y.astype(np.int64)


def make_classification(n_samples, n_features, n_classes=10, *, rng=None, dtype=np.float32):
    """Synthetic data: Gaussian class centroids plus noise (for benchmarks and smoke tests).

    Examples
    --------
    >>> x, y = make_classification(100, 784, rng=0)
    >>> x.shape, x.dtype, y.shape
    ((100, 784), dtype('float32'), (100,))
    """
    rng = check_random_state(rng)
    y = rng.integers(0, n_classes, n_samples)
    centers = rng.standard_normal((n_classes, n_features))
    x = centers[y] + rng.standard_normal((n_samples, n_features))
    return x.astype(float_dtype(dtype)), y.astype(np.int64)


def _check_xy(x, y):
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of samples (first axis); got {x.shape} and {y.shape}")
    return x, y


def train_test_split(x, y, test_size=0.25, *, rng=None, stratify=False):
    """Random split into ``x_train, x_test, y_train, y_test`` (scikit-learn's order).

    Parameters
    ----------
    test_size : float in (0, 1) or int
        Fraction or number of test samples.
    rng : None, int or numpy.random.Generator
    stratify : bool, default=False
        Keep the class proportions of ``y`` in both parts.

    Examples
    --------
    >>> import numpy as np
    >>> xtr, xte, ytr, yte = train_test_split(np.zeros((10, 2)), np.arange(10), test_size=0.3, rng=0)
    >>> xtr.shape, xte.shape
    ((7, 2), (3, 2))
    """
    x, y = _check_xy(x, y)
    n = x.shape[0]
    if isinstance(test_size, numbers.Integral):
        n_test = int(test_size)
    elif isinstance(test_size, numbers.Real) and 0 < test_size < 1:
        n_test = int(math.ceil(test_size * n))
    else:
        raise ValueError(f"test_size must be a fraction in (0, 1) or a sample count; got {test_size!r}")
    if not 0 < n_test < n:
        raise ValueError(f"test_size={test_size!r} leaves an empty train or test set for {n} samples")
    rng = check_random_state(rng)
    if stratify:
        test = []
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            test.append(idx[:int(round(len(idx) * n_test / n))])
        test_idx = np.sort(np.concatenate(test))
        mask = np.zeros(n, bool)
        mask[test_idx] = True
        train_idx = rng.permutation(np.flatnonzero(~mask))
        test_idx = rng.permutation(test_idx)
    else:
        perm = rng.permutation(n)
        test_idx, train_idx = perm[:n_test], perm[n_test:]
    return x[train_idx], x[test_idx], y[train_idx], y[test_idx]


class Standardizer:
    """Per-feature standardisation ``(x - mean) / std`` fitted on training data.

    Features with zero variance (e.g. always-blank pixels) are centred but not scaled.

    Examples
    --------
    >>> import numpy as np
    >>> s = Standardizer().fit(np.array([[0.0, 1.0], [2.0, 1.0]]))
    >>> s.transform(np.array([[1.0, 3.0]]))
    array([[0., 2.]])
    """

    def fit(self, x):
        x = np.asarray(x)
        self.mean_ = x.mean(axis=0)
        std = x.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        return self

    def transform(self, x):
        if not hasattr(self, "mean_"):
            raise RuntimeError("Standardizer.transform called before fit; call fit(x_train) first")
        x = np.asarray(x)
        return ((x - self.mean_) / self.scale_).astype(x.dtype, copy=False)

    def fit_transform(self, x):
        return self.fit(x).transform(x)


class DataLoader:
    """Mini-batches ``(x_batch, y_batch)`` over arrays, reshuffled every epoch.

    Parameters
    ----------
    x : ndarray, shape (n, ...)
    y : ndarray, shape (n, ...)
    batch_size : int, default=32
    shuffle : bool, default=True
        New permutation from ``rng`` at each iteration (epoch).
    rng : None, int or numpy.random.Generator
    drop_last : bool, default=False
        Skip the final incomplete batch.

    Examples
    --------
    >>> import numpy as np
    >>> loader = DataLoader(np.arange(10.0).reshape(5, 2), np.arange(5), batch_size=2, shuffle=False)
    >>> len(loader), [yb.tolist() for _, yb in loader]
    (3, [[0, 1], [2, 3], [4]])
    """

    def __init__(self, x, y, batch_size=32, shuffle=True, *, rng=None, drop_last=False):
        self.x, self.y = _check_xy(x, y)
        if not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        self.rng = check_random_state(rng)

    def __len__(self):
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_order(self):
        """The sample order of the next pass, drawn from ``rng`` as iterating draws it (None: the
        stored order, when not shuffling).  Batch i is ``order[i * batch_size:(i + 1) * batch_size]``."""
        return self.rng.permutation(self.x.shape[0]) if self.shuffle else None

    def batch_slices(self):
        """The slice of the epoch's order (or of the stored order) that makes each batch."""
        for i in range(len(self)):
            yield slice(i * self.batch_size, (i + 1) * self.batch_size)

    def __iter__(self):
        order = self.epoch_order()
        for sl in self.batch_slices():
            idx = sl if order is None else order[sl]
            yield self.x[idx], self.y[idx]

    @property
    def n_samples(self):
        return self.x.shape[0]
