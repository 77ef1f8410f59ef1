"""CSR forward / grad-input / SDDMM, one library per process, as a ratio table.

    python bench/csr_isolated.py --threads 1 2

Why a separate process per library: the thread pools of Numba (OpenMP/TBB/workqueue), OpenBLAS
and torch spin-wait after a parallel region and steal each other's cores when they share a
process, which distorts 2-thread timings by up to 10-40x on a 2-core machine.  The pytest-benchmark
suite (bench/bench_csr.py) keeps all peers in one process; use this script for the figures.
Times are the minimum over repetitions (float32); GF/s = 2 * nnz * batch / time.
"""
import argparse
import json
import os
import subprocess
import sys
import time

SHAPES = [(128, 784, 1000, 0.035), (128, 1000, 1000, 0.04), (128, 3072, 4000, 0.012),
          (256, 4096, 4096, 0.01), (256, 4096, 4096, 0.10)]
LIBS = ["sparsenet", "scipy", "numpy-dense", "torch"]


def _min_time(fn, reps=40, budget=2.0):
    fn()
    best, start, n = float("inf"), time.perf_counter(), 0
    while n < reps and (time.perf_counter() - start < budget or n < 5):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        n += 1
    return best


def _worker(lib, threads):
    import numpy as np

    from sparsenet import CSRMatrix

    if lib == "sparsenet":
        import numba

        import sparsenet.kernels as K

        numba.set_num_threads(threads)
    elif lib == "torch":
        import torch

        torch.set_num_threads(threads)
    results = {}
    for batch, n_in, n_out, density in SHAPES:
        rng = np.random.default_rng(0)
        w = CSRMatrix.random((n_out, n_in), density, rng=rng, data_rvs=lambda n: rng.standard_normal(n))
        x = rng.standard_normal((batch, n_in), dtype=np.float32)
        g = rng.standard_normal((batch, n_out), dtype=np.float32)
        rows = np.repeat(np.arange(n_out), np.diff(w.indptr))
        r = {}
        if lib == "sparsenet":
            r["forward"] = _min_time(lambda: K.spmm(w.indptr, w.indices, w.data, x))
            r["grad_input"] = _min_time(lambda: K.spmm_t(w.indptr, w.indices, w.data, n_in, g))
            r["sddmm"] = _min_time(lambda: K.sddmm(w.indptr, w.indices, g, x))
        elif lib == "scipy":
            s = w.to_scipy()
            r["forward"] = _min_time(lambda: x @ s.T)
            r["grad_input"] = _min_time(lambda: g @ s)
            r["sddmm"] = _min_time(lambda: (g[:, rows] * x[:, w.indices]).sum(0), reps=3, budget=0.1)
        elif lib == "numpy-dense":
            d = w.to_dense()
            r["forward"] = _min_time(lambda: x @ d.T)
            r["grad_input"] = _min_time(lambda: g @ d)
            r["sddmm"] = _min_time(lambda: (g.T @ x)[rows, w.indices])
        else:
            def csr(m):
                return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                               torch.from_numpy(m.indices.astype(np.int64)),
                                               torch.from_numpy(m.data), size=m.shape)
            tw, tw_t, tx, tg = csr(w), csr(w.transpose()), torch.from_numpy(x), torch.from_numpy(g)
            r["forward"] = _min_time(lambda: tw @ tx.T)
            r["grad_input"] = _min_time(lambda: tw_t @ tg.T)
            r["sddmm"] = _min_time(lambda: torch.sparse.sampled_addmm(tw, tg.T, tx, beta=0.0))
        r["flop"] = 2 * w.nnz * batch
        results[f"{batch}x{n_in}x{n_out} d{density:g}"] = r
    print(json.dumps(results))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--worker", choices=LIBS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args.worker, args.threads[0])
    for threads in args.threads:
        env = dict(os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
        runs = {}
        for lib in LIBS:
            out = subprocess.run([sys.executable, __file__, "--worker", lib, "--threads", str(threads)],
                                 env=env, capture_output=True, text=True)
            if out.returncode == 0:
                runs[lib] = json.loads(out.stdout.strip().splitlines()[-1])
            else:
                print(f"{lib}: skipped ({out.stderr.strip().splitlines()[-1] if out.stderr else 'failed'})")
        print(f"\n### {threads} thread(s), float32, ms (peer time / ours in brackets)\n")
        print("| shape | op | sparsenet (GF/s) | " + " | ".join(l for l in LIBS[1:] if l in runs) + " |")
        print("|---|---|---|" + "---|" * sum(l in runs for l in LIBS[1:]))
        for shape, ours in runs["sparsenet"].items():
            for op in ("forward", "grad_input", "sddmm"):
                cells = [f"{ours[op] * 1e3:.3f} ({ours['flop'] / ours[op] / 1e9:.0f})"]
                for lib in LIBS[1:]:
                    if lib in runs:
                        t = runs[lib][shape][op]
                        cells.append(f"{t * 1e3:.3f} ({t / ours[op]:.1f}x)")
                print(f"| {shape} | {op} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
