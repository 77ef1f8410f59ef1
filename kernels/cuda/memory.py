"""A caching device allocator for numba: freed blocks are kept and handed out again.

Why: on the H200 test machine one ``numba.cuda.device_array`` costs about 100 µs from Python
(cuMemAlloc, and numba's batched cuMemFree, which waits for the device), five times an empty
kernel launch (BENCHMARKS.md, overhead suite).  Every op of a training step allocates its
output, so without a cache a small model's step is bound by the allocator.  PyTorch keeps a
cache for the same reason.

How: :class:`CachingMemoryManager` is numba's own on-device manager (an External Memory
Management plugin) with one change: a block whose last reference dies goes back to a free
list keyed by its rounded size instead of to ``cuMemFree``.  Ownership is numba's: the
allocation is an ``AutoFreePointer`` counted by the ``OwnedPointer`` s of the array and of
every view of it, so a block returns to the pool only when no array or slice uses it.

Stream safety: a block may be handed out again while kernels that used it are still queued.
That is safe for work on the legacy default stream (all of sparsenet's launches), which is
ordered after every prior launch on blocking streams (numba's default) as well.  It is not for
arrays used on non-blocking streams, or by kernels on two user streams (not ordered with each
other), and not with per-thread default streams (``NUMBA_CUDA_PER_THREAD_DEFAULT_STREAM=1``,
under which the pool is never installed).  Programs doing that should leave the pool off.

Opt-in for now: ``SPARSENET_CUDA_POOL=1`` in the environment.  The ownership logic is tested
against numba's own pointer classes (tests/cuda/test_cuda_memory.py, with a stand-in driver),
but no GPU has run the allocator yet; ``bench/gpu_session.sh`` runs the GPU tests through it
and times the host-bound suites with and without it, and its default follows that evidence.
With the variable set, the manager is installed on the first CUDA use by sparsenet, only if no
CUDA context exists yet and ``NUMBA_CUDA_MEMORY_MANAGER`` names no other manager; never under
the simulator.  Should the pooled path itself fail (anything but running out of memory), the
manager warns once and allocates as numba does from then on.  Nothing here imports numba at
module import.
"""
import os
import warnings
import weakref

__all__ = ["round_size", "BlockPool", "install", "empty_cache", "memory_stats"]

_SMALL = 1 << 20  # below 1 MiB blocks round to 512 B, above it to whole MiB


