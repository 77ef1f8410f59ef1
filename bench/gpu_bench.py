"""GPU benchmark of the sparsenet CUDA kernels against cuSPARSE / cuBLAS through torch.

Standalone script (not collected by pytest).  On a machine with an NVIDIA GPU:

    python bench/gpu_bench.py                 # all shapes, markdown table on stdout
    python bench/gpu_bench.py --shapes 0,3    # a subset
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu_bench.py --dry-run   # plumbing check, no timing

What is timed (float32, Y = X W^T with W a random CSR (n_out, n_in) matrix, X (batch, n_in)):

* ``spmm``     sparsenet forward Y = X W^T              vs torch CSR ``W @ X^T`` (cuSPARSE)
* ``spmm_t``   sparsenet grad input G W                  vs torch CSR ``W^T @ G^T`` (cuSPARSE, W^T
  stored as CSR once outside the timing, as sparsenet caches its transposed pattern)
* ``sddmm``    sparsenet grad weight on the pattern      vs ``torch.sparse.sampled_addmm``
* ``dense``    cuBLAS ``X @ W_dense^T`` for scale.

Every op gets warm-up calls (JIT compilation, cuSPARSE handle creation), then ``--repeat``
launches between two CUDA events; the median of ``--trials`` such runs divided by ``--repeat``
is reported.  Operands are already on the device and feature-major where sparsenet wants them
(the layout a chain of sparsenet layers produces); host-to-device transfer of X and W is
measured separately and reported in its own columns.  Nothing is estimated: a peer that is not
available (no torch CUDA) is reported as "n/a".
"""
import argparse
import os
import pathlib
import statistics
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(ROOT))

# (batch, n_in, n_out, density)
SHAPES = [
    (128, 784, 1000, 0.035),
    (128, 1000, 1000, 0.04),
    (128, 3072, 4000, 0.012),
    (256, 4096, 4096, 0.01),
    (256, 4096, 4096, 0.10),
    (4096, 4096, 4096, 0.01),
    (4096, 4096, 4096, 0.10),
]
DRY_SHAPE = (3, 9, 7, 0.3)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="all", help="comma-separated indices into SHAPES, or 'all'")
    p.add_argument("--repeat", type=int, default=20, help="launches per timed event pair")
    p.add_argument("--trials", type=int, default=5, help="event-timed runs; the median is reported")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="time sparsenet only")
    p.add_argument("--dry-run", action="store_true",
                   help="one tiny shape, one launch per op, no timing: checks the plumbing "
                        "(runs under NUMBA_ENABLE_CUDASIM=1)")
    args = p.parse_args(argv)
    if args.shapes == "all":
        args.shape_list = list(SHAPES)
    else:
        try:
            args.shape_list = [SHAPES[int(i)] for i in args.shapes.split(",")]
        except (ValueError, IndexError):
            p.error(f"--shapes must be 'all' or indices in 0..{len(SHAPES) - 1}; got {args.shapes!r}")
    if args.dry_run:
        args.shape_list = [DRY_SHAPE]
        args.repeat = args.trials = 1
        args.warmup = 0
        args.no_torch = True
    if args.repeat < 1 or args.trials < 1 or args.warmup < 0:
        p.error("--repeat and --trials must be >= 1, --warmup >= 0")
    return args


def _time(fn, cuda, args):
    """Median seconds per call of fn, CUDA events around ``repeat`` launches, device synced."""
    for _ in range(args.warmup):
        fn()
    cuda.synchronize()
    runs = []
    for _ in range(args.trials):
        start, stop = cuda.event(), cuda.event()
        start.record()
        for _ in range(args.repeat):
            fn()
        stop.record()
        stop.synchronize()
        runs.append(cuda.event_elapsed_time(start, stop) / 1e3 / args.repeat)
    return statistics.median(runs)


def _time_torch(fn, torch, args):
    for _ in range(args.warmup):
        fn()
    torch.cuda.synchronize()
    runs = []
    for _ in range(args.trials):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.repeat):
            fn()
        stop.record()
        stop.synchronize()
        runs.append(start.elapsed_time(stop) / 1e3 / args.repeat)
    return statistics.median(runs)


