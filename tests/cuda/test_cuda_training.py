"""Whole models on the device: layers, Module.to, optimizers and fit(device="cuda").

Simulator or GPU only (see conftest.py).  Every layer with a CUDA path is run twice, on the
host and on a copy moved with ``.to("cuda")``, from the same input, and must agree in output,
input gradient and parameter gradients; training on the device must reproduce training on the
host (same data order, same dropout masks), float64 so that the comparison is tight.
"""
import copy

import numpy as np
import pytest

from sparsenet import CSRMatrix, io, nn, optim, sparsity, train
from sparsenet.kernels.device import is_device_array

pytestmark = pytest.mark.usefixtures("small_geometry")

cuda = pytest.importorskip("numba.cuda")
F64 = np.float64


def _dev(a):
    return cuda.to_device(np.asarray(a))


def _host(a):
    return a.copy_to_host() if is_device_array(a) else np.asarray(a)


def _bn_eval(cls, c, shape):
    """A BatchNorm with non-trivial running statistics, in eval mode."""
    layer = cls(c, dtype=F64)
    layer(np.random.default_rng(7).standard_normal(shape) * 3 + 1)
    return layer.eval()


def _layer_cases():
    return [
        ("linear", lambda: nn.Linear(5, 4, rng=0, dtype=F64), (3, 5)),
        ("sparse_linear", lambda: nn.SparseLinear(5, 4, density=0.5, rng=0, dtype=F64), (3, 5)),
        ("conv", lambda: nn.Conv2d(2, 3, 3, stride=(1, 2), padding=1, rng=0, dtype=F64), (2, 2, 5, 4)),
        ("conv_groups", lambda: nn.Conv2d(4, 2, (2, 3), dilation=(2, 1), groups=2, rng=0, dtype=F64), (1, 4, 5, 5)),
        ("sparse_conv", lambda: nn.SparseConv2d(2, 3, 3, padding=1, density=0.4, rng=0, dtype=F64), (2, 2, 4, 5)),
        ("local", lambda: nn.LocallyConnected2d(2, 3, (5, 4), (3, 2), stride=(1, 2), padding=(1, 0), rng=0,
                                                dtype=F64), (2, 2, 5, 4)),
        ("max_pool", lambda: nn.MaxPool2d(2, stride=1), (1, 2, 4, 3)),
        ("avg_pool", lambda: nn.AvgPool2d(3, stride=2, padding=1), (2, 1, 5, 5)),
        ("relu", lambda: nn.ReLU(), (4, 3)),
        ("sparse_linear_relu", lambda: nn.Sequential(nn.SparseLinear(5, 6, density=0.6, rng=0, dtype=F64), nn.ReLU(),
                                                     nn.SparseLinear(6, 3, density=0.6, rng=1, dtype=F64)), (4, 5)),
        ("leaky_relu", lambda: nn.LeakyReLU(0.2), (4, 3)),
        ("tanh", lambda: nn.Tanh(), (2, 3, 2)),
        ("sigmoid", lambda: nn.Sigmoid(), (4, 3)),
        ("dropout", lambda: nn.Dropout(0.4, rng=3), (6, 5)),
        ("flatten", lambda: nn.Flatten(), (2, 3, 2, 2)),
        ("softmax", lambda: nn.Softmax(), (4, 5)),
        ("softmax_3d", lambda: nn.Softmax(dim=2), (2, 3, 4)),
        ("batchnorm1d", lambda: nn.BatchNorm1d(3, dtype=F64), (5, 3)),
        ("batchnorm1d_3d", lambda: nn.BatchNorm1d(3, momentum=None, dtype=F64), (4, 3, 5)),
        ("batchnorm2d", lambda: nn.BatchNorm2d(2, dtype=F64), (3, 2, 4, 3)),
        ("batchnorm2d_no_affine", lambda: nn.BatchNorm2d(2, affine=False, dtype=F64), (3, 2, 2, 2)),
        ("batchnorm2d_eval", lambda: _bn_eval(nn.BatchNorm2d, 2, (3, 2, 4, 3)), (3, 2, 4, 3)),
        ("autoencoder_kl", lambda: sparsity.SparseAutoencoder(5, 3, beta=0.7, density=0.6, rng=0, dtype=F64), (4, 5)),
        ("autoencoder_l1", lambda: sparsity.SparseAutoencoder(5, 3, penalty="l1", beta=0.7, density=0.6, output="linear",
                                                              rng=0, dtype=F64), (4, 5)),
    ]


