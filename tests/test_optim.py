import numpy as np
import pytest

from sparsenet import CSRMatrix, nn, optim
from sparsenet.optim import lr_scheduler


def _net(seed=0):
    return nn.Sequential(nn.Linear(4, 6, rng=seed, dtype=np.float64), nn.Tanh(),
                         nn.SparseLinear(6, 3, density=0.5, rng=seed + 1, dtype=np.float64))


def _torch_net(model, torch):
    lin, sp = model[0], model[2]
    w1 = torch.tensor(lin.weight.data.copy(), requires_grad=True)
    b1 = torch.tensor(lin.bias.data.copy(), requires_grad=True)
    # The sparse layer as a dense weight restricted to the pattern: the gradient is masked, so the
    # trajectory of the stored entries is the same as ours.
    w2 = torch.tensor(sp.weight.csr.to_dense(), requires_grad=True)
    b2 = torch.tensor(sp.bias.data.copy(), requires_grad=True)
    mask = torch.tensor(sp.weight.csr.to_dense() != 0)
    return [w1, b1, w2, b2], mask


OPTIMIZERS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.02, betas=(0.85, 0.95), weight_decay=0.1)),
]


@pytest.mark.parametrize("name, kwargs", OPTIMIZERS)
def test_trajectory_matches_torch(name, kwargs, rng):
    torch = pytest.importorskip("torch")
    model = _net()
    tparams, mask = _torch_net(model, torch)
    opt = getattr(optim, name)(model.parameters(), **kwargs)
    topt = getattr(torch.optim, name)(tparams, foreach=False, **kwargs)
    crit = nn.CrossEntropyLoss()
    sp = model[2]
    for step in range(6):
        x = rng.standard_normal((8, 4))
        y = rng.integers(0, 3, 8)
        opt.zero_grad()
        crit(model(x), y)
        model.backward(crit.backward())
        opt.step()

        topt.zero_grad()
        w1, b1, w2, b2 = tparams
        h = torch.tanh(torch.tensor(x) @ w1.T + b1)
        out = h @ (w2 * mask).T + b2
        torch.nn.functional.cross_entropy(out, torch.tensor(y)).backward()
        topt.step()
        # keep the torch weight exactly sparse, as ours is by construction
        with torch.no_grad():
            w2.mul_(mask)

        np.testing.assert_allclose(model[0].weight.data, w1.detach().numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(model[0].bias.data, b1.detach().numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(sp.weight.csr.to_dense(), w2.detach().numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(sp.bias.data, b2.detach().numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("bad, match", [
    (dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (dict(lr=float("nan")), "Invalid learning rate"),
    (dict(lr=0.1, momentum=-0.5), "Invalid momentum value: -0.5"),
    (dict(lr=0.1, weight_decay=-1), "Invalid weight_decay value: -1"),
    (dict(lr=0.1, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
])
def test_sgd_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        optim.SGD([nn.Parameter(np.zeros(2))], **bad)


@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
@pytest.mark.parametrize("bad, match", [
    (dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (dict(eps=-1e-8), "Invalid epsilon value"),
    (dict(betas=(1.0, 0.9)), "Invalid beta parameter at index 0: 1.0"),
    (dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1"),
    (dict(weight_decay=-0.1), "Invalid weight_decay value"),
])
def test_adam_validation(cls, bad, match):
    with pytest.raises(ValueError, match=match):
        cls([nn.Parameter(np.zeros(2))], **bad)


def test_empty_and_wrong_params():
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="Parameter"):
        optim.SGD([np.zeros(3)], lr=0.1)
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)


def test_state_is_lazy_and_zero_grad():
    p, q = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))
    opt = optim.Adam([p, q])
    assert opt.state == {}
    p.grad = np.ones(3)
    opt.step()
    assert set(opt.state) == {p}  # q had no gradient: no state, no update
    np.testing.assert_array_equal(q.data, 1.0)
    assert opt.state[p]["exp_avg"].shape == (3,) and opt.state[p]["step"] == 1
    opt.zero_grad()
    assert p.grad is None


def test_param_groups_and_state_dict_round_trip(rng):
    model = _net()
    opt = optim.SGD([{"params": model[0].parameters(), "lr": 0.5}, {"params": model[2].parameters()}],
                    lr=0.1, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]
    crit = nn.CrossEntropyLoss()
    x, y = rng.standard_normal((5, 4)), rng.integers(0, 3, 5)
    crit(model(x), y)
    model.backward(crit.backward())
    opt.step()
    sd = opt.state_dict()
    assert sorted(sd["state"]) == [0, 1, 2, 3]
    clone = _net()
    clone.load_state_dict(model.state_dict())
    opt2 = optim.SGD([{"params": clone[0].parameters(), "lr": 0.0}, {"params": clone[2].parameters()}],
                     lr=0.0, momentum=0.9)
    opt2.load_state_dict(sd)
    assert [g["lr"] for g in opt2.param_groups] == [0.5, 0.1]
    for m, o in ((model, opt), (clone, opt2)):
        o.zero_grad()
        crit(m(x), y)
        m.backward(crit.backward())
        o.step()
    for a, b in zip(model.parameters(), clone.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_sparse_state_is_nnz_shaped_and_remap(rng):
    w = CSRMatrix.random((4, 5), 0.5, rng=rng, dtype=np.float64)
    p = nn.Parameter(w)
    opt = optim.Adam([p], lr=0.1)
    p.grad = rng.standard_normal(p.shape)
    opt.step()
    assert opt.state[p]["exp_avg"].shape == (w.nnz,)
    old_m = opt.state[p]["exp_avg"].copy()
    # prune two connections, grow three new ones
    dense = w.to_dense()
    rows, cols = np.nonzero(dense)
    dense[rows[:2], cols[:2]] = 0
    empty = np.argwhere(w.to_dense() == 0)[:3]
    dense[empty[:, 0], empty[:, 1]] = 1.0
    new = CSRMatrix.from_dense(dense)
    kept_old, kept_new = optim.match_patterns(w, new)
    assert len(kept_old) == w.nnz - 2
    p.set_csr(new)
    with pytest.raises(RuntimeError, match="remap"):
        p.grad = np.ones(p.shape)
        opt.step()
    opt.remap(p, kept_old, kept_new)
    m = opt.state[p]["exp_avg"]
    assert m.shape == (new.nnz,)
    np.testing.assert_array_equal(m[kept_new], old_m[kept_old])
    fresh = np.setdiff1d(np.arange(new.nnz), kept_new)
    assert len(fresh) == 3 and np.all(m[fresh] == 0) and np.all(opt.state[p]["exp_avg_sq"][fresh] == 0)
    assert opt.state[p]["step"] == 1
    opt.step()  # works again
    assert p.data is p.csr.data


def test_remap_validation():
    p = nn.Parameter(np.zeros(3))
    opt = optim.SGD([p], lr=0.1, momentum=0.5)
    with pytest.raises(ValueError, match="not managed"):
        opt.remap(nn.Parameter(np.zeros(3)), [0], [0])
    with pytest.raises(ValueError, match="equal length"):
        opt.remap(p, [0, 1], [0])
    with pytest.raises(ValueError, match="kept_new"):
        opt.remap(p, [0], [7])


def test_float32_parameters_stay_float32():
    p = nn.Parameter(np.ones(4, np.float32))
    for cls in (optim.SGD, optim.Adam, optim.AdamW):
        opt = cls([p], lr=0.1) if cls is not optim.SGD else cls([p], lr=0.1, momentum=0.9)
        p.grad = np.ones(4, np.float32)
        opt.step()
        assert p.data.dtype == np.float32
        assert all(v.dtype == np.float32 for v in opt.state[p].values() if isinstance(v, np.ndarray))


def test_schedulers_match_torch():
    torch = pytest.importorskip("torch")
    for make, tmake in [
        (lambda o: lr_scheduler.StepLR(o, 3, gamma=0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.5)),
        (lambda o: lr_scheduler.CosineAnnealingLR(o, 7, eta_min=0.01),
         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 7, eta_min=0.01)),
    ]:
        opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.3)
        topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
        s, ts = make(opt), tmake(topt)
        for _ in range(10):
            assert opt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
            topt.step()
            s.step(), ts.step()


def test_scheduler_validation():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.3)
    with pytest.raises(ValueError, match="step_size"):
        lr_scheduler.StepLR(opt, 0)
    with pytest.raises(ValueError, match="T_max"):
        lr_scheduler.CosineAnnealingLR(opt, -1)
    with pytest.raises(TypeError):
        lr_scheduler.StepLR(object(), 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nesterov, momentum, dampening", [(False, 0.0, 0.0), (False, 0.9, 0.1), (True, 0.9, 0.0)])
def test_sgd_kernel_against_numpy(dtype, nesterov, momentum, dampening, rng):
    from sparsenet import kernels

    p = rng.standard_normal((3, 4)).astype(dtype)
    buf = np.zeros_like(p)
    ref_p, ref_buf = p.astype(np.float64), None
    for step in range(3):
        g = rng.standard_normal((3, 4)).astype(dtype)
        kernels.sgd_update(p, g, buf if momentum else None, lr=0.1, momentum=momentum, dampening=dampening,
                           weight_decay=0.01, nesterov=nesterov, first=step == 0)
        d = g + 0.01 * ref_p
        if momentum:
            ref_buf = d if ref_buf is None else momentum * ref_buf + (1 - dampening) * d
            d = d + momentum * ref_buf if nesterov else ref_buf
        ref_p = ref_p - 0.1 * d
    assert p.dtype == dtype
    np.testing.assert_allclose(p, ref_p, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_kernel_against_numpy(dtype, decoupled, rng):
    from sparsenet import kernels

    p = rng.standard_normal(7).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    rp, rm, rv = p.astype(np.float64), np.zeros(7), np.zeros(7)
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.99, 1e-8, 0.1
    for step in range(1, 4):
        g = rng.standard_normal(7).astype(dtype)
        kernels.adam_update(p, g, m, v, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd, decoupled=decoupled,
                            step=step)
        gg = g.astype(np.float64)
        if decoupled:
            rp = rp * (1 - lr * wd)
        else:
            gg = gg + wd * rp
        rm = b1 * rm + (1 - b1) * gg
        rv = b2 * rv + (1 - b2) * gg * gg
        rp = rp - lr * (rm / (1 - b1 ** step)) / (np.sqrt(rv / (1 - b2 ** step)) + eps)
    assert p.dtype == m.dtype == v.dtype == dtype
    np.testing.assert_allclose(p, rp, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
