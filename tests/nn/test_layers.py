"""Layer-specific behaviour beyond the conformance suite: init, numerics, PyTorch parity."""
import functools

import numpy as np
import pytest

import sparsenet.functional as F
from sparsenet import CSRMatrix, nn


def test_linear_default_init_bound():
    layer = nn.Linear(100, 50, rng=0)
    assert layer.weight.shape == (50, 100) and layer.bias.shape == (50,)
    assert np.abs(layer.weight.data).max() <= 0.1 and np.abs(layer.weight.data).max() > 0.09
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert nn.Linear(3, 2, bias=False).parameters()[0].name == "weight"


def test_sparse_linear_init():
    layer = nn.SparseLinear(784, 1000, rng=0)  # default: Erdős–Rényi with epsilon=20
    assert layer.weight.csr.density == pytest.approx(nn.init.er_density(784, 1000, 20), rel=1e-3)
    assert layer.weight.is_sparse and layer.weight.data is layer.weight.csr.data
    assert layer.weight_csr is layer.weight.csr
    fan_in = layer.weight.csr.nnz / 1000
    assert np.abs(layer.weight.data).max() <= 1 / np.sqrt(fan_in)
    mask = np.eye(4, 6, dtype=bool)
    fixed = nn.SparseLinear(6, 4, pattern=mask, rng=0)
    np.testing.assert_array_equal(fixed.weight.csr.to_dense() != 0, mask)
    with pytest.raises(ValueError, match="at most one"):
        nn.SparseLinear(6, 4, density=0.5, epsilon=2)
    with pytest.raises(ValueError, match="density"):
        nn.SparseLinear(6, 4, density=1.5)
    with pytest.raises(ValueError, match="epsilon"):
        nn.SparseLinear(6, 4, epsilon=-1)
    with pytest.raises(ValueError, match="pattern must have shape"):
        nn.SparseLinear(6, 4, pattern=np.ones((6, 4), bool))


def test_sparse_gradient_is_on_pattern(rng):
    layer = nn.SparseLinear(7, 5, density=0.3, rng=rng, dtype=np.float64)
    dense = nn.Linear(7, 5, rng=rng, dtype=np.float64)
    dense.weight.data[...] = layer.weight.csr.to_dense()
    dense.bias.data[...] = layer.bias.data
    x = rng.standard_normal((4, 7))
    np.testing.assert_allclose(layer(x), dense(x), rtol=1e-12)
    g = rng.standard_normal((4, 5))
    np.testing.assert_allclose(layer.backward(g), dense.backward(g), rtol=1e-12)
    w = layer.weight.csr
    rows = np.repeat(np.arange(5), np.diff(w.indptr))
    np.testing.assert_allclose(layer.weight.grad, dense.weight.grad[rows, w.indices], rtol=1e-12)


def test_set_csr_and_pattern_change_between_forward_backward(rng):
    layer = nn.SparseLinear(4, 3, density=0.5, rng=0)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    y = layer(x)
    layer.weight.set_csr(CSRMatrix.random((3, 4), 0.25, rng=1))
    with pytest.raises(RuntimeError, match="pattern changed"):
        layer.backward(np.ones_like(y))
    with pytest.raises(ValueError, match="keep the shape"):
        layer.weight.set_csr(CSRMatrix.random((4, 4), 0.25, rng=1))
    with pytest.raises(ValueError, match="set_csr"):
        layer.weight.data = np.zeros(99, np.float32)


@pytest.mark.parametrize("scale", [1.0, 1e4, 1e30])
def test_cross_entropy_stable_and_matches_torch(scale, rng):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal((6, 5)) * scale
    target = rng.integers(0, 5, 6)
    loss = F.cross_entropy(logits, target)
    grad = F.cross_entropy_backward(logits, target)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    t = torch.tensor(logits, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(t, torch.tensor(target))
    tl.backward()
    np.testing.assert_allclose(loss, tl.item(), rtol=1e-10)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_cross_entropy_validation():
    with pytest.raises(TypeError, match="integer class indices"):
        F.cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="out of range"):
        F.cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="2-D"):
        F.cross_entropy(np.zeros(3), np.array([0]))
    crit = nn.CrossEntropyLoss()
    with pytest.raises(RuntimeError, match="without a matching forward"):
        crit.backward()
    x = np.float32([[1.0, 2.0]])
    crit(x, np.array([1]))
    assert crit.backward().dtype == np.float32


