"""CUDA tests: run under Numba's CUDA simulator or on a real GPU, skipped otherwise.

Simulator run (its own process: the variable must be set before numba is imported):

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda -q

In the main suite (no simulator, no GPU) every test here is skipped, without error.  The
simulator runs each CUDA thread as a Python thread, so the ``small_geometry`` fixture shrinks
the kernels' block constants (warp width 4 instead of 32, ...) while simulating: every code
path, including multi-tile and multi-chunk loops, is exercised with a few dozen threads.  A
few tests keep the production geometry on tiny shapes.
"""
import os
import pathlib

import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
_HERE = pathlib.Path(__file__).resolve().parent


def _real_gpu():
    if SIMULATOR:
        return False
    import ctypes

    # No driver library, no GPU; and do not let numba try: a failed driver initialisation is
    # remembered by the process and breaks PTX-only compilation (test_cuda_compile.py).
    # dlopen, as numba does: the driver may sit outside ldconfig's cache (LD_LIBRARY_PATH).
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


def _numba_cuda_importable():
    try:
        from numba import cuda  # noqa: F401

        return True
    except ImportError:  # numba-cuda (the 'cuda' extra) not installed
        return False


REAL_GPU = _real_gpu()
if REAL_GPU:
    # Tests make device arrays with numba.cuda.to_device directly: install sparsenet's caching
    # allocator before the first of them opens the CUDA context, as sparsenet's own entry
    # points (kernels.to_device, Module.to, fit) do.
    from sparsenet.kernels.cuda import memory

    memory.install()
HAVE_NUMBA_CUDA = _numba_cuda_importable() if SIMULATOR else REAL_GPU
ENABLED = (SIMULATOR or REAL_GPU) and HAVE_NUMBA_CUDA


def _thread_safe_simulated_shared_memory():
    """The simulator's ``cuda.shared.array`` looks up a block's array and creates it when
    missing without a lock (numba-cuda 0.30).  When a thread switch falls between the two, two
    threads of one block get different arrays, each sees none of the other's writes, and a
    correct kernel gives garbage.  It is rare under the default switch interval, and likelier
    on a loaded machine.  Forcing frequent switches (``sys.setswitchinterval(1e-6)``) makes it
    show.  This does the same get-or-create under a lock.  The array is still keyed by the
    kernel's source line, as the simulator keys it."""
    import sys
    import threading
    import traceback

    import numpy as np
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory: one buffer, no race
            return original(self, shape, dtype, alignment)
        caller = traceback.extract_stack(sys._getframe())[-2][0:2]  # the kernel's line
        with lock:
            found = self._allocations.get(caller)
            if found is None:
                dtype = numpy_support.as_dtype(dtype) if isinstance(dtype, types.Type) else dtype
                found = self._allocations[caller] = np.empty(shape, dtype)
        return found

    kernelapi.FakeCUDAShared.array = array


if SIMULATOR and HAVE_NUMBA_CUDA:
    _thread_safe_simulated_shared_memory()


def pytest_configure(config):
    config.addinivalue_line("markers", "no_cuda_skip: runs without simulator or GPU (skips itself)")
    if os.environ.get("SPARSENET_EXPECT_GPU") == "1" and not (REAL_GPU and HAVE_NUMBA_CUDA):
        # bench/gpu_session.sh: a GPU run that silently skipped everything would report nothing.
        raise pytest.UsageError("SPARSENET_EXPECT_GPU=1 but numba.cuda finds no usable GPU")


def pytest_collection_modifyitems(config, items):
    if ENABLED:
        if REAL_GPU:
            # The tests' own tiny kernels would trip numba's low-occupancy warning (ours do not:
            # see kernels/cuda/block.py's Kernel).
            from sparsenet.kernels.cuda.block import CONFIG

            CONFIG.CUDA_LOW_OCCUPANCY_WARNINGS = 0
        return
    skip = pytest.mark.skip(
        reason="CUDA tests need numba-cuda (pip install '.[cuda]') and NUMBA_ENABLE_CUDASIM=1 "
        "(own pytest process) or an NVIDIA GPU"
    )
    for item in items:
        path = pathlib.Path(str(item.fspath)).resolve()
        if _HERE in path.parents and "no_cuda_skip" not in item.keywords:
            item.add_marker(skip)


# Block constants of the kernels/cuda modules, shrunk for the simulator.
_SMALL = {
    "csr": {"WARP": 4, "SPMM_WARPS": 2, "SPMM_BATCH_TILE": 16, "SDDMM_WARPS": 2, "SDDMM_ENTRIES": 8,
            "SDDMM_PAD": 5, "SDDMM_THREADS": 8, "TILE": 4, "TILE_ROWS": 2, "TILE_PAD": 5, "FILL_THREADS": 8},
    "update": {"UPDATE_THREADS": 8, "UPDATE_MAX_BLOCKS": 3},
    "conv": {"CONV_TX": 4, "CONV_TY": 2, "GEMM_THREADS": 4, "GEMM_REG": 2, "GEMM_TILE": 8,
             "GEMM_TILE_K": 3, "GEMM_PAD": 9, "SPLIT_BLOCKS": 6,
             "SPLIT_MIN_STEPS": 2, "SUM_THREADS": 8, "RED_THREADS": 8, "SPARSE_STAGE": 5, "LOCAL_THREADS": 8,
             "LOCAL_MAX_BLOCKS": 3},
    "pool": {"POOL_THREADS": 8, "POOL_MAX_BLOCKS": 4},
    "ops": {"THREADS": 8, "MAX_BLOCKS": 3, "RED_THREADS": 8, "MM_THREADS": 2, "MM_REG": 4, "MM_TILE": 8, "MM_TILE_K": 3, "MM_TILE_PAD": 9},
    "select": {"SELECT_THREADS": 8, "SELECT_ITEMS": 2, "SELECT_MAX_BLOCKS": 3},
}


