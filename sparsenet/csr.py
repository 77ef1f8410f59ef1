"""CSRMatrix: the one sparse container of sparsenet."""
import numbers

import numpy as np
import scipy.sparse as sp

from . import kernels
from ._validation import check_random_state, float_dtype

_INT32_MAX = np.iinfo(np.int32).max


def _index_dtype(*sizes):
    """int32 unless some size does not fit in it."""
    return np.dtype(np.int32) if max(sizes, default=0) <= _INT32_MAX else np.dtype(np.int64)


def _check_shape(shape):
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise ValueError(f"shape must be a pair (n_rows, n_cols); got {shape!r}")
    if not all(isinstance(s, (numbers.Integral, np.integer)) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"shape entries must be integers; got {shape!r}")
    if shape[0] < 0 or shape[1] < 0:
        raise ValueError(f"shape entries must be non-negative; got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _as_index_array(a, name):
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        if arr.size == 0:  # np.asarray([]) is float64: accept an empty list as an empty index array
            return arr.astype(np.int64)
        raise TypeError(f"{name} must have an integer dtype; got {arr.dtype}")
    return arr


def _check_monotone(indptr):
    steps = np.diff(indptr)
    if steps.size and steps.min() < 0:
        row = int(np.argmax(steps < 0))
        raise ValueError(f"indptr must be non-decreasing; indptr[{row + 1}] < indptr[{row}]")


def _raise_for_fault(code, row, indices, indptr, n_col):
    """Raise for the out-of-range (1) and duplicate (3) codes of kernels.csr_row_faults."""
    if code == 1:
        cols = indices[indptr[row]:indptr[row + 1]]
        bad = cols[(cols < 0) | (cols >= n_col)][0]
        raise ValueError(f"column index {bad} in row {row} is out of range [0, {n_col})")
    if code == 3:
        raise ValueError(
            f"row {row} stores the same column twice; CSRMatrix keeps one value per entry "
            "(sum duplicates first, e.g. CSRMatrix.from_scipy(m) after m.sum_duplicates())"
        )


def _canonicalise(data, indices, indptr, n_col):
    """Full structure check; unsorted rows are sorted into new arrays.  Returns (data, indices, copied)."""
    indptr = np.ascontiguousarray(indptr)
    indices = np.ascontiguousarray(indices)
    code, row = kernels.csr_row_faults(n_col, indptr, indices)
    copied = False
    if code == 2:
        rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        order = np.lexsort((indices, rows))
        indices, data, copied = indices[order], data[order], True
        code, row = kernels.csr_row_faults(n_col, indptr, indices)
    _raise_for_fault(code, row, indices, indptr, n_col)
    return data, indices, copied


class CSRMatrix:
    """A sparse matrix in compressed sparse row format, always canonical.

    Canonical means: ``indptr[0] == 0``, ``indptr`` non-decreasing, ``indptr[-1] == nnz``,
    column indices in ``[0, n_cols)``, sorted and unique within each row.  Index arrays are
    int32 unless a size needs int64.  ``data`` is float32 or float64 and may be updated in
    place (optimizers do); the pattern (``indices``, ``indptr``) is treated as immutable.

    Parameters
    ----------
    data : array_like of float, shape (nnz,)
        Stored values, row by row.
    indices : array_like of int, shape (nnz,)
        Column index of each stored value.
    indptr : array_like of int, shape (n_rows + 1,)
        Row ``i`` holds ``data[indptr[i]:indptr[i + 1]]``.
    shape : tuple of int
        ``(n_rows, n_cols)``.
    copy : bool, default=False
        Copy the arrays even when no conversion is needed.
    check : bool, default=True
        Run the full O(nnz) structure check.  Rows with unsorted columns are sorted;
        duplicates and out-of-range indices raise.  Pass ``False`` only for arrays known
        to be canonical.

    Raises
    ------
    ValueError
        Inconsistent lengths, bad ``indptr``, column index out of range, duplicates.
    TypeError
        Non-float data, non-integer indices.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsenet import CSRMatrix
    >>> w = CSRMatrix([1.0, 2.0, 3.0], [0, 2, 1], [0, 2, 3], (2, 3))
    >>> w.nnz, w.shape, w.dtype
    (3, (2, 3), dtype('float64'))
    >>> w.to_dense()
    array([[1., 0., 2.],
           [0., 3., 0.]])
    """

    __array_priority__ = 20  # keep NumPy from densifying us in mixed expressions

    def __init__(self, data, indices, indptr, shape, *, copy=False, check=True):
        n_row, n_col = _check_shape(shape)
        data = np.asarray(data)
        if data.ndim != 1:
            raise ValueError(f"data must be 1-D; got shape {data.shape}")
        float_dtype(data.dtype, "data dtype")
        indices = _as_index_array(indices, "indices")
        indptr = _as_index_array(indptr, "indptr")
        nnz = data.shape[0]
        if indices.shape[0] != nnz:
            raise ValueError(f"indices and data must have the same length; got {indices.shape[0]} and {nnz}")
        if indptr.shape[0] != n_row + 1:
            raise ValueError(
                f"indptr must have length n_rows + 1 = {n_row + 1} for shape {(n_row, n_col)}; "
                f"got {indptr.shape[0]}"
            )
        if indptr[0] != 0:
            raise ValueError(f"indptr[0] must be 0; got {indptr[0]}")
        if indptr[-1] != nnz:
            raise ValueError(f"indptr[-1] must equal nnz = len(data) = {nnz}; got {indptr[-1]}")
        if check:
            _check_monotone(indptr)
            data, indices, copied = _canonicalise(data, indices, indptr, n_col)
            copy = copy and not copied
        idx_dtype = _index_dtype(n_row, n_col, nnz)
        as_owned = np.array if copy else np.ascontiguousarray
        self.data = as_owned(data)
        self.indices = as_owned(indices, dtype=idx_dtype)
        self.indptr = as_owned(indptr, dtype=idx_dtype)
        self._shape = (n_row, n_col)

    @classmethod
    def _from_canonical(cls, data, indices, indptr, shape):
        """Wrap arrays already known to be canonical with the right dtypes (no checks, no copy)."""
        self = cls.__new__(cls)
        self.data, self.indices, self.indptr, self._shape = data, indices, indptr, tuple(shape)
        return self

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dense(cls, a, *, dtype=None):
        """Store the nonzero entries of a 2-D array (NaN counts as nonzero).

        Parameters
        ----------
        a : array_like, shape (n_rows, n_cols)
        dtype : {float32, float64}, optional
            Defaults to ``a``'s dtype when it is float32/float64, else float64.

        Examples
        --------
        >>> CSRMatrix.from_dense([[0, 1.5], [2.0, 0]]).indices
        array([1, 0], dtype=int32)
        """
        a = np.asarray(a)
        if a.ndim != 2:
            raise ValueError(f"from_dense expects a 2-D array; got shape {a.shape}")
        if dtype is None:
            dtype = a.dtype if a.dtype.kind == "f" and a.dtype.itemsize >= 4 else np.float64
            if a.dtype.kind not in "biuf":
                raise TypeError(f"from_dense expects a real numeric array; got dtype {a.dtype}")
        dtype = float_dtype(dtype)
        rows, cols = np.nonzero(a)
        idx_dtype = _index_dtype(*a.shape, rows.size)
        indptr = np.zeros(a.shape[0] + 1, dtype=idx_dtype)
        np.cumsum(np.bincount(rows, minlength=a.shape[0]), out=indptr[1:])
        return cls._from_canonical(
            np.ascontiguousarray(a[rows, cols], dtype=dtype), cols.astype(idx_dtype), indptr, a.shape
        )

    @classmethod
    def from_scipy(cls, m, *, dtype=None):
        """Copy any scipy.sparse matrix or array; duplicates are summed (scipy's convention)."""
        if not sp.issparse(m):
            raise TypeError(f"from_scipy expects a scipy.sparse matrix or array; got {type(m).__name__}")
        m = sp.csr_array(m, copy=True)
        m.sum_duplicates()
        dtype = float_dtype(m.dtype if dtype is None and m.dtype.kind == "f" else dtype or np.float64)
        return cls(m.data.astype(dtype, copy=False), m.indices, m.indptr, m.shape)

    @classmethod
    def random(cls, shape, density, *, rng=None, dtype=np.float32, data_rvs=None):
        """A matrix with a uniformly random pattern of ``round(density * size)`` distinct entries.

        Parameters
        ----------
        shape : tuple of int
        density : float in [0, 1]
        rng : None, int or numpy.random.Generator
        dtype : {float32, float64}, default=float32
        data_rvs : callable, optional
            ``data_rvs(n)`` returns the n stored values; default uniform on [0, 1) like scipy.

        Examples
        --------
        >>> w = CSRMatrix.random((4, 5), 0.5, rng=0)
        >>> w.nnz, w.dtype
        (10, dtype('float32'))
        """
        n_row, n_col = _check_shape(shape)
        if not isinstance(density, numbers.Real) or not 0.0 <= density <= 1.0:
            raise ValueError(f"density must be a number in [0, 1]; got {density!r}")
        dtype = float_dtype(dtype)
        rng = check_random_state(rng)
        size = n_row * n_col
        nnz = int(round(density * size))
        flat = np.sort(rng.choice(size, nnz, replace=False)) if nnz else np.empty(0, np.int64)
        idx_dtype = _index_dtype(n_row, n_col, nnz)
        rows, cols = np.divmod(flat, max(n_col, 1))
        indptr = np.zeros(n_row + 1, dtype=idx_dtype)
        np.cumsum(np.bincount(rows, minlength=n_row), out=indptr[1:])
        if data_rvs is None:
            data = rng.random(nnz, dtype=dtype)
        else:
            data = np.asarray(data_rvs(nnz), dtype=dtype)
            if data.shape != (nnz,):
                raise ValueError(f"data_rvs({nnz}) must return shape ({nnz},); got {data.shape}")
        return cls._from_canonical(np.ascontiguousarray(data), cols.astype(idx_dtype), indptr, (n_row, n_col))

    # ------------------------------------------------------------------ properties
    @property
    def shape(self):
        """(n_rows, n_cols)."""
        return self._shape

    @property
    def ndim(self):
        return 2

    @property
    def dtype(self):
        """dtype of the stored values."""
        return self.data.dtype

    @property
    def nnz(self):
        """Number of stored entries (explicit zeros included)."""
        return int(self.indptr[-1])

    @property
    def density(self):
        """nnz / (n_rows * n_cols); 0.0 for an empty shape."""
        size = self._shape[0] * self._shape[1]
        return self.nnz / size if size else 0.0

    @property
    def T(self):
        """Alias of :meth:`transpose`."""
        return self.transpose()

    # ------------------------------------------------------------------ conversions
    def check(self, full=True):
        """Re-validate the structure, e.g. after editing the arrays by hand; raise ValueError if broken.

        ``full=False`` runs the O(1) checks only.  Unlike the constructor, unsorted rows raise.
        """
        self._require_host("check")
        CSRMatrix(self.data, self.indices, self.indptr, self._shape, check=False)
        if full:
            _check_monotone(self.indptr)
            code, row = kernels.csr_row_faults(self._shape[1], self.indptr, self.indices)
            if code == 2:
                raise ValueError(f"column indices of row {row} are not sorted")
            _raise_for_fault(code, row, self.indices, self.indptr, self._shape[1])
        return self

    @property
    def device(self):
        """``"cpu"`` when the arrays are NumPy arrays, ``"cuda"`` when they are CUDA device arrays."""
        from .kernels.device import device_of  # noqa: PLC0415  (imports no numba.cuda)

        return device_of(self.data)

    def to(self, device):
        """This matrix with its three arrays on ``device`` (``"cpu"`` or ``"cuda"``).

        Returns ``self`` when already there, else a new CSRMatrix sharing nothing with this one.
        On ``"cuda"`` the arrays are numba device arrays; use ``.to("cpu")`` before host-only
        methods (``to_dense``, ``to_scipy``, ``check``).

        Raises
        ------
        ValueError
            ``device`` is not one of "cpu", "cuda".
        RuntimeError
            ``"cuda"`` requested but numba-cuda or a GPU is missing (the reason is given).
        """
        from .kernels.device import DEVICES, cuda_available  # noqa: PLC0415

        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}; got {device!r}")
        if device == self.device:
            return self
        if device == "cuda":
            ok, reason = cuda_available()
            if not ok:
                raise RuntimeError(f"cannot move a CSRMatrix to 'cuda': {reason}")
        from .kernels import cuda as _cuda_kernels  # noqa: PLC0415  (numba.cuda on first call only)

        move = _cuda_kernels.to_device if device == "cuda" else _cuda_kernels.to_host
        return CSRMatrix._from_canonical(move(self.data), move(self.indices), move(self.indptr), self._shape)

    def _require_host(self, method):
        """Host-only methods refuse device arrays rather than copying them to the host silently."""
        if self.device != "cpu":
            raise NotImplementedError(f"CSRMatrix.{method} needs host arrays; call .to('cpu') first")

    def copy(self):
        """Deep copy, on the same device."""
        return CSRMatrix._from_canonical(kernels.copy(self.data), kernels.copy(self.indices),
                                         kernels.copy(self.indptr), self._shape)

    def astype(self, dtype):
        """Copy with ``data`` cast to float32 or float64."""
        self._require_host("astype")
        dtype = float_dtype(dtype)
        return CSRMatrix._from_canonical(
            self.data.astype(dtype), self.indices.copy(), self.indptr.copy(), self._shape
        )

    def transpose(self):
        """The (n_cols, n_rows) transpose, canonical, as a new matrix.  O(nnz + n_rows + n_cols)."""
        self._require_host("transpose")
        indptr_t, indices_t, perm = kernels.csr_transpose(self._shape[1], self.indptr, self.indices)
        return CSRMatrix._from_canonical(self.data[perm], indices_t, indptr_t, self._shape[::-1])

    def to_scipy(self, *, copy=True):
        """As a ``scipy.sparse.csr_array`` (sharing memory with this matrix when ``copy=False``)."""
        self._require_host("to_scipy")
        arrays = (self.data, self.indices, self.indptr)
        if copy:
            arrays = tuple(a.copy() for a in arrays)
        m = sp.csr_array(arrays, shape=self._shape, copy=False)
        m.has_canonical_format = True
        return m

    def to_dense(self):
        """As a dense (n_rows, n_cols) ndarray of the same dtype."""
        self._require_host("to_dense")
        return self.to_scipy(copy=False).toarray()

    def __repr__(self):
        return (
            f"CSRMatrix(shape={self._shape}, nnz={self.nnz}, density={self.density:.4g}, "
            f"dtype={self.dtype}, index_dtype={self.indices.dtype})"
        )