def test_mse_matches_torch(rng):
    torch = pytest.importorskip("torch")
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    crit = nn.MSELoss()
    t = torch.tensor(a, requires_grad=True)
    tl = torch.nn.functional.mse_loss(t, torch.tensor(b))
    tl.backward()
    np.testing.assert_allclose(crit(a, b), tl.item(), rtol=1e-12)
    np.testing.assert_allclose(crit.backward(), t.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("cls, shape", [("BatchNorm1d", (8, 3)), ("BatchNorm1d", (5, 3, 4)),
                                        ("BatchNorm2d", (4, 3, 5, 5))])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_matches_torch(cls, shape, momentum, rng):
    torch = pytest.importorskip("torch")
    ours = getattr(nn, cls)(3, momentum=momentum, dtype=np.float64)
    ref = getattr(torch.nn, cls)(3, momentum=momentum).double()
    ours.weight.data[...] = rng.standard_normal(3)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(ours.weight.data))
    for _ in range(3):
        x = rng.standard_normal(shape) * 2 + 1
        g = rng.standard_normal(shape)
        tx = torch.tensor(x, requires_grad=True)
        ty = ref(tx)
        ty.backward(torch.tensor(g))
        ours.zero_grad()
        np.testing.assert_allclose(ours(x), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ours.backward(g), tx.grad.numpy(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(ours.weight.grad, ref.weight.grad.numpy(), rtol=1e-8)
        ref.weight.grad = None
    np.testing.assert_allclose(ours.running_mean, ref.running_mean.numpy(), rtol=1e-10)
    np.testing.assert_allclose(ours.running_var, ref.running_var.numpy(), rtol=1e-10)
    ours.eval(), ref.eval()
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(ours(x), ref(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="expects a"):
        ours(np.zeros((2, 4)))


def test_batchnorm_needs_more_than_one_value():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(3)(np.zeros((1, 3), np.float32))


def test_dropout_statistics_and_modes():
    d = nn.Dropout(0.25, rng=0)
    y = d(np.ones((200, 200), np.float32))
    assert y.dtype == np.float32
    assert abs((y == 0).mean() - 0.25) < 0.01 and set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    d.eval()
    np.testing.assert_array_equal(d(np.ones(5)), 1.0)
    assert nn.Dropout(1.0)(np.ones(3)).sum() == 0
    for bad in (1.5, True):
        with pytest.raises(ValueError, match="between 0 and 1"):
            nn.Dropout(bad)


def test_dropout_backward_uses_the_forward_mask_even_if_p_changes():
    d = nn.Dropout(0.5, rng=0)
    y = d(np.ones((4, 8)))
    d.p = 0.9  # e.g. a callback annealing p between forward and backward
    g = d.backward(np.ones((4, 8)))
    np.testing.assert_array_equal(g, y)


def test_train_eval_propagate_and_sequential_api():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.Sequential(nn.BatchNorm1d(2)))
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    assert len(model) == 3 and isinstance(model[1], nn.Dropout) and len(model[:2]) == 2
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.0.weight", "2.0.bias"]
    assert "2.0.running_mean" in model.state_dict()
    with pytest.raises(TypeError, match="Module"):
        nn.Sequential(nn.Linear(2, 2), "relu")


def test_to_dtype(rng):
    model = nn.Sequential(nn.SparseLinear(4, 3, density=0.5, rng=0), nn.BatchNorm1d(3))
    model.to(np.float64)
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert model[1].running_mean.dtype == np.float64
    assert model(rng.standard_normal((3, 4))).dtype == np.float64
    assert nn.from_config(model.describe())[0].dtype == np.float64


def test_from_config_errors():
    with pytest.raises(ValueError, match="unknown module class"):
        nn.from_config({"class": "NoSuchLayer", "config": {}})
    with pytest.raises(ValueError, match="describe"):
        nn.from_config([1, 2])


def test_conv_layer_constructor_checks():
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="kernel_size"):
        nn.Conv2d(3, 4, (3, 3, 3))
    conv = nn.Conv2d(4, 8, 3, groups=2, rng=0)
    assert conv.weight.shape == (8, 2, 3, 3)
    assert np.abs(conv.weight.data).max() <= 1 / np.sqrt(2 * 9)
    sp = nn.SparseConv2d(16, 32, 3, rng=0)  # default ERK, epsilon=1
    assert sp.weight.csr.density == pytest.approx(nn.init.erk_density(16, 32, (3, 3), 1.0), rel=0.01)


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(n=st.integers(1, 6), c=st.integers(1, 6), scale=st.sampled_from([1e-3, 1.0, 1e4, 1e30]),
       seed=st.integers(0, 2**16), dtype=st.sampled_from([np.float32, np.float64]))
def test_cross_entropy_properties(n, c, scale, seed, dtype):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, c)) * scale).astype(dtype)
    target = rng.integers(0, c, n)
    loss = F.cross_entropy(logits, target)
    grad = F.cross_entropy_backward(logits, target)
    assert np.isfinite(loss) and loss >= 0 and loss.dtype == dtype
    assert grad.dtype == dtype and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-6)