@pytest.mark.parametrize("name,make,shape", _layer_cases(), ids=[c[0] for c in _layer_cases()])
def test_layer_on_device_matches_host(rng, name, make, shape):
    host = make()
    dev = copy.deepcopy(host).to("cuda")
    assert dev.device == ("cuda" if host.parameters() else "cpu")
    x = rng.standard_normal(shape)
    y = host(x)
    yd = dev(_dev(x))
    assert is_device_array(yd) and tuple(yd.shape) == y.shape
    np.testing.assert_allclose(_host(yd), y, rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(y.shape)
    gx = host.backward(g)
    gd = _dev(g)
    gxd = dev.backward(gd)
    assert is_device_array(gxd)
    np.testing.assert_allclose(_host(gxd), gx, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(_host(gd), g)  # backward never mutates grad_out
    for p, q in zip(host.parameters(), dev.parameters()):
        assert q.device == "cuda" and is_device_array(q.grad)
        np.testing.assert_allclose(_host(q.grad), p.grad, rtol=1e-12, atol=1e-12)
    host_state, dev_state = host.state_dict(), dev.state_dict()  # BatchNorm's running statistics too
    for key, value in host_state.items():
        np.testing.assert_allclose(dev_state[key], value, rtol=1e-12, atol=1e-12, err_msg=key)


FUSED_MODELS = {  # name: (factory, input shape, output shape)
    "sparse_linear": (lambda dt: nn.Sequential(nn.SparseLinear(5, 7, density=0.6, rng=0, dtype=dt), nn.ReLU(),
                                               nn.SparseLinear(7, 3, density=0.6, rng=1, dtype=dt)), (9, 5), (9, 3)),
    "linear": (lambda dt: nn.Sequential(nn.Linear(5, 7, rng=0, dtype=dt), nn.ReLU(),
                                        nn.Linear(7, 3, rng=1, dtype=dt)), (9, 5), (9, 3)),
    # 9 channels: the GEMMs (ReLU store, gated grad-input) on a real GPU's tile too
    "conv": (lambda dt: nn.Sequential(nn.Conv2d(2, 9, 3, padding=1, rng=0, dtype=dt), nn.ReLU(),
                                      nn.Conv2d(9, 2, 2, rng=1, dtype=dt)), (2, 2, 4, 5), (2, 2, 3, 4)),
    "sparse_conv": (lambda dt: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=0, dtype=dt), nn.ReLU(),
                                             nn.SparseConv2d(3, 2, 2, density=0.6, rng=1, dtype=dt)),
                    (5, 2, 4, 5), (5, 2, 3, 4)),  # 5 samples: a partial group of SPARSE_NB = 4
    # depthwise: both layers on the direct kernels (the ReLU in place after the forward)
    "depthwise_conv": (lambda dt: nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, groups=2, rng=0, dtype=dt), nn.ReLU(),
                                                nn.Conv2d(2, 2, 2, groups=2, rng=1, dtype=dt)), (2, 2, 4, 5), (2, 2, 3, 4)),
}


@pytest.mark.parametrize("dtype", [np.float32, F64])
@pytest.mark.parametrize("name", list(FUSED_MODELS))
def test_fused_relu_on_device_is_the_unfused_pair(rng, monkeypatch, same_bits, name, dtype):
    """On the device the ReLU after a SparseLinear, Linear or Conv2d is applied by the product
    kernel as it stores: no activation launch, and bit for bit the unfused pair's outputs and
    gradients."""
    from sparsenet.kernels import cuda as kc

    make, in_shape, out_shape = FUSED_MODELS[name]

    def model():
        return make(dtype).to("cuda")

    fused, plain = model(), model()
    for layer in plain:
        object.__setattr__(layer, "forward", layer.forward)  # replaced forwards and backwards: no fusion
        object.__setattr__(layer, "backward", layer.backward)
    x = _dev(rng.standard_normal(in_shape).astype(dtype))
    g = _dev(rng.standard_normal(out_shape).astype(dtype))
    assert (_host(plain[1](plain[0](x))) == 0).any()  # the hidden ReLU has work to do
    y_plain = _host(plain(x))
    gx_plain = _host(plain.backward(g))
    launches = []
    activation, activation_backward = kc.activation, kc.activation_backward
    monkeypatch.setattr(kc, "activation", lambda *a: launches.append(a[0]) or activation(*a))
    y = _host(fused(x))
    assert launches == []
    np.testing.assert_array_equal(y, y_plain)
    monkeypatch.setattr(kc, "activation_backward", lambda *a: launches.append(a[0]) or activation_backward(*a))
    gx = _host(fused.backward(g))
    assert launches == []  # the hidden ReLU's backward came from the next layer's input gradient
    # (a narrow conv's direct forward applies its ReLU in place with the activation kernel
    # itself, no kc.activation call, no second array: bitwise the same, checked above)
    same_bits(gx, gx_plain)
    for p, q in zip(plain.parameters(), fused.parameters()):
        same_bits(_host(q.grad), _host(p.grad))


