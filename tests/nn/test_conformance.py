"""One conformance suite run over every layer (like scikit-learn's parametrize_with_checks)."""
import numpy as np
import pytest

import sparsenet.functional as F
from sparsenet import nn
from sparsenet.testing import gradcheck


def _needs(*names):
    missing = [n for n in names if not hasattr(F, n)]
    return pytest.mark.skipif(bool(missing), reason=f"sparsenet.functional lacks {missing}")


CONV = _needs("conv2d", "conv2d_backward")
SPCONV = _needs("sparse_conv2d", "sparse_conv2d_backward")
LC = _needs("locally_connected2d", "locally_connected2d_backward")
POOL = _needs("max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward")

# name -> (factory(dtype, seed), input shape)
LAYERS = {
    "Linear": (lambda dt, s: nn.Linear(5, 3, rng=s, dtype=dt), (4, 5)),
    "Linear-nobias-3d": (lambda dt, s: nn.Linear(5, 3, bias=False, rng=s, dtype=dt), (2, 3, 5)),
    "SparseLinear": (lambda dt, s: nn.SparseLinear(6, 4, density=0.5, rng=s, dtype=dt), (5, 6)),
    "SparseLinear-er": (lambda dt, s: nn.SparseLinear(8, 7, epsilon=1.0, rng=s, dtype=dt), (3, 8)),
    "BatchNorm1d": (lambda dt, s: nn.BatchNorm1d(3, dtype=dt), (6, 3)),
    "BatchNorm1d-3d": (lambda dt, s: nn.BatchNorm1d(3, dtype=dt), (4, 3, 5)),
    "BatchNorm2d": (lambda dt, s: nn.BatchNorm2d(2, dtype=dt), (3, 2, 4, 4)),
    "Dropout": (lambda dt, s: nn.Dropout(0.3, rng=s), (4, 6)),
    "Flatten": (lambda dt, s: nn.Flatten(), (2, 3, 4)),
    "ReLU": (lambda dt, s: nn.ReLU(), (3, 5)),
    "LeakyReLU": (lambda dt, s: nn.LeakyReLU(0.2), (3, 5)),
    "Tanh": (lambda dt, s: nn.Tanh(), (3, 5)),
    "Sigmoid": (lambda dt, s: nn.Sigmoid(), (3, 5)),
    "Softmax": (lambda dt, s: nn.Softmax(dim=1), (3, 5)),
    "Sequential": (lambda dt, s: nn.Sequential(nn.Linear(5, 6, rng=s, dtype=dt), nn.Tanh(),
                                               nn.SparseLinear(6, 2, density=0.6, rng=s + 1, dtype=dt)), (4, 5)),
    "Conv2d": (lambda dt, s: nn.Conv2d(2, 3, 3, padding=1, rng=s, dtype=dt), (2, 2, 5, 5)),
    "Conv2d-strided-groups": (lambda dt, s: nn.Conv2d(4, 2, (3, 2), stride=2, dilation=(1, 2), groups=2,
                                                      rng=s, dtype=dt), (2, 4, 7, 7)),
    "SparseConv2d": (lambda dt, s: nn.SparseConv2d(2, 4, 3, padding=1, density=0.5, rng=s, dtype=dt),
                     (2, 2, 5, 5)),
    "MaxPool2d": (lambda dt, s: nn.MaxPool2d(2), (2, 3, 4, 4)),
    "AvgPool2d": (lambda dt, s: nn.AvgPool2d(3, stride=2, padding=1), (2, 3, 5, 5)),
}
MARKS = {"Conv2d": CONV, "Conv2d-strided-groups": CONV, "SparseConv2d": SPCONV, "MaxPool2d": POOL,
         "AvgPool2d": POOL}
if hasattr(nn, "LocallyConnected2d"):
    LAYERS["LocallyConnected2d"] = (lambda dt, s: nn.LocallyConnected2d(2, 3, (5, 5), 3, stride=1, padding=1,
                                                                        rng=s, dtype=dt), (2, 2, 5, 5))
    MARKS["LocallyConnected2d"] = LC

PARAMS = [pytest.param(name, marks=MARKS.get(name, ())) for name in LAYERS]


def _make(name, dtype=np.float32, seed=0):
    factory, shape = LAYERS[name]
    return factory(dtype, seed), shape


