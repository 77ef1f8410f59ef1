"""GPU benchmark of the sparsenet CUDA kernels against cuSPARSE / cuBLAS through torch.

Standalone script (not collected by pytest).  On a machine with an NVIDIA GPU:

    python bench/gpu_bench.py                 # all suites, markdown tables on stdout
    python bench/gpu_bench.py --suite csr --shapes 0,3    # a subset
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu_bench.py --dry-run   # plumbing check, no timing

Suites (``--suite overhead,roofline,csr,conv,sparsity,dropout,train,jit``, default all):

* ``overhead``: host cost per call (numba's empty-kernel launch, a device allocation, a tiny
  sparsenet SpMM) against torch's: what bounds small, launch-bound layers.
* ``roofline``: the read bandwidth the memory system gives a streaming kernel, from an array
  that stays in L2 and from one that cannot (HBM): the ceiling of a CSR product that reads
  one dense row per stored entry (``nnz * batch * 4`` bytes) without reusing it on chip.
* ``csr``, float32, Y = X W^T with W a random CSR (n_out, n_in) matrix, X (batch, n_in):

  ``spmm`` (forward) vs torch CSR ``W @ X^T`` (cuSPARSE); ``spmm_t`` (grad input G W) vs torch
  CSR ``W^T @ G^T`` (W^T stored as CSR once outside the timing, as sparsenet caches its
  transposed pattern); ``sddmm`` (grad weight on the pattern) vs ``torch.sparse.sampled_addmm``;
  cuBLAS ``X @ W_dense^T`` for scale; and the weight and bias gradients from one launch
  (``csr_sddmm_bias``) against SDDMM then ``batch_sum``, which decides
  ``kernels/cuda.SDDMM_BIAS_FUSED_MAX``.
* ``conv``: dense conv2d forward, grad input and grad weight vs ``torch.nn.functional.conv2d``
  and its autograd backward (cuDNN), and the weight-sparse conv at 90% sparsity, NCHW float32.
* ``sparsity``: per-step sparsity work on a dense float32 weight: the top-k hard threshold
  (``zero_smallest_``, radix select, 90% zeroed) vs ``torch.topk`` and vs the host round trip it
  replaces (copy to host, NumPy, copy back); the group soft threshold over input columns
  (gathered) and output rows vs the same map in torch.  Each call first restores the weight
  (one device-to-device copy, the same for every peer).
* ``dropout``: forward and backward of dropout (p = 0.5, float32) on activations as a model
  makes them (F-ordered after a sparse layer, NCHW after a convolution): the mask drawn in the
  kernel (Philox) vs the host-drawn mask it replaced (``rng.random``, upload, multiply) vs
  torch's ``native_dropout`` and its backward.
* ``train``: one whole training step (forward, cross-entropy, backward_params, Adam) of a SparseLinear
  MLP 784-1000-1000-10 (density 0.04): the model on the GPU (batch uploaded inside the timing)
  against the same model on the CPU (Numba kernels, all cores), per batch size.
* ``jit``: what a user's new process pays before its first GPU training step: the import, the
  model's move to the GPU, the first step (compiling every kernel it launches) and the second,
  in fresh processes with an empty numba cache, with only the CPU kernels' cache kept, and with
  both kept (``cache=True``); each run counts the CUDA kernels loaded and compiled.

Every op gets warm-up calls (JIT compilation, cuSPARSE handle creation), then ``--repeat``
launches between two CUDA events; the median of ``--trials`` such runs divided by ``--repeat``
is reported, twice for single ops: *throughput* (a Python loop of calls, host overhead included)
and *GPU time* (the same calls queued behind a sleeping kernel, so only the kernels are timed).  Operands are already on the device and feature-major where sparsenet wants them
(the layout a chain of sparsenet layers produces); host-to-device transfer of X and W is
measured separately and reported in its own columns.  Nothing is estimated: a peer that is not
available (no torch CUDA) is reported as "n/a".
"""
import argparse
import collections
import os
import pathlib
import statistics
import sys
import time

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
SUITES = ("overhead", "roofline", "csr", "conv", "sparsity", "dropout", "train", "jit")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default=",".join(SUITES), help="comma-separated suites: " + ", ".join(SUITES))
    p.add_argument("--shapes", default="all", help="comma-separated indices into SHAPES (csr suite), or 'all'")
    p.add_argument("--repeat", type=int, default=20, help="launches per timed event pair")
    p.add_argument("--trials", type=int, default=5, help="event-timed runs; the median is reported")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="time sparsenet only")
    p.add_argument("--no-cpu", action="store_true", help="train suite: time the GPU step only")
    p.add_argument("--jit-budget", type=float, default=85.0,
                   help="jit suite: seconds for its three processes together (each gets what is left)")
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
    args.suites = [x.strip() for x in args.suite.split(",") if x.strip()]
    unknown = set(args.suites) - set(SUITES)
    if unknown:
        p.error(f"unknown suites {sorted(unknown)}; choose from {', '.join(SUITES)}")
    if args.repeat < 1 or args.trials < 1 or args.warmup < 0:
        p.error("--repeat and --trials must be >= 1, --warmup >= 0")
    return args