def test_gradients_accumulate_on_device(rng):
    layer = nn.SparseLinear(4, 3, density=0.6, rng=0, dtype=F64)
    dev = copy.deepcopy(layer).to("cuda")
    x, g = rng.standard_normal((2, 4)), rng.standard_normal((2, 3))
    for m, xin, gin in ((layer, x, g), (dev, _dev(x), _dev(g))):
        for _ in range(2):
            m(xin)
            m.backward(gin)
    np.testing.assert_allclose(_host(dev.weight.grad), layer.weight.grad, rtol=1e-12)
    dev.zero_grad(set_to_none=False)
    assert is_device_array(dev.bias.grad) and not _host(dev.bias.grad).any()
    with pytest.raises(ValueError, match="on cpu"):
        dev.bias.accumulate_grad(np.ones(3))


def test_losses_on_device_match_host(rng):
    logits = rng.standard_normal((5, 3))
    target = rng.integers(0, 3, 5)
    for crit, tgt in ((nn.CrossEntropyLoss(), target), (nn.MSELoss(), rng.standard_normal((5, 3)))):
        host_loss = crit(logits, tgt)
        host_grad = crit.backward(2.0)
        dev_loss = crit(_dev(logits), _dev(tgt))
        np.testing.assert_allclose(_host(dev_loss)[0], host_loss, rtol=1e-12)
        np.testing.assert_allclose(_host(crit.backward(2.0)), host_grad, rtol=1e-12)
    with pytest.raises(ValueError, match="logits on cuda, target on cpu"):
        nn.CrossEntropyLoss()(_dev(logits), target)


class _HostOnly(nn.Module):
    """A user layer written with NumPy operations: it cannot run on device arrays."""

    def forward(self, x):
        return x * 2

    def backward(self, grad_out):
        return grad_out * 2


def test_module_to_refuses_layers_without_cuda_and_moves_nothing():
    model = nn.Sequential(nn.Linear(3, 3, rng=0), _HostOnly(), nn.BatchNorm1d(3))
    with pytest.raises(NotImplementedError, match="_HostOnly has no CUDA implementation"):
        model.to("cuda")
    assert model.device == "cpu" and isinstance(model[0].weight.data, np.ndarray)
    assert isinstance(model[2].running_mean, np.ndarray)
    with pytest.raises(NotImplementedError, match="last axis only"):
        nn.Softmax(dim=0)(_dev(np.ones((2, 3))))
    with pytest.raises(ValueError, match="device must be one of"):
        model.to("cuda:0")


def test_state_round_trips_between_devices(rng, tmp_path):
    model = nn.Sequential(nn.SparseLinear(6, 4, density=0.5, rng=0, dtype=F64), nn.ReLU(),
                          nn.Linear(4, 2, rng=1, dtype=F64))
    state = model.state_dict()
    dev = copy.deepcopy(model).to("cuda")
    dstate = dev.state_dict()
    assert set(dstate) == set(state)
    for k in state:
        assert isinstance(dstate[k], np.ndarray)
        np.testing.assert_array_equal(dstate[k], state[k])
    other = nn.Sequential(nn.SparseLinear(6, 4, density=0.9, rng=5, dtype=F64), nn.ReLU(),
                          nn.Linear(4, 2, rng=6, dtype=F64)).to("cuda")
    other.load_state_dict(state)  # a new pattern and values, loaded onto the device
    assert other[0].weight.csr.device == "cuda"
    x = rng.standard_normal((3, 6))
    np.testing.assert_allclose(_host(other(_dev(x))), model(x), rtol=1e-12)
    back = copy.deepcopy(model)
    back.load_state_dict(other.to("cpu").state_dict())
    assert other.device == "cpu"
    np.testing.assert_allclose(back(x), model(x), rtol=1e-12)