def _input(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _run(layer, x, grad_seed=1):
    y = layer(x)
    g = np.random.default_rng(grad_seed).standard_normal(y.shape).astype(y.dtype)
    gx = layer.backward(g)
    return y, g, gx


@pytest.mark.parametrize("name", PARAMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shapes_and_dtype(name, dtype, rng):
    layer, shape = _make(name, dtype)
    x = _input(rng, shape, dtype)
    y, g, gx = _run(layer, x)
    assert y.dtype == dtype and gx.dtype == dtype
    assert gx.shape == x.shape
    assert y.shape[0] == x.shape[0]
    for p in layer.parameters():
        assert p.grad is not None and p.grad.shape == p.shape and p.grad.dtype == dtype
        assert p.data.dtype == dtype


@pytest.mark.parametrize("name", PARAMS)
def test_no_input_mutation(name, rng):
    layer, shape = _make(name)
    x = _input(rng, shape, np.float32)
    x0 = x.copy()
    y = layer(x)
    g = rng.standard_normal(y.shape).astype(y.dtype)
    g0 = g.copy()
    layer.backward(g)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(g, g0)


@pytest.mark.parametrize("name", PARAMS)
def test_non_contiguous_input(name, rng):
    layer, shape = _make(name, np.float64)
    big = _input(rng, shape[:-1] + (2 * shape[-1],), np.float64)
    x_nc = big[..., ::2]
    assert not x_nc.flags.c_contiguous
    x_c = np.ascontiguousarray(x_nc)
    rng_state = getattr(layer, "rng", None) and layer.rng.bit_generator.state
    y1, _, gx1 = _run(layer, x_nc)
    grads1 = [p.grad.copy() for p in layer.parameters()]
    layer.zero_grad()
    if rng_state:
        layer.rng.bit_generator.state = rng_state
    y2, _, gx2 = _run(layer, x_c)
    np.testing.assert_allclose(y1, y2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx1, gx2, rtol=1e-12, atol=1e-12)
    for a, p in zip(grads1, layer.parameters()):
        np.testing.assert_allclose(a, p.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", PARAMS)
def test_seeded_determinism(name, rng):
    x = _input(rng, LAYERS[name][1], np.float32)
    outs = []
    for _ in range(2):
        layer, _ = _make(name, np.float32, seed=7)
        y, _, gx = _run(layer, x)
        outs.append((y, gx, [p.grad for p in layer.parameters()]))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    for a, b in zip(outs[0][2], outs[1][2]):
        np.testing.assert_array_equal(a, b)


def _all_parameters(module, seen=None):
    """Every Parameter reachable through attributes, found independently of parameters()."""
    found = []
    for value in vars(module).values():
        if isinstance(value, nn.Parameter):
            found.append(value)
        elif isinstance(value, nn.Module):
            found += _all_parameters(value)
    return found


@pytest.mark.parametrize("name", PARAMS)
def test_parameters_complete_and_ordered(name):
    layer, _ = _make(name)
    params = layer.parameters()
    assert {id(p) for p in params} == {id(p) for p in _all_parameters(layer)}
    assert len({id(p) for p in params}) == len(params)
    names = [n for n, _ in layer.named_parameters()]
    assert len(names) == len(params)
    for i, n in enumerate(names):
        if n.endswith("bias") and n[:-4] + "weight" in names:
            assert names.index(n[:-4] + "weight") < i


@pytest.mark.parametrize("name", PARAMS)
def test_state_round_trip(name, rng):
    layer, shape = _make(name, np.float64, seed=1)
    other, _ = _make(name, np.float64, seed=2)
    x = _input(rng, shape, np.float64)
    layer(x)  # updates BatchNorm running statistics, so buffers differ from a fresh layer
    other.load_state_dict(layer.state_dict())
    layer.eval(), other.eval()
    np.testing.assert_array_equal(layer(x), other(x))
    rebuilt = nn.from_config(layer.describe())
    rebuilt.load_state_dict(layer.state_dict())
    rebuilt.eval()
    np.testing.assert_array_equal(layer(x), rebuilt(x))


@pytest.mark.parametrize("name", PARAMS)
def test_backward_protocol(name, rng):
    layer, shape = _make(name)
    x = _input(rng, shape, np.float32)
    with pytest.raises(RuntimeError, match="without a matching forward"):
        layer.backward(np.ones(1, np.float32))
    y = layer(x)
    layer.backward(np.ones_like(y))
    first = [p.grad.copy() for p in layer.parameters()]
    with pytest.raises(RuntimeError, match="without a matching forward"):
        layer.backward(np.ones_like(y))
    layer(x)
    layer.backward(np.ones_like(y))  # accumulates
    for a, p in zip(first, layer.parameters()):
        np.testing.assert_allclose(p.grad, 2 * a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", PARAMS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradcheck_float64(name, mode, rng):
    layer, shape = _make(name, np.float64, seed=3)
    layer.train(mode == "train")
    x = _input(rng, shape, np.float64)
    if mode == "eval":
        layer.train()(x)  # non-trivial running statistics
        layer.eval()
    params = layer.parameters()
    state = getattr(layer, "rng", None) and layer.rng.bit_generator.state

    def fn(x_, *values):
        saved = [p.data.copy() for p in params]
        for p, v in zip(params, values):
            p.data[...] = v
        if state:
            layer.rng.bit_generator.state = state
        bn_buffers = [(m, m.running_mean.copy(), m.running_var.copy()) for m in layer.modules()
                      if hasattr(m, "running_mean")]
        try:
            return layer(x_)
        finally:
            for p, v in zip(params, saved):
                p.data[...] = v
            for m, mean, var in bn_buffers:
                m.running_mean, m.running_var = mean, var

    y = fn(x, *[p.data for p in params])
    g = rng.standard_normal(y.shape)
    layer.zero_grad()
    gx = layer.backward(g)
    gradcheck(fn, [x] + [p.data for p in params], g, [gx] + [p.grad for p in params],
              eps=1e-6, rtol=1e-5, atol=1e-8, rng=rng)


@pytest.mark.parametrize("name", PARAMS)
def test_backward_params_matches_backward_and_returns_none(name, rng):
    """backward_params accumulates exactly backward's parameter gradients (the same kernels,
    minus the input gradient), returns None, and consumes the forward like backward does."""
    full, shape = _make(name, np.float64)
    lean, _ = _make(name, np.float64)
    x = _input(rng, shape, np.float64)
    if isinstance(full, nn.Dropout):  # same masks for both
        full.rng, lean.rng = np.random.default_rng(3), np.random.default_rng(3)
    y = full(x)
    g = np.random.default_rng(1).standard_normal(y.shape)
    full.backward(g)
    np.testing.assert_array_equal(lean(x), y)
    assert lean.backward_params(g) is None
    for (pname, p), q in zip(full.named_parameters(), lean.parameters()):
        np.testing.assert_array_equal(q.grad, p.grad, err_msg=pname)
    with pytest.raises(RuntimeError, match="without a matching forward"):
        lean.backward(g)
