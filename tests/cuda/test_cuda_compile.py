"""Compile every CUDA kernel to PTX with the real NVVM toolchain (no GPU needed).

The simulator runs kernels as Python, so it cannot catch what only the CUDA compiler rejects
(typing of shared arrays, integer/float promotion, unsupported calls).  This module compiles
each kernel for sm_90 with ``numba.cuda.compile_ptx`` and checks that the float32 variants do
no float64 arithmetic (an int literal meeting a float32 would promote silently).  It needs
libNVVM (e.g. ``pip install nvidia-cuda-nvcc-cu12 nvidia-cuda-nvrtc-cu12``) and is skipped
without it, and under the simulator.
"""
import os
import re

import pytest

pytestmark = pytest.mark.no_cuda_skip

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
    pytest.skip("PTX compilation needs the real numba.cuda, not the simulator", allow_module_level=True)


@pytest.fixture(scope="module")
def compile_ptx():
    try:
        from numba import cuda, float32

        def probe(a):
            a[0] = 1

        cuda.compile_ptx(probe, (float32[::1],), cc=(9, 0))
    except Exception as err:  # numba-cuda or libNVVM/NVRTC missing
        pytest.skip(f"CUDA compiler toolchain unavailable: {type(err).__name__}: {str(err)[:120]}")
    return lambda fn, sig: cuda.compile_ptx(fn.py_func, sig, cc=(9, 0))[0]


def _f64_ops(ptx):
    """float64 arithmetic, compares, and integer-to-float64 conversions (numba compares a uint64
    with an int64 through float64)."""
    return re.findall(r"\b(?:(?:add|sub|mul|fma\.rn|div\.rn|sqrt\.rn)\.f64|setp\.\w+\.f64|cvt\.rn\.f64\.[us]\d+)\b",
                      ptx)


def _loads_per_block(ptx, fdt):
    """The most global float loads in one PTX basic block: 1 means every load sits behind its own
    branch (a bounds check), and a lane waits out each load's latency before issuing the next."""
    most, run = 0, 0
    for line in ptx.splitlines():
        line = line.strip()
        if re.match(r"^\$L__BB\d+_\d+:", line) or re.search(r"\bbra(\.uni)?\b", line):
            run = 0
        elif re.match(rf"ld\.global(\.nc)?\.{fdt[0]}{fdt[-2:]}\b", line):
            run += 1
            most = max(most, run)
    return most


@pytest.mark.parametrize("fdt,idt", [("float32", "int32"), ("float64", "int64"), ("float32", "int64")])
def test_csr_kernels_compile(compile_ptx, fdt, idt):
    from numba import types

    from sparsenet.kernels.cuda import csr

    f = getattr(types, fdt)
    i = getattr(types, idt)
    vec, mat = f[::1], f[:, ::1]
    ivec = i[::1]
    sigs = {
        "csr_spmm": (csr.csr_spmm, (ivec, ivec, ivec, types.boolean, vec, mat, vec) + (types.boolean,) * 3 + (mat, mat)),
        "csr_sddmm": (csr.csr_sddmm, (ivec, ivec, mat, mat, vec)),
        "csr_sddmm_bias": (csr.csr_sddmm_bias, (ivec, ivec, mat, mat, vec, vec)),
        "transpose_2d": (csr.transpose_2d, (f[:, :], mat)),
        "fill": (csr.fill, (vec, types.float64)),
    }
    # The product kernels' inner loops issue an entry's dense loads back to back (no per-load
    # bounds check): four per SpMM entry, five (one g, four x) per SDDMM batch step.
    unguarded = {"csr_spmm": 4, "csr_sddmm": 5}
    for name, (fn, sig) in sigs.items():
        ptx = compile_ptx(fn, sig)
        if fdt == "float32" and name != "fill":
            assert not _f64_ops(ptx), f"{name} does float64 arithmetic in its float32 variant: {_f64_ops(ptx)[:5]}"
        if name in unguarded:
            assert _loads_per_block(ptx, fdt) >= unguarded[name], f"{name}'s inner-loop loads are guarded one by one"


