"""CSRMatrix: construction, validation, conversions, canonical-form invariants."""
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from sparsenet import CSRMatrix


def assert_canonical(m):
    assert m.indptr[0] == 0 and m.indptr[-1] == m.nnz == len(m.indices) == len(m.data)
    assert np.all(np.diff(m.indptr) >= 0)
    assert m.indices.dtype == m.indptr.dtype == np.int32
    for i in range(m.shape[0]):
        row = m.indices[m.indptr[i]:m.indptr[i + 1]]
        assert np.all(np.diff(row) > 0), f"row {i} not strictly increasing: {row}"
        assert row.size == 0 or (row[0] >= 0 and row[-1] < m.shape[1])
    for a in (m.data, m.indices, m.indptr):
        assert a.flags.c_contiguous and a.flags.writeable


def test_constructor_scipy_order_and_properties():
    m = CSRMatrix(np.array([1.0, 2.0, 3.0]), [0, 2, 1], [0, 2, 3], (2, 3))
    assert m.shape == (2, 3) and m.nnz == 3 and m.dtype == np.float64 and m.ndim == 2
    assert m.density == pytest.approx(0.5)
    np.testing.assert_array_equal(m.to_dense(), [[1, 0, 2], [0, 3, 0]])
    assert_canonical(m)
    assert "nnz=3" in repr(m)


def test_unsorted_rows_are_sorted_without_touching_the_callers_arrays():
    data, indices = np.array([1.0, 2.0, 3.0, 4.0]), np.array([3, 0, 2, 1])
    m = CSRMatrix(data, indices, [0, 2, 4], (2, 4))
    assert_canonical(m)
    np.testing.assert_array_equal(m.to_dense(), [[2, 0, 0, 1], [0, 4, 3, 0]])
    np.testing.assert_array_equal(indices, [3, 0, 2, 1])


def test_copy_flag_and_default_sharing():
    data = np.array([1.0, 2.0])
    shared = CSRMatrix(data, np.array([0, 1], np.int32), np.array([0, 1, 2], np.int32), (2, 2))
    owned = CSRMatrix(data, np.array([0, 1], np.int32), np.array([0, 1, 2], np.int32), (2, 2), copy=True)
    assert np.shares_memory(shared.data, data) and not np.shares_memory(owned.data, data)


@pytest.mark.parametrize(
    "args, error, match",
    [
        (([1.0], [0], [0, 1], (1, 2, 3)), ValueError, "shape must be a pair"),
        (([1.0], [0], [0, 1], (1.5, 2)), TypeError, "integers"),
        (([1.0], [0], [0, 1], (-1, 2)), ValueError, "non-negative"),
        (([[1.0]], [0], [0, 1], (1, 2)), ValueError, "data must be 1-D"),
        ((np.array([1], np.int64), [0], [0, 1], (1, 2)), TypeError, "float32 or float64"),
        (([1.0], [0.0], [0, 1], (1, 2)), TypeError, "integer dtype"),
        (([1.0], [0, 1], [0, 1], (1, 2)), ValueError, "same length"),
        (([1.0], [0], [0, 1, 1], (1, 2)), ValueError, "length n_rows \\+ 1"),
        (([1.0], [0], [1, 1], (1, 2)), ValueError, "indptr\\[0\\] must be 0"),
        (([1.0, 2.0], [0, 1], [0, 1], (1, 2)), ValueError, "indptr\\[-1\\] must equal nnz"),
        (([1.0, 2.0], [0, 1], [0, 2, 1, 2], (3, 2)), ValueError, "non-decreasing"),
        (([1.0], [2], [0, 1], (1, 2)), ValueError, "out of range"),
        (([1.0], [-1], [0, 1], (1, 2)), ValueError, "out of range"),
        (([1.0, 2.0], [1, 1], [0, 2], (1, 2)), ValueError, "same column twice"),
        (([1.0, 2.0, 3.0], [1, 0, 1], [0, 3], (1, 2)), ValueError, "same column twice"),
    ],
)
def test_bad_structure_raises(args, error, match):
    with pytest.raises(error, match=match):
        CSRMatrix(*args)


def test_huge_index_is_range_checked_before_the_int32_cast():
    with pytest.raises(ValueError, match="out of range"):
        CSRMatrix([1.0], np.array([2**32], np.int64), [0, 1], (1, 3))


def test_check_method_catches_hand_edits():
    m = CSRMatrix.from_dense([[1.0, 2.0], [3.0, 0.0]])
    assert m.check() is m
    m.indices[:2] = [1, 0]
    with pytest.raises(ValueError, match="not sorted"):
        m.check()
    m.indices[:2] = [0, 5]
    with pytest.raises(ValueError, match="out of range"):
        m.check()
    m.check(full=False)  # O(1) checks do not look at the indices


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_round_trip(rng, dtype):
    dense = (rng.standard_normal((7, 5)) * (rng.random((7, 5)) < 0.4)).astype(dtype)
    m = CSRMatrix.from_dense(dense)
    assert m.dtype == dtype and m.nnz == np.count_nonzero(dense)
    assert_canonical(m)
    np.testing.assert_array_equal(m.to_dense(), dense)


