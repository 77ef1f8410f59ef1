"""Growth (function unchanged at the moment of growth), unit pruning, compaction."""
import numpy as np
import pytest

from sparsenet import nn, optim
from sparsenet.sparsity import (GrowingNetwork, L1Prox, add_units, compact, grow_connections, prune_units,
                                remove_zeros)
from sparsenet.train import fit

from ._helpers import assert_canonical, blobs, entries, mlp, state_by_entry, train_steps


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh, nn.Sigmoid])
def test_add_units_leaves_output_unchanged(rng, act):
    x, y = blobs(rng)
    model = nn.Sequential(nn.SparseLinear(10, 8, density=0.4, rng=0, dtype=np.float64), act(),
                          nn.SparseLinear(8, 3, density=0.5, rng=1, dtype=np.float64))
    opt = optim.Adam(model.parameters(), lr=0.01)
    train_steps(model, opt, x, y, 3)
    y0 = model(x)
    a, b = model[0], model[2]
    state_a = state_by_entry(a.weight.csr, opt.state[a.weight]["exp_avg"])
    add_units(a, b, 3, opt, fan_in=4, rng=0)
    # exact in exact arithmetic (the new terms are 0 * h); the kernels' SIMD summation order
    # changes with the row lengths, hence a few ulps
    np.testing.assert_allclose(model(x), y0, rtol=1e-13, atol=1e-15)
    assert (a.out_features, b.in_features) == (11, 11)
    assert a.weight.csr.shape == (11, 10) and b.weight.csr.shape == (3, 11) and a.bias.shape == (11,)
    for m in (a, b):
        assert_canonical(m.weight.csr)
    new_a = state_by_entry(a.weight.csr, opt.state[a.weight]["exp_avg"])
    assert all(new_a[k] == v for k, v in state_a.items())
    assert all(v == 0 for k, v in new_a.items() if k[0] >= 8)
    assert np.count_nonzero(opt.state[a.bias]["exp_avg"][8:]) == 0
    assert np.count_nonzero(np.diff(a.weight.csr.indptr)[8:] - 4) == 0
    assert all(v == 0 for k, v in entries(b.weight.csr).items() if k[1] >= 8)
    train_steps(model, opt, x, y, 3)  # new units train
    assert np.count_nonzero([v for k, v in entries(b.weight.csr).items() if k[1] >= 8]) > 0


def test_grow_connections_adds_gradient_topk(rng):
    layer = nn.SparseLinear(8, 6, density=0.25, rng=0, dtype=np.float64)
    x, g = rng.standard_normal((5, 8)), rng.standard_normal((5, 6))
    old = entries(layer.weight.csr)
    assert grow_connections(layer, 7, x, g) == 7
    new = entries(layer.weight.csr)
    assert len(new) == len(old) + 7 and all(new[k] == v for k, v in old.items())
    full = np.abs(g.T @ x)
    added = [k for k in new if k not in old]
    free = [full[i, j] for i in range(6) for j in range(8) if (i, j) not in old and (i, j) not in added]
    assert min(full[k] for k in added) >= max(free)


def test_prune_units_by_importance(rng):
    a = nn.SparseLinear(8, 6, density=0.5, rng=0)
    b = nn.SparseLinear(6, 3, density=0.5, rng=1)
    imp = np.bincount(np.repeat(np.arange(6), np.diff(a.weight.csr.indptr)), weights=np.abs(a.weight.data),
                      minlength=6)
    removed = prune_units(a, b, 2)
    np.testing.assert_array_equal(removed, np.sort(np.argsort(imp, kind="stable")[:2]))
    assert a.weight.csr.shape == (4, 8) and b.weight.csr.shape == (3, 4)


def test_growing_network_in_fit(rng):
    x, y = blobs(rng, n=90)
    x = x.astype(np.float32)
    model = nn.Sequential(nn.SparseLinear(10, 4, density=0.3, rng=0), nn.ReLU(),
                          nn.SparseLinear(4, 3, density=0.5, rng=1))
    opt = optim.Adam(model.parameters(), lr=0.01)
    grower = GrowingNetwork(model, monitor="loss", patience=1, min_delta=10.0, units=2, connections=0.2,
                            max_units=8, rng=0)
    fit(model, nn.CrossEntropyLoss(), opt, (x, y), (x[:50], y[:50]), epochs=4, batch_size=30, callbacks=[grower],
        progress=False, rng=0)
    units = [r["hidden_units"][0] for r in grower.log]
    assert units == sorted(units) and units[-1] == 8
    conns = [r["connections"] for r in grower.log]
    assert conns == sorted(conns) and conns[-1] > conns[0]
    assert_canonical(model[0].weight.csr)
    assert model(x).shape == (90, 3)


