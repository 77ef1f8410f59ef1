"""CSR forward (Y = X W^T), grad-input (G W) and SDDMM against scipy.sparse, dense BLAS and torch.

Run:  python -m pytest bench/bench_csr.py --benchmark-json=bench/csr.json -p no:randomly
      python bench/report.py bench/csr.json
Each benchmark group is one (op, shape, density, threads) with the peers side by side.
"""
import numpy as np
import pytest
import scipy.sparse as sp

import sparsenet.functional as F
import sparsenet.kernels as K
from sparsenet import CSRMatrix

SHAPES = [  # (batch, in, out, density)
    (128, 784, 1000, 0.035),
    (128, 1000, 1000, 0.04),
    (128, 3072, 4000, 0.012),
    (256, 4096, 4096, 0.01),
    (256, 4096, 4096, 0.10),
]
PEERS = ["sparsenet", "scipy", "numpy-dense", "torch"]


def _case_id(case):
    batch, n_in, n_out, density = case
    return f"{batch}x{n_in}x{n_out}-d{density:g}"


@pytest.fixture(scope="module", params=SHAPES, ids=_case_id)
def operands(request):
    batch, n_in, n_out, density = request.param
    rng = np.random.default_rng(0)
    w = CSRMatrix.random((n_out, n_in), density, rng=rng, data_rvs=lambda n: rng.standard_normal(n))
    x = rng.standard_normal((batch, n_in), dtype=np.float32)
    g = rng.standard_normal((batch, n_out), dtype=np.float32)
    return request.param, w, x, g


def _torch_operands(w, x, g):
    torch = pytest.importorskip("torch")

    def csr_tensor(m):
        index = [torch.from_numpy(a.astype(np.int64)) for a in (m.indptr, m.indices)]
        return torch.sparse_csr_tensor(*index, torch.from_numpy(m.data), size=m.shape)

    tw, tw_t = csr_tensor(w), csr_tensor(w.transpose())
    return torch, tw, tw_t, torch.from_numpy(x), torch.from_numpy(g)


def _bench(benchmark, op, peer, case, w, n_threads, fn):
    batch = case[0]
    benchmark.group = f"{op}-{_case_id(case)}-t{n_threads}"
    benchmark.extra_info.update(peer=peer, nnz=w.nnz, density=w.density, batch=batch, threads=n_threads,
                                useful_flop=2 * w.nnz * batch)
    fn()  # warm: JIT compile, caches, torch's first-call setup
    benchmark(fn)


@pytest.mark.parametrize("peer", PEERS)
def test_forward(benchmark, operands, peer, n_threads):
    case, w, x, g = operands
    if peer == "sparsenet":
        fn = lambda: F.sparse_linear(x, w)  # noqa: E731
    elif peer == "scipy":
        ws = w.to_scipy()
        fn = lambda: x @ ws.T  # noqa: E731
    elif peer == "numpy-dense":
        wd = w.to_dense()
        fn = lambda: x @ wd.T  # noqa: E731
    else:
        torch, tw, _, tx, _ = _torch_operands(w, x, g)
        fn = lambda: (tw @ tx.T).T  # noqa: E731
    _bench(benchmark, "forward", peer, case, w, n_threads, fn)


@pytest.mark.parametrize("peer", PEERS)
def test_grad_input(benchmark, operands, peer, n_threads):
    case, w, x, g = operands
    if peer == "sparsenet":
        fn = lambda: K.spmm_t(w.indptr, w.indices, w.data, w.shape[1], g)  # noqa: E731
    elif peer == "scipy":
        ws = w.to_scipy()
        fn = lambda: g @ ws  # noqa: E731
    elif peer == "numpy-dense":
        wd = w.to_dense()
        fn = lambda: g @ wd  # noqa: E731
    else:
        torch, _, tw_t, _, tg = _torch_operands(w, x, g)
        fn = lambda: (tw_t @ tg.T).T  # noqa: E731
    _bench(benchmark, "grad_input", peer, case, w, n_threads, fn)


@pytest.mark.parametrize("peer", ["sparsenet", "numpy-gather", "numpy-dense", "torch"])
def test_sddmm(benchmark, operands, peer, n_threads):
    case, w, x, g = operands
    rows = np.repeat(np.arange(w.shape[0]), np.diff(w.indptr))
    cols = w.indices
    if peer == "sparsenet":
        fn = lambda: K.sddmm(w.indptr, w.indices, g, x)  # noqa: E731
    elif peer == "numpy-gather":
        fn = lambda: (g[:, rows] * x[:, cols]).sum(0)  # noqa: E731
    elif peer == "numpy-dense":
        fn = lambda: (g.T @ x)[rows, cols]  # noqa: E731
    else:
        torch, tw, _, tx, tg = _torch_operands(w, x, g)
        fn = lambda: torch.sparse.sampled_addmm(tw, tg.T, tx, beta=0.0)  # noqa: E731
    _bench(benchmark, "sddmm", peer, case, w, n_threads, fn)


def test_dense_sgemm_peak(benchmark, n_threads):
    """The FMA-rate yardstick of this machine: dense SGEMM GFLOP/s in the same run."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, 1024), dtype=np.float32)
    b = rng.standard_normal((1024, 1024), dtype=np.float32)
    benchmark.group = f"sgemm-1024-t{n_threads}"
    benchmark.extra_info.update(peer="numpy-dense", threads=n_threads, useful_flop=2 * 1024**3)
    benchmark(lambda: a @ b)