def _time(fn, cuda, args, gpu_only=False):
    """Seconds per call of fn: ``(throughput, gpu)``, or the throughput alone.

    *throughput*: the median over ``trials`` of CUDA-event time around ``repeat`` back-to-back
    calls from Python, i.e. what a user's loop gets; when the kernel is shorter than the host
    work of a call (numba's dispatcher, argument checks, output allocation), this is host-bound.
    *gpu* (``gpu_only=True``): the same calls queued behind a sleeping kernel, so that the host
    has enqueued them all before the GPU reaches the first: the events then time the kernels
    alone.  A trial whose enqueueing outlasted the sleep (something in the call synchronised)
    does not count; if none counts, ``gpu`` is None.
    """
    clock = _Clock(cuda.event, cuda.event_elapsed_time, cuda.synchronize,
                   lambda seconds: _numba_sleeper(cuda)(seconds), cuda.defer_cleanup)
    return _timed(fn, clock, args, gpu_only)


def _time_ops(ops, row, cuda, args):
    """row[name], row[name + "_gpu"] = throughput and GPU time of each numba op (a dry run calls
    each once, untimed)."""
    for name, fn in ops.items():
        if args.dry_run:
            fn()
        else:
            row[name], row[name + "_gpu"] = _time(fn, cuda, args, gpu_only=True)


def _time_torch(fn, torch, args, gpu_only=False):
    """:func:`_time` for torch ops (torch's events; ``torch.cuda._sleep`` spins, ~2 GHz clock)."""
    import contextlib

    clock = _Clock(lambda: torch.cuda.Event(enable_timing=True), lambda a, b: a.elapsed_time(b),
                   torch.cuda.synchronize, lambda seconds: torch.cuda._sleep(int(seconds * 2.0e9)),
                   contextlib.nullcontext)
    return _timed(fn, clock, args, gpu_only)


# A framework's CUDA events and helpers: make_event(), elapsed_ms(a, b), synchronize(),
# sleep(seconds) on the GPU, defer() (a context that holds back frees that would synchronise).
_Clock = collections.namedtuple("_Clock", "make_event elapsed_ms synchronize sleep defer")


def _timed(fn, clock, args, gpu_only):
    for _ in range(args.warmup):
        fn()
    clock.synchronize()
    runs, gpu_runs = [], []
    for _ in range(args.trials):
        start, stop = clock.make_event(), clock.make_event()
        t0 = time.perf_counter()
        start.record()
        for _ in range(args.repeat):
            fn()
        stop.record()
        host = time.perf_counter() - t0
        stop.synchronize()
        runs.append(clock.elapsed_ms(start, stop) / 1e3 / args.repeat)
        if gpu_only:
            gpu_runs += _queued(fn, args, host, clock)
    tput = statistics.median(runs)
    if not gpu_only:
        return tput
    return tput, (statistics.median(gpu_runs) if gpu_runs else None)


def _queued(fn, args, host, clock):
    """One trial of ``repeat`` calls queued behind a GPU sleep; [] if the queue ran dry."""
    e0, start, stop = clock.make_event(), clock.make_event(), clock.make_event()
    t0 = time.perf_counter()
    e0.record()
    clock.sleep(3 * host + 0.005)
    start.record()
    with clock.defer():  # numba frees device memory in batches, and cudaFree synchronises
        for _ in range(args.repeat):
            fn()
    stop.record()
    enqueued = time.perf_counter() - t0
    stop.synchronize()
    slept = clock.elapsed_ms(e0, start) / 1e3
    return [clock.elapsed_ms(start, stop) / 1e3 / args.repeat] if enqueued < slept else []


_SLEEPER = []


def _numba_sleeper(cuda):
    """``sleep(seconds)``: one GPU thread sleeping about that long (``nanosleep``, sm_70+)."""
    if not _SLEEPER:
        @cuda.jit
        def sleep_ms(n_ms):
            for _ in range(n_ms):
                cuda.nanosleep(1000000)

        _SLEEPER.append(lambda seconds: sleep_ms[1, 1](int(seconds * 1e3) + 1))
    return _SLEEPER[0]


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

    def sddmm_bias(fused):  # the bias gradient in the SDDMM launch, or by a batch_sum launch after it
        limit = kc.SDDMM_BIAS_FUSED_MAX
        kc.SDDMM_BIAS_FUSED_MAX = (1 << 62) if fused else 0
        try:
            return kc.sddmm(wd.indptr, wd.indices, d_g, d_x, bias_grad=True)
        finally:
            kc.SDDMM_BIAS_FUSED_MAX = limit

    ops = {
        "spmm": lambda: kc.spmm(wd.indptr, wd.indices, wd.data, d_x),
        "spmm_t": lambda: kc.spmm_t(wd.indptr, wd.indices, wd.data, n_in, d_g),
        "sddmm": lambda: kc.sddmm(wd.indptr, wd.indices, d_g, d_x),
        "sddmm_bias": lambda: sddmm_bias(True),
        "sddmm_then_sum": lambda: sddmm_bias(False),
    }
    _time_ops(ops, row, cuda, args)

    if args.dry_run:
        from sparsenet.kernels import reference as ref

        y = kc.to_host(ops["spmm"]())
        np.testing.assert_allclose(y, ref.spmm(w.indptr, w.indices, w.data, w.shape, x), rtol=1e-4, atol=1e-4)
    if not args.no_torch:
        row.update(bench_torch(w, x, g, args))
    return row