@pytest.mark.parametrize("fdt", ["float32", "float64"])
def test_update_element_functions_compile(compile_ptx, fdt):
    """The per-element math as device functions.  (The kernels calling them cannot be compiled
    without a GPU: numba asks the driver for the current device when it links a device
    function into a kernel; on a GPU the simulator-tested kernels compile at first launch.)"""
    from numba import cuda, types

    from sparsenet.kernels.cuda import scalar

    x = getattr(types, fdt)
    s, b = types.float64, types.boolean
    cuda.compile_ptx(scalar.sgd_element, (x, x, x, s, s, s, s, b, b), device=True, cc=(9, 0))
    cuda.compile_ptx(scalar.adam_element, (x, x, x, x, s, s, s, s, s, b, s, s), device=True, cc=(9, 0))


@pytest.mark.parametrize("fdt", ["float32", "float64"])
def test_conv_pool_kernels_compile(compile_ptx, fdt):
    from numba import types

    from sparsenet.kernels.cuda import conv, pool

    f = getattr(types, fdt)
    t4, vec, i = f[:, :, :, ::1], f[::1], types.int64
    sigs = {
        "conv2d_fwd": (conv.conv2d_fwd, (t4, f[:, ::1], i, i, vec, types.boolean) + (i,) * 6 + (types.boolean, t4)),
        "conv2d_grad_input": (conv.conv2d_grad_input, (t4, f[:, ::1]) + (i,) * 8 + (types.boolean, t4, t4)),
        "conv2d_grad_weight": (conv.conv2d_grad_weight, (t4, t4) + (i,) * 9 + (f[:, :, ::1],)),
        "split_sum": (conv.split_sum, (f[:, ::1], vec)),
        "channel_sum": (conv.channel_sum, (t4, vec)),
        "max_pool2d_fwd": (pool.max_pool2d_fwd, (t4,) + (i,) * 6 + (t4,)),
        "max_pool2d_bwd": (pool.max_pool2d_bwd, (t4, t4) + (i,) * 6 + (t4,)),
        "avg_pool2d_fwd": (pool.avg_pool2d_fwd, (t4,) + (i,) * 6 + (f, t4)),
        "avg_pool2d_bwd": (pool.avg_pool2d_bwd, (t4,) + (i,) * 6 + (f, t4)),
    }
    for name, (fn, sig) in sigs.items():
        ptx = compile_ptx(fn, sig)
        if fdt == "float32":
            assert not _f64_ops(ptx), f"{name} does float64 arithmetic in its float32 variant: {_f64_ops(ptx)[:5]}"