def bench_shape(shape, args, rng):
    from numba import cuda

    from sparsenet import CSRMatrix
    from sparsenet.kernels import cuda as kc

    batch, n_in, n_out, density = shape
    w = CSRMatrix.random((n_out, n_in), density, rng=rng, dtype=np.float32)
    x = rng.standard_normal((batch, n_in), dtype=np.float32)
    g = rng.standard_normal((batch, n_out), dtype=np.float32)
    row = {"case": f"B={batch} {n_in}->{n_out} d={density:g}", "nnz": w.nnz}

    # Transfers, measured on their own (pinned host memory is not used: plain NumPy arrays).
    x_f = np.asfortranarray(x)
    row["h2d_x"] = _time(lambda: cuda.to_device(x_f), cuda, args) if not args.dry_run else None
    row["h2d_w"] = _time(lambda: w.to("cuda"), cuda, args) if not args.dry_run else None

    wd = w.to("cuda")
    d_x = cuda.to_device(x_f)  # F-ordered (batch, n_in): already feature-major, no transpose
    d_g = cuda.to_device(np.asfortranarray(g))
    kc.transpose_pattern(n_in, wd.indptr, wd.indices)  # once per pattern, outside the timing

    ops = {
        "spmm": lambda: kc.spmm(wd.indptr, wd.indices, wd.data, d_x),
        "spmm_t": lambda: kc.spmm_t(wd.indptr, wd.indices, wd.data, n_in, d_g),
        "sddmm": lambda: kc.sddmm(wd.indptr, wd.indices, d_g, d_x),
    }
    for name, fn in ops.items():
        if args.dry_run:
            fn()
            row[name] = None
        else:
            row[name] = _time(fn, cuda, args)

    if args.dry_run:
        from sparsenet.kernels import reference as ref

        y = kc.to_host(ops["spmm"]())
        np.testing.assert_allclose(y, ref.spmm(w.indptr, w.indices, w.data, w.shape, x), rtol=1e-4, atol=1e-4)
    if not args.no_torch:
        row.update(bench_torch(w, x, g, args))
    return row


def bench_torch(w, x, g, args):
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    dev = torch.device("cuda")
    w_csr = torch.sparse_csr_tensor(
        torch.from_numpy(w.indptr.astype(np.int64)), torch.from_numpy(w.indices.astype(np.int64)),
        torch.from_numpy(w.data), size=w.shape, device=dev,
    )
    wt = w.transpose()
    wt_csr = torch.sparse_csr_tensor(
        torch.from_numpy(wt.indptr.astype(np.int64)), torch.from_numpy(wt.indices.astype(np.int64)),
        torch.from_numpy(wt.data), size=wt.shape, device=dev,
    )
    w_dense = torch.from_numpy(w.to_dense()).to(dev)
    tx = torch.from_numpy(x).to(dev)
    tg = torch.from_numpy(g).to(dev)
    tx_t = tx.t().contiguous()  # cuSPARSE's SpMM wants the dense operand as (n_in, batch)
    tg_t = tg.t().contiguous()
    # sampled_addmm(input CSR pattern, mat1, mat2): (G^T X) on W's pattern
    pattern = torch.sparse_csr_tensor(w_csr.crow_indices(), w_csr.col_indices(),
                                      torch.zeros_like(w_csr.values()), size=w.shape)
    out = {}
    out["torch_spmm"] = _time_torch(lambda: w_csr @ tx_t, torch, args)
    out["torch_spmm_t"] = _time_torch(lambda: wt_csr @ tg_t, torch, args)
    out["torch_sddmm"] = _time_torch(lambda: torch.sparse.sampled_addmm(pattern, tg_t, tx, beta=0.0), torch, args)
    out["cublas_dense"] = _time_torch(lambda: tx @ w_dense.t(), torch, args)
    return out


COLUMNS = [
    ("case", "case"), ("nnz", "nnz"),
    ("spmm", "sparsenet spmm"), ("torch_spmm", "torch CSR (cuSPARSE)"),
    ("spmm_t", "sparsenet spmm_t"), ("torch_spmm_t", "torch CSR W^T"),
    ("sddmm", "sparsenet sddmm"), ("torch_sddmm", "sampled_addmm"),
    ("cublas_dense", "cuBLAS dense"), ("h2d_x", "H2D X"), ("h2d_w", "H2D W"),
]


def _fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(v)
    return f"{v * 1e6:.1f} µs" if v < 1e-3 else f"{v * 1e3:.3f} ms"


def markdown(rows):
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k)) for k, _ in COLUMNS) + " |")
    ratio = ["", "ratios (peer time / sparsenet time, > 1 means sparsenet is faster):"]
    for r in rows:
        parts = []
        for ours, peer in (("spmm", "torch_spmm"), ("spmm_t", "torch_spmm_t"), ("sddmm", "torch_sddmm")):
            if r.get(ours) and r.get(peer):
                parts.append(f"{ours} {r[peer] / r[ours]:.2f}x")
        ratio.append(f"- {r['case']}: " + (", ".join(parts) if parts else "n/a"))
    return "\n".join(lines + ratio)


def main(argv=None):
    args = parse_args(argv)
    from sparsenet.kernels.device import cuda_available

    ok, reason = cuda_available()
    if not ok:
        print(f"no CUDA device: {reason}", file=sys.stderr)
        return 2
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    if simulated and not args.dry_run:
        print("refusing to time under the CUDA simulator; use --dry-run", file=sys.stderr)
        return 2
    print(f"device: {reason}")
    rng = np.random.default_rng(args.seed)
    rows = [bench_shape(s, args, rng) for s in args.shape_list]
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
