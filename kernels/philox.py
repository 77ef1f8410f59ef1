"""Philox4x32-10, the counter-based random generator of Random123 (Salmon et al., SC'11).

A random stream indexed by position instead of advanced by state: four 32-bit counter words
and a two-word key give four 32-bit words, the same on any device and in any order of
evaluation.  That is what lets dropout draw its mask inside the kernel that applies it, on the
CPU and on the GPU alike (same key, same mask), and recompute it at backward instead of storing
it.  cuRAND and PyTorch's GPU dropout use the same generator.

:func:`philox4x32` is plain Python on NumPy ``uint64`` scalars, so one body serves three
targets: ``numba.njit`` compiles it for the CPU kernels, ``numba.cuda.jit(device=True)`` for the
GPU ones, and the CUDA simulator runs it as written.  Each 32-bit word is held in a ``uint64``
so that a 32x32-bit product (``mulhilo``) fits without overflow and without 128-bit types; every
sum is masked back to 32 bits.  Verified against Random123's known-answer vectors
(tests/kernels/test_dropout.py).

numba's on-disk cache keys a kernel on its own file, not on this one: after editing this file,
clear the kernels' ``__pycache__`` (or touch kernels/cpu/dropout.py), or the CPU kernel may
keep running the cached, old generator.
"""
import numpy as np

__all__ = ["philox4x32", "LOW32", "SHIFT32", "ZERO"]

LOW32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
ZERO = np.uint64(0)
_M0 = np.uint64(0xD2511F53)  # the round multipliers
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)  # the key schedule's increments (golden ratio, sqrt(3) - 1)
_W1 = np.uint64(0xBB67AE85)


def philox4x32(c0, c1, c2, c3, k0, k1):
    """The four 32-bit output words of Philox4x32-10 for counter (c0..c3) and key (k0, k1).

    Every argument and result is a ``uint64`` holding a 32-bit value.
    """
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        c0, c1, c2, c3 = (p1 >> SHIFT32) ^ c1 ^ k0, p1 & LOW32, (p0 >> SHIFT32) ^ c3 ^ k1, p0 & LOW32
        k0 = (k0 + _W0) & LOW32
        k1 = (k1 + _W1) & LOW32
    return c0, c1, c2, c3