@pytest.mark.parametrize("fdt,idt", [("float32", "int32"), ("float64", "int64")])
def test_sparse_conv_and_training_step_kernels_compile(compile_ptx, fdt, idt):
    from numba import types

    from sparsenet.kernels.cuda import conv, ops

    f = getattr(types, fdt)
    ivec = getattr(types, idt)[::1]
    t4, vec, mat, anym, i = f[:, :, :, ::1], f[::1], f[:, ::1], f[:, :], types.int64
    tgt = types.int64[::1]
    sigs = {
        "sparse_conv2d_fwd": (conv.sparse_conv2d_fwd, (t4, ivec, ivec, vec) + (i,) * 9 + (vec, t4)),
        "sparse_conv2d_grad_input": (conv.sparse_conv2d_grad_input, (t4, ivec, ivec, ivec, vec) + (i,) * 8
                                     + (types.boolean, t4, t4)),
        "sparse_conv2d_grad_weight": (conv.sparse_conv2d_grad_weight, (t4, t4, types.int64[:, ::1], ivec) + (i,) * 9 + (vec,)),
        "local2d_fwd": (conv.local2d_fwd, (t4, t4, f[:, :, ::1]) + (i,) * 6 + (t4,)),
        "local2d_grad_input": (conv.local2d_grad_input, (t4, t4) + (i,) * 6 + (t4,)),
        "local2d_grad_weight": (conv.local2d_grad_weight, (t4, t4) + (i,) * 6 + (t4,)),
        "activation_fwd": (ops.activation_fwd, (i, types.float64, vec, vec)),
        "activation_bwd": (ops.activation_bwd, (i, types.float64, vec, vec, vec)),
        "dropout": (ops.dropout, (i, i, i, types.float64, vec, vec, i, i, i, i, types.boolean)),
        "add_inplace": (ops.add_inplace, (vec, vec)),
        "soft_threshold_inplace": (ops.soft_threshold_inplace, (vec, types.float64)),
        "hard_threshold_inplace": (ops.hard_threshold_inplace, (vec, types.float64)),
        "mul_inplace": (ops.mul_inplace, (vec, vec)),
        "group_soft_threshold_segments": (ops.group_soft_threshold_segments,
                                          (vec, ivec, ivec, types.boolean, types.float64)),
        "bias_add": (ops.bias_add, (anym, vec, types.boolean)),
        "kl_code_grad_add": (ops.kl_code_grad_add, (types.float64,) * 3 + (vec, anym, types.boolean)),
        "l1_code_grad_add": (ops.l1_code_grad_add, (types.float64, anym, anym, types.boolean)),
        "batch_sum": (ops.batch_sum, (anym, vec)),
        "matmul": (ops.matmul, (anym, anym, vec) + (types.boolean,) * 3 + (mat, mat)),
        "copy_2d": (ops.copy_2d, (anym, mat)),
        "take_rows": (ops.take_rows, (mat, types.int64[::1], mat)),
        "take_rows_t": (ops.take_rows_t, (mat, types.int64[::1], mat)),
        "copy_4d": (ops.copy_4d, (f[:, :, :, :], t4)),
        "cross_entropy_fwd": (ops.cross_entropy_fwd, (anym, tgt, vec)),
        "cross_entropy_bwd": (ops.cross_entropy_bwd, (anym, tgt, types.float64, f[::1, :])),
        "mse_fwd": (ops.mse_fwd, (vec, vec, vec)),
        "mse_bwd": (ops.mse_bwd, (vec, vec, types.float64, vec)),
        "channel_moments": (ops.channel_moments, (f[:, :, ::1], vec, vec)),
        "batch_norm_running": (ops.batch_norm_running, (vec, vec) + (types.float64,) * 3 + (vec, vec)),
        "batch_norm_apply": (ops.batch_norm_apply, (f[:, :, ::1], vec, vec, types.float64, vec, vec, types.boolean,
                                                    f[:, :, ::1], vec, f[:, :, ::1])),
        "batch_norm_grad_sums": (ops.batch_norm_grad_sums, (f[:, :, ::1], f[:, :, ::1], vec, vec)),
        "batch_norm_grad_input": (ops.batch_norm_grad_input, (f[:, :, ::1], f[:, :, ::1], vec, vec, types.boolean,
                                                              vec, vec, types.boolean, types.float64, f[:, :, ::1])),
        "softmax_rows": (ops.softmax_rows, (anym, mat)),
        "softmax_rows_backward": (ops.softmax_rows_backward, (anym, anym, mat)),
    }
    for name, (fn, sig) in sigs.items():
        ptx = compile_ptx(fn, sig)
        if fdt == "float32":
            assert not _f64_ops(ptx), f"{name} does float64 arithmetic in its float32 variant: {_f64_ops(ptx)[:5]}"
        if name == "kl_code_grad_add":  # fmin/fmax would clip a NaN mean to eps; the host keeps NaN
            assert not re.findall(r"\b(?:min|max)\.f(?:32|64)\b", ptx), "kl_code_grad_add clips with fmin/fmax"
    compile_ptx(ops.accumulate_metrics, (f[::1], i, anym, tgt, types.boolean, types.float64[::1]))


@pytest.mark.parametrize("kdt", ["int32", "int64"])
def test_magnitude_select_kernels_compile(compile_ptx, kdt):
    """The radix select reads float32 (float64) values as int32 (int64) keys: no float math at all."""
    from numba import types

    from sparsenet.kernels.cuda import select

    keys, i, b = getattr(types, kdt)[::1], types.int64, types.boolean
    state, hist = types.int64[::1], types.int32[:, ::1]
    for fn, sig in ((select.radix_histogram, (keys, i, i, i, b, i, i, state, hist)),
                    (select.radix_pick, (hist, i, b, i, state)),
                    (select.zero_selected, (keys, i, i, i, state, hist))):
        ptx = compile_ptx(fn, sig)
        assert not re.findall(r"\.f(?:32|64)\b", ptx), f"{fn.py_func.__name__} does float arithmetic"