def _torch_cuda():
    """torch when it is installed with CUDA, else None (its peers are then reported as n/a)."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def bench_torch(w, x, g, args):
    torch = _torch_cuda()
    if torch is None:
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
    ops = {
        "torch_spmm": lambda: w_csr @ tx_t,
        "torch_spmm_t": lambda: wt_csr @ tg_t,
        "torch_sddmm": lambda: torch.sparse.sampled_addmm(pattern, tg_t, tx, beta=0.0),
        "cublas_dense": lambda: tx @ w_dense.t(),
    }
    out = {}
    for name, fn in ops.items():
        out[name], out[name + "_gpu"] = _time_torch(fn, torch, args, gpu_only=True)
    return out


CSR_OPS = (("spmm", "torch_spmm"), ("spmm_t", "torch_spmm_t"), ("sddmm", "torch_sddmm"),
           ("sddmm_bias", "sddmm_then_sum"))
CSR_COLUMNS = [
    ("case", "case"), ("nnz", "nnz"),
    ("spmm", "sparsenet spmm"), ("torch_spmm", "torch CSR (cuSPARSE)"),
    ("spmm_t", "sparsenet spmm_t"), ("torch_spmm_t", "torch CSR W^T"),
    ("sddmm", "sparsenet sddmm"), ("torch_sddmm", "sampled_addmm"),
    ("sddmm_bias", "sddmm + bias grad, one launch"), ("sddmm_then_sum", "sddmm, then batch_sum"),
    ("cublas_dense", "cuBLAS dense"), ("h2d_x", "H2D X"), ("h2d_w", "H2D W"),
]


def _gpu_columns(columns):
    """The same table with each timed column's kernel-only (queued) time."""
    return [(k if k in ("case", "nnz") else k + "_gpu", h) for k, h in columns if not k.startswith("h2d")]


def _fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(v)
    if v >= 1:
        return f"{v:.2f} s"
    return f"{v * 1e6:.1f} µs" if v < 1e-3 else f"{v * 1e3:.3f} ms"


def _measured(rows, fn):
    """Compute each row, echoing it to stderr at once (a run cut short still leaves its rows)."""
    out = []
    for r in rows:
        row = fn(r)
        print("#", {k: (_fmt(v) if isinstance(v, float) else v) for k, v in row.items()}, file=sys.stderr, flush=True)
        out.append(row)
    return out


def _timed_tables(title, columns, rows, ratios):
    """Throughput table, then the kernel-only table with the ratios renamed accordingly."""
    gpu_ratios = tuple((a + "_gpu", b + "_gpu") for a, b in ratios)
    return "\n\n".join([
        f"### {title}: throughput (calls from a Python loop)", table(columns, rows, ratios),
        f"### {title}: GPU time (calls queued behind a sleeping kernel: kernels alone)",
        table(_gpu_columns(columns), rows, gpu_ratios),
    ])


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
    from sparsenet.kernels import cuda as kc

    print(f"device: {reason}; caching allocator: {'on' if kc.memory_stats()['pool'] else 'off'}", flush=True)
    rng = np.random.default_rng(args.seed)
    if "overhead" in args.suites and not args.dry_run:
        print(table(OVERHEAD_COLUMNS, _measured([None], lambda _: bench_overhead(args)), ()) + "\n", flush=True)
    # Target-bearing suites first: a run cut short by the lease still reports them.
    if "csr" in args.suites:
        rows = _measured(args.shape_list, lambda shape: bench_shape(shape, args, rng))
        print(_timed_tables("CSR products", CSR_COLUMNS, rows, CSR_OPS) + "\n", flush=True)
    if "train" in args.suites:
        batches = [4] if args.dry_run else TRAIN_BATCHES
        rows = _measured(batches, lambda b: bench_train(b, args))
        print(table(TRAIN_COLUMNS, rows, (("gpu_step", "cpu_step"),)) + "\n", flush=True)
    if "dropout" in args.suites:
        shapes = [(5, 7)] if args.dry_run else DROPOUT_SHAPES
        rows = _measured(shapes, lambda shape: bench_dropout(shape, args, rng))
        print(_timed_tables("dropout forward + backward", DROPOUT_COLUMNS, rows, DROPOUT_RATIOS) + "\n", flush=True)
    if "sparsity" in args.suites:
        shapes = [(7, 9)] if args.dry_run else SPARSITY_SHAPES
        rows = _measured(shapes, lambda shape: bench_sparsity(shape, args, rng))
        print(_timed_tables("per-step sparsity work", SPARSITY_COLUMNS, rows, SPARSITY_RATIOS) + "\n", flush=True)
    if "roofline" in args.suites:
        cases = ROOFLINE_CASES[-1:] if args.dry_run else ROOFLINE_CASES[:-1]
        rows = _measured(cases, lambda case: bench_roofline(case, args))
        print("### read bandwidth (GPU time, kernels alone)\n\n" + _head(ROOFLINE_COLUMNS) + "\n"
              + "\n".join(_row(ROOFLINE_COLUMNS, r) for r in rows) + "\n", flush=True)
    if "conv" in args.suites:
        cases = CONV_CASES[-1:] if args.dry_run else CONV_CASES
        rows = _measured(cases, lambda case: bench_conv(case, args, rng))
        print(_timed_tables("conv2d", CONV_COLUMNS, rows, CONV_RATIOS) + "\n", flush=True)
    if "jit" in args.suites:  # rows printed as they come: a run cut short keeps the finished ones
        print(_head(JIT_COLUMNS), flush=True)
        for row in bench_jit(args):
            print(_row(JIT_COLUMNS, row), flush=True)
        print()
    return 0


