"""Direct convolution (forward, grad-input, grad-weight, whole step) against NumPy im2col+BLAS and torch.

Run:  python -m pytest bench/bench_conv.py --benchmark-json=bench/conv.json -p no:randomly \
          --benchmark-min-rounds=3 --benchmark-max-time=0.5
      python bench/report.py bench/conv.json
Each group is one (op, shape, threads) with the peers side by side; ``useful_flop`` counts
2 * multiply-adds of the dense convolution (of the stored taps for the weight-sparse one).
"""
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import sparsenet.functional as F
import sparsenet.kernels as K
from sparsenet import CSRMatrix

SHAPES = {  # name: (N, C, H, W, O, k, stride, padding)
    "lenet-conv1": (64, 1, 28, 28, 6, 5, 1, 2),
    "lenet-conv2": (64, 6, 14, 14, 16, 5, 1, 0),
    "cifar-3x3-64": (64, 64, 32, 32, 64, 3, 1, 1),
    "s2-3x3-64to128": (64, 64, 32, 32, 128, 3, 2, 1),
}
PEERS = ["sparsenet", "numpy-im2col", "torch"]
SPARSE_DENSITIES = [0.5, 0.2, 0.1, 0.05]


# ------------------------------------------------------------------ the NumPy im2col + BLAS peer
def im2col(x, k, s, p):
    """(N*OH*OW, C*k*k) patch matrix: the k*k-times-larger copy our kernels avoid."""
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    n, c, oh, ow = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * k * k), oh, ow


def np_forward(x, w, s, p):
    cols, oh, ow = im2col(x, w.shape[2], s, p)
    y = cols @ w.reshape(w.shape[0], -1).T
    return np.ascontiguousarray(y.reshape(x.shape[0], oh, ow, -1).transpose(0, 3, 1, 2))


def np_grad_input(g, x_shape, w, s, p):
    n, c, h, wd = x_shape
    o, _, k, _ = w.shape
    oh, ow = g.shape[2:]
    gcols = (g.transpose(0, 2, 3, 1).reshape(-1, o) @ w.reshape(o, -1)).reshape(n, oh, ow, c, k, k)
    gxp = np.zeros((n, c, h + 2 * p, wd + 2 * p), dtype=g.dtype)
    for ki in range(k):
        for kj in range(k):
            gxp[:, :, ki:ki + s * (oh - 1) + 1:s, kj:kj + s * (ow - 1) + 1:s] += gcols[..., ki, kj].transpose(0, 3, 1, 2)
    return gxp[:, :, p:p + h, p:p + wd]


def np_grad_weight(g, x, w_shape, s, p):
    cols, _, _ = im2col(x, w_shape[2], s, p)
    return (g.transpose(0, 2, 3, 1).reshape(-1, w_shape[0]).T @ cols).reshape(w_shape)


# ------------------------------------------------------------------ fixtures and runner
@pytest.fixture(scope="module", params=list(SHAPES), ids=str)
def operands(request):
    n, c, h, w, o, k, s, p = SHAPES[request.param]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((o, c, k, k), dtype=np.float32)
    b = rng.standard_normal(o, dtype=np.float32)
    oh = K.conv2d_output_size(h, k, s, p, 1)
    ow = K.conv2d_output_size(w, k, s, p, 1)
    g = rng.standard_normal((n, o, oh, ow), dtype=np.float32)
    return request.param, (s, p), x, wt, b, g


def _bench(benchmark, op, peer, name, n_threads, flop, fn, **info):
    benchmark.group = f"{op}-{name}-t{n_threads}"
    benchmark.extra_info.update(peer=peer, threads=n_threads, useful_flop=flop,
                                gflops_note="useful_flop / median time", **info)
    fn()  # warm: JIT compile (or load from cache), BLAS and torch first-call setup
    benchmark(fn)


def _flop(x, wt, g):
    return 2 * g.size * wt.shape[1] * wt.shape[2] * wt.shape[3]


def _torch(x, wt, g):
    torch = pytest.importorskip("torch")
    return torch, torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(g)


@pytest.mark.parametrize("peer", PEERS)
def test_forward(benchmark, operands, peer, n_threads):
    name, (s, p), x, wt, b, g = operands
    if peer == "sparsenet":
        fn = lambda: F.conv2d(x, wt, b, stride=s, padding=p)  # noqa: E731
    elif peer == "numpy-im2col":
        fn = lambda: np_forward(x, wt, s, p) + b[:, None, None]  # noqa: E731
    else:
        torch, tx, tw, _ = _torch(x, wt, g)
        tb = torch.from_numpy(b)
        fn = lambda: torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p)  # noqa: E731
    _bench(benchmark, "conv-forward", peer, name, n_threads, _flop(x, wt, g), fn)


@pytest.mark.parametrize("peer", PEERS)
def test_grad_input(benchmark, operands, peer, n_threads):
    name, (s, p), x, wt, b, g = operands
    if peer == "sparsenet":
        fn = lambda: K.conv2d_backward(g, x, wt, (s, s), (p, p), (1, 1), True, False)  # noqa: E731
    elif peer == "numpy-im2col":
        fn = lambda: np_grad_input(g, x.shape, wt, s, p)  # noqa: E731
    else:
        torch, tx, tw, tg = _torch(x, wt, g)
        fn = lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tg, stride=s, padding=p)  # noqa: E731
    _bench(benchmark, "conv-grad-input", peer, name, n_threads, _flop(x, wt, g), fn)


