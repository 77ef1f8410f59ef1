"""Magnitude, gradual, structured, SNIP pruning and lottery-ticket rewinding."""
import numpy as np
import pytest

from sparsenet import nn, optim
from sparsenet.sparsity import (GradualMagnitudePruner, LotteryTicket, MagnitudePruner, cubic_sparsity,
                                magnitude_prune, snip_prune, structured_prune, to_sparse)
from sparsenet.train import fit

from ._helpers import assert_canonical, blobs, entries, mlp, state_by_entry, train_steps


def _sparsity(layer):
    p = layer.weight
    size = np.prod(p.dense_shape)
    return 1 - np.count_nonzero(p.data) / size


def test_layerwise_magnitude_prune_sparse(rng):
    model = mlp([10, 20, 5], density=0.8)
    before = [entries(m.weight.csr) for m in model if hasattr(m, "weight")]
    magnitude_prune(model, 0.9)
    for m, old in zip([m for m in model if hasattr(m, "weight")], before):
        csr = m.weight.csr
        assert_canonical(csr)
        assert csr.nnz == round(0.1 * csr.shape[0] * csr.shape[1])
        kept = entries(csr)
        # the kept ones are the largest in magnitude and keep their values
        assert all(old[k] == v for k, v in kept.items())
        assert min(abs(v) for v in kept.values()) >= max(abs(v) for k, v in old.items() if k not in kept)


def test_global_scope_uses_one_threshold(rng):
    model = mlp([10, 20, 5], density=1.0, dtype=np.float64)
    model[2].weight.data *= 3  # the second layer is larger: global pruning keeps more of it
    before = np.concatenate([np.abs(model[0].weight.data), np.abs(model[2].weight.data)])
    magnitude_prune(model, 0.75, scope="global")
    kept = np.concatenate([np.abs(model[0].weight.data), np.abs(model[2].weight.data)])
    assert kept.size == 300 - 225
    np.testing.assert_array_equal(np.sort(kept), np.sort(before)[-75:])
    assert model[2].weight.csr.density > model[0].weight.csr.density


def test_dense_mask_keeps_pruned_weights_zero_then_converts(rng):
    x, y = blobs(rng)
    model = mlp([10, 16, 3], sparse=False)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, opt, x, y, 3)
    pruner = MagnitudePruner(model, opt, to_sparse_below=0.3).prune(0.5)
    zero = model[0].weight.data == 0
    assert zero.mean() == pytest.approx(0.5, abs=0.01)
    train_steps(model, opt, x, y, 5, pruner.apply_masks)
    assert (model[0].weight.data[zero] == 0).all()
    # pruning further converts to CSR and carries momentum over to the kept connections
    w_before = model[0].weight.data.copy()
    mom_before = opt.state[model[0].weight]["momentum_buffer"].copy()
    bias = model[0].bias
    pruner.prune(0.8)
    layer = model[0]
    assert isinstance(layer, nn.SparseLinear) and layer.bias is bias
    csr = layer.weight.csr
    assert_canonical(csr)
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    np.testing.assert_array_equal(csr.data, w_before[rows, csr.indices])
    np.testing.assert_array_equal(opt.state[layer.weight]["momentum_buffer"], mom_before[rows, csr.indices])
    assert any(p is layer.weight for p in opt.param_groups[0]["params"])
    train_steps(model, opt, x, y, 3, pruner.apply_masks)  # trains fine after conversion
    assert layer.weight.csr.nnz == csr.nnz


def test_pruned_sparse_weights_stay_pruned_and_state_follows(rng):
    x, y = blobs(rng)
    model = mlp([10, 16, 3], density=0.6)
    opt = optim.Adam(model.parameters(), lr=0.01)
    train_steps(model, opt, x, y, 3)
    p = model[0].weight
    old_state = state_by_entry(p.csr, opt.state[p]["exp_avg"])
    magnitude_prune(model, 0.8, opt)
    new_state = state_by_entry(p.csr, opt.state[p]["exp_avg"])
    assert all(old_state[k] == v for k, v in new_state.items())
    pattern = set(entries(p.csr))
    train_steps(model, opt, x, y, 5)
    assert set(entries(p.csr)) == pattern


def test_cubic_schedule_matches_formula():
    s_f, s_0, t0, n_dt = 0.9, 0.1, 10, 100
    for t in [10, 20, 60, 110, 500]:
        expected = s_f + (s_0 - s_f) * (1 - min(1, (t - t0) / n_dt)) ** 3
        got = cubic_sparsity(t, s_f, initial_sparsity=s_0, begin_step=t0, end_step=t0 + n_dt)
        assert got == pytest.approx(expected)
    assert cubic_sparsity(0, s_f, initial_sparsity=s_0, begin_step=t0, end_step=t0 + n_dt) == pytest.approx(s_0)


def test_gradual_pruning_in_fit(rng):
    x, y = blobs(rng, n=96)
    model = mlp([10, 32, 3], sparse=False, dtype=np.float32)
    x = x.astype(np.float32)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gmp = GradualMagnitudePruner(model, 0.9, end_step=12, frequency=3)
    hist = fit(model, nn.CrossEntropyLoss(), opt, (x, y), epochs=6, batch_size=16, callbacks=[gmp],
               progress=False, rng=0)
    assert [s for _, s in gmp.history] == sorted(s for _, s in gmp.history)
    assert gmp.history[-1] == (12, pytest.approx(0.9))
    for m in gmp.layers:
        assert _sparsity(m) >= 0.9 - 0.01
    assert hist["accuracy"][-1] > 0.5


