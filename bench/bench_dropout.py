"""Dropout forward + backward on the host: sparsenet's in-kernel Philox mask against the NumPy
mask it replaced and torch's CPU dropout.

Run:  python -m pytest bench/bench_dropout.py --benchmark-json=bench/dropout.json -p no:randomly \
          --benchmark-min-rounds=5 --benchmark-max-time=0.5
      python bench/report.py bench/dropout.json
Each group is one (shape, threads) with the peers side by side; each round is one forward and
one backward, as a training step makes them.  ``sparsenet`` recomputes the mask at backward
(it stores nothing); the peers store theirs (``numpy-mask`` a float mask of x's dtype, as our
Dropout layer did before, ``torch`` a bool mask).
"""
import numpy as np
import pytest

import sparsenet.functional as F

SHAPES = {  # name: (activation shape, memory order); a sparse layer's output is F-ordered
    "mlp-128x1000-F": ((128, 1000), "F"),
    "mlp-128x1000-C": ((128, 1000), "C"),
    "mlp-1024x4096-F": ((1024, 4096), "F"),
    "conv-64x32x16x16": ((64, 32, 16, 16), "C"),
}
P = 0.5


def _numpy_mask(x, rng):
    mask = (rng.random(x.shape) >= P).astype(x.dtype) * x.dtype.type(1 / (1 - P))
    return x * mask, mask


@pytest.mark.parametrize("peer", ["sparsenet", "numpy-mask", "torch"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_dropout_step(benchmark, n_threads, name, peer):
    rng = np.random.default_rng(0)
    shape, order = SHAPES[name]
    x = np.asarray(rng.standard_normal(shape, dtype=np.float32), order=order)
    g = np.asarray(rng.standard_normal(shape, dtype=np.float32), order=order)
    if peer == "sparsenet":
        def step():
            seed = int(rng.integers(2**64, dtype=np.uint64))
            F.dropout(x, P, seed=seed)
            F.dropout_backward(g, P, seed=seed)
    elif peer == "numpy-mask":
        def step():
            _, mask = _numpy_mask(x, rng)
            g * mask
    else:
        torch = pytest.importorskip("torch")
        xt, gt = torch.from_numpy(x), torch.from_numpy(g)

        def step():
            _, mask = torch.native_dropout(xt, P, True)
            torch.ops.aten.native_dropout_backward(gt, mask, 1 / (1 - P))
    benchmark.group = f"dropout-{name}-t{n_threads}"
    benchmark.extra_info.update(peer=peer, threads=n_threads, elements=x.size)
    step()  # warm: JIT load, torch first-call setup
    benchmark(step)
