"""SET and RigL: nnz conserved, canonical patterns, state follows, determinism, RigL criterion."""
import numpy as np
import pytest

from sparsenet import nn, optim
from sparsenet.kernels import reference
from sparsenet.sparsity import RigL, SET, cosine_drop_fraction, rigl_update, set_update
from sparsenet.train import fit

from ._helpers import assert_canonical, blobs, entries, mlp, state_by_entry, train_steps


def test_set_update_invariants(rng):
    x, y = blobs(rng)
    model = mlp([10, 30, 3], density=0.2)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_steps(model, opt, x, y, 3)
    p = model[0].weight
    old = entries(p.csr)
    old_state = state_by_entry(p.csr, opt.state[p]["momentum_buffer"])
    nnz = p.csr.nnz
    n_drop = round(0.3 * nnz)
    threshold = np.sort(np.abs(p.data))[n_drop]
    info = set_update(p, 0.3, rng=rng, optimizer=opt)
    assert info == {"dropped": n_drop, "added": n_drop}
    assert_canonical(p.csr)
    assert p.csr.nnz == nnz
    new = entries(p.csr)
    state = state_by_entry(p.csr, opt.state[p]["momentum_buffer"])
    survivors = {k for k in new if k in old and new[k] == old[k] and abs(old[k]) >= threshold}
    assert len(survivors) == nnz - n_drop
    for k in new:
        if k in survivors:
            assert state[k] == old_state[k]
        else:
            assert state[k] == 0.0
            assert abs(new[k]) <= 1 / np.sqrt(nnz / 30)
    train_steps(model, opt, x, y, 2)  # the optimizer accepts the new pattern


def test_set_is_deterministic_for_a_seed():
    def run(seed):
        model = mlp([12, 20, 4], density=0.3)
        s = SET(model, zeta=0.4, rng=seed)
        for _ in range(3):
            s.step()
        return [(m.weight.csr.indices.copy(), m.weight.data.copy()) for m in s.layers]

    a, b, c = run(7), run(7), run(8)
    for (ia, da), (ib, db) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(da, db)
    assert any(not np.array_equal(ia, ic) for (ia, _), (ic, _) in zip(a, c))


def test_set_high_density_enumerates_free_positions(rng):
    layer = nn.SparseLinear(6, 5, density=0.9, rng=0)
    for _ in range(5):
        set_update(layer.weight, 0.5, rng=rng)
        assert_canonical(layer.weight.csr)
        assert layer.weight.csr.nnz == 27


def test_set_in_fit_per_epoch_and_per_step(rng):
    x, y = blobs(rng, n=80)
    x = x.astype(np.float32)
    for every in (None, 2):
        model = mlp([10, 24, 3], density=0.3, dtype=np.float32)
        nnz = [m.weight.csr.nnz for m in model if hasattr(m, "weight")]
        opt = optim.Adam(model.parameters(), lr=0.01)
        cb = SET(model, zeta=0.3, update_every=every, rng=0)
        fit(model, nn.CrossEntropyLoss(), opt, (x, y), epochs=3, batch_size=16, callbacks=[cb], progress=False, rng=0)
        assert cb.n_updates == (2 if every is None else 7)
        assert [m.weight.csr.nnz for m in cb.layers] == nnz


