"""Host-side cost of one GPU training step, without a GPU: kernel launches counted, not run.

Runs under Numba's CUDA simulator with every kernel launch replaced by a counter, so what is
timed is sparsenet's own Python work per step (layers, dispatch, validation, optimizer loop)
plus the simulator's cheap stand-in arrays, and what is counted is the number of kernel
launches, device allocations, uploads and device-to-device copies a step makes.  Neither numba's launch cost (18 µs per launch on an H200) nor device
allocation is included: this isolates what sparsenet controls.  The outputs are garbage
(nothing is computed); only the shapes flow.

    NUMBA_ENABLE_CUDASIM=1 python bench/host_overhead.py [batch] [--profile]

Model: SparseLinear MLP 784-100-100-10 (density 0.1), ReLU, cross-entropy, Adam.
"""
import collections
import cProfile
import os
import pathlib
import pstats
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(ROOT))


def main(argv):
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
        print("run under the CUDA simulator: NUMBA_ENABLE_CUDASIM=1", file=sys.stderr)
        return 2
    from numba.cuda.simulator import kernel as simkernel

    from sparsenet import nn, optim
    from sparsenet.train import _Meter, _to, _upload_target

    launches = []
    simkernel.FakeCUDAKernel.__getitem__ = lambda self, config: (lambda *args: launches.append(self.fn.__name__))
    # Device allocations and copies are counted too: without the caching allocator each
    # allocation costs about 100 µs on the H200 (five empty launches), a copy a driver call.
    from numba import cuda
    from numba.cuda.simulator.cudadrv import devicearray as simarray

    calls = collections.Counter()

    def counted(what, fn):
        def call(*args, **kwargs):
            calls[what] += 1
            return fn(*args, **kwargs)
        return call

    cuda.device_array = counted("allocations", cuda.device_array)
    cuda.to_device = counted("uploads", cuda.to_device)
    simarray.FakeCUDAArray.copy_to_device = counted("device copies", simarray.FakeCUDAArray.copy_to_device)

    batch = int(argv[0]) if argv and argv[0].isdigit() else 128
    model = nn.Sequential(nn.SparseLinear(784, 100, density=0.1, rng=0), nn.ReLU(),
                          nn.SparseLinear(100, 100, density=0.1, rng=1), nn.ReLU(),
                          nn.SparseLinear(100, 10, density=0.1, rng=2)).to("cuda")
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    meter = _Meter("cuda")

    def step():  # the body of Trainer.run's batch loop
        opt.zero_grad()
        out = model(_to("cuda", x))
        target = _upload_target("cuda", y, out)
        meter.add(loss(out, target), out, y, target)
        model.backward_params(loss.backward())
        opt.step()

    for _ in range(3):
        step()
    launches.clear()
    calls.clear()
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    per_step = (time.perf_counter() - t0) / n
    print(f"batch {batch}: host time per step {per_step * 1e6:.0f} µs (launches stubbed), "
          f"{len(launches) / n:.0f} kernel launches per step, "
          + ", ".join(f"{count / n:g} {what}" for what, count in sorted(calls.items())) + " per step")
    print(dict(collections.Counter(launches[:len(launches) // n])))
    if "--profile" in argv:
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(n):
            step()
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
