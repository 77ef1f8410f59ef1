"""Topology-update cost: SET and RigL steps on CSR weights vs the dense-mask approach, and the
top-k hard threshold (zero the smallest 90% of a dense weight) vs argpartition and torch.topk.

SET (``set_update``) drops and regrows in O(nnz); the dense-mask peer (what mask-based
libraries do) pays O(out * in) per update.  RigL's growth needs the dense gradient G^T X: the
``stream`` peer computes it tile by tile into a bounded heap (``kernels.topk_abs_grad``), the
``dense-gradient`` peer materialises the (out, in) matrix, masks it and takes an argpartition.
Peak extra memory (tracemalloc, NumPy allocations) goes into ``extra_info["peak_mib"]``.
Every top-k run first restores the weight (``np.copyto``, the same cost for every peer), so
each call selects from the same values rather than from the zeros of the previous call.

Run:  python -m pytest bench/bench_topology.py --benchmark-json=bench/topology.json -p no:randomly
      python bench/report.py bench/topology.json
or    PYTHONPATH=. python bench/bench_topology.py   (a markdown table, as in RESULTS.md)
"""
import sys
import time
import tracemalloc

import numpy as np
import pytest

from sparsenet import kernels, nn
from sparsenet.nn.init import er_density
from sparsenet.sparsity import rigl_update, set_update
from sparsenet.sparsity._topology import csr_rows

SHAPES = [(784, 1000), (1000, 1000), (2048, 2048), (4096, 4096)]  # (in, out), ER epsilon 20
BATCH = 128
FRACTION = 0.3


def _case(n_in, n_out, seed=0):
    rng = np.random.default_rng(seed)
    layer = nn.SparseLinear(n_in, n_out, density=er_density(n_in, n_out, 20), rng=rng)
    x = rng.standard_normal((BATCH, n_in), dtype=np.float32)
    g = rng.standard_normal((BATCH, n_out), dtype=np.float32)
    return layer, x, g, rng


def set_sparse(layer, x, g, rng):
    set_update(layer.weight, FRACTION, rng=rng)


def rigl_stream(layer, x, g, rng):
    rigl_update(layer, x, g, FRACTION)


def _dense_mask(layer):
    w = layer.weight.csr.to_dense()
    return w, w != 0


def set_dense_mask(w, mask, x, g, rng):
    """SET on a dense weight + mask: O(out * in) per update."""
    n = int(round(FRACTION * mask.sum()))
    score = np.where(mask, np.abs(w), np.inf).ravel()
    drop = np.argpartition(score, n - 1)[:n]
    mask.ravel()[drop] = False
    w.ravel()[drop] = 0
    grow = rng.choice(np.flatnonzero(~mask.ravel()), n, replace=False)
    mask.ravel()[grow] = True
    w.ravel()[grow] = rng.uniform(-0.1, 0.1, n)


def rigl_dense_gradient(w, mask, x, g, rng):
    """RigL as mask-based implementations do it: materialise |G^T X| (out x in)."""
    n = int(round(FRACTION * mask.sum()))
    score = np.where(mask, np.abs(w), np.inf).ravel()
    drop = np.argpartition(score, n - 1)[:n]
    mask.ravel()[drop] = False
    w.ravel()[drop] = 0
    grad = np.abs(g.T @ x)
    grad[mask] = -np.inf
    grow = np.argpartition(grad.ravel(), grad.size - n)[-n:]
    mask.ravel()[grow] = True
    w.ravel()[grow] = 0


TOPK_SPARSITY = 0.9


def topk_sparsenet(w, n):
    kernels.zero_smallest_(w, n)


def topk_argpartition(w, n):
    """What a NumPy user writes (sparsenet's host path before the deterministic select)."""
    flat = w.reshape(-1)
    flat[np.argpartition(np.abs(flat), n - 1)[:n]] = 0


def topk_torch(w, n):
    import torch  # noqa: PLC0415

    flat = torch.from_numpy(w.reshape(-1))
    flat[torch.topk(flat.abs(), n, largest=False, sorted=False).indices] = 0


TOPK_PEERS = {"sparsenet": topk_sparsenet, "numpy-argpartition": topk_argpartition, "torch-topk": topk_torch}