@given(n_in=st.integers(1, 7), n_out=st.integers(1, 7), batch=st.integers(1, 5),
       density=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_sparse_linear_equals_masked_dense(n_in, n_out, batch, density, seed):
    rng = np.random.default_rng(seed)
    layer = nn.SparseLinear(n_in, n_out, density=density, rng=rng, dtype=np.float64)
    x = rng.standard_normal((batch, n_in))
    expected = x @ layer.weight.csr.to_dense().T + layer.bias.data
    np.testing.assert_allclose(layer(x), expected, rtol=1e-12, atol=1e-12)
    g = rng.standard_normal((batch, n_out))
    np.testing.assert_allclose(layer.backward(g), g @ layer.weight.csr.to_dense(), rtol=1e-12, atol=1e-12)


def test_accumulate_grad_adopts_only_what_it_is_handed(rng):
    """owned=True: a fresh gradient of the right dtype and order becomes .grad without a copy;
    anything else (or owned=False) is copied, and later calls add in place."""
    p = nn.Parameter(np.zeros((3, 4), dtype=np.float32))
    g = rng.standard_normal((3, 4)).astype(np.float32)
    g0 = g.copy()
    p.accumulate_grad(g, owned=True)
    assert p.grad is g
    p.accumulate_grad(np.ones((3, 4), dtype=np.float32))
    assert p.grad is g  # accumulated into the adopted array
    np.testing.assert_allclose(p.grad, g0 + 1)
    for other in (g.astype(np.float64), np.asfortranarray(g), g[:, ::-1]):
        p.grad = None
        p.accumulate_grad(other, owned=True)
        assert p.grad is not other and p.grad.dtype == np.float32 and p.grad.flags.c_contiguous
    frozen = g.copy()
    frozen.flags.writeable = False
    p.grad = None
    p.accumulate_grad(frozen, owned=True)
    assert p.grad is not frozen and p.grad.flags.writeable
    p.grad = None
    p.accumulate_grad(g)  # not handed over: never an alias
    assert p.grad is not g
    np.testing.assert_array_equal(p.grad, g)


def test_layers_hand_their_fresh_gradients_over(rng):
    """A layer's backward adopts its freshly computed gradients (no copy per parameter and step),
    and the values are unchanged by it."""
    layer = nn.SparseLinear(6, 5, density=0.5, rng=0)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    g = np.ones((4, 5), dtype=np.float32)
    layer(x)
    layer.backward(g)
    first_w, first_b = layer.weight.grad, layer.bias.grad
    expected_b = np.full(5, 4.0)
    np.testing.assert_allclose(first_b, expected_b)
    layer(x)
    layer.backward(g)  # accumulates into the adopted arrays
    assert layer.weight.grad is first_w and layer.bias.grad is first_b
    np.testing.assert_allclose(layer.bias.grad, 2 * expected_b)


def test_sequential_backward_params_skips_the_first_input_gradient(rng, monkeypatch):
    """Leading parameter-free layers (Flatten, Dropout) and the first weighted layer's input
    gradient are skipped: no transposed product for it, the same parameter gradients, and the
    skipped layers' forward contexts are dropped."""
    from sparsenet import kernels

    def model():
        return nn.Sequential(nn.Flatten(), nn.Dropout(0.0),
                             nn.Sequential(nn.SparseLinear(12, 8, density=0.5, rng=0), nn.ReLU()),
                             nn.SparseLinear(8, 3, density=0.5, rng=1))

    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    g = rng.standard_normal((5, 3)).astype(np.float32)
    full, lean = model(), model()
    full(x)
    full.backward(g)
    calls = []
    spmm_t = kernels.spmm_t
    monkeypatch.setattr(kernels, "spmm_t", lambda *a, **k: calls.append(a[3]) or spmm_t(*a, **k))
    lean(x)
    assert lean.backward_params(g) is None
    assert calls == [8]  # the second layer's input gradient only; none of width 12
    for p, q in zip(full.parameters(), lean.parameters()):
        np.testing.assert_array_equal(q.grad, p.grad)
    for layer in (lean[0], lean[1]):
        with pytest.raises(RuntimeError, match="without a matching forward"):
            layer.backward(np.ones((5, 12), np.float32))
    # Without any parameter nothing is computed, and every context is dropped.
    act = nn.Sequential(nn.Flatten(), nn.ReLU())
    act(x)
    assert act.backward_params(np.ones((5, 12), np.float32)) is None
    with pytest.raises(RuntimeError, match="without a matching forward"):
        act.backward(np.ones((5, 12), np.float32))


def test_backward_params_respects_a_subclass_backward(rng):
    """A user subclass that overrides backward (here: scaling the gradient) gets that backward
    under backward_params too, not the base layer's shortcut."""
    class Scaled(nn.Linear):
        def backward(self, grad_out):
            return super().backward(2 * grad_out)

    x = rng.standard_normal((3, 4)).astype(np.float32)
    g = rng.standard_normal((3, 2)).astype(np.float32)
    plain, scaled = nn.Linear(4, 2, rng=0), Scaled(4, 2, rng=0)
    plain(x)
    plain.backward(2 * g)
    scaled(x)
    scaled.backward_params(g)
    np.testing.assert_allclose(scaled.weight.grad, plain.weight.grad)


def _unfused(model):
    """The same model with every forward and backward replaced on the instance: Sequential then
    fuses nothing."""
    for layer in model.modules():
        if not isinstance(layer, nn.Sequential):
            object.__setattr__(layer, "forward", layer.forward)
            object.__setattr__(layer, "backward", layer.backward)
    return model


FUSED_MODELS = {  # name: (factory(dtype), input shape, output shape)
    "sparse_linear": (lambda dt: nn.Sequential(
        nn.SparseLinear(7, 9, density=0.5, rng=0, dtype=dt), nn.ReLU(),
        nn.SparseLinear(9, 4, density=0.5, rng=1, dtype=dt), nn.ReLU(),
        nn.SparseLinear(4, 3, density=0.8, rng=2, dtype=dt)), (6, 7), (6, 3)),
    "linear": (lambda dt: nn.Sequential(nn.Linear(7, 9, rng=0, dtype=dt), nn.ReLU(),
                                        nn.Linear(9, 3, rng=1, dtype=dt)), (6, 7), (6, 3)),
    "conv": (lambda dt: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=0, dtype=dt), nn.ReLU(),
                                      nn.Conv2d(3, 2, 3, stride=2, rng=1, dtype=dt), nn.ReLU()),
             (2, 2, 6, 5), (2, 2, 2, 2)),
    "sparse_conv": (lambda dt: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=0, dtype=dt), nn.ReLU(),
                                             nn.SparseConv2d(3, 2, 3, density=0.6, rng=1, dtype=dt)),
                    (2, 2, 6, 5), (2, 2, 4, 3)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(FUSED_MODELS))