def test_rigl_grows_dense_gradient_topk_with_zero_weights(rng):
    layer = nn.SparseLinear(15, 12, density=0.2, rng=0, dtype=np.float64)
    x = rng.standard_normal((8, 15))
    g = rng.standard_normal((8, 12))
    csr = layer.weight.csr
    n = round(0.3 * csr.nnz)
    order = np.argsort(np.abs(csr.data), kind="stable")
    keep = np.ones(csr.nnz, bool)
    keep[order[:n]] = False
    rows = np.repeat(np.arange(12), np.diff(csr.indptr))
    kept = {(r, c): v for r, c, v in zip(rows[keep], csr.indices[keep], csr.data[keep])}
    k_indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=12))])
    r_ref, c_ref, _ = reference.topk_abs_grad(k_indptr, csr.indices[keep], g, x, n)
    rigl_update(layer, x, g, 0.3)
    new = entries(layer.weight.csr)
    assert_canonical(layer.weight.csr)
    assert len(new) == csr.nnz
    grown = set(new) - set(kept)
    for k, v in kept.items():
        assert new[k] == v
    # grown = the dense reference's top-k among free positions (tie-free random data), all zero
    assert grown <= set(zip(r_ref.tolist(), c_ref.tolist()))
    assert all(new[k] == 0 for k in grown)
    assert len(grown) + len(set(zip(r_ref.tolist(), c_ref.tolist())) & set(kept)) >= 0


def test_rigl_callback_keeps_nnz_and_state(rng):
    x, y = blobs(rng, n=64)
    x = x.astype(np.float32)
    model = mlp([10, 24, 3], density=0.3, dtype=np.float32)
    nnz = [m.weight.csr.nnz for m in model if hasattr(m, "weight")]
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rigl = RigL(model, drop_fraction=0.3, update_every=2, end_step=10)
    # validation passes (batch 64, no backward) must not be mistaken for the training batch
    fit(model, nn.CrossEntropyLoss(), opt, (x, y), (x, y), epochs=3, batch_size=16, callbacks=[rigl],
        progress=False, rng=0)
    assert [t for t, _ in rigl.history] == [2, 4, 6, 8]
    assert [m.weight.csr.nnz for m in rigl.layers] == nnz
    for m in rigl.layers:
        assert_canonical(m.weight.csr)
        assert opt.state[m.weight]["momentum_buffer"].shape == (m.weight.csr.nnz,)
        assert not {"forward", "backward", "backward_params"} & set(m.__dict__)  # recorder removed at the end


def test_rigl_update_from_batch_restores_grads(rng):
    x, y = blobs(rng)
    model = mlp([10, 16, 3], density=0.3)
    rigl = RigL(model, update_every=1)
    rigl.update_from_batch(x, y, nn.CrossEntropyLoss())
    assert all(p.grad is None for p in model.parameters())


def test_recorder_sees_the_first_layer_under_backward_params(rng):
    """A training step skips the first layer's input gradient (backward_params), yet RigL's
    recorder still gets that layer's output gradient."""
    from sparsenet.sparsity._topology import Recorder

    x, y = blobs(rng)
    model = mlp([10, 16, 3], density=0.3)
    layers = [m for m in model if hasattr(m, "weight")]
    rec = Recorder(layers)
    loss = nn.CrossEntropyLoss()
    loss(model(x), y)
    model.backward_params(loss.backward())
    for layer in layers:
        xr, g = rec.raw(layer)
        assert xr.shape[0] == g.shape[0] == x.shape[0] and g.shape[1] == layer.out_features
    rec.close()


def test_cosine_schedule():
    assert cosine_drop_fraction(0, 0.3, 100) == pytest.approx(0.3)
    assert cosine_drop_fraction(100, 0.3, 100) == 0.0
    assert cosine_drop_fraction(25, 0.3, 100) == pytest.approx(0.15 * (1 + np.cos(np.pi / 4)))


@pytest.mark.parametrize("zeta", [0.0, 1.0, -0.2, 1.3])
def test_bad_zeta(zeta):
    model = mlp([4, 4, 2])
    with pytest.raises(ValueError, match="zeta"):
        SET(model, zeta=zeta)
    with pytest.raises(ValueError, match="zeta"):
        set_update(model[0].weight, zeta)
    with pytest.raises(ValueError, match="drop_fraction"):
        RigL(model, drop_fraction=zeta)


def test_dense_layers_are_rejected():
    with pytest.raises(TypeError):
        SET(mlp([4, 4, 2], sparse=False))
    with pytest.raises(TypeError):
        set_update(nn.Linear(3, 3, rng=0).weight, 0.3)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(n_in=st.integers(1, 15), n_out=st.integers(1, 15), density=st.floats(0.05, 0.95),
       frac=st.floats(0.01, 0.99), seed=st.integers(0, 2**16), rigl=st.booleans())