def _topk_runner(peer, n_in, n_out):
    w0 = np.random.default_rng(0).standard_normal((n_out, n_in), dtype=np.float32)
    w = w0.copy()
    n = int(round(TOPK_SPARSITY * w.size))
    fn = TOPK_PEERS[peer]

    def run():
        np.copyto(w, w0)
        fn(w, n)
    return run


PEERS = {
    "set": {"sparsenet-csr": set_sparse, "dense-mask": set_dense_mask},
    "rigl": {"sparsenet-stream": rigl_stream, "dense-gradient": rigl_dense_gradient},
}


def _runner(op, peer, n_in, n_out):
    layer, x, g, rng = _case(n_in, n_out)
    fn = PEERS[op][peer]
    if peer.startswith("sparsenet"):
        return layer, (lambda: fn(layer, x, g, rng))
    w, mask = _dense_mask(layer)
    return layer, (lambda: fn(w, mask, x, g, rng))


def _peak_mib(run):
    tracemalloc.start()
    tracemalloc.reset_peak()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("peer", ["sparsenet-csr", "dense-mask"])
def test_set_update(benchmark, shape, peer, n_threads):
    layer, run = _runner("set", peer, *shape)
    run()  # warm the JIT
    benchmark.group = f"set-{shape[0]}x{shape[1]}-b{BATCH}-t{n_threads}"
    benchmark.extra_info.update(peer=peer, nnz=layer.weight.csr.nnz, density=layer.weight.csr.density,
                                threads=n_threads, peak_mib=_peak_mib(run))
    benchmark(run)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("peer", ["sparsenet-stream", "dense-gradient"])
def test_rigl_update(benchmark, shape, peer, n_threads):
    layer, run = _runner("rigl", peer, *shape)
    run()
    benchmark.group = f"rigl-{shape[0]}x{shape[1]}-b{BATCH}-t{n_threads}"
    benchmark.extra_info.update(peer=peer, nnz=layer.weight.csr.nnz, density=layer.weight.csr.density,
                                threads=n_threads, peak_mib=_peak_mib(run))
    benchmark(run)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("peer", list(TOPK_PEERS))
def test_topk_threshold(benchmark, shape, peer, n_threads):
    if peer == "torch-topk":
        pytest.importorskip("torch")
    run = _topk_runner(peer, *shape)
    run()
    benchmark.group = f"topk-{shape[0]}x{shape[1]}-s{TOPK_SPARSITY}-t{n_threads}"
    benchmark.extra_info.update(peer=peer, threads=n_threads, peak_mib=_peak_mib(run))
    benchmark(run)


def _check_equal_selection(n_in=784, n_out=1000):
    """The streamed top-k selects exactly what the dense gradient selects (tie-free data)."""
    layer, x, g, _ = _case(n_in, n_out)
    csr = layer.weight.csr
    rows, cols, _ = kernels.topk_abs_grad(csr.indptr, csr.indices, g, x, 500)
    dense = np.abs(g.T @ x)
    dense[csr_rows(csr), csr.indices] = -np.inf
    ref = np.sort(np.argpartition(dense.ravel(), dense.size - 500)[-500:])
    return np.array_equal(rows * n_in + cols, ref)


def main(repeats=5):
    import numba

    print(f"threads: numba {numba.get_num_threads()}; batch {BATCH}; fraction {FRACTION}; "
          f"streamed top-k equals dense selection: {_check_equal_selection()}")
    print("| update | layer (in->out) | nnz | peer | median ms | peak extra MiB |")
    print("|---|---|---|---|---|---|")
    for op, peers in PEERS.items():
        for shape in SHAPES:
            for peer in peers:
                layer, run = _runner(op, peer, *shape)
                run()
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - t0)
                peak = _peak_mib(run)
                print(f"| {op} | {shape[0]}->{shape[1]} | {layer.weight.csr.nnz} | {peer} | "
                      f"{1e3 * np.median(times):.2f} | {peak:.1f} |", flush=True)
    for shape in SHAPES:
        for peer in TOPK_PEERS:
            run = _topk_runner(peer, *shape)
            try:
                run()
            except ImportError:  # torch not installed
                continue
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            print(f"| top-k {TOPK_SPARSITY:.0%} | {shape[0]}->{shape[1]} | {shape[0] * shape[1]} (dense) | {peer} | "
                  f"{1e3 * np.median(times):.2f} | {_peak_mib(run):.1f} |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