def test_from_dense_dtype_rules():
    assert CSRMatrix.from_dense(np.eye(2, dtype=int)).dtype == np.float64
    assert CSRMatrix.from_dense(np.eye(2), dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="2-D"):
        CSRMatrix.from_dense(np.ones(3))
    with pytest.raises(TypeError, match="float32 or float64"):
        CSRMatrix.from_dense(np.eye(2), dtype=np.float16)
    with pytest.raises(TypeError, match="real numeric"):
        CSRMatrix.from_dense(np.array([["a"]]))


def test_scipy_round_trip_sums_duplicates(rng):
    coo = sp.coo_array((np.array([1.0, 2.0, 5.0]), (np.array([0, 0, 1]), np.array([2, 2, 0]))), shape=(2, 3))
    m = CSRMatrix.from_scipy(coo)
    assert_canonical(m)
    np.testing.assert_array_equal(m.to_dense(), [[0, 0, 3], [5, 0, 0]])
    s = m.to_scipy()
    assert isinstance(s, sp.csr_array) and not np.shares_memory(s.data, m.data)
    np.testing.assert_array_equal(s.toarray(), m.to_dense())
    assert np.shares_memory(m.to_scipy(copy=False).data, m.data)
    assert CSRMatrix.from_scipy(sp.random(4, 4, density=0.5, format="csc", rng=1, dtype=np.float32)).dtype == np.float32
    with pytest.raises(TypeError, match="scipy.sparse"):
        CSRMatrix.from_scipy(np.eye(2))


def test_random_pattern_is_uniform_and_seeded():
    a = CSRMatrix.random((50, 40), 0.1, rng=3)
    b = CSRMatrix.random((50, 40), 0.1, rng=np.random.default_rng(3))
    assert a.nnz == 200 and a.dtype == np.float32
    assert_canonical(a)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)
    # Uniform pattern: every cell is equally likely, so the row counts are not all equal.
    counts = np.zeros((50, 40))
    for seed in range(40):
        counts += CSRMatrix.random((50, 40), 0.1, rng=seed).to_dense() != 0
    assert counts.mean() == pytest.approx(4.0) and counts.std() > 0.5


@pytest.mark.parametrize("density", [0.0, 1.0])
def test_random_extremes(density):
    m = CSRMatrix.random((6, 3), density, rng=0, dtype=np.float64)
    assert m.nnz == int(18 * density) and m.dtype == np.float64
    assert_canonical(m)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5"])
def test_random_bad_density(bad):
    with pytest.raises(ValueError, match="density"):
        CSRMatrix.random((3, 3), bad)


def test_random_bad_rng_and_data_rvs():
    with pytest.raises(TypeError, match="rng"):
        CSRMatrix.random((3, 3), 0.5, rng="seed")
    with pytest.raises(ValueError, match="data_rvs"):
        CSRMatrix.random((3, 3), 0.5, rng=0, data_rvs=lambda n: np.ones(n + 1))


def test_empty_shapes():
    for shape in [(0, 0), (0, 5), (5, 0)]:
        m = CSRMatrix.random(shape, 0.5, rng=0)
        assert m.nnz == 0 and m.density == 0.0 and m.to_dense().shape == shape
        assert m.transpose().shape == shape[::-1]


@given(
    n_row=st.integers(0, 12),
    n_col=st.integers(0, 12),
    density=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_transpose_copy_astype_property(n_row, n_col, density, seed):
    m = CSRMatrix.random((n_row, n_col), density, rng=seed, dtype=np.float64)
    t = m.transpose()
    assert_canonical(t)
    np.testing.assert_array_equal(t.to_dense(), m.to_dense().T)
    np.testing.assert_array_equal(m.T.T.to_dense(), m.to_dense())
    c = m.copy()
    c.data += 1
    assert not np.shares_memory(c.data, m.data) or m.nnz == 0
    f = m.astype(np.float32)
    assert f.dtype == np.float32
    np.testing.assert_allclose(f.to_dense(), m.to_dense(), rtol=1e-6)
    # Rebuilding from the raw arrays with the full check accepts canonical input unchanged.
    again = CSRMatrix(m.data, m.indices, m.indptr, m.shape)
    np.testing.assert_array_equal(again.indices, m.indices)


@given(
    n_row=st.integers(1, 8),
    n_col=st.integers(1, 8),
    density=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_shuffled_rows_come_out_canonical(n_row, n_col, density, seed):
    rng = np.random.default_rng(seed)
    m = CSRMatrix.random((n_row, n_col), density, rng=rng, dtype=np.float64)
    order = np.concatenate([rng.permutation(np.arange(m.indptr[i], m.indptr[i + 1])) for i in range(n_row)] + [[]])
    order = order.astype(np.int64)
    shuffled = CSRMatrix(m.data[order], m.indices[order], m.indptr, m.shape)
    assert_canonical(shuffled)
    np.testing.assert_array_equal(shuffled.to_dense(), m.to_dense())


def test_int64_indices_are_narrowed_when_they_fit():
    m = CSRMatrix([1.0], np.array([1], np.int64), np.array([0, 1], np.int64), (1, 2))
    assert m.indices.dtype == m.indptr.dtype == np.int32