def test_sequential_fuses_a_product_and_relu(rng, monkeypatch, same_bits, name, dtype):
    """SparseLinear, Linear or Conv2d then ReLU in a Sequential: the ReLU applied as the product
    stores its output (no activation pass), and a ReLU's backward applied as the next layer
    stores its input gradient; bit for bit (signed zeros included) the unfused outputs and
    gradients."""
    from sparsenet import kernels

    make, in_shape, out_shape = FUSED_MODELS[name]

    def model():
        return make(dtype)

    x = rng.standard_normal(in_shape).astype(dtype)
    g = rng.standard_normal(out_shape).astype(dtype)
    plain, fused = _unfused(model()), model()
    y_plain = plain(x)
    activations = []
    activation = kernels.activation
    monkeypatch.setattr(kernels, "activation", lambda *a, **k: activations.append(a[0]) or activation(*a, **k))
    y = fused(x)
    assert activations == []  # both ReLUs came from the products
    np.testing.assert_array_equal(y, y_plain)
    backwards = []
    activation_backward = kernels.activation_backward
    monkeypatch.setattr(kernels, "activation_backward",
                        lambda *a, **k: backwards.append(a[0]) or activation_backward(*a, **k))
    gx_plain = plain.backward(g)
    assert len(backwards) == sum(isinstance(m, nn.ReLU) for m in plain)
    del backwards[:]
    same_bits(fused.backward(g), gx_plain)
    # A ReLU followed by a layer came from that layer's input gradient; a trailing one (as in
    # "conv") has no layer after it and runs as before.
    assert backwards == (["relu"] if isinstance(fused[len(fused) - 1], nn.ReLU) else [])
    for p, q in zip(plain.parameters(), fused.parameters()):
        same_bits(q.grad, p.grad)
    assert all(m._ctx is None for m in fused)  # every context consumed by the backward