# ----------------------------------------------------------------------------- overhead suite
OVERHEAD_COLUMNS = [
    ("case", "per call"), ("numba_noop", "numba empty kernel"), ("numba_alloc", "numba device_array 4 MiB"),
    ("spmm_tiny", "sparsenet spmm B=1 16x16"), ("torch_noop", "torch add_ 1k"),
    ("torch_spmm_tiny", "torch CSR B=1 16x16"),
]


def bench_overhead(args):
    """Per-call host costs that bound small, launch-bound layers (throughput timing)."""
    from numba import cuda

    from sparsenet import CSRMatrix
    from sparsenet.kernels import cuda as kc

    @cuda.jit
    def noop(a):
        pass

    d = cuda.device_array(1024, np.float32)
    w = CSRMatrix.random((16, 16), 0.25, rng=0, dtype=np.float32)
    wd = w.to("cuda")
    x = np.ones((1, 16), np.float32)
    d_x = cuda.to_device(np.asfortranarray(x))
    row = {
        "case": "host-bound time",
        "numba_noop": _time(lambda: noop[1, 32](d), cuda, args),
        "numba_alloc": _time(lambda: cuda.device_array(1 << 20, np.float32), cuda, args),
        "spmm_tiny": _time(lambda: kc.spmm(wd.indptr, wd.indices, wd.data, d_x), cuda, args),
    }
    torch = _torch_cuda()
    if torch is not None:
        t = torch.zeros(1024, device="cuda")
        w_csr = torch.from_numpy(w.to_dense()).to("cuda").to_sparse_csr()
        tx_t = torch.from_numpy(x.T.copy()).to("cuda")
        row["torch_noop"] = _time_torch(lambda: t.add_(1.0), torch, args)
        row["torch_spmm_tiny"] = _time_torch(lambda: w_csr @ tx_t, torch, args)
    return row


# ----------------------------------------------------------------------------- sparsity suite
SPARSITY_SHAPES = [(1000, 1000), (4096, 4096)]  # dense (n_out, n_in) float32 weights
SPARSITY_COLUMNS = [
    ("case", "weight"), ("topk", "sparsenet top-k 90%"), ("torch_topk", "torch.topk 90%"),
    ("host_trip", "top-k via the host"), ("group_in", "sparsenet group (input)"),
    ("torch_group_in", "torch group (input)"), ("group_out", "sparsenet group (output)"),
    ("torch_group_out", "torch group (output)"),
]
SPARSITY_RATIOS = (("topk", "torch_topk"), ("topk", "host_trip"), ("group_in", "torch_group_in"),
                   ("group_out", "torch_group_out"))


def bench_sparsity(shape, args, rng):
    from numba import cuda

    from sparsenet import kernels
    from sparsenet.kernels import cuda as kc

    w0 = rng.standard_normal(shape, dtype=np.float32) * 0.05
    n = int(round(0.9 * w0.size))
    t = 1e-3
    d_w0, d_w = cuda.to_device(w0), cuda.to_device(w0)
    in_groups = kc.dense_groups(d_w, 1, by_input=True)  # derived once per weight, outside the timing
    out_groups = kc.dense_groups(d_w, 1, by_input=False)

    def restore():
        d_w.copy_to_device(d_w0)

    def via_host():
        restore()
        d_w.copy_to_device(kernels.zero_smallest_(d_w.copy_to_host(), n))

    ops = {
        "topk": lambda: (restore(), kc.zero_smallest_(d_w, n)),
        "group_in": lambda: (restore(), kc.group_soft_threshold_(d_w, in_groups[0], t, perm=in_groups[1])),
        "group_out": lambda: (restore(), kc.group_soft_threshold_(d_w, out_groups[0], t)),
    }
    row = {"case": f"{shape[0]}x{shape[1]}"}
    _time_ops(ops, row, cuda, args)
    if args.dry_run:
        restore()
        np.testing.assert_array_equal(kc.to_host(kc.zero_smallest_(d_w, n)), kernels.zero_smallest_(w0.copy(), n))
        return row
    row["host_trip"] = _time(via_host, cuda, args)
    if not args.no_torch:
        row.update(_torch_sparsity(w0, n, t, args))
    return row