@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda ps: optim.Adam(ps, lr=0.01),
    lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1),
], ids=["sgd", "adam", "adamw"])
def test_optimizer_state_lives_with_its_parameters(rng, make_opt):
    host = nn.SparseLinear(5, 4, density=0.5, rng=0, dtype=F64)
    dev = copy.deepcopy(host).to("cuda")
    opts = make_opt(host.parameters()), make_opt(dev.parameters())
    x, g = rng.standard_normal((3, 5)), rng.standard_normal((3, 4))
    for _ in range(3):
        for m, opt, xin, gin in ((host, opts[0], x, g), (dev, opts[1], _dev(x), _dev(g))):
            opt.zero_grad()
            m(xin)
            m.backward(gin)
            opt.step()
    for p, q in zip(host.parameters(), dev.parameters()):
        np.testing.assert_allclose(_host(q.data), p.data, rtol=1e-12)
        for key, value in opts[1].state[q].items():
            if key != "step":
                assert is_device_array(value)
                np.testing.assert_allclose(_host(value), opts[0].state[p][key], rtol=1e-12)
    saved = opts[1].state_dict()
    assert all(isinstance(v, (np.ndarray, int)) for s in saved["state"].values() for v in s.values())
    fresh = make_opt(dev.parameters())
    fresh.load_state_dict(saved)
    assert all(is_device_array(v) for s in fresh.state.values() for k, v in s.items() if k != "step")
    # A pattern change remaps device state through the host and puts it back on the device.
    w = dev.weight
    old = w.csr.to("cpu")
    new = CSRMatrix.from_dense(np.where(old.to_dense() == 0, 1.0, old.to_dense()))
    kept_old, kept_new = optim.match_patterns(old, new)
    w.set_csr(new.to("cuda"))
    fresh.remap(w, kept_old, kept_new)
    key = fresh._state_keys[0]
    remapped = fresh.state[w][key]
    assert is_device_array(remapped) and remapped.shape == (new.nnz,)
    np.testing.assert_array_equal(_host(remapped)[kept_new], _host(saved["state"][0][key])[kept_old])


def _problem(rng, n=40):
    x = rng.standard_normal((n, 6))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    return x, y


def _model():
    return nn.Sequential(nn.SparseLinear(6, 8, density=0.5, rng=0, dtype=F64), nn.Tanh(), nn.Dropout(0.2, rng=1),
                         nn.Linear(8, 3, rng=2, dtype=F64))


def test_fit_on_device_reproduces_fit_on_host(rng):
    x, y = _problem(rng)
    runs = {}
    for device in ("cpu", "cuda"):
        model = _model()
        opt = optim.Adam(model.parameters(), lr=0.05)
        hist = train.fit(model, nn.CrossEntropyLoss(), opt, (x, y), (x[:12], y[:12]), epochs=2, batch_size=16,
                         progress=False, rng=0, device=device)
        assert model.device == device
        runs[device] = (model, hist)
    (m_cpu, h_cpu), (m_gpu, h_gpu) = runs["cpu"], runs["cuda"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "sparsity"):
        np.testing.assert_allclose(h_gpu[key], h_cpu[key], rtol=1e-10, err_msg=key)
    for p, q in zip(m_cpu.parameters(), m_gpu.parameters()):
        np.testing.assert_allclose(_host(q.data), p.data, rtol=1e-10)
    assert train.evaluate(m_gpu, (x, y)) == pytest.approx(train.evaluate(m_cpu, (x, y)), rel=1e-10)