@pytest.fixture
def small_geometry(monkeypatch):
    """Shrink the launch geometry in the simulator (a no-op on a real GPU, where the
    constants are compiled into the kernels)."""
    if SIMULATOR:
        from sparsenet.kernels.cuda import conv, csr, ops, pool, select, update

        for mod, name in ((csr, "csr"), (update, "update"), (conv, "conv"), (pool, "pool"), (ops, "ops"),
                          (select, "select")):
            for key, value in _SMALL[name].items():
                monkeypatch.setattr(mod, key, value)
    yield


def narrow_ratio(path):
    """conv.NARROW_RATIO forcing every dense conv op onto the direct kernels or onto the GEMMs."""
    return 0 if path == "direct" else 10**9


@pytest.fixture(params=["gemm", "direct"])
def conv_path(request, monkeypatch):
    """Run a dense conv test on the implicit GEMMs and again on the direct (weight-sparse)
    kernels with every tap stored, whichever the groups' widths would pick."""
    from sparsenet.kernels.cuda import conv

    monkeypatch.setattr(conv, "NARROW_RATIO", narrow_ratio(request.param))
    return request.param


# What a real numba DeviceNDArray offers besides its methods (which FakeCUDAArray defines
# itself): the simulator's __getattr__ forwards *any* other name to the NumPy array underneath.
_DEVICE_ARRAY_ATTRS = {"shape", "strides", "dtype", "size", "ndim", "flags", "nbytes", "alloc_size",
                       "stream", "gpu_data", "squeeze", "ravel", "view", "split", "getitem", "setitem",
                       "transpose", "T", "is_c_contiguous", "is_f_contiguous", "copy_to_host", "copy_to_device"}


_DUMMYARRAY = []


def _real_dummyarray():
    """numba-cuda's array-layout module (pure Python), loaded from its file: under the simulator
    ``numba.cuda.cudadrv`` is replaced by stubs."""
    if not _DUMMYARRAY:
        import importlib.util

        spec = importlib.util.find_spec("numba.cuda")
        path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "cudadrv" / "dummyarray.py"
        loader = importlib.util.spec_from_file_location("_sparsenet_real_dummyarray", path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        _DUMMYARRAY.append(module)
    return _DUMMYARRAY[0]


def _real_reshape(self, *newshape, **kws):
    """numba's DeviceNDArray.reshape on the simulator's arrays: a view with the strides numba
    computes (it reinterprets an F-ordered array in C order rather than copying, unlike NumPy)."""
    import numpy as np
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    dummyarray = _real_dummyarray()
    if len(newshape) == 1 and isinstance(newshape[0], (tuple, list)):
        newshape = newshape[0]
    if tuple(newshape) == tuple(self._ary.shape):
        return self
    desc = dummyarray.Array.from_desc(0, self._ary.shape, self._ary.strides, self._ary.itemsize)
    new, extents = desc.reshape(*newshape, **kws)
    if extents != [desc.extent]:
        raise NotImplementedError("operation requires copying")
    return FakeCUDAArray(np.lib.stride_tricks.as_strided(self._ary, new.shape, new.strides))


def _refuse(op):
    def method(self, *args, **kwargs):
        raise TypeError(f"device arrays do not support {op} (NumPy arithmetic works on the simulator's "
                        "fake arrays only; real numba device arrays need a kernel)")

    return method


@pytest.fixture(autouse=True)
def strict_simulator_arrays(monkeypatch):
    """Make the simulator's device arrays as poor as real ones.

    ``FakeCUDAArray`` wraps a NumPy array and forwards arithmetic, comparisons and every NumPy
    attribute (``.sum``, ``.max``, ``.astype``, ``np.asarray``), so code that would fail on a GPU
    (or silently copy to the host) passes in the simulator.  Here anything a real
    ``DeviceNDArray`` lacks raises instead, and ``reshape`` behaves as numba's does.
    """
    if not SIMULATOR:
        yield
        return
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    original = FakeCUDAArray.__getattr__

    def strict_getattr(self, name):
        if name not in _DEVICE_ARRAY_ATTRS:
            raise AttributeError(f"device arrays have no attribute {name!r} (simulator in strict mode)")
        return original(self, name)

    monkeypatch.setattr(FakeCUDAArray, "__getattr__", strict_getattr)
    for op in ("__add__", "__sub__", "__mul__", "__truediv__", "__floordiv__", "__mod__", "__pow__",
               "__lt__", "__le__", "__gt__", "__ge__"):
        monkeypatch.setattr(FakeCUDAArray, op, _refuse(op), raising=False)
    monkeypatch.setattr(FakeCUDAArray, "reshape", _real_reshape)
    monkeypatch.setattr(FakeCUDAArray, "__eq__", lambda self, other: self is other)
    monkeypatch.setattr(FakeCUDAArray, "__ne__", lambda self, other: self is not other)
    monkeypatch.setattr(FakeCUDAArray, "__hash__", lambda self: id(self))
    yield