def _torch_sparsity(w0, n, t, args):
    torch = _torch_cuda()
    if torch is None:
        return {}
    tw0 = torch.from_numpy(w0).to("cuda")
    tw = tw0.clone()
    flat = tw.view(-1)

    def topk():
        tw.copy_(tw0)
        flat[torch.topk(flat.abs(), n, largest=False, sorted=False).indices] = 0

    def group(dim):  # w * max(0, 1 - t sqrt(n_g) / ||w_g||), groups along the other axis
        tw.copy_(tw0)
        norm = torch.linalg.vector_norm(tw, dim=dim, keepdim=True)
        tw.mul_(torch.clamp(1 - t * (tw.shape[dim] ** 0.5) / norm, min=0))

    out = {}
    for name, fn in {"torch_topk": topk, "torch_group_in": lambda: group(0), "torch_group_out": lambda: group(1)}.items():
        out[name], out[name + "_gpu"] = _time_torch(fn, torch, args, gpu_only=True)
    return out


# ----------------------------------------------------------------------------- dropout suite
DROPOUT_SHAPES = [(128, 1000), (4096, 4096), (128, 64, 32, 32)]  # 2-D: F-ordered, as SparseLinear gives
DROPOUT_COLUMNS = [("case", "activation"), ("philox", "sparsenet (mask in the kernel)"),
                   ("host_mask", "host-drawn mask, uploaded"), ("torch", "torch native_dropout")]
DROPOUT_RATIOS = (("philox", "host_mask"), ("philox", "torch"))


def bench_dropout(shape, args, rng, p=0.5):
    from numba import cuda

    from sparsenet import kernels

    x = rng.standard_normal(shape, dtype=np.float32)
    x = np.asfortranarray(x) if x.ndim == 2 else x
    d_x = cuda.to_device(x)

    def philox():
        seed = int(rng.integers(2**64, dtype=np.uint64))
        kernels.dropout(kernels.dropout(d_x, p, seed), p, seed)  # forward, then backward's recompute

    def host_mask():  # what the Dropout layer did before: draw on the host, upload, multiply twice
        mask = cuda.to_device((rng.random(shape) >= p).astype(np.float32) * np.float32(1 / (1 - p)))
        kernels.mul_(kernels.mul_(kernels.copy(d_x), mask), mask)

    row = {"case": "x".join(map(str, shape))}
    _time_ops({"philox": philox, "host_mask": host_mask}, row, cuda, args)
    if args.dry_run:
        seed = 5
        np.testing.assert_array_equal(kernels.to_host(kernels.dropout(d_x, p, seed)), kernels.dropout(x, p, seed))
        return row
    torch = None if args.no_torch else _torch_cuda()
    if torch is not None:
        tx = torch.from_numpy(x).to("cuda")

        def torch_dropout():
            y, mask = torch.native_dropout(tx, p, True)
            torch.ops.aten.native_dropout_backward(y, mask, 1 / (1 - p))

        row["torch"], row["torch_gpu"] = _time_torch(torch_dropout, torch, args, gpu_only=True)
    return row


# ----------------------------------------------------------------------------- roofline suite
# (float32 elements, passes over them a launch, what); the last is the dry-run case
ROOFLINE_CASES = [
    (4 << 20, 32, "16 MiB, 32 passes (stays in L2)"),
    (512 << 20, 1, "2 GiB, one pass (HBM)"),
    (4096, 2, "16 KiB (dry run)"),
]
ROOFLINE_COLUMNS = [("case", "array, passes a launch"), ("gpu", "GPU time"), ("rate", "read rate")]
_SWEEP = []