@pytest.mark.parametrize("shuffle", [True, False])
def test_fit_on_device_uploads_the_data_once_not_per_batch(rng, monkeypatch, shuffle):
    """The training set stays on the GPU: x once, the targets once, the shuffled order once per
    epoch; batches are device views or gathered on the device.  A DataLoader subclass that
    changes what a batch is keeps the per-batch path, and both give the CPU's training."""
    from sparsenet import data, kernels

    from sparsenet.kernels import cuda as kc

    uploads, transposes = [], []
    to_device = kernels.to_device
    monkeypatch.setattr(kernels, "to_device", lambda a, device="cuda": uploads.append(np.shape(a)) or
                        to_device(a, device))
    launch_transpose = kc._launch_transpose
    monkeypatch.setattr(kc, "_launch_transpose", lambda *a: transposes.append(1) or launch_transpose(*a))
    x, y = _problem(rng)  # 40 samples: 3 batches of 16 per epoch
    losses = {}
    for name, loader_cls in (("resident", data.DataLoader), ("per-batch", type("MyLoader", (data.DataLoader,), {
            "__iter__": lambda self: data.DataLoader.__iter__(self)}))):
        model = _model().to("cuda")  # with dropout: its masks are drawn on the device, nothing goes up
        uploads.clear()
        transposes.clear()
        hist = train.fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1),
                         loader_cls(x, y, batch_size=16, shuffle=shuffle, rng=0), epochs=2, progress=False,
                         device="cuda")
        losses[name] = hist["loss"]
        if name == "resident":
            assert sorted(uploads) == sorted([x.shape, y.shape] + [(40,)] * (2 if shuffle else 0))
            # A shuffled batch is gathered feature-major, as the first sparse layer reads it; a
            # stored-order batch is a C-ordered view, transposed once a step.
            assert len(transposes) == (0 if shuffle else 2 * 3)
        else:
            assert len(uploads) == 2 * 3 * 2  # x and y of every batch
    cpu = _model()
    hist = train.fit(cpu, nn.CrossEntropyLoss(), optim.SGD(cpu.parameters(), lr=0.1),
                     data.DataLoader(x, y, batch_size=16, shuffle=shuffle, rng=0), epochs=2, progress=False)
    np.testing.assert_allclose(losses["resident"], hist["loss"], rtol=1e-10)
    np.testing.assert_allclose(losses["per-batch"], hist["loss"], rtol=1e-10)


def test_fit_on_device_regression_and_checkpoint(rng, tmp_path):
    x = rng.standard_normal((24, 4))
    t = x @ rng.standard_normal((4, 2))
    model = nn.Sequential(nn.Linear(4, 6, rng=0, dtype=F64), nn.ReLU(), nn.Linear(6, 2, rng=1, dtype=F64))
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    path = tmp_path / "ckpt.npz"
    hist = train.fit(model, nn.MSELoss(), opt, (x, t), epochs=3, batch_size=8, progress=False, rng=0,
                     device="cuda", callbacks=[train.ModelCheckpoint(path)])
    assert hist["accuracy"] == [None] * 3 and hist["loss"][-1] < hist["loss"][0]
    ckpt = io.load(path)
    assert ckpt.model.device == "cpu"
    np.testing.assert_allclose(ckpt.model(x), _host(model(_dev(x))), rtol=1e-12)


def test_fit_reports_non_finite_loss_on_device(rng):
    x, y = _problem(rng, 16)
    model = nn.Sequential(nn.Linear(6, 3, rng=0, dtype=F64))
    opt = optim.SGD(model.parameters(), lr=1e300)
    with pytest.raises(FloatingPointError, match="epoch"):
        train.fit(model, nn.CrossEntropyLoss(), opt, (x * 1e300, y), epochs=2, batch_size=8, progress=False,
                  device="cuda")


