"""Block-wide building blocks shared by the CUDA kernels.

``inline="always"`` makes Numba paste the body into each calling kernel at compile time, so
those kernels still compile to PTX without a GPU (a separately compiled device function needs
a live device to be linked; see tests/cuda/test_cuda_compile.py), and the simulator runs them
as plain calls.
"""
import inspect
import threading

from numba import cuda, uint32


@cuda.jit(device=True, inline="always")
def block_sum(red, tid):
    """The sum of ``red`` over the block, returned to every thread.

    ``red`` is a shared array with one slot per thread (a power-of-two length), into which each
    thread ``tid`` has written its partial sum.  A fixed tree (the same order on every run:
    deterministic, no atomics).  Every thread of the block must call it, since it holds
    barriers; ``red`` may be written again as soon as it returns.
    """
    cuda.syncthreads()
    half = red.shape[0] // 2
    while half > 0:
        if tid < half:
            red[tid] += red[tid + half]
        cuda.syncthreads()
        half //= 2
    total = red[0]
    cuda.syncthreads()  # every thread has read the total before red is reused
    return total


@cuda.jit(device=True, inline="always")
def block_scan(buf, tid):
    """(inclusive prefix sum of ``buf`` up to thread ``tid``, total over the block).

    ``buf`` is a shared integer array with one slot per thread (any length equal to the block
    size), holding each thread's value; a Hillis-Steele scan (log2 steps, fixed order).  Every
    thread of the block must call it, since it holds barriers; ``buf`` may be written again as
    soon as it returns.
    """
    n = buf.shape[0]
    offset = 1
    cuda.syncthreads()
    while offset < n:
        v = 0
        if tid >= offset:
            v = buf[tid - offset]
        cuda.syncthreads()
        buf[tid] += v
        cuda.syncthreads()
        offset *= 2
    upto = buf[tid]
    total = buf[n - 1]
    cuda.syncthreads()  # every thread has read its results before buf is reused
    return upto, total


@cuda.jit(device=True, inline="always")
def unravel4(idx, n1, n2, n3):
    """(i, j, k, l) of flat C-order index ``idx`` into a (n0, n1, n2, n3) array."""
    l = idx % n3
    t = idx // n3
    k = t % n2
    t //= n2
    return t // n1, t % n1, k, l


@cuda.jit(device=True, inline="always")
def fill_tile(acc, reg, value):
    """acc[:, :] = value for a thread's (reg, reg) accumulator tile (see ``tile_mma``)."""
    for i in range(reg):
        for j in range(reg):
            acc[i, j] = value


@cuda.jit(device=True, inline="always")
def tile_mma(ta, tb, acc, ra, rb, threads, reg, tile_k):
    """One K step of a register-blocked tile product (``ops.matmul``, the implicit-GEMM convs):
    acc[i, j] += sum_kk ta[kk, ty + i*threads] * tb[kk, tx + j*threads] for kk = 0 .. tile_k - 1,
    in that order.  ``ta`` is the (tile_k, >= reg*threads) staged A tile stored k-major, ``tb``
    the (tile_k, reg*threads) B tile; ``acc`` (reg, reg), ``ra`` and ``rb`` (reg,) are the
    thread's local arrays (registers: the constants unroll every loop but the one over kk).
    Unsigned shared-memory indices: no negative-index fix-ups."""
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    kk = uint32(0)
    while kk < tile_k:
        row_a = ta[kk]
        row_b = tb[kk]
        for i in range(reg):
            ra[i] = row_a[uint32(ty + i * threads)]
            rb[i] = row_b[uint32(tx + i * threads)]
        for i in range(reg):
            for j in range(reg):
                acc[i, j] += ra[i] * rb[j]
        kk += uint32(1)


def _numba_cuda_config():
    try:
        from numba.cuda.core import config  # noqa: PLC0415  (numba-cuda >= 0.2x)
    except ImportError:  # pragma: no cover - older numba-cuda
        from numba import config  # noqa: PLC0415
    return config


CONFIG = _numba_cuda_config()  # numba-cuda's settings (the tests' conftest reads it too)
_QUIET = threading.Lock()


class Kernel:
    """A sparsenet CUDA kernel: ``cuda.jit(cache=True)``, launched as ``kernel[grid, block](...)``.

    numba warns (``NumbaPerformanceWarning``) when it sets up a launch of fewer than 128
    blocks (once per new grid shape).  Our grids are sized beside each launch and are small on
    purpose (a one-block reduction, a layer's bias, a batch of 32 rows): the warning would fill
    a user's first GPU steps with messages about launches they do not control, so it is off
    while a launch of ours is set up (under a lock, so threads cannot leave it off) and on for
    the user's own kernels (one of those set up by another thread in that instant is not
    warned about).  Everything else (``py_func``, ``targetoptions``, the cache, calling
    without a launch configuration) is the numba dispatcher's.
    """

    __slots__ = ("dispatcher",)

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher

    def _quietly(self, configure, *args):
        with _QUIET:
            warn = CONFIG.CUDA_LOW_OCCUPANCY_WARNINGS
            try:
                CONFIG.CUDA_LOW_OCCUPANCY_WARNINGS = 0
                return configure(*args)
            finally:
                CONFIG.CUDA_LOW_OCCUPANCY_WARNINGS = warn

    def __getitem__(self, launch):
        return self._quietly(self.dispatcher.__getitem__, launch)

    def configure(self, *args):
        return self._quietly(self.dispatcher.configure, *args)

    def __call__(self, *args, **kwargs):  # numba's own error: a kernel needs [grid, block]
        return self.dispatcher(*args, **kwargs)

    def __getattr__(self, name):
        if name == "dispatcher" or name.startswith("__"):  # not set up yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.dispatcher, name)

    def __reduce__(self):
        return Kernel, (self.dispatcher,)


def kernel(fn):
    """Decorator of every sparsenet CUDA kernel (see :class:`Kernel`)."""
    return Kernel(cuda.jit(cache=True)(fn))


def jit_fitting(max_threads, min_blocks):
    """:func:`kernel` asking the compiler to fit ``min_blocks`` blocks of ``max_threads``
    threads on one SM (CUDA's ``__launch_bounds__``): a register cap of
    65536 / (max_threads * min_blocks).  Without launch bounds where they are not a parameter:
    the simulator's jit, and numba-cuda releases before them, whose jit would take the keyword
    silently and then fail at the first launch."""
    if "launch_bounds" not in inspect.signature(cuda.jit).parameters:
        return kernel
    return lambda fn: Kernel(cuda.jit(cache=True, launch_bounds=(max_threads, min_blocks))(fn))