def test_fusion_leaves_subclasses_and_wrapped_layers_alone(rng, monkeypatch):
    from sparsenet import kernels

    class MyReLU(nn.ReLU):
        pass

    class MyLinear(nn.SparseLinear):
        pass

    activations = []
    activation = kernels.activation
    monkeypatch.setattr(kernels, "activation", lambda *a, **k: activations.append(a[0]) or activation(*a, **k))
    x = rng.standard_normal((2, 4)).astype(np.float32)
    wrapped = nn.ReLU()
    seen = []
    object.__setattr__(wrapped, "forward", lambda v, _f=wrapped.forward: seen.append(1) or _f(v))
    for pair in ((nn.SparseLinear(4, 3, rng=0), MyReLU()), (MyLinear(4, 3, rng=0), nn.ReLU()),
                 (nn.SparseLinear(4, 3, rng=0), wrapped)):
        nn.Sequential(*pair)(x)
    assert activations == ["relu"] * 3 and seen == [1]
    calls = []  # a forward patched on the class (a profiler, a test's monkeypatch) is seen too
    relu_forward = nn.ReLU.forward
    monkeypatch.setattr(nn.ReLU, "forward", lambda self, v: calls.append(1) or relu_forward(self, v))
    nn.Sequential(nn.SparseLinear(4, 3, rng=0), nn.ReLU())(x)
    assert calls == [1]
    linear_forward = nn.Linear.forward  # also a functools.wraps wrapper, which copies attributes

    @functools.wraps(linear_forward)
    def traced(self, v):
        calls.append(2)
        return linear_forward(self, v)

    monkeypatch.setattr(nn.Linear, "forward", traced)
    nn.Sequential(nn.Linear(4, 3, rng=0), nn.ReLU(), nn.Linear(3, 2, rng=1))(x)
    assert calls == [1, 2, 1, 2]  # Linear, ReLU (still patched), Linear: nothing fused


def test_conv_layers_take_an_empty_batch(rng):
    for layer in (nn.Conv2d(2, 3, 3, padding=1, rng=0), nn.Conv2d(2, 4, 3, stride=2, groups=2, rng=0),
                  nn.SparseConv2d(2, 3, 3, density=0.5, rng=0)):
        y = layer(np.zeros((0, 2, 5, 5), np.float32))
        assert y.shape[0] == 0 and y.dtype == np.float32
        assert layer.backward(np.zeros(y.shape, np.float32)).shape == (0, 2, 5, 5)
        np.testing.assert_array_equal(layer.weight.grad, 0)


