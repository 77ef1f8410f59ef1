"""Proximal regularisers: exact zeros, agreement with the proximal maps, validation."""
import numpy as np
import pytest

from sparsenet import nn, optim
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
    assert GroupLassoProx(model, 0.1, group="input").needs_host("on_batch_end", None)
    assert not HardThreshold(model, 0.1).needs_host("on_batch_end", None)
    assert HardThreshold(model, sparsity=0.5).needs_host("on_batch_end", None)

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
