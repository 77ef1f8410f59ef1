"""Shared checks for the sparsity tests."""
import numpy as np

from sparsenet import nn


def assert_canonical(csr):
    """Sorted, unique, in-range columns; monotone indptr; matching lengths."""
    csr.check(full=True)
    assert csr.indptr[0] == 0 and csr.indptr[-1] == csr.nnz == csr.data.shape[0] == csr.indices.shape[0]
    assert csr.data.flags.c_contiguous


def entries(csr):
    """{(row, col): value} of a CSR matrix."""
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    return {(int(r), int(c)): float(v) for r, c, v in zip(rows, csr.indices, csr.data)}


def state_by_entry(csr, state):
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    return {(int(r), int(c)): float(v) for r, c, v in zip(rows, csr.indices, state)}


def mlp(sizes, density=0.3, rng=0, dtype=np.float64, sparse=True):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if sparse:
            layers.append(nn.SparseLinear(a, b, density=density, rng=rng + i, dtype=dtype))
        else:
            layers.append(nn.Linear(a, b, rng=rng + i, dtype=dtype))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def train_steps(model, optimizer, x, y, steps, callback=None):
    loss = nn.CrossEntropyLoss()
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(x)
        loss(out, y)
        model.backward(loss.backward())
        optimizer.step()
        if callback is not None:
            callback()


def blobs(rng, n=64, d=10, k=3, dtype=np.float64):
    y = np.arange(n) % k
    centers = rng.standard_normal((k, d)) * 2
    x = (centers[y] + rng.standard_normal((n, d))).astype(dtype)
    return x, y
