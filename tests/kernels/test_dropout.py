"""Dropout's counter-based mask: Philox4x32-10 against Random123's known answers, the kernel
against kernels.reference, its statistics, and the functional API's contract."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit, uint64

import sparsenet.functional as F
from sparsenet import kernels
from sparsenet.kernels import reference as ref
from sparsenet.kernels.cpu.dropout import _philox
from sparsenet.kernels.philox import philox4x32
from sparsenet.testing import gradcheck

# Random123's kat_vectors for philox4x32_10: (counter, key, output)
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@njit
def _compiled_philox(c0, c1, c2, c3, k0, k1):  # the CPU kernel's compiled generator
    return _philox(uint64(c0), uint64(c1), uint64(c2), uint64(c3), uint64(k0), uint64(k1))


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_philox_matches_random123_compiled_interpreted_and_reference(counter, key, expected):
    args = [np.uint64(v) for v in counter + key]
    with np.errstate(over="raise"):  # the simulator's path: NumPy scalars, no silent wrap-around
        interpreted = philox4x32(*args)
    assert tuple(int(w) for w in _compiled_philox(*(int(a) for a in args))) == expected
    assert tuple(int(w) for w in interpreted) == expected
    assert tuple(ref.philox4x32([[v] for v in counter], key)[:, 0].tolist()) == expected


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple),
       p=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]), seed=st.integers(0, 2**64 - 1),
       dtype=st.sampled_from([np.float32, np.float64]), fortran=st.booleans())
def test_kernel_matches_reference(shape, p, seed, dtype, fortran):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    if fortran:
        x = np.asfortranarray(x)
    y = kernels.dropout(x, p, seed)
    assert y.shape == x.shape and y.dtype == x.dtype
    if fortran and x.ndim == 2:  # a sparse layer's layout is read in place and kept
        assert y.T.flags.c_contiguous
    np.testing.assert_array_equal(y, ref.dropout(np.ascontiguousarray(x), p, seed))


def test_rows_longer_than_the_counter_are_refused():
    huge = np.broadcast_to(np.float32(1), (2, 2**34))  # no memory behind it
    with pytest.raises(NotImplementedError, match="2\\*\\*34"):
        kernels.dropout(huge, 0.5, 1)


def test_mask_follows_logical_positions_not_memory():
    """F-ordered and strided inputs get the mask of their C-ordered copy: a seed means one mask."""
    x = np.random.default_rng(1).standard_normal((6, 10))
    y = F.dropout(x, 0.5, seed=11)
    np.testing.assert_array_equal(F.dropout(np.asfortranarray(x), 0.5, seed=11), y)
    big = np.zeros((12, 20))
    big[::2, ::2] = x
    np.testing.assert_array_equal(F.dropout(big[::2, ::2], 0.5, seed=11), y)


def test_statistics_of_the_mask():
    x = np.ones((400, 500), np.float32)
    for p in (0.1, 0.5, 0.8):
        y = F.dropout(x, p, seed=3)
        keep = y != 0
        n = keep.size
        assert abs(keep.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)  # 5 sigma
        assert set(np.unique(y)) == {0.0, np.float32(1 / (1 - p))}
        # no structure along rows, columns or the four words of a generator call (the quarters)
        for axis_means in (keep.mean(axis=0), keep.mean(axis=1), keep.reshape(400, 4, 125).mean(axis=(0, 2))):
            sd = np.sqrt(p * (1 - p) * axis_means.size / n)
            assert np.abs(axis_means - (1 - p)).max() < 6 * sd
        lag = (keep[:, 1:] == keep[:, :-1]).mean()  # neighbours independent
        assert abs(lag - ((1 - p) ** 2 + p ** 2)) < 0.01
    a, b = F.dropout(x, 0.5, seed=1) != 0, F.dropout(x, 0.5, seed=2) != 0
    assert abs((a == b).mean() - 0.5) < 0.01  # another seed, an independent mask


def test_edge_probabilities_and_non_finite_values():
    x = np.array([[np.inf, -np.inf, np.nan, 1.0, -2.0]])
    np.testing.assert_array_equal(F.dropout(x, 0.0, seed=5), x)
    np.testing.assert_array_equal(F.dropout(x, 1.0, seed=5), np.zeros_like(x))  # dropped is exactly 0
    y = F.dropout(np.full((50, 50), np.inf), 0.5, seed=5)
    assert set(np.unique(y)) == {0.0, np.inf}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_is_the_same_mask_and_passes_gradcheck(dtype, rng):
    x = rng.standard_normal((3, 7)).astype(dtype)
    g = rng.standard_normal((3, 7)).astype(dtype)
    y = F.dropout(x, 0.4, seed=9)
    gx = F.dropout_backward(g, 0.4, seed=9)
    np.testing.assert_array_equal(gx != 0, y != 0)
    assert gx.dtype == dtype
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    gradcheck(lambda a: F.dropout(a, 0.4, seed=9), [x64], g64, [F.dropout_backward(g64, 0.4, seed=9)], rng=rng)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_bad_probability_is_refused(p):
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.dropout(np.ones(3), p, seed=0)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, None, True])
def test_bad_seed_is_refused(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        F.dropout_backward(np.ones(3), 0.5, seed=seed)


def test_integer_input_is_refused():
    with pytest.raises(TypeError):
        F.dropout(np.ones(3, dtype=np.int64), 0.5, seed=0)
