"""Proximal regularisers: exact zeros, agreement with the proximal maps, validation."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sparsenet import CSRMatrix, kernels, nn, optim
from sparsenet.kernels import reference
from sparsenet.sparsity import GroupLassoProx, HardThreshold, L1Prox, group_soft_threshold, soft_threshold

from ._helpers import blobs, mlp, train_steps


def test_soft_threshold_is_prox_of_l1(rng):
    w = rng.standard_normal(50)
    t = 0.4
    got = soft_threshold(w, t)
    # prox minimises 0.5 (z - w)^2 + t |z| per entry: compare with a brute-force grid
    grid = np.linspace(-4, 4, 80001)
    for wi, gi in zip(w[:5], got[:5]):
        assert abs(grid[np.argmin(0.5 * (grid - wi) ** 2 + t * np.abs(grid))] - gi) < 1e-3
    assert (got[np.abs(w) <= t] == 0).all()


def test_group_soft_threshold_zeros_small_groups(rng):
    w = np.concatenate([rng.standard_normal(4) * 0.01, rng.standard_normal(4) * 10])
    out = group_soft_threshold(w, np.repeat([0, 1], 4), 2, 0.5)
    assert (out[:4] == 0).all() and (out[4:] != 0).all()
    # the surviving group shrinks along its direction
    np.testing.assert_allclose(out[4:] / np.linalg.norm(out[4:]), w[4:] / np.linalg.norm(w[4:]))


@pytest.mark.parametrize("sparse", [True, False])
def test_l1_prox_produces_exact_zeros_in_training(rng, sparse):
    x, y = blobs(rng)
    model = mlp([10, 16, 3], density=0.5, sparse=sparse)
    opt = optim.SGD(model.parameters(), lr=0.1)
    prox = L1Prox(model, lam=0.05, optimizer=opt)
    train_steps(model, opt, x, y, 30, prox.step)
    zeros = sum(int(np.sum(m.weight.data == 0)) for m in prox.layers)
    assert zeros > 0
    # biases are not penalised
    assert all(np.count_nonzero(m.bias.data) == m.bias.size for m in prox.layers)


def test_group_lasso_kills_whole_rows_and_input_groups(rng):
    layer = nn.SparseLinear(12, 6, density=0.6, rng=0, dtype=np.float64)
    layer.weight.data[np.repeat(np.arange(6), np.diff(layer.weight.csr.indptr)) < 3] *= 1e-3
    GroupLassoProx(layer, lam=0.05, lr=1.0).step()
    rows = np.repeat(np.arange(6), np.diff(layer.weight.csr.indptr))
    assert (layer.weight.data[rows < 3] == 0).all()
    assert (layer.weight.data[rows >= 3] != 0).all()
    conv = nn.Conv2d(4, 3, 3, rng=0, dtype=np.float64)
    conv.weight.data[:, 1] *= 1e-4
    GroupLassoProx(conv, lam=0.01, group="input", lr=1.0).step()
    assert (conv.weight.data[:, 1] == 0).all() and (conv.weight.data[:, 0] != 0).all()


def test_hard_threshold(rng):
    layer = nn.SparseLinear(20, 10, density=0.5, rng=0)
    HardThreshold(layer, threshold=0.1).step()
    assert (np.abs(layer.weight.data[layer.weight.data != 0]) >= 0.1).all()
    dense = nn.Linear(10, 10, rng=0)
    HardThreshold(dense, sparsity=0.7).step()
    assert np.count_nonzero(dense.weight.data) == 30


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), shape=hnp.array_shapes(min_dims=1, max_dims=2, min_side=0,
       max_side=9), order=st.sampled_from("CF"), data=st.data())
def test_zero_smallest_matches_a_stable_sort(dtype, shape, order, data):
    """Exactly n entries zeroed, the smallest by magnitude, ties in memory order, NaN largest."""
    size = int(np.prod(shape))
    # few distinct values: many ties; -0.0, infinities and NaN among them
    pool = np.array([0.0, -0.0, 1.0, -1.0, 0.5, 2.5, -2.5, np.inf, -np.inf, np.nan, 1e-30], dtype)
    x = np.asarray(pool[data.draw(hnp.arrays(np.intp, size, elements=st.integers(0, pool.size - 1)))].reshape(shape),
                   order=order)
    n = data.draw(st.integers(-1, size + 1))
    expected = reference.zero_smallest(x, n)
    got = x.copy(order="K")
    assert kernels.zero_smallest_(got, n) is got
    np.testing.assert_array_equal(_bits(got), _bits(expected))
    item = np.dtype(dtype).itemsize
    changed = _bits(got).reshape(size, item) != _bits(x).reshape(size, item)
    assert changed.any(axis=1).sum() <= max(min(n, size), 0)


def test_zero_smallest_refuses_what_it_cannot_update_in_place():
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.zero_smallest_(np.arange(4), 2)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.zero_smallest_(np.ones((4, 4))[:, ::2], 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("taps", [1, 3])
def test_group_layouts_gather_the_groups_of_the_host_ids(rng, dtype, taps):
    """column_groups / dense_groups feed group_soft_threshold_ the same groups as the per-entry
    ids (input feature = column // taps, output unit = row), checked against the reference loop."""
    csr = CSRMatrix.random((5, 4 * taps), 0.5, rng=rng, dtype=dtype)
    csr.indptr[:] = csr.indptr.astype(np.int32)
    bounds, perm = kernels.column_groups(csr.shape[1], csr.indptr, csr.indices, taps)
    for g in range(4):
        stored = np.flatnonzero(csr.indices // taps == g)
        np.testing.assert_array_equal(np.sort(perm[bounds[g]:bounds[g + 1]]), stored)
    t = 0.3
    expected = reference.group_soft_threshold(csr.data, [np.flatnonzero(csr.indices // taps == g) for g in range(4)], t)
    got = csr.data.copy()
    kernels.group_soft_threshold_(got, bounds, t, perm=perm)
    np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype == np.float32 else 1e-12)

    w = rng.standard_normal((3, 2, taps)).astype(dtype)  # (n_out, channels, taps)
    for by_input, groups in ((True, [np.flatnonzero(np.arange(w.size) % (2 * taps) // taps == c) for c in range(2)]),
                             (False, [np.arange(k * 2 * taps, (k + 1) * 2 * taps) for k in range(3)])):
        bounds, perm = kernels.dense_groups(w, taps, by_input=by_input)
        got = kernels.group_soft_threshold_(w.copy(), bounds, t, perm=perm)
        np.testing.assert_allclose(got, reference.group_soft_threshold(w, groups, t),
                                   rtol=1e-5 if dtype == np.float32 else 1e-12)
    with pytest.raises(ValueError, match="divisor"):
        kernels.dense_groups(w, 2 * taps + 1, by_input=True)
    with pytest.raises(ValueError, match="perm must index"):
        kernels.group_soft_threshold_(w.copy(), np.array([0, 2]), t, perm=np.array([0, w.size]))


def test_group_lasso_selects_input_channels_of_a_sparse_conv(rng):
    conv = nn.SparseConv2d(3, 4, 3, density=0.7, rng=0, dtype=np.float64)
    csr = conv.weight.csr
    channel = csr.indices // 9
    conv.weight.data[channel == 2] *= 1e-4
    GroupLassoProx(conv, lam=0.01, group="input", lr=1.0).step()
    assert (conv.weight.data[channel == 2] == 0).all() and (conv.weight.data[channel != 2] != 0).all()


@pytest.mark.parametrize("make", [
    lambda m: L1Prox(m, lam=-1.0, lr=0.1),
    lambda m: GroupLassoProx(m, lam=-0.1, lr=0.1),
    lambda m: GroupLassoProx(m, lam=0.1, group="rows", lr=0.1),
    lambda m: HardThreshold(m, sparsity=1.0),
    lambda m: HardThreshold(m, sparsity=-0.1),
    lambda m: HardThreshold(m, threshold=-1.0),
    lambda m: HardThreshold(m),
    lambda m: L1Prox(m, lam=float("nan"), lr=0.1),
])
def test_bad_hyperparameters(make):
    with pytest.raises(ValueError):
        make(nn.Linear(3, 2, rng=0))


def test_prox_needs_a_step_size():
    with pytest.raises(ValueError, match="lr"):
        L1Prox(nn.Linear(3, 2, rng=0), lam=0.1).step()


def test_gpu_round_trips_only_where_the_regularisers_need_the_host():
    model = nn.Sequential(nn.Linear(4, 3, rng=0))
    assert not L1Prox(model, 0.1).needs_host("on_batch_end", None)
    assert not GroupLassoProx(model, 0.1).needs_host("on_batch_end", None)
    assert not GroupLassoProx(model, 0.1, group="input").needs_host("on_batch_end", None)
    assert not HardThreshold(model, 0.1).needs_host("on_batch_end", None)
    assert not HardThreshold(model, sparsity=0.5).needs_host("on_batch_end", None)

    class MyGroups(GroupLassoProx):  # the user's own (host) group layout
        @staticmethod
        def groups(layer, group):
            return np.array([0, layer.weight.data.size]), None

    assert MyGroups(model, 0.1).needs_host("on_batch_end", None)

    class MyL1(L1Prox):  # a NumPy step of the user's: the trainer must bring the model home
        def step(self):
            pass

    assert MyL1(model, 0.1).needs_host("on_batch_end", None)


def test_soft_threshold_out_of_another_dtype_computes_in_ws_dtype():
    w = np.array([1.0001, -3.0, 0.5])
    out = np.empty(3, np.float32)
    assert soft_threshold(w, 1.0, out=out) is out
    np.testing.assert_array_equal(out, np.float32(soft_threshold(w, 1.0)))
    assert np.ndim(soft_threshold(np.float64(2.0), 1.0)) == 0