def _write_idx(path, array):
    import struct

    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_cli_trains_on_device(rng, tmp_path, capsys):
    """``sparsenet train --device cuda`` end to end, on a tiny MNIST-format folder (the
    simulator runs every CUDA thread in Python: the bundled digits would take minutes)."""
    from sparsenet.cli import main

    for kind, n in (("train", 24), ("t10k", 8)):
        _write_idx(tmp_path / f"{kind}-images-idx3-ubyte", rng.integers(0, 256, (n, 4, 4)))
        _write_idx(tmp_path / f"{kind}-labels-idx1-ubyte", np.arange(n) % 3)
    args = ["train", "--device", "cuda", "--dataset", "mnist", "--data-dir", str(tmp_path), "--hidden", "6",
            "--density", "0.5", "--epochs", "2", "--batch-size", "12", "--no-progress", "--threads", "1", "-v"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "device cuda" in out and "epoch   2/2" in out and "test accuracy" in out


def _sparse_model():
    return nn.Sequential(nn.SparseLinear(6, 10, density=0.5, rng=0, dtype=F64), nn.ReLU(),
                         nn.SparseLinear(10, 3, density=0.6, rng=1, dtype=F64))


@pytest.mark.parametrize("make_cb", [
    lambda m: sparsity.SET(m, zeta=0.3, rng=0),
    lambda m: sparsity.RigL(m, drop_fraction=0.3, update_every=2),
    lambda m: sparsity.GradualMagnitudePruner(m, 0.7, begin_step=1, end_step=5, frequency=2),
    lambda m: sparsity.L1Prox(m, 1e-2),
    lambda m: sparsity.GroupLassoProx(m, 0.3),
], ids=["set", "rigl", "gmp", "l1", "group-lasso-rows"])
def test_sparsity_callbacks_train_on_device_like_on_host(rng, make_cb):
    """Host-only callbacks run between device steps (the trainer moves the model over and back)
    and change the patterns exactly as on the CPU."""
    _trains_alike_on_both_devices(rng, _sparse_model, make_cb, epochs=3)


def _trains_alike_on_both_devices(rng, make_model, make_cb, epochs):
    """Train the same model with the callback on the CPU and on the device: same history, same
    final state (float64)."""
    x, y = _problem(rng, 32)
    runs = {}
    for device in ("cpu", "cuda"):
        model = make_model()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        hist = train.fit(model, nn.CrossEntropyLoss(), opt, (x, y), epochs=epochs, batch_size=8, progress=False,
                         rng=0, device=device, callbacks=[make_cb(model)])
        runs[device] = (model, hist)
    (m_cpu, h_cpu), (m_gpu, h_gpu) = runs["cpu"], runs["cuda"]
    assert m_gpu.device == "cuda"
    np.testing.assert_allclose(h_gpu["loss"], h_cpu["loss"], rtol=1e-10)
    np.testing.assert_allclose(h_gpu["sparsity"], h_cpu["sparsity"], rtol=1e-12)
    assert m_gpu.state_dict().keys() == m_cpu.state_dict().keys()
    for key, value in m_cpu.state_dict().items():
        np.testing.assert_allclose(m_gpu.state_dict()[key], value, rtol=1e-10, atol=1e-12, err_msg=key)


@pytest.fixture
def host_trips(monkeypatch):
    """A list that gets an entry each time the trainer brings a model to the host."""
    trips = []
    original = nn.Module._to_host_for_a_while
    monkeypatch.setattr(nn.Module, "_to_host_for_a_while", lambda self: trips.append(1) or original(self))
    return trips


def _dense_model():
    return nn.Sequential(nn.Linear(6, 10, rng=0, dtype=F64), nn.ReLU(), nn.Linear(10, 3, rng=1, dtype=F64))


@pytest.mark.parametrize("make_cb, trips_expected", [
    # dense weights pruned by masks re-applied on the device every step; pruning steps 1, 3, 5
    (lambda m: sparsity.GradualMagnitudePruner(m, 0.4, begin_step=1, end_step=5, frequency=2,
                                               to_sparse_below=0.0), 3),
    (lambda m: sparsity.HardThreshold(m, 0.05), 0),
    (lambda m: sparsity.GroupLassoProx(m, 0.3), 0),  # output groups: rows of the dense weights
    (lambda m: sparsity.GroupLassoProx(m, 0.3, group="input"), 0),  # columns, gathered on the device
    (lambda m: sparsity.GradualStructuredPruner(m, 0.5, begin_step=2, end_step=6, frequency=4), 2),
], ids=["gmp-masks", "hard-threshold", "group-lasso-rows", "group-lasso-columns", "structured"])
def test_pruners_use_the_host_only_on_pruning_steps(rng, host_trips, make_cb, trips_expected):
    """Per-step work (re-applying masks, fixed-threshold zeroing) runs on the device; the
    trainer brings the model to the host only for the steps that prune, and the result is the
    CPU's."""
    _trains_alike_on_both_devices(rng, _dense_model, make_cb, epochs=2)
    assert len(host_trips) == trips_expected  # all of them from the device run


def _conv_model():
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=0, dtype=F64), nn.ReLU(),
                         nn.SparseConv2d(3, 2, 2, density=0.6, rng=1, dtype=F64), nn.Flatten(),
                         nn.Linear(2 * 3 * 3, 3, rng=2, dtype=F64))