def test_growing_network_stops_at_target(rng):
    x, y = blobs(rng, n=60)
    model = mlp([10, 6, 3], density=0.5, dtype=np.float32)
    grower = GrowingNetwork(model, monitor="loss", target=1e9)
    hist = fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x.astype(np.float32), y),
               epochs=5, batch_size=30, callbacks=[grower], progress=False, rng=0)
    assert len(hist) == 1


def test_compact_removes_zeros_and_dead_units_keeping_function(rng):
    x, y = blobs(rng)
    model = mlp([10, 12, 8, 3], density=0.6)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_steps(model, opt, x, y, 3)
    a, b, c = model[0], model[2], model[4]
    rows_a = np.repeat(np.arange(12), np.diff(a.weight.csr.indptr))
    a.weight.data[np.isin(rows_a, [1, 5])] = 0       # units 1, 5: no input
    a.bias.data[1] = -1.0                             # relu(-1) = 0: removable
    a.bias.data[5] = 0.7                              # relu(0.7) folded into the next bias
    b.weight.data[np.isin(b.weight.csr.indices, [2])] = 0  # unit 2: no output
    a.weight.data[a.weight.csr.indptr[0]] = 0         # a plain zero in a live unit
    y0 = model(x)
    survivors = {k: v for k, v in state_by_entry(b.weight.csr, opt.state[b.weight]["momentum_buffer"]).items()
                 if k[1] not in (1, 2, 5)}
    report = compact(model, opt)
    assert report["units"] == [3, 0]
    np.testing.assert_allclose(model(x), y0, rtol=1e-10, atol=1e-12)
    assert a.out_features == 9 and b.in_features == 9 and b.weight.csr.shape == (b.out_features, 9)
    for m in (a, b, c):
        assert_canonical(m.weight.csr)
        assert np.count_nonzero(m.weight.data) == m.weight.csr.nnz
    remap = {0: 0, 3: 1, 4: 2, 6: 3, 7: 4, 8: 5, 9: 6, 10: 7, 11: 8}
    new = state_by_entry(b.weight.csr, opt.state[b.weight]["momentum_buffer"])
    for (r, col), v in survivors.items():
        if (r, remap[col]) in new:
            assert new[r, remap[col]] == v
    train_steps(model, opt, x, y, 2)


def test_compact_dense_linear(rng):
    model = mlp([6, 5, 2], sparse=False)
    model[0].weight.data[2] = 0
    model[0].bias.data[2] = 0.3
    x = rng.standard_normal((4, 6))
    y0 = model(x)
    compact(model)
    assert model[0].weight.data.shape == (4, 6) and model[2].weight.data.shape == (2, 4)
    np.testing.assert_allclose(model(x), y0, rtol=1e-12)


def test_l1_then_compact_shrinks(rng):
    x, y = blobs(rng)
    model = mlp([10, 16, 3], density=0.5)
    opt = optim.SGD(model.parameters(), lr=0.1)
    prox = L1Prox(model, lam=0.02, optimizer=opt)
    train_steps(model, opt, x, y, 20, prox.step)
    zeros = int(sum(np.sum(m.weight.data == 0) for m in prox.layers))
    nnz = sum(m.weight.csr.nnz for m in prox.layers)
    y0 = model(x)
    assert remove_zeros(model, opt) == zeros
    assert sum(m.weight.csr.nnz for m in prox.layers) == nnz - zeros
    np.testing.assert_allclose(model(x), y0)


def test_growing_connections_only_and_determinism(rng):
    x, y = blobs(rng, n=60)
    x = x.astype(np.float32)

    def run():
        model = nn.Sequential(nn.SparseLinear(10, 6, density=0.3, rng=0), nn.ReLU(),
                              nn.SparseLinear(6, 3, density=0.5, rng=1))
        grower = GrowingNetwork(model, monitor="loss", patience=1, min_delta=10.0, units=0, connections=0.5, rng=0)
        fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.01), (x, y), epochs=3,
            batch_size=20, callbacks=[grower], progress=False, rng=0)
        return model, grower

    m1, g1 = run()
    m2, _ = run()
    conns = [r["connections"] for r in g1.log]
    assert conns[1] > conns[0] and all(r["hidden_units"] == [6] for r in g1.log)
    for a, b in zip(m1.parameters(), m2.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
        if a.is_sparse:
            np.testing.assert_array_equal(a.csr.indices, b.csr.indices)