def test_sparse_linear_relu_matches_relu_of_sparse_linear(rng):
    w = CSRMatrix.random((5, 6), 0.5, rng=0, dtype=np.float32)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    np.testing.assert_array_equal(F.sparse_linear(x, w, b, relu=True), np.maximum(F.sparse_linear(x, w, b), 0))


def test_backward_fusion_leaves_replaced_backwards_alone(rng, monkeypatch):
    """A layer or ReLU whose backward is replaced on the instance (RigL's recorder), patched on
    the class, or overridden by a subclass runs its own backward: the ReLU's backward is then
    called as before, and the gradients are those of the unfused pair."""
    from sparsenet import kernels

    backwards = []
    activation_backward = kernels.activation_backward
    monkeypatch.setattr(kernels, "activation_backward",
                        lambda *a, **k: backwards.append(a[0]) or activation_backward(*a, **k))

    class MyLinear(nn.SparseLinear):
        def _backward(self, grad_out, need_input, relu_output=None):
            return super()._backward(grad_out, need_input, relu_output)

    class MyLinear2(nn.SparseLinear):
        def backward(self, grad_out):
            return super().backward(grad_out)

    x = rng.standard_normal((3, 4)).astype(np.float32)
    g = rng.standard_normal((3, 2)).astype(np.float32)

    def run(model):
        model(x)
        return model.backward(g)

    reference = run(nn.Sequential(nn.SparseLinear(4, 5, rng=0), nn.ReLU(), nn.SparseLinear(5, 2, rng=1)))
    assert backwards == []
    seen = []
    wrapped = nn.SparseLinear(5, 2, rng=1)
    object.__setattr__(wrapped, "backward", lambda v, _b=wrapped.backward: seen.append(1) or _b(v))
    relu = nn.ReLU()
    object.__setattr__(relu, "backward", lambda v, _b=relu.backward: seen.append(2) or _b(v))
    for second, act in ((wrapped, nn.ReLU()), (nn.SparseLinear(5, 2, rng=1), relu),
                        (MyLinear(5, 2, rng=1), nn.ReLU()), (MyLinear2(5, 2, rng=1), nn.ReLU())):
        np.testing.assert_array_equal(run(nn.Sequential(nn.SparseLinear(4, 5, rng=0), act, second)), reference)
    assert seen == [1, 2] and backwards == ["relu"] * 4

    def fresh():
        return nn.Sequential(nn.SparseLinear(4, 5, rng=0), nn.ReLU(), nn.SparseLinear(5, 2, rng=1))

    relu_backward = nn.ReLU.backward
    monkeypatch.setattr(nn.ReLU, "backward", lambda self, v: seen.append(3) or relu_backward(self, v))
    np.testing.assert_array_equal(run(fresh()), reference)
    assert seen == [1, 2, 3]
    monkeypatch.undo()
    from sparsenet.nn.module import _WeightedLayer

    plain_backward = _WeightedLayer.backward  # a recorder patched onto the base class sees both layers
    monkeypatch.setattr(_WeightedLayer, "backward", lambda self, v: seen.append(4) or plain_backward(self, v))
    np.testing.assert_array_equal(run(fresh()), reference)
    assert seen == [1, 2, 3, 4, 4]


def test_fused_backward_without_a_forward_raises_as_before():
    """A ReLU with nothing saved is not fused: its own backward raises the usual error, after
    the layer's (which ran, as unfused)."""
    model = nn.Sequential(nn.SparseLinear(4, 5, rng=0), nn.ReLU(), nn.SparseLinear(5, 2, rng=1))
    x = np.ones((3, 4), np.float32)
    model(x)
    model[1]._drop_saved()
    with pytest.raises(RuntimeError, match="ReLU.backward called without a matching forward"):
        model.backward(np.ones((3, 2), np.float32))