def test_sass_report_finds_the_lean_inner_loops(compile_ptx, tmp_path):
    """bench/sass_report.py on the CSR and dense products: the steady-state loops stay lean (instruction
    counts of the machine code, not timings).  Needs ptxas and nvdisasm (the nvidia-cuda-nvcc-cu12
    and nvidia-cuda-nvdisasm wheels); skipped without them."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "sass_report.py"
    spec = importlib.util.spec_from_file_location("sass_report", path)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    try:
        report._tool("ptxas"), report._tool("nvdisasm")
    except (SystemExit, ImportError) as err:
        pytest.skip(f"CUDA binary tools unavailable: {err}")
    kernels = {name: (fn, sig) for name, fn, sig in report._kernels("float32", "int32")}
    for name, most in (("csr_spmm", 6.0), ("csr_sddmm", 5.0), ("matmul", 2.5)):
        loops = report.profile(*kernels[name], tmp_path, name)["loops"]
        assert loops, f"no inner loop with float work found in {name}"
        best = min(n / f for n, _, _, f in loops)
        assert best <= most, f"{name}'s leanest inner loop takes {best:.1f} instructions per float op"
    # The dense conv GEMMs are capped to 128 registers (launch bounds: two 256-thread blocks an
    # SM, where 167 and 130 registers fit only one) without spilling or a longer inner loop.
    for name in ("conv2d_fwd", "conv2d_grad_input", "conv2d_grad_weight"):
        result = report.profile(*kernels[name], tmp_path, name)
        assert result["registers"] <= 128 and result["spill_bytes"] == 0, (name, result)
        assert min(n / f for n, _, _, f in result["loops"]) <= 2.0, (name, result["loops"])


def test_block_geometry_the_kernels_rely_on():
    """csr_sddmm_bias indexes its threads as warp * WARP + lane over SDDMM_THREADS slots, and is
    bitwise batch_sum's only with as many threads as batch_sum's block."""
    from sparsenet.kernels.cuda import csr, ops

    assert csr.SDDMM_THREADS == csr.WARP * csr.SDDMM_WARPS == ops.RED_THREADS


def test_every_kernel_caches_its_machine_code(compile_ptx):
    """Each kernel is a block.Kernel built with cache=True (a new process loads a training
    step's kernels from disk instead of compiling them, about a second each); a kernel added
    with a plain cuda.jit fails here."""
    import importlib

    from numba.cuda.dispatcher import CUDADispatcher

    from sparsenet.kernels.cuda.block import Kernel

    found = 0
    for name in ("conv", "csr", "ops", "pool", "select", "update"):
        module = importlib.import_module(f"sparsenet.kernels.cuda.{name}")
        for attr, value in vars(module).items():
            if isinstance(value, CUDADispatcher):
                assert value.targetoptions.get("device"), f"{name}.{attr}: a kernel not made by block.kernel"
            elif isinstance(value, Kernel):
                found += 1
                assert value._cache.__class__.__name__ == "CUDACache", f"{name}.{attr} is not cached"
    assert found >= 50


def test_our_small_launches_do_not_warn_but_a_users_do(monkeypatch):
    """numba's low-occupancy warning (grids under 128 blocks) is off while one of our launches
    is set up, and on again for the user's own kernels.  Setting up a launch needs no GPU."""
    import copy
    import pickle
    import warnings

    from numba import cuda
    from numba.cuda.core.errors import NumbaPerformanceWarning  # numba-cuda's own class

    from sparsenet.kernels.cuda import block, ops

    monkeypatch.setattr(block.CONFIG, "CUDA_LOW_OCCUPANCY_WARNINGS", 1)  # the GPU conftest turns it off
    monkeypatch.setattr(block.CONFIG, "DISABLE_PERFORMANCE_WARNINGS", 0)

    @cuda.jit
    def users(a):
        a[0] = 1

    with warnings.catch_warnings():
        warnings.simplefilter("error", NumbaPerformanceWarning)
        ops.bias_add[1, 32]  # one block
        ops.bias_add.configure(2, 32)
        with pytest.raises(NumbaPerformanceWarning, match="Grid size 1"):
            users[1, 32]
    assert block.CONFIG.CUDA_LOW_OCCUPANCY_WARNINGS == 1
    for clone in (copy.copy(ops.bias_add), pickle.loads(pickle.dumps(ops.bias_add))):
        assert isinstance(clone, block.Kernel) and clone.py_func.__name__ == "bias_add"