def _sweep_kernel():
    """sweep[grid, block](a, passes, shift, out): every thread sums four interleaved strided
    streams of ``a`` (four loads in flight a thread, coalesced across the warp), ``passes`` times.
    Each pass starts ``shift`` threads further on, so that a block reads what a block on another
    SM read the pass before: the data comes from L2, not from this SM's L1.  Unsigned indices (no
    negative-index fix-ups: loads, not index arithmetic, bound it); the sum is stored only if it
    equals a value a zero array cannot sum to, so the loads stay live."""
    if not _SWEEP:
        import numba.cuda
        from numba import float32, uint64

        # The kernel names cuda as a module global: the simulator swaps a kernel's globals for its
        # thread API, not its closure (the dry run runs this kernel).
        globals()["cuda"] = numba.cuda

        @numba.cuda.jit
        def sweep(a, passes, shift, out):
            step = uint64(cuda.gridsize(1))
            mine = uint64(cuda.grid(1))
            n = uint64(a.shape[0])
            two, three, four = uint64(2), uint64(3), uint64(4)
            acc0 = acc1 = acc2 = acc3 = float32(0)
            for p in range(passes):
                i = (mine + uint64(p) * uint64(shift)) % step
                while i + three * step < n:
                    acc0 += a[i]
                    acc1 += a[i + step]
                    acc2 += a[i + two * step]
                    acc3 += a[i + three * step]
                    i += four * step
                while i < n:
                    acc0 += a[i]
                    i += step
            total = acc0 + acc1 + acc2 + acc3
            if total == float32(-1.5e30):
                out[0] = total

        _SWEEP.append(sweep)
    return _SWEEP[0]


def bench_roofline(case, args):
    from numba import cuda

    from sparsenet.kernels import cuda as kc

    n, passes, what = case
    a, out = kc.zeros((n,), np.float32), cuda.device_array(1, np.float32)
    sweep = _sweep_kernel()
    sms = 1 if args.dry_run else cuda.get_current_device().MULTIPROCESSOR_COUNT
    grid, block = (2, 32) if args.dry_run else (8 * sms, 256)  # 64 warps an SM: a full Hopper SM
    shift = 8 * block  # eight blocks on: another SM's slice each pass, for grid / 8 passes
    row = {"case": what}
    if args.dry_run:
        sweep[grid, block](a, passes, 32, out)
        return row
    _, row["gpu"] = _time(lambda: sweep[grid, block](a, passes, shift, out), cuda, args, gpu_only=True)
    row["rate"] = None if row["gpu"] is None else f"{n * 4 * passes / row['gpu'] / 1e12:.2f} TB/s"
    return row


# ----------------------------------------------------------------------------- conv suite
# (N, C, H, W), O, kernel, stride, padding, groups
CONV_CASES = [
    ((128, 1, 28, 28), 16, 3, 1, 1, 1),   # LeNet conv1
    ((128, 16, 14, 14), 32, 3, 1, 1, 1),  # LeNet conv2
    ((128, 64, 32, 32), 64, 3, 1, 1, 1),  # CIFAR-style 3x3
    ((128, 64, 32, 32), 128, 3, 2, 1, 1),  # stride 2
    ((128, 64, 32, 32), 64, 3, 1, 1, 64),  # depthwise (MobileNet-style): the direct kernels
    ((128, 64, 32, 32), 64, 3, 1, 1, 8),   # 8 channels a group: the widest the direct kernels take
    ((2, 4, 6, 6), 4, 3, 1, 1, 2),        # the dry-run case (grouped)
]
CONV_COLUMNS = [
    ("case", "case"), ("fwd", "sparsenet fwd"), ("torch_fwd", "cuDNN fwd"), ("bwd", "sparsenet bwd (x+w)"),
    ("torch_bwd", "cuDNN bwd (x+w)"), ("alt_fwd", "other path fwd"), ("alt_bwd", "other path bwd"),
    ("sparse_fwd", "sparse fwd 90%"), ("sparse_bwd", "sparse bwd 90%"),
]
CONV_RATIOS = (("fwd", "torch_fwd"), ("bwd", "torch_bwd"), ("alt_fwd", "fwd"), ("alt_bwd", "bwd"),
               ("sparse_fwd", "fwd"), ("sparse_bwd", "bwd"))


def _on_path(narrow_ratio, fn):
    """fn run with the dense conv ops forced onto one path (conv.NARROW_RATIO: 0 direct, huge GEMM)."""
    from sparsenet.kernels.cuda import conv

    def run():
        default, conv.NARROW_RATIO = conv.NARROW_RATIO, narrow_ratio
        try:
            return fn()
        finally:
            conv.NARROW_RATIO = default

    return run