@pytest.mark.parametrize("make_cb", [
    lambda m: sparsity.GroupLassoProx(m, 0.5, group="input"),  # input channels: blocks of 9 and 4 taps
    lambda m: sparsity.HardThreshold(m, sparsity=0.5),
], ids=["group-lasso-channels", "top-k"])
def test_conv_regularisers_step_on_the_device(rng, host_trips, make_cb):
    """Dense and weight-sparse convolutions and a dense linear layer: channel groups and top-k
    zeroing (the radix select, on 4-D, CSR and 2-D weights) never need the host, and the result
    is the CPU's."""
    x = rng.standard_normal((16, 2, 4, 4))
    y = (x[:, 0].mean(axis=(1, 2)) > 0).astype(np.int64) + (x[:, 1, 0, 0] > 1).astype(np.int64)
    runs = {}
    for device in ("cpu", "cuda"):
        model = _conv_model()
        hist = train.fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), epochs=1,
                         batch_size=8, progress=False, rng=0, device=device, callbacks=[make_cb(model)])
        runs[device] = model.to("cpu"), hist
    assert host_trips == []
    np.testing.assert_allclose(runs["cuda"][1]["loss"], runs["cpu"][1]["loss"], rtol=1e-10)
    for key, value in runs["cpu"][0].state_dict().items():
        np.testing.assert_allclose(runs["cuda"][0].state_dict()[key], value, rtol=1e-10, atol=1e-12, err_msg=key)


def test_pruning_refuses_device_weights_and_drops_masks_of_converted_layers(rng):
    model = _dense_model().to("cuda")
    with pytest.raises(NotImplementedError, match="pruning"):
        sparsity.MagnitudePruner(model).prune(0.5)
    x, y = _problem(rng, 32)
    model = _dense_model()
    gmp = sparsity.GradualMagnitudePruner(model, 0.8, begin_step=1, end_step=5, frequency=2)  # ends as CSR
    train.fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), epochs=2,
              batch_size=8, progress=False, rng=0, device="cuda", callbacks=[gmp])
    assert model[0].weight.is_sparse and gmp.masks == {}
    assert set(gmp._device_masks) <= set(gmp.masks)  # no device copy kept for a converted layer


def test_host_round_trip_keeps_an_unchanged_device_pattern():
    p = _sparse_model()[0].weight.to("cuda")
    indices = p.csr.indices
    p.to("cpu", keep_device_arrays=True)
    assert "_device_twin" not in copy.deepcopy(p).__dict__  # copies and pickles carry no device arrays
    p.data[:] = 1.0  # values edited in place on the host
    p.to("cuda")
    assert p.csr.indices is indices  # the transposed-pattern cache of spmm_t stays valid
    np.testing.assert_array_equal(_host(p.data), 1.0)
    p.to("cpu", keep_device_arrays=True)
    p.set_csr(p.csr.copy())  # a new pattern object: uploaded afresh
    p.to("cuda")
    assert p.csr.indices is not indices
    p.to("cpu")  # a plain move lets the device arrays go
    assert p.__dict__.get("_device_twin") is None


def test_set_brings_the_model_to_the_host_only_on_topology_updates(rng, host_trips):
    x, y = _problem(rng, 32)
    model = _sparse_model()
    train.fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), epochs=2, batch_size=8,
              progress=False, rng=0, device="cuda", callbacks=[sparsity.SET(model, zeta=0.3, rng=0)])
    assert len(host_trips) == 2  # one per epoch end, none for the 8 batches


def test_l1_prox_steps_on_the_device_without_host_round_trips(rng, host_trips):
    x, y = _problem(rng, 32)
    model = _sparse_model()
    train.fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), epochs=2,
              batch_size=8, progress=False, rng=0, device="cuda", callbacks=[sparsity.L1Prox(model, 0.5)])
    assert host_trips == [] and model.device == "cuda"
    assert (_host(model[0].weight.data) == 0).any()  # the thresholding ran, on the device