@pytest.mark.parametrize("peer", PEERS)
def test_grad_weight(benchmark, operands, peer, n_threads):
    name, (s, p), x, wt, b, g = operands
    if peer == "sparsenet":
        fn = lambda: K.conv2d_backward(g, x, wt, (s, s), (p, p), (1, 1), False, True)  # noqa: E731
    elif peer == "numpy-im2col":
        fn = lambda: np_grad_weight(g, x, wt.shape, s, p)  # noqa: E731
    else:
        torch, tx, tw, tg = _torch(x, wt, g)
        fn = lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tg, stride=s, padding=p)  # noqa: E731
    _bench(benchmark, "conv-grad-weight", peer, name, n_threads, _flop(x, wt, g), fn)


@pytest.mark.parametrize("peer", PEERS)
def test_step(benchmark, operands, peer, n_threads):
    """Forward plus both gradients (and the bias gradient): one training step of the layer."""
    name, (s, p), x, wt, b, g = operands
    if peer == "sparsenet":
        def fn():
            F.conv2d(x, wt, b, stride=s, padding=p)
            return F.conv2d_backward(g, x, wt, stride=s, padding=p)
    elif peer == "numpy-im2col":
        def fn():
            cols, oh, ow = im2col(x, wt.shape[2], s, p)
            o = wt.shape[0]
            np.ascontiguousarray((cols @ wt.reshape(o, -1).T).reshape(x.shape[0], oh, ow, o).transpose(0, 3, 1, 2))
            g2 = g.transpose(0, 2, 3, 1).reshape(-1, o)
            return np_grad_input(g, x.shape, wt, s, p), g2.T @ cols, g2.sum(0)
    else:
        torch, tx, tw, tg = _torch(x, wt, g)
        tb = torch.from_numpy(b)

        def fn():
            xr, wr, br = (t.clone().requires_grad_() for t in (tx, tw, tb))
            torch.nn.functional.conv2d(xr, wr, br, stride=s, padding=p).backward(tg)
            return xr.grad, wr.grad, br.grad
    _bench(benchmark, "conv-step", peer, name, n_threads, 3 * _flop(x, wt, g), fn)


@pytest.mark.parametrize("density", SPARSE_DENSITIES)
@pytest.mark.parametrize("peer", ["sparsenet", "sparsenet-dense", "torch"])
def test_sparse_forward(benchmark, peer, density, n_threads):
    """Weight-sparse conv (CIFAR 3x3 64->64) against our dense conv and torch on the same (densified) filters."""
    n, c, h, w, o, k, s, p = SHAPES["cifar-3x3-64"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    ws = CSRMatrix.random((o, c * k * k), density, rng=rng, data_rvs=rng.standard_normal)
    wd = ws.to_dense().reshape(o, c, k, k)
    if peer == "sparsenet":
        fn = lambda: F.sparse_conv2d(x, ws, k, stride=s, padding=p)  # noqa: E731
    elif peer == "sparsenet-dense":
        fn = lambda: F.conv2d(x, wd, stride=s, padding=p)  # noqa: E731
    else:
        torch, tx, tw, _ = _torch(x, wd, x)
        fn = lambda: torch.nn.functional.conv2d(tx, tw, stride=s, padding=p)  # noqa: E731
    benchmark.group = f"sparse-conv-forward-cifar-3x3-64-d{density:g}-t{n_threads}"
    benchmark.extra_info.update(peer=peer, threads=n_threads, density=density, nnz=ws.nnz,
                                useful_flop=2 * ws.nnz * n * h * w)
    fn()
    benchmark(fn)


@pytest.mark.parametrize("density", [0.1])
@pytest.mark.parametrize("peer", ["sparsenet", "sparsenet-dense"])
def test_sparse_step(benchmark, peer, density, n_threads):
    """Forward + grad-input + grad-weight (on the pattern) of the weight-sparse conv vs our dense conv."""
    n, c, h, w, o, k, s, p = SHAPES["cifar-3x3-64"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    g = rng.standard_normal((n, o, h, w), dtype=np.float32)
    ws = CSRMatrix.random((o, c * k * k), density, rng=rng, data_rvs=rng.standard_normal)
    wd = ws.to_dense().reshape(o, c, k, k)
    if peer == "sparsenet":
        def fn():
            F.sparse_conv2d(x, ws, k, stride=s, padding=p)
            return F.sparse_conv2d_backward(g, x, ws, k, stride=s, padding=p)
    else:
        def fn():
            F.conv2d(x, wd, stride=s, padding=p)
            return F.conv2d_backward(g, x, wd, stride=s, padding=p)
    benchmark.group = f"sparse-conv-step-cifar-3x3-64-d{density:g}-t{n_threads}"
    benchmark.extra_info.update(peer=peer, threads=n_threads, density=density, nnz=ws.nnz,
                                useful_flop=3 * 2 * ws.nnz * n * h * w)
    fn()
    benchmark(fn)