def test_topology_update_property(n_in, n_out, density, frac, seed, rigl):
    rng = np.random.default_rng(seed)
    layer = nn.SparseLinear(n_in, n_out, density=density, rng=seed, dtype=np.float64)
    opt = optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    layer.weight.grad = rng.standard_normal(layer.weight.size)
    opt.step()
    old = entries(layer.weight.csr)
    old_state = state_by_entry(layer.weight.csr, opt.state[layer.weight]["momentum_buffer"])
    nnz = layer.weight.csr.nnz
    if rigl:
        rigl_update(layer, rng.standard_normal((4, n_in)), rng.standard_normal((4, n_out)), frac, opt)
    else:
        set_update(layer.weight, frac, rng=rng, optimizer=opt)
    csr = layer.weight.csr
    assert_canonical(csr)
    assert csr.nnz == nnz
    state = state_by_entry(csr, opt.state[layer.weight]["momentum_buffer"])
    for k, v in entries(csr).items():
        if k in old and old[k] == v and state[k] != 0:
            assert state[k] == old_state[k]
        if k not in old:
            assert state[k] == 0


def test_evolved_pattern_round_trips_through_state_dict(rng):
    model = mlp([12, 20, 4], density=0.3)
    s = SET(model, zeta=0.5, rng=0)
    s.step()
    fresh = mlp([12, 20, 4], density=0.3, rng=5)
    fresh.load_state_dict(model.state_dict())
    x = rng.standard_normal((3, 12))
    np.testing.assert_array_equal(fresh(x), model(x))


def test_rigl_fit_is_deterministic(rng):
    x, y = blobs(rng, n=48)
    x = x.astype(np.float32)

    def run():
        model = mlp([10, 16, 3], density=0.3, dtype=np.float32)
        fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.05, momentum=0.9), (x, y), epochs=2,
            batch_size=16, callbacks=[RigL(model, update_every=2)], progress=False, rng=0)
        return model

    a, b = run(), run()
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def _conv_weight_grad_reference(x, g, kernel, stride, padding):
    """dL/dW of a conv (groups=1, dilation 1) by explicit loops, as (O, C*KH*KW)."""
    n, c, h, w = x.shape
    o, oh, ow = g.shape[1:]
    kh, kw = kernel
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.zeros((o, c, kh, kw))
    for i in range(kh):
        for j in range(kw):
            win = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]  # (n, c, oh, ow)
            out[:, :, i, j] = np.einsum("nopq,ncpq->oc", g, win)
    return out.reshape(o, -1)


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0)])
def test_rigl_on_sparse_conv_uses_the_conv_weight_gradient(rng, stride, padding):
    conv = nn.SparseConv2d(3, 5, 3, stride=stride, padding=padding, density=0.2, rng=0, dtype=np.float64)
    x = rng.standard_normal((2, 3, 7, 7))
    oh = (7 + 2 * padding - 3) // stride + 1
    g = rng.standard_normal((2, 5, oh, oh))
    dense = np.abs(_conv_weight_grad_reference(x, g, (3, 3), stride, padding))
    csr = conv.weight.csr
    old = entries(csr)
    n = round(0.3 * csr.nnz)
    rigl_update(conv, x, g, 0.3)
    new = entries(conv.weight.csr)
    assert_canonical(conv.weight.csr)
    assert len(new) == len(old)
    grown = [k for k in new if k not in old or (new[k] == 0 and old[k] != 0)]
    kept = {k for k in new if k in old and new[k] == old[k]}
    assert len(kept) >= len(old) - n
    free = [dense[i, j] for i in range(5) for j in range(27) if (i, j) not in kept and (i, j) not in grown]
    assert min(dense[k] for k in grown if k not in kept) >= max(free) - 1e-12
