"""Topology kernels against kernels/reference.py, and their structural invariants."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparsenet import CSRMatrix, kernels
from sparsenet.kernels import reference

from ._helpers import assert_canonical


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tile_rows", [1, 3, 64])
def test_topk_stream_equals_dense_reference(rng, dtype, tile_rows):
    w = CSRMatrix.random((17, 23), 0.2, rng=rng, dtype=dtype)
    g = rng.standard_normal((9, 17)).astype(dtype)
    x = rng.standard_normal((9, 23)).astype(dtype)
    rows, cols, scores = kernels.topk_abs_grad(w.indptr, w.indices, g, x, 40, tile_rows=tile_rows)
    r_ref, c_ref, s_ref = reference.topk_abs_grad(w.indptr, w.indices, g, x, 40)
    np.testing.assert_array_equal(rows, r_ref)
    np.testing.assert_array_equal(cols, c_ref)
    np.testing.assert_allclose(scores, s_ref, rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert scores.dtype == dtype


def test_topk_ties_go_to_smallest_index():
    w = CSRMatrix.from_dense(np.eye(4))
    g = np.ones((1, 4))
    x = np.ones((1, 4))  # every free score is 1: the first 5 free flat positions win
    rows, cols, _ = kernels.topk_abs_grad(w.indptr, w.indices, g, x, 5, tile_rows=1)
    r_ref, c_ref, _ = reference.topk_abs_grad(w.indptr, w.indices, g, x, 5)
    np.testing.assert_array_equal(rows, r_ref)
    np.testing.assert_array_equal(cols, c_ref)
    assert list(zip(rows, cols)) == [(0, 1), (0, 2), (0, 3), (1, 0), (1, 2)]


def test_topk_excludes_pattern_and_caps_k(rng):
    w = CSRMatrix.random((5, 6), 0.8, rng=rng)
    g, x = rng.standard_normal((3, 5)), rng.standard_normal((3, 6))
    rows, cols, _ = kernels.topk_abs_grad(w.indptr, w.indices, g, x, 100)
    assert rows.size == 30 - w.nnz
    assert (reference.csr_lookup(w.indptr, w.indices, rows, cols) == -1).all()


def test_topk_skips_nan(rng):
    w = CSRMatrix.random((4, 4), 0.0, rng=rng)
    x = np.ones((1, 4))
    g = np.ones((1, 4))
    x[0, 2] = np.nan
    rows, cols, _ = kernels.topk_abs_grad(w.indptr, w.indices, g, x, 16)
    assert rows.size == 12 and not (cols == 2).any()


@given(n_row=st.integers(1, 12), n_col=st.integers(1, 12), density=st.floats(0, 1), k=st.integers(0, 50),
       tile=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_topk_property(n_row, n_col, density, k, tile, seed):
    rng = np.random.default_rng(seed)
    w = CSRMatrix.random((n_row, n_col), density, rng=rng, dtype=np.float64)
    # few distinct values: many ties
    g = rng.integers(-2, 3, (3, n_row)).astype(np.float64)
    x = rng.integers(-2, 3, (3, n_col)).astype(np.float64)
    got = kernels.topk_abs_grad(w.indptr, w.indices, g, x, k, tile_rows=tile)
    ref = reference.topk_abs_grad(w.indptr, w.indices, g, x, k)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)


def test_lookup_matches_reference(rng):
    w = CSRMatrix.random((20, 30), 0.3, rng=rng)
    rows, cols = rng.integers(0, 20, 200), rng.integers(0, 30, 200)
    np.testing.assert_array_equal(kernels.csr_lookup(w.indptr, w.indices, rows, cols),
                                  reference.csr_lookup(w.indptr, w.indices, rows, cols))


def test_filter_rows_cols_entries(rng):
    w = CSRMatrix.random((8, 9), 0.5, rng=rng, dtype=np.float64)
    dense = w.to_dense()
    keep = rng.random(w.nnz) < 0.7
    row_sel = np.array([0, 2, 3, 7])
    col_keep = np.ones(9, bool)
    col_keep[[1, 4]] = False
    col_map = np.where(col_keep, np.cumsum(col_keep) - 1, -1)
    indptr, indices, src = kernels.csr_filter(w.indptr, w.indices, 9, keep=keep, row_sel=row_sel, col_map=col_map)
    out = CSRMatrix(w.data[src], indices, indptr, (4, 7))
    assert_canonical(out)
    kept_dense = np.zeros_like(dense)
    rows = np.repeat(np.arange(8), np.diff(w.indptr))
    kept_dense[rows[keep], w.indices[keep]] = w.data[keep]
    np.testing.assert_array_equal(out.to_dense(), kept_dense[row_sel][:, col_keep])


def test_merge_is_union_and_positions(rng):
    full = CSRMatrix.random((10, 12), 0.5, rng=rng, dtype=np.float64)
    split = rng.random(full.nnz) < 0.5
    ia, ja, src_a = kernels.csr_filter(full.indptr, full.indices, 12, keep=split)
    ib, jb, src_b = kernels.csr_filter(full.indptr, full.indices, 12, keep=~split)
    indptr, indices, pos_a, pos_b = kernels.csr_merge(ia, ja, ib, jb)
    np.testing.assert_array_equal(indptr, full.indptr)
    np.testing.assert_array_equal(indices, full.indices)
    np.testing.assert_array_equal(pos_a, src_a)
    np.testing.assert_array_equal(pos_b, src_b)


@pytest.mark.parametrize("ord", [1, 2])
def test_row_norms(rng, ord):
    w = CSRMatrix.random((7, 5), 0.4, rng=rng, dtype=np.float64)
    np.testing.assert_allclose(kernels.csr_row_norms(w.indptr, w.data, ord),
                               np.linalg.norm(w.to_dense(), ord=ord, axis=1))


@pytest.mark.parametrize("k", [1, 30, 400])
def test_topk_first_tile_bound_with_ties(rng, k):
    """The first tile is pre-filtered by a partition bound; ties at the bound must survive."""
    w = CSRMatrix.random((40, 50), 0.3, rng=rng, dtype=np.float64)
    g = rng.integers(-1, 2, (2, 40)).astype(np.float64)
    x = rng.integers(-1, 2, (2, 50)).astype(np.float64)
    for tile in (10, 40):
        got = kernels.topk_abs_grad(w.indptr, w.indices, g, x, k, tile_rows=tile)
        ref = reference.topk_abs_grad(w.indptr, w.indices, g, x, k)
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)
