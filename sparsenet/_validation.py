"""Boundary checks shared by the public API: cheap, with messages that say what to do; and
:func:`runs_own`, which tells whether a subclass overrode what a class promises about itself."""
import numbers

import numpy as np

from .kernels.device import is_device_array

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_random_state(rng):
    """None -> fresh Generator, int -> seeded Generator, Generator -> itself."""
    if rng is None or isinstance(rng, (numbers.Integral, np.integer)):
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.Generator):
        return rng
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator; got {type(rng).__name__}")


def float_dtype(dtype, name="dtype"):
    """Return np.dtype(dtype) if it is float32 or float64, else raise TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"{name} must be float32 or float64; got {dtype!r}") from err
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64; got {dt}")
    return dt


def as_float_array(a, name, dtype=None):
    """Convert to ndarray without copying and require a float32/float64 dtype.

    When ``dtype`` is given the array must already have it: mixing float32 and float64 is an
    error rather than a silent upcast, so float32 models stay float32.
    """
    arr = a if is_device_array(a) else np.asarray(a)  # device arrays stay where they are
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 array; got dtype {arr.dtype}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {arr.dtype} but the weight is {dtype}; cast one of them "
            f"(e.g. {name}.astype(np.{dtype}))"
        )
    return arr


def runs_own(obj, cls, *names):
    """True when ``obj``'s class still uses ``cls``'s own methods ``names`` (no subclass has
    overridden them): only then do ``cls``'s claims about what those methods do hold, e.g. that
    a hook runs on the weights' device."""
    return all(getattr(type(obj), n, None) is getattr(cls, n, None) for n in names)
