"""The caching device allocator (kernels/cuda/memory.py).

The pool logic runs everywhere; the allocator itself only on a real GPU: the simulator has no
device memory to manage (its arrays are NumPy arrays), so those tests skip themselves there.
"""
import gc

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


needs_allocator = pytest.mark.skipif(SIMULATOR, reason="the simulator has no device allocator")


def _ptr(a):
    return a.device_ctypes_pointer.value


def _kc():
    from sparsenet.kernels import cuda as kc

    return kc


@needs_allocator
def test_pool_in_use_and_freed_block_reused():
    kc = _kc()
    assert kc.memory_stats()["pool"]
    a = kc.empty((1000,), np.float32)
    p = _ptr(a)
    del a
    gc.collect()
    assert kc.memory_stats()["cached_bytes"] >= memory.round_size(4000)
    b = kc.empty((999,), np.float32)  # same rounded size: the same block
    assert _ptr(b) == p


@needs_allocator
def test_a_view_keeps_its_block_out_of_the_pool():
    kc = _kc()
    a = kc.to_device(np.arange(1000, dtype=np.float32))
    v = a[10:20]
    p = _ptr(a)
    del a
    gc.collect()
    b = kc.zeros((1000,), np.float32)
    assert _ptr(b) != p
    np.testing.assert_array_equal(v.copy_to_host(), np.arange(10, 20, dtype=np.float32))
    del v
    gc.collect()
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