def test_structured_prune_removes_units(rng):
    x, _ = blobs(rng)
    model = mlp([10, 12, 8, 3], density=0.7)
    removed = structured_prune(model, 0.5, norm=2)
    assert removed == [6, 4]
    assert (model[0].out_features, model[2].in_features, model[2].out_features, model[4].in_features) == (6, 6, 4, 4)
    for m in (model[0], model[2], model[4]):
        assert_canonical(m.weight.csr)
        assert m.weight.csr.shape == (m.out_features, m.in_features)
    assert model(x).shape == (x.shape[0], 3)


def test_structured_prune_conv_channels(rng):
    model = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1, rng=0, dtype=np.float64), nn.ReLU(),
                          nn.MaxPool2d(2), nn.SparseConv2d(6, 4, 3, density=0.5, rng=1, dtype=np.float64),
                          nn.Flatten(), nn.Linear(4 * 2 * 2, 3, rng=2, dtype=np.float64))
    structured_prune(model, 0.5)
    assert model[0].weight.data.shape == (3, 2, 3, 3) and model[3].weight.csr.shape == (2, 27)
    assert (model[0].out_channels, model[3].in_channels, model[3].out_channels) == (3, 3, 2)
    assert model[5].weight.data.shape == (3, 8) and model[5].in_features == 8
    assert model[0].bias.shape == (3,) and model[3].bias.shape == (2,)
    assert_canonical(model[3].weight.csr)


def test_snip_prunes_at_init_globally(rng):
    x, y = blobs(rng)
    model = mlp([10, 16, 3], sparse=False)
    snip_prune(model, nn.CrossEntropyLoss(), x, y, 0.9)
    total = sum(m.weight.csr.nnz for m in (model[0], model[2]))
    assert total == 208 - round(0.9 * 208)
    assert all(p.grad is None for p in model.parameters())


def test_lottery_ticket_rewind(rng):
    x, y = blobs(rng)
    model = mlp([10, 16, 3], sparse=False)
    ticket = LotteryTicket(model)
    w0 = model[0].weight.data.copy()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, opt, x, y, 5)
    magnitude_prune(model, 0.8, opt)
    ticket.rewind(opt)
    csr = model[0].weight.csr
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    np.testing.assert_array_equal(csr.data, w0[rows, csr.indices])
    assert model[0].weight not in opt.state


def test_to_sparse_keeps_function(rng):
    model = mlp([6, 5, 2], sparse=False)
    model[0].weight.data[model[0].weight.data < 0] = 0
    x = rng.standard_normal((4, 6))
    y0 = model(x)
    model = to_sparse(model, max_density=0.9)
    assert isinstance(model[0], nn.SparseLinear) and isinstance(model[2], nn.Linear)
    np.testing.assert_allclose(model(x), y0, rtol=1e-12)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), "0.5"])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_prune(nn.Linear(4, 4, rng=0), bad)


def test_bad_schedule():
    with pytest.raises(ValueError):
        GradualMagnitudePruner(nn.Linear(4, 4, rng=0), 0.5, begin_step=10, end_step=5)
    with pytest.raises(ValueError):
        GradualMagnitudePruner(nn.Linear(4, 4, rng=0), 0.5, end_step=5, frequency=0)
    with pytest.raises(ValueError):
        structured_prune(mlp([3, 4, 2]), 0.5, norm=3)


def test_gradual_structured_pruning_in_fit(rng):
    from sparsenet.sparsity import GradualStructuredPruner

    x, y = blobs(rng, n=64)
    x = x.astype(np.float32)
    model = mlp([10, 20, 12, 3], density=0.6, dtype=np.float32)
    opt = optim.Adam(model.parameters(), lr=0.01)
    gsp = GradualStructuredPruner(model, 0.5, end_step=8, frequency=2)
    fit(model, nn.CrossEntropyLoss(), opt, (x, y), epochs=3, batch_size=16, callbacks=[gsp], progress=False, rng=0)
    assert (model[0].out_features, model[2].in_features, model[2].out_features, model[4].in_features) == (10, 10, 6, 6)
    assert [s for _, s in gsp.history] == sorted(s for _, s in gsp.history)
    assert model(x).shape == (64, 3)
    with pytest.raises(ValueError):
        GradualStructuredPruner(model, 1.0, end_step=5)


def test_gpu_round_trips_only_where_the_pruners_need_the_host():
    """What each pruner tells the trainer (needs_host): per-step mask work stays on the weights'
    device, pruning steps go to the host, and hooks a subclass adds keep the default (host)."""
    from sparsenet.sparsity import GradualStructuredPruner

    model = nn.Sequential(nn.Linear(6, 5, rng=0), nn.ReLU(), nn.Linear(5, 2, rng=1))
    assert not MagnitudePruner(model).needs_host("on_batch_end", None)
    gmp = GradualMagnitudePruner(model, 0.5, begin_step=1, end_step=5, frequency=2)
    assert [gmp.needs_host("on_batch_end", None) for gmp.step_count in range(7)] == [
        False, True, False, True, False, True, False]
    assert not gmp.needs_host("on_train_begin", None)
    structured = GradualStructuredPruner(model, 0.5, begin_step=0, end_step=4, frequency=4)
    assert structured.needs_host("on_batch_end", None) and not structured.needs_host("on_train_begin", None)

    class EpochPruner(MagnitudePruner):
        def on_epoch_end(self, trainer, epoch, logs):
            self.prune(0.5)

    class NumpyMasks(GradualMagnitudePruner):
        def apply_masks(self):
            super().apply_masks()

    assert EpochPruner(model).needs_host("on_epoch_end", None)
    # its own apply_masks may be NumPy: every step goes to the host, pruning or not
    assert NumpyMasks(model, 0.5, begin_step=1, end_step=5).needs_host("on_batch_end", None)