def bench_conv(case, args, rng):
    """The dense conv on the path each op picks by default, the whole conv forced onto the path
    the forward did not pick ("other path": checks conv.NARROW_RATIO), and weight-sparse at 90%."""
    from numba import cuda

    from sparsenet import CSRMatrix
    from sparsenet.kernels import cuda as kc

    x_shape, o, k, stride, pad, groups = case
    geo = ((stride, stride), (pad, pad), (1, 1))
    x = rng.standard_normal(x_shape, dtype=np.float32)
    w = rng.standard_normal((o, x_shape[1] // groups, k, k), dtype=np.float32)
    b = np.zeros(o, np.float32)
    d_x, d_w, d_b = cuda.to_device(x), cuda.to_device(w), cuda.to_device(b)
    y = kc.conv2d(d_x, d_w, d_b, *geo)
    d_g = cuda.to_device(rng.standard_normal(y.shape, dtype=np.float32))
    ws = CSRMatrix.random((o, x_shape[1] // groups * k * k), 0.1, rng=rng, dtype=np.float32).to("cuda")
    sparse_geo = ((k, k), *geo, groups)
    other = 10**9 if kc._direct(o // groups) else 0
    ops = {
        "fwd": lambda: kc.conv2d(d_x, d_w, d_b, *geo),
        "bwd": lambda: kc.conv2d_backward(d_g, d_x, d_w, *geo),
        "alt_fwd": _on_path(other, lambda: kc.conv2d(d_x, d_w, d_b, *geo)),
        "alt_bwd": _on_path(other, lambda: kc.conv2d_backward(d_g, d_x, d_w, *geo)),
        "sparse_fwd": lambda: kc.sparse_conv2d(d_x, ws.indptr, ws.indices, ws.data, (k, k), d_b, *geo, groups),
        "sparse_bwd": lambda: kc.sparse_conv2d_backward(d_g, d_x, ws.indptr, ws.indices, ws.data, *sparse_geo),
    }
    row = {"case": f"N={x_shape[0]} {x_shape[1]}->{o} {x_shape[2]}x{x_shape[3]} k{k} s{stride}"
                   + (f" g{groups}" if groups > 1 else "")}
    _time_ops(ops, row, cuda, args)
    if args.dry_run:
        from sparsenet.kernels import reference as ref

        for fwd in (ops["fwd"], ops["alt_fwd"]):
            np.testing.assert_allclose(kc.to_host(fwd()), ref.conv2d(x, w, b, *geo, groups), rtol=1e-4, atol=1e-4)
    elif not args.no_torch:
        row.update(_torch_conv(x, w, b, kc.to_host(d_g), stride, pad, groups, args))
    return row


def _torch_conv(x, w, b, g, stride, pad, groups, args):
    torch = _torch_cuda()
    if torch is None:
        return {}
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    tx = torch.from_numpy(x).to(dev).requires_grad_(True)
    tw = torch.from_numpy(w).to(dev).requires_grad_(True)
    tb = torch.from_numpy(b).to(dev)
    tg = torch.from_numpy(g).to(dev)
    conv = torch.nn.functional.conv2d
    ty = conv(tx, tw, tb, stride=stride, padding=pad, groups=groups)
    out = {}
    with torch.no_grad():
        out["torch_fwd"], out["torch_fwd_gpu"] = _time_torch(
            lambda: conv(tx, tw, tb, stride=stride, padding=pad, groups=groups), torch, args, gpu_only=True)
    out["torch_bwd"], out["torch_bwd_gpu"] = _time_torch(
        lambda: torch.autograd.grad(ty, (tx, tw), tg, retain_graph=True), torch, args, gpu_only=True)
    return out


# ----------------------------------------------------------------------------- train suite
TRAIN_BATCHES = [32, 128, 512, 4096]
TRAIN_COLUMNS = [("case", "case"), ("gpu_step", "GPU step"), ("cpu_step", "CPU step")]


TRAIN_SIZES = (784, 1000, 1000, 10)
DRY_TRAIN_SIZES = (12, 10, 10, 3)  # the simulator runs each CUDA thread in Python


def _mlp(sizes, density=0.04):
    from sparsenet import nn

    layers = []
    for i in range(len(sizes) - 1):
        layers += [nn.SparseLinear(sizes[i], sizes[i + 1], density=density, rng=i), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def bench_train(batch, args):
    """Seconds per training step on the GPU and on the CPU, same model, same batch."""
    import time

    from numba import cuda

    from sparsenet import kernels, nn, optim

    sizes = DRY_TRAIN_SIZES if args.dry_run else TRAIN_SIZES
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch)
    crit = nn.CrossEntropyLoss()
    density = 0.5 if args.dry_run else 0.04
    row = {"case": f"MLP {'-'.join(map(str, sizes))} d={density:g}, batch {batch}"}
    for device in ("cuda",) if args.no_cpu else ("cuda", "cpu"):
        model = _mlp(sizes, density)
        if device == "cuda":
            model.to("cuda")
        opt = optim.Adam(model.parameters(), lr=1e-3)

        def step():
            opt.zero_grad()
            xb, yb = (kernels.to_device(x), kernels.to_device(y)) if device == "cuda" else (x, y)
            crit(model(xb), yb)
            model.backward_params(crit.backward())  # as fit does: no first-layer input gradient
            opt.step()

        if args.dry_run and device == "cuda":
            step()
            continue
        if args.dry_run:
            continue
        if device == "cuda":
            row["gpu_step"] = _time(step, cuda, args)
        else:
            for _ in range(max(1, args.warmup)):
                step()
            runs = []
            for _ in range(args.trials):
                t0 = time.perf_counter()
                for _ in range(args.repeat):
                    step()
                runs.append((time.perf_counter() - t0) / args.repeat)
            row["cpu_step"] = statistics.median(runs)
    return row


# ----------------------------------------------------------------------------- jit suite
JIT_COLUMNS = [("case", "numba cache"), ("import", "import"), ("setup", "model to GPU"), ("first", "first step"),
               ("second", "second step"), ("process", "whole process"), ("cuda_hits", "CUDA kernels loaded"),
               ("cuda_misses", "CUDA kernels compiled"), ("loss", "first loss")]
# One SparseLinear MLP training step (the train suite's model and step) in a fresh process; it
# prints its timings, how many CUDA kernel variants numba loaded from the cache or compiled, and
# the first loss (the same in every run: cached code computes what compiled code does).
JIT_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from numba import cuda
from sparsenet import kernels, nn, optim
sizes, batch, steps = {sizes!r}, {batch}, {steps}
out = {{"import": time.perf_counter() - t0}}
t = time.perf_counter()
layers = []
for i in range(len(sizes) - 1):
    layers += [nn.SparseLinear(sizes[i], sizes[i + 1], density={density}, rng=i), nn.ReLU()]
model = nn.Sequential(*layers[:-1]).to("cuda")
cuda.synchronize()
out["setup"] = time.perf_counter() - t
opt = optim.Adam(model.parameters(), lr=1e-3)
crit = nn.CrossEntropyLoss()
rng = np.random.default_rng(0)
x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
y = rng.integers(0, sizes[-1], batch)
for name in ("first", "second")[:steps]:
    t = time.perf_counter()
    opt.zero_grad()
    loss = crit(model(kernels.to_device(x)), kernels.to_device(y))
    model.backward_params(crit.backward())
    opt.step()
    cuda.synchronize()
    out[name] = time.perf_counter() - t
    out.setdefault("loss", repr(float(np.asarray(kernels.to_host(loss)).reshape(-1)[0])))  # a string: not a time
hits = misses = 0
for mod in [m for k, m in sys.modules.items() if k.startswith("sparsenet.kernels.cuda.")]:
    for d in vars(mod).values():
        stats = getattr(d, "stats", None)
        if stats is not None and hasattr(stats, "cache_hits"):
            hits += sum(stats.cache_hits.values())
            misses += sum(stats.cache_misses.values())
out.update(cuda_hits=hits, cuda_misses=misses)
print(json.dumps(out))
"""
# (case, numba cache subfolders removed before the run: "cuda_*" hold the CUDA kernels)
JIT_RUNS = (("empty", "*"), ("CPU kernels cached, CUDA not", "cuda_*"), ("both cached", None))


def bench_jit(args):
    """Yield a new process's import, setup, first and second step, with an empty numba cache,
    with only the CPU kernels cached (what cache=True on the CUDA kernels saves is this row
    minus the next), and with both (a dry run: one process, one step, in the simulator), all
    within ``--jit-budget`` seconds."""
    import glob
    import json
    import shutil
    import subprocess
    import tempfile

    sizes = DRY_TRAIN_SIZES if args.dry_run else TRAIN_SIZES
    script = JIT_SCRIPT.format(sizes=sizes, batch=4 if args.dry_run else 128, density=0.5 if args.dry_run else 0.04,
                               steps=1 if args.dry_run else 2)
    deadline = time.perf_counter() + (300 if args.dry_run else args.jit_budget)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=os.pathsep.join(
            [p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p]))
        for case, removed in JIT_RUNS[:1] if args.dry_run else JIT_RUNS:
            for path in glob.glob(os.path.join(cache, removed)) if removed else ():
                shutil.rmtree(path)
            t = time.perf_counter()
            left = deadline - t
            try:
                if left <= 0:
                    raise subprocess.TimeoutExpired(case, 0)
                done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                      timeout=left)
            except subprocess.TimeoutExpired:  # the child is killed: nothing left running on the GPU
                print(f"jit suite: the '{case}' run did not finish within the budget", file=sys.stderr)
                yield {"case": case}
                continue
            wall = time.perf_counter() - t
            if done.returncode != 0:
                if args.dry_run:  # the plumbing check is what a dry run is for
                    raise RuntimeError(f"jit suite: the '{case}' run failed:\n{done.stderr[-2000:]}")
                print(f"jit suite: the '{case}' run failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                yield {"case": case}
                continue
            yield {"case": case, "process": wall, **json.loads(done.stdout.strip().splitlines()[-1])}


def _head(columns):
    """A markdown table's header and rule lines."""
    return "| " + " | ".join(h for _, h in columns) + " |\n" + "|" + "---|" * len(columns)


def _row(columns, r):
    return "| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |"


def table(columns, rows, ratios):
    """Markdown table of ``rows`` and the ratios ``(ours, peer)``: peer time / our time."""
    lines = [_head(columns)] + [_row(columns, r) for r in rows]
    lines += ["", "ratios (second / first, > 1 means the first is faster):"]
    for r in rows:
        parts = [f"{a} vs {b} {r[b] / r[a]:.2f}x" for a, b in ratios if r.get(a) and r.get(b)]
        lines.append(f"- {r['case']}: " + (", ".join(parts) if parts else "n/a"))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
