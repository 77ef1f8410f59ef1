"""One training epoch of a SET-style sparse MLP: sparsenet vs scipy.sparse-in-NumPy vs torch dense.

Network 784-1000-1000-1000-10, Erdős–Rényi sparsity with epsilon=20 (~4% density, SET's setting),
ReLU, softmax cross-entropy, SGD with momentum 0.9, batch 128, synthetic data.

* ``sparsenet``   - ``nn.SparseLinear`` + ``optim.SGD`` (Numba CSR kernels).
* ``scipy``       - the way the SET reference code does it: weights as ``scipy.sparse.csr_matrix``
  (n_in, n_out), forward ``a @ W``, input gradient ``delta @ W.T``, weight gradient only on the
  pattern as a vectorised NumPy gather ``sum_b a[b, rows] * delta[b, cols]``, momentum in NumPy.
* ``torch-dense`` - the same layer sizes as dense ``torch.nn.Linear`` (all connections), torch's SGD.

Script (prints a Markdown table)::

    python bench/bench_train.py --samples 60000

pytest-benchmark (small, for CI)::

    python -m pytest bench/bench_train.py --benchmark-only
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SIZES = (784, 1000, 1000, 1000, 10)
EPSILON = 20.0
BATCH = 128
LR, MOMENTUM = 0.01, 0.9


def make_data(n_samples):
    from sparsenet.data import make_classification

    return make_classification(n_samples, SIZES[0], SIZES[-1], rng=0)


def sparsenet_epoch_fn(x, y, input_grad=False):
    """``input_grad=True`` also computes the first layer's input gradient, as every release
    before ``Module.backward_params`` did (the other two implementations never compute it)."""
    from sparsenet import nn, optim
    from sparsenet.data import DataLoader

    layers = []
    for i in range(len(SIZES) - 1):
        layers.append(nn.SparseLinear(SIZES[i], SIZES[i + 1], epsilon=EPSILON, rng=i))
        if i < len(SIZES) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    crit = nn.CrossEntropyLoss()

    def epoch(limit=None):
        for i, (xb, yb) in enumerate(DataLoader(x, y, BATCH, rng=0)):
            if limit is not None and i >= limit:
                break
            opt.zero_grad()
            crit(model(xb), yb)
            (model.backward if input_grad else model.backward_params)(crit.backward())
            opt.step()

    nnz = sum(m.weight.csr.nnz for m in model if isinstance(m, nn.SparseLinear))
    return epoch, nnz


def scipy_epoch_fn(x, y):
    import scipy.sparse as sp

    from sparsenet.data import DataLoader
    from sparsenet.functional import cross_entropy_backward
    from sparsenet.nn.init import er_density

    rng = np.random.default_rng(0)
    weights, biases, coords, velocity = [], [], [], []
    for n_in, n_out in zip(SIZES[:-1], SIZES[1:]):
        d = er_density(n_in, n_out, EPSILON)
        w = sp.random(n_in, n_out, density=d, format="csr", dtype=np.float32, random_state=rng)
        bound = 1 / np.sqrt(max(w.nnz / n_out, 1))
        w.data[:] = rng.uniform(-bound, bound, w.nnz)
        coo = w.tocoo()
        # keep data of csr and the (row, col) list aligned: csr built from sorted coo keeps its order
        w = sp.csr_matrix((coo.data, (coo.row, coo.col)), shape=w.shape)
        coo = w.tocoo()
        weights.append(w)
        coords.append((coo.row, coo.col))
        biases.append(np.zeros(n_out, np.float32))
        velocity.append([np.zeros(w.nnz, np.float32), np.zeros(n_out, np.float32)])

    def epoch(limit=None):
        for i, (xb, yb) in enumerate(DataLoader(x, y, BATCH, rng=0)):
            if limit is not None and i >= limit:
                break
            acts = [xb]
            for k, (w, b) in enumerate(zip(weights, biases)):
                z = np.asarray(acts[-1] @ w) + b
                acts.append(np.maximum(z, 0) if k < len(weights) - 1 else z)
            delta = cross_entropy_backward(acts[-1], yb)
            for k in range(len(weights) - 1, -1, -1):
                a = acts[k]
                rows, cols = coords[k]
                grad_w = np.einsum("bk,bk->k", a[:, rows], delta[:, cols])
                grad_b = delta.sum(0)
                if k > 0:
                    delta = np.asarray(delta @ weights[k].T) * (acts[k] > 0)
                for buf, g, target in ((velocity[k][0], grad_w, weights[k].data), (velocity[k][1], grad_b, biases[k])):
                    buf *= MOMENTUM
                    buf += g
                    target -= LR * buf

    return epoch, sum(w.nnz for w in weights)


def torch_epoch_fn(x, y):
    import torch

    torch.manual_seed(0)
    layers = []
    for i in range(len(SIZES) - 1):
        layers.append(torch.nn.Linear(SIZES[i], SIZES[i + 1]))
        if i < len(SIZES) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(x)))

    def epoch(limit=None):
        for i, start in enumerate(range(0, len(x), BATCH)):
            if limit is not None and i >= limit:
                break
            idx = perm[start:start + BATCH]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(tx[idx]), ty[idx]).backward()
            opt.step()

    return epoch, sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))


IMPLS = {"sparsenet": sparsenet_epoch_fn, "scipy": scipy_epoch_fn, "torch-dense": torch_epoch_fn,
         "sparsenet-input-grad": lambda x, y: sparsenet_epoch_fn(x, y, input_grad=True)}


def time_epoch(name, x, y, repeat=1):
    epoch, n_weights = IMPLS[name](x, y)
    epoch(limit=2)  # warm-up: JIT compilation / cache load, allocator
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        epoch()
        best = min(best, time.perf_counter() - t0)
    return best, n_weights


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--impls", default=",".join(IMPLS))
    args = parser.parse_args(argv)
    import numba

    x, y = make_data(args.samples)
    rows = []
    for name in args.impls.split(","):
        try:
            seconds, n_weights = time_epoch(name, x, y, args.repeat)
        except ImportError as err:
            print(f"skipping {name}: {err}", file=sys.stderr)
            continue
        rows.append((name, seconds, n_weights))
        print(f"{name}: {seconds:.2f} s", file=sys.stderr, flush=True)
    ref = dict((r[0], r[1]) for r in rows).get("sparsenet")
    print(f"One training epoch, {'-'.join(map(str, SIZES))}, epsilon={EPSILON:g}, {args.samples} samples, "
          f"batch {BATCH}, SGD momentum; numba threads {numba.get_num_threads()}, cpu count {os.cpu_count()}\n")
    print("| implementation | weights stored | epoch time (s) | samples/s | sparsenet speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, n_weights in rows:
        speedup = f"{seconds / ref:.1f}x" if ref else "-"
        print(f"| {name} | {n_weights:,} | {seconds:.2f} | {args.samples / seconds:,.0f} | {speedup} |")


# ---------------------------------------------------------------------------------- pytest-benchmark
try:
    import pytest
except ImportError:  # running as a script without pytest
    pytest = None

if pytest is not None:
    @pytest.mark.parametrize("impl", list(IMPLS))
    def test_train_epoch(benchmark, impl):
        if impl == "torch-dense":
            pytest.importorskip("torch")
        n = int(os.environ.get("SPARSENET_BENCH_SAMPLES", "2048"))
        x, y = make_data(n)
        epoch, n_weights = IMPLS[impl](x, y)
        epoch(limit=2)
        benchmark.group = f"train_epoch-{'-'.join(map(str, SIZES))}-eps{EPSILON:g}-n{n}"
        benchmark.extra_info.update(n_weights=n_weights, samples=n)
        benchmark.pedantic(epoch, rounds=1, iterations=1)


if __name__ == "__main__":
    main()
