"""The caching device allocator (kernels/cuda/memory.py).

The pool and the ownership logic run everywhere (the latter over a stand-in driver with numba's
real pointer classes, not under the simulator, which stubs that module out); the allocator
itself on a real GPU with ``SPARSENET_CUDA_POOL=1``.
"""
import gc
import logging

import numpy as np
import pytest

from sparsenet.kernels.cuda import memory

from .conftest import SIMULATOR


@pytest.mark.no_cuda_skip
@pytest.mark.parametrize("nbytes, expected", [(1, 512), (512, 512), (513, 1024), ((1 << 20) - 1, 1 << 20),
                                              (1 << 20, 1 << 20), ((1 << 20) + 1, 2 << 20)])
def test_round_size(nbytes, expected):
    assert memory.round_size(nbytes) == expected


@pytest.mark.no_cuda_skip
def test_block_pool_hands_back_the_latest_block_of_that_size():
    pool = memory.BlockPool()
    pool.give(512, "a")
    pool.give(512, "b")
    pool.give(1024, "c")
    assert pool.cached_bytes() == 2048
    assert pool.take(512) == "b"  # last in, first out: the block most likely still in L2
    assert pool.take(2048) is None
    assert sorted(pool.drain()) == ["a", "c"]
    assert pool.cached_bytes() == 0 and pool.take(512) is None


# ----------------------------------------------------------------------------- ownership logic
# The manager with numba's real pointer and array classes over a stand-in driver: runs without a
# GPU (not under the simulator, which replaces numba's driver module with stubs).
class _FakeDriver:
    """Hands out distinct fake device addresses and records frees and synchronisations."""

    def __init__(self):
        self.next, self.allocs, self.freed, self.syncs = 1 << 20, [], [], 0
        self.fail_allocs, self.fail_code = 0, "CUDA_ERROR_OUT_OF_MEMORY"

    def cuMemAlloc(self, size):  # noqa: N802  (the driver's name)
        from numba.cuda.cudadrv.driver import CudaAPIError, binding

        if self.fail_allocs:
            self.fail_allocs -= 1
            raise CudaAPIError(getattr(binding.CUresult, self.fail_code), "failed")
        ptr, self.next = self.next, self.next + size + 4096
        self.allocs.append((ptr, size))
        return binding.CUdeviceptr(ptr)

    def cuMemFree(self, ptr):  # noqa: N802
        self.freed.append(int(ptr))

    def cuCtxSynchronize(self):  # noqa: N802
        self.syncs += 1


class _Context:  # weak-referenceable stand-in for numba's Context
    pass


@pytest.fixture
def fake_manager(monkeypatch):
    if SIMULATOR:
        pytest.skip("the simulator replaces numba's driver module")
    drv = pytest.importorskip("numba.cuda.cudadrv.driver")
    fake = _FakeDriver()
    monkeypatch.setattr(drv, "driver", fake)
    # numba defines its driver logger when the real driver initialises
    monkeypatch.setattr(drv, "_logger", logging.getLogger("numba.cuda.cudadrv.driver"), raising=False)
    monkeypatch.setattr(memory, "_MANAGER", [])  # build the class over the stand-in driver
    context = _Context()
    manager = memory._manager_class()(context=context)
    manager.deallocations.memory_capacity = 1 << 30  # what initialize() reads from the device
    yield manager, fake, context


def DeviceNDArray(**kwargs):  # noqa: N802  (numba's class, imported late: numba-cuda is optional)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray as cls

    return cls(**kwargs)


def _array(manager, n):
    return DeviceNDArray(shape=(n,), strides=(4,), dtype=np.float32, gpu_data=manager.memalloc(4 * n))


def _address(a):
    return a.gpu_data.device_pointer_value


@pytest.mark.no_cuda_skip
def test_blocks_return_to_the_pool_only_when_no_array_or_view_uses_them(fake_manager):
    manager, fake, _ = fake_manager
    a = _array(manager, 1000)
    first = _address(a)
    assert fake.allocs == [(first, 4096)]  # rounded up to 512 B
    # What a[10:20] builds (slicing itself wants a live context): a view of the memory.
    view = DeviceNDArray(shape=(10,), strides=(4,), dtype=np.float32, gpu_data=a.gpu_data.view(40, 80))
    del a
    gc.collect()
    assert manager.pool.cached_bytes() == 0  # the slice still holds the block
    b = _array(manager, 1000)
    assert _address(b) != first and len(fake.allocs) == 2
    del view
    gc.collect()
    assert manager.pool.cached_bytes() == 4096
    c = _array(manager, 999)  # same rounded size: the cached block, no driver call
    assert _address(c) == first and len(fake.allocs) == 2 and manager.pool.cached_bytes() == 0
    assert fake.freed == []  # nothing went back to the driver
    del b, c


@pytest.mark.no_cuda_skip
def test_defer_cleanup_queues_blocks_and_empty_cache_frees_them(fake_manager):
    manager, fake, _ = fake_manager
    a = _array(manager, 100)
    block = _address(a)
    with manager.defer_cleanup():
        with manager.defer_cleanup():  # nested: still deferred when the inner region ends
            del a
            gc.collect()
        assert manager.pool.cached_bytes() == 0  # not reusable while cleanup is deferred
    assert manager.pool.cached_bytes() == 512  # reusable once the outermost region has ended
    manager.empty_cache()
    assert fake.freed == [block] and fake.syncs == 1 and manager.pool.cached_bytes() == 0