@pytest.mark.parametrize("name", list(FUSED_MODELS))
def test_backward_params_fuses_too(rng, same_bits, name):
    """The trainer's backward_params (no input gradient for the first layer) takes the fused
    chain: the same parameter gradients as the unfused model, every context consumed."""
    make, in_shape, out_shape = FUSED_MODELS[name]
    x = rng.standard_normal(in_shape)
    g = rng.standard_normal(out_shape)
    plain, fused = _unfused(make(np.float64)), make(np.float64)
    for m in (plain, fused):
        m(x)
    plain.backward(g)
    fused.backward_params(g)
    for p, q in zip(plain.parameters(), fused.parameters()):
        same_bits(q.grad, p.grad)
    assert all(m._ctx is None for m in fused)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functional_backwards_apply_relu_output_bit_for_bit(rng, same_bits, relu_gate, dtype):
    """F.sparse_linear_backward / F.linear_backward / F.conv2d_backward with relu_output: the
    input gradient times (relu_output > 0), as the ReLU's backward gives it (NaN, inf, -0)."""
    from sparsenet import kernels

    w = CSRMatrix.random((3, 4), 0.6, rng=0, dtype=dtype)
    x, g = rng.standard_normal((5, 4)).astype(dtype), rng.standard_normal((5, 3)).astype(dtype)
    gate = relu_gate(x)
    for backward, weight in ((F.sparse_linear_backward, w), (F.linear_backward, w.to_dense())):
        plain = backward(g, x, weight)[0]
        same_bits(backward(g, x, weight, relu_output=gate)[0], kernels.activation_backward("relu", gate, plain))
    xc, wc = rng.standard_normal((2, 3, 5, 4)).astype(dtype), rng.standard_normal((2, 3, 3, 3)).astype(dtype)
    gc = rng.standard_normal((2, 2, 3, 2)).astype(dtype)
    gate = relu_gate(xc)
    plain = F.conv2d_backward(gc, xc, wc)[0]
    same_bits(F.conv2d_backward(gc, xc, wc, relu_output=gate)[0], kernels.activation_backward("relu", gate, plain))
    ws = CSRMatrix.from_dense(wc.reshape(2, -1) * (rng.random((2, 27)) < 0.5))
    plain = F.sparse_conv2d_backward(gc, xc, ws, 3)[0]
    same_bits(F.sparse_conv2d_backward(gc, xc, ws, 3, relu_output=gate)[0],
              kernels.activation_backward("relu", gate, plain))


def test_kernel_gates_are_checked_on_the_host(rng):
    """The host kernels refuse a gate that numpy would broadcast or cast, as the GPU ones do."""
    from sparsenet import kernels

    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 5))
    with pytest.raises(ValueError, match="gated result's shape"):
        kernels.matmul(a, b, gate=np.ones(5))
    with pytest.raises(TypeError, match="result's dtype"):
        kernels.matmul(a, b, gate=np.ones((3, 5), np.float32))
    x, w = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((1, 2, 3, 3))
    g = rng.standard_normal((1, 1, 2, 2))
    with pytest.raises(ValueError, match="gated result's shape"):
        kernels.conv2d_backward(g, x, w, (1, 1), (0, 0), (1, 1), gate=np.ones(4))


def test_relu_output_is_checked(rng):
    w = CSRMatrix.random((3, 4), 0.5, rng=0, dtype=np.float64)
    x, g = rng.standard_normal((2, 4)), rng.standard_normal((2, 3))
    with pytest.raises(ValueError, match="relu_output must have x's shape"):
        F.sparse_linear_backward(g, x, w, relu_output=np.ones((2, 5)))
    with pytest.raises(ValueError, match="relu_output must have x's shape"):
        F.linear_backward(g, x, w.to_dense(), relu_output=np.ones((3, 4)))
    xc, gc, wc = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((1, 1, 2, 2)), rng.standard_normal((1, 2, 3, 3))
    with pytest.raises(ValueError, match="relu_output must have x's shape"):
        F.conv2d_backward(gc, xc, wc, relu_output=np.ones((1, 2, 4, 3)))
    # not read without an input gradient
    assert F.sparse_linear_backward(g, x, w, need_input=False, relu_output=np.ones(7))[0] is None
    y = np.maximum(x, 0)
    gx = F.sparse_linear_backward(g, x, w, relu_output=y)[0]
    np.testing.assert_array_equal(gx, F.sparse_linear_backward(g, x, w)[0] * (y > 0))
