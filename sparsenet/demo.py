"""Smallest end-to-end run: a sparse softmax classifier on scikit-learn's bundled digits.

``python -m sparsenet.demo`` trains ``softmax(x @ W.T + b)`` with a 50%-dense CSR weight by
plain minibatch SGD and prints test accuracy, sparsity and time.
"""
import time

import numpy as np

from . import functional as F
from .csr import CSRMatrix


def main(density=0.5, epochs=40, batch_size=64, lr=1.0, seed=0):
    from sklearn.datasets import load_digits  # optional extra "data"

    rng = np.random.default_rng(seed)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = rng.permutation(len(x))
    n_test = len(x) // 5
    test, train = order[:n_test], order[n_test:]
    w = CSRMatrix.random((10, 64), density, rng=rng, data_rvs=lambda n: 0.1 * rng.standard_normal(n))
    b = np.zeros(10, np.float32)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(train), len(train) // batch_size):
            logits = F.sparse_linear(x[idx], w, b)
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1.0  # d(mean cross-entropy)/d(logits), times batch
            _, grad_w, grad_b = F.sparse_linear_backward(p / len(idx), x[idx], w)
            w.data -= lr * grad_w
            b -= lr * grad_b
    seconds = time.perf_counter() - start
    accuracy = np.mean(F.sparse_linear(x[test], w, b).argmax(axis=1) == y[test])
    print(f"digits: test accuracy {accuracy:.3f}, weight sparsity {1 - w.density:.0%} "
          f"({w.nnz} of {w.shape[0] * w.shape[1]} weights), train time {seconds:.2f}s")
    return accuracy


if __name__ == "__main__":
    main()