def test_device_training_checks_and_casts_targets_like_the_host(rng):
    x, y = _problem(rng, 16)
    model = nn.Sequential(nn.Linear(6, 3, rng=0))  # float32
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="target class 3 is out of range"):
        train.fit(model, nn.CrossEntropyLoss(), opt, (x.astype(np.float32), np.where(y == 0, 3, y)), epochs=1,
                  progress=False, device="cuda")
    with pytest.raises(ValueError, match="out of range"):
        train.evaluate(model, (x.astype(np.float32), np.full(16, -1)))
    t = rng.standard_normal((16, 3))  # float64 targets for a float32 model, as the host accepts
    hist = train.fit(model, nn.MSELoss(), opt, (x.astype(np.float32), t), epochs=1, progress=False, device="cuda")
    assert np.isfinite(hist["loss"][0])


def test_trainer_resolves_the_device_when_it_runs(rng):
    x, y = _problem(rng, 16)
    model = nn.Sequential(nn.Linear(6, 3, rng=0, dtype=F64))
    trainer = train.Trainer(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y),
                            epochs=1, progress=False)
    model.to("cuda")
    trainer.run()
    assert model.device == "cuda" and trainer.device == "cuda"


@pytest.mark.parametrize("penalty", ["kl", "l1"])
def test_sparse_autoencoder_trains_on_the_device(rng, penalty):
    """The activity penalty's gradient (added on the device in backward) passes a float64
    directional check of the full objective <y, r> + penalty_value, and fit on the device
    reproduces fit on the host."""
    def make():
        return sparsity.SparseAutoencoder(6, 4, penalty=penalty, beta=0.5, density=0.6, rng=0, dtype=F64)

    ae = make().to("cuda")
    x, v = rng.random((5, 6)), rng.standard_normal((5, 6))
    r = rng.standard_normal((5, 6))

    def objective(xx):
        value = float(np.sum(_host(ae(_dev(xx))) * r)) + ae.penalty_value
        ae.backward(_dev(r))
        return value

    ae(_dev(x))
    analytic = float(np.sum(_host(ae.backward(_dev(r))) * v))
    eps = 1e-6
    numeric = (objective(x + eps * v) - objective(x - eps * v)) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8)
    host = make()
    host(x)
    ae(_dev(x))
    assert ae.penalty_value == pytest.approx(host.penalty_value, rel=1e-12)
    ae.backward(_dev(r))

    runs = {}
    for device in ("cpu", "cuda"):
        model = make()
        hist = train.fit(model, nn.MSELoss(), optim.Adam(model.parameters(), lr=0.05), (x, x), epochs=2,
                         batch_size=3, progress=False, rng=0, device=device)
        runs[device] = model.to("cpu"), hist
    np.testing.assert_allclose(runs["cuda"][1]["loss"], runs["cpu"][1]["loss"], rtol=1e-10)
    for key, value in runs["cpu"][0].state_dict().items():
        np.testing.assert_allclose(runs["cuda"][0].state_dict()[key], value, rtol=1e-10, atol=1e-12, err_msg=key)


def test_batch_norm_dtype_mismatch_on_device_is_a_clear_error():
    bn = nn.BatchNorm1d(3).to("cuda")  # float32
    with pytest.raises(TypeError, match="BatchNorm1d is float32 but x is float64"):
        bn(_dev(np.ones((4, 3))))


@pytest.mark.parametrize("name,make,shape", [c for c in _layer_cases() if c[0] in (
    "sparse_conv", "local", "batchnorm2d", "softmax", "linear", "sigmoid")], ids=lambda c: c if isinstance(c, str) else "")
def test_device_backward_passes_a_float64_directional_gradient_check(rng, name, make, shape):
    """<grad_x, v> from the device backward equals the central difference of <y, r> along v,
    both evaluated with device forwards (float64, eps 1e-6)."""
    layer = make().to("cuda")
    x, v = rng.standard_normal(shape), rng.standard_normal(shape)
    r = rng.standard_normal(_host(layer(_dev(x))).shape)
    layer.backward(_dev(r))  # consume the probe forward
    layer(_dev(x))
    analytic = float(np.sum(_host(layer.backward(_dev(r))) * v))
    eps = 1e-6
    f_plus = float(np.sum(_host(layer(_dev(x + eps * v))) * r))
    layer.backward(_dev(r))
    f_minus = float(np.sum(_host(layer(_dev(x - eps * v))) * r))
    layer.backward(_dev(r))
    assert analytic == pytest.approx((f_plus - f_minus) / (2 * eps), rel=1e-6, abs=1e-8)