@pytest.mark.no_cuda_skip
def test_out_of_memory_gives_the_cache_back_and_retries(fake_manager):
    manager, fake, _ = fake_manager
    a = _array(manager, 100)
    cached = _address(a)
    del a
    gc.collect()
    fake.fail_allocs = 2  # numba's own retry fails too; the retry after emptying the cache works
    b = _array(manager, 5000)
    assert fake.freed == [cached] and _address(b) not in (None, cached)


@pytest.mark.no_cuda_skip
def test_other_driver_errors_propagate_and_keep_the_cache(fake_manager):
    from numba.cuda.cudadrv.driver import CudaAPIError

    manager, fake, _ = fake_manager
    a = _array(manager, 100)
    del a
    fake.fail_allocs, fake.fail_code = 1, "CUDA_ERROR_ILLEGAL_ADDRESS"
    with pytest.raises(CudaAPIError):
        _array(manager, 5000)
    assert fake.freed == [] and manager.pool.cached_bytes() == 512


@pytest.mark.no_cuda_skip
def test_reset_frees_cached_and_live_blocks(fake_manager):
    manager, fake, _ = fake_manager
    live = _array(manager, 100)
    cached = _array(manager, 300)
    addresses = {_address(live), _address(cached)}
    del cached
    manager.reset()
    assert set(fake.freed) == addresses and manager.pool.cached_bytes() == 0
    del live  # its memory went with the reset: nothing comes back to the pool
    gc.collect()
    assert manager.pool.cached_bytes() == 0 and len(fake.freed) == 2


@pytest.mark.no_cuda_skip
def test_a_failing_pool_warns_once_and_falls_back_to_numba(fake_manager, monkeypatch):
    manager, fake, _ = fake_manager

    def broken(size):
        raise TypeError("unexpected pointer type")

    before = _array(manager, 10)
    cached = _array(manager, 300)
    cached_address = _address(cached)
    del cached
    monkeypatch.setattr(manager, "_pooled", broken)
    with pytest.warns(RuntimeWarning, match="caching CUDA allocator failed"):
        a = _array(manager, 10)
    assert fake.freed == [cached_address]  # the pool was emptied: nothing would take from it
    b = _array(manager, 10)  # no second warning: the pool is off for good
    assert manager.failed and _address(a) != _address(b) and len(fake.allocs) == 4
    pooled_address = _address(before)
    del before  # allocated by the pool, freed as numba frees: queued, then cuMemFree
    manager.deallocations.clear()
    assert fake.freed == [cached_address, pooled_address] and manager.pool.cached_bytes() == 0


# ----------------------------------------------------------------------------- on a real GPU
needs_allocator = pytest.mark.skipif(
    SIMULATOR or memory.os.environ.get("SPARSENET_CUDA_POOL") != "1",
    reason="the pool is opt-in (SPARSENET_CUDA_POOL=1, as bench/gpu_session.sh sets) and needs a real GPU",
)


def _ptr(a):
    return a.device_ctypes_pointer.value


def _kc():
    from sparsenet.kernels import cuda as kc

    return kc


@needs_allocator
def test_pool_in_use_and_freed_block_reused():
    kc = _kc()
    assert kc.memory_stats()["pool"]
    gc.collect()
    kc.empty_cache()  # no other block of this size in the pool: the reuse below is certain
    a = kc.empty((1000,), np.float32)
    p = _ptr(a)
    del a
    assert kc.memory_stats()["cached_bytes"] == memory.round_size(4000)
    b = kc.empty((999,), np.float32)  # same rounded size: the same block
    assert _ptr(b) == p


@needs_allocator
def test_a_view_keeps_its_block_out_of_the_pool():
    kc = _kc()
    gc.collect()
    kc.empty_cache()
    a = kc.to_device(np.arange(1000, dtype=np.float32))
    v = a[10:20]
    p = _ptr(a)
    del a
    b = kc.zeros((1000,), np.float32)
    assert _ptr(b) != p
    np.testing.assert_array_equal(v.copy_to_host(), np.arange(10, 20, dtype=np.float32))
    del v
    c = kc.empty((1000,), np.float32)
    assert _ptr(c) == p  # the view gone, the block is free again


@needs_allocator
def test_defer_cleanup_holds_freed_blocks_back():
    from numba import cuda

    kc = _kc()
    with cuda.defer_cleanup():
        a = kc.empty((3000,), np.float32)
        p = _ptr(a)
        del a
        gc.collect()
        b = kc.empty((3000,), np.float32)
        assert _ptr(b) != p


@needs_allocator
def test_reused_blocks_give_correct_results_and_empty_cache_frees_them(rng):
    from sparsenet import CSRMatrix
    from sparsenet.kernels import reference as ref

    kc = _kc()
    w = CSRMatrix.random((50, 40), 0.2, rng=rng, dtype=np.float32)
    wd = w.to("cuda")
    for _ in range(5):  # outputs freed and reallocated from the pool every round
        x = rng.standard_normal((7, 40), dtype=np.float32)
        y = kc.to_host(kc.spmm(wd.indptr, wd.indices, wd.data, kc.to_device(np.asfortranarray(x))))
        np.testing.assert_allclose(y, ref.spmm(w.indptr, w.indices, w.data, w.shape, x), rtol=1e-5, atol=1e-5)
    gc.collect()
    assert kc.memory_stats()["cached_bytes"] > 0
    kc.empty_cache()
    assert kc.memory_stats()["cached_bytes"] == 0
    z = kc.zeros((123,), np.float64)  # allocation still works after the cache was emptied
    assert not z.copy_to_host().any()