def round_size(nbytes):
    """Bytes actually reserved for a request of ``nbytes`` (> 0): the pool's bucket key.

    Examples
    --------
    >>> round_size(1), round_size(512), round_size(513), round_size(3 << 20)
    (512, 512, 1024, 3145728)
    """
    step = 512 if nbytes < _SMALL else _SMALL
    return -(-nbytes // step) * step


class BlockPool:
    """Free device blocks by rounded size.  Plain Python, no CUDA: ``take``/``give`` only.

    Lock-free on purpose: ``give`` runs from garbage-collector finalizers, which may fire inside
    a ``take`` on the same thread (a lock would deadlock there); list ``append``/``pop`` and the
    dict lookups are atomic under the GIL.

    Examples
    --------
    >>> pool = BlockPool()
    >>> pool.take(512) is None
    True
    >>> pool.give(512, "block"); pool.cached_bytes()
    512
    >>> pool.take(512), pool.cached_bytes()
    ('block', 0)
    """

    def __init__(self):
        self._free = {}

    def take(self, rounded):
        """A cached block of exactly ``rounded`` bytes, or None."""
        blocks = self._free.get(rounded)
        try:
            return blocks.pop() if blocks else None
        except IndexError:  # emptied by another thread between the test and the pop
            return None

    def give(self, rounded, block):
        # setdefault, not a defaultdict: a finalizer run by the garbage collector while the
        # new list is being made may give a block of the same size; whichever list is stored
        # first wins and neither block is lost.
        self._free.setdefault(rounded, []).append(block)

    def drain(self):
        """Remove and return every cached block (for freeing)."""
        blocks = []
        for rounded in list(self._free):
            bucket = self._free.pop(rounded, [])
            blocks += bucket
        return blocks

    def cached_bytes(self):
        return sum(size * len(blocks) for size, blocks in list(self._free.items()))


_MANAGER = []  # the manager class, built once numba.cuda is importable


def _manager_class():
    if _MANAGER:
        return _MANAGER[0]
    import contextlib  # noqa: PLC0415

    from numba.cuda.cudadrv.driver import (  # noqa: PLC0415  (lazy: CUDA use only)
        AutoFreePointer,
        CudaAPIError,
        NumbaCUDAMemoryManager,
        binding,
        driver,
    )

    out_of_memory = binding.CUresult.CUDA_ERROR_OUT_OF_MEMORY

    class CachingMemoryManager(NumbaCUDAMemoryManager):
        """numba's on-device memory manager with a cache of freed blocks (see the module)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.pool = BlockPool()
            self.state = {"failed": False}  # shared with the blocks' finalizers

        @property
        def failed(self):
            return self.state["failed"]

        def memalloc(self, size):
            if self.failed:
                return super().memalloc(size)
            try:
                return self._pooled(size)
            except CudaAPIError:
                raise
            except Exception as err:  # noqa: BLE001  (a bug here must not cost the user the GPU)
                self.state["failed"] = True
                warnings.warn(f"sparsenet's caching CUDA allocator failed ({err!r}); allocating as "
                              "numba does from now on", RuntimeWarning, stacklevel=2)
                with contextlib.suppress(Exception):
                    self.empty_cache()  # nothing takes from the pool any more
                return super().memalloc(size)

        def _pooled(self, size):
            rounded = round_size(max(size, 1))
            ptr = self.pool.take(rounded)
            if ptr is None:
                try:
                    ptr = self._attempt_allocation(lambda: driver.cuMemAlloc(rounded))
                except CudaAPIError as err:
                    if err.code != out_of_memory:
                        raise
                    self.empty_cache()  # still out of memory: hand the cache back, then once more
                    ptr = self._attempt_allocation(lambda: driver.cuMemAlloc(rounded))
            allocations, deallocations, pool, state = self.allocations, self.deallocations, self.pool, self.state
            key = []

            def back_to_pool():
                allocations.pop(key[0], None)
                if state["failed"]:  # the pool is off: free as numba does
                    deallocations.add_item(driver.cuMemFree, ptr, rounded)
                elif deallocations.is_disabled:  # inside cuda.defer_cleanup(): no reuse until it ends
                    deallocations.add_item(lambda p: pool.give(rounded, p), ptr, rounded)
                else:
                    pool.give(rounded, ptr)

            try:
                # As numba's manager does: an AutoFreePointer kept alive by ``allocations`` and
                # counted by the OwnedPointers of the array and its views; the last one gone,
                # the block goes back to the pool.
                mem = AutoFreePointer(weakref.proxy(self.context), ptr, size, finalizer=back_to_pool)
                key.append(mem.device_pointer_value)
                self.allocations[key[0]] = mem
                return mem.own()
            except Exception:
                pool.give(rounded, ptr)  # not lost: cached, and freed by empty_cache
                raise

        @contextlib.contextmanager
        def defer_cleanup(self):
            with super().defer_cleanup():
                yield
            if not self.deallocations.is_disabled:  # the outermost region ended: reuse now
                self.deallocations.clear()

        def empty_cache(self):
            """Free every cached block (after the device has finished with them)."""
            self.deallocations.clear()  # blocks queued by a finished defer_cleanup region
            blocks = self.pool.drain()
            if blocks:
                driver.cuCtxSynchronize()
                for ptr in blocks:
                    driver.cuMemFree(ptr)

        def reset(self):
            # numba's reset drops every allocation, whose finalizers hand the blocks (live
            # arrays' too, as numba frees them) to the pool; then the pool frees them.
            super().reset()
            for ptr in self.pool.drain():
                with contextlib.suppress(CudaAPIError):
                    driver.cuMemFree(ptr)

    _MANAGER.append(CachingMemoryManager)
    return CachingMemoryManager


_INSTALL = {}  # "decided": True once install() has looked


def install():
    """Make numba allocate through :class:`CachingMemoryManager`, where that is still possible.

    Called before sparsenet's first CUDA context is made.  Returns whether the pool is in use
    for contexts made from now on.  Never raises: the pool is an optimisation.
    """
    if "result" in _INSTALL:
        return _INSTALL["result"]
    _INSTALL["result"] = False
    if os.environ.get("SPARSENET_CUDA_POOL", "0").strip() != "1":
        return False
    try:
        import numba  # noqa: PLC0415

        if numba.config.ENABLE_CUDASIM:
            return False
        from numba.cuda.core import config  # noqa: PLC0415
        from numba.cuda.cudadrv import driver as drv  # noqa: PLC0415

        if getattr(config, "CUDA_MEMORY_MANAGER", "default") != "default":
            return False  # the user chose a manager
        if getattr(config, "CUDA_PER_THREAD_DEFAULT_STREAM", 0):
            return False  # launches of different threads are not ordered: reuse would race
        if getattr(drv, "_memory_manager", None) is not None:
            return False  # a context exists already (or a manager was set): leave it
        drv.set_memory_manager(_manager_class())
    except Exception:  # noqa: BLE001  (another numba-cuda layout: run without the cache)
        return False
    _INSTALL["result"] = True
    return True


def _current_manager():
    from numba import cuda  # noqa: PLC0415

    if not _MANAGER:
        return None
    mgr = cuda.current_context().memory_manager
    return mgr if isinstance(mgr, _MANAGER[0]) else None


def empty_cache():
    """Return the current context's cached device blocks to the driver (like
    ``torch.cuda.empty_cache``); a no-op without the pool."""
    mgr = _current_manager()
    if mgr is not None:
        mgr.empty_cache()


def memory_stats():
    """``{"pool": bool, "cached_bytes": int}`` for the current CUDA context."""
    mgr = _current_manager()
    return {"pool": mgr is not None, "cached_bytes": mgr.pool.cached_bytes() if mgr is not None else 0}
