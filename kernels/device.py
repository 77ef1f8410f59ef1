"""Which device an array lives on, and whether CUDA can be used at all.

Nothing here imports ``numba.cuda`` at module import: a host-only user never pays for it and
never needs numba-cuda installed.  ``numba.cuda`` is imported only when an array that could be
a device array is inspected (an object exposing ``__cuda_array_interface__`` never needs it) or
when :func:`cuda_available` is asked.

Device test, as STYLE.md fixes it: ``hasattr(x, "__cuda_array_interface__")`` (numba device
arrays on a real GPU, CuPy, torch CUDA tensors) or
``numba.cuda.devicearray.is_cuda_ndarray(x)`` (which also covers the simulator's fake device
arrays, which have no ``__cuda_array_interface__``).
"""
import os
import sys

import numpy as np

__all__ = ["is_device_array", "device_of", "check_same_device", "cuda_available", "DEVICES"]

DEVICES = ("cpu", "cuda")


def _maybe_numba_device_array(x):
    """True for numba (real or simulated) device arrays; imports numba.cuda only if it could be one."""
    if isinstance(x, (np.ndarray, np.generic, int, float, complex, bool, list, tuple)) or x is None:
        return False
    # Only a type that comes from numba can be a numba device array: do not import numba.cuda
    # for every unknown object (e.g. a scipy matrix).
    if not type(x).__module__.startswith("numba"):
        return False
    try:
        from numba.cuda import devicearray  # noqa: PLC0415  (lazy on purpose)
    except ImportError:
        return False
    return bool(devicearray.is_cuda_ndarray(x))


# Verdicts of numba's array types, which hold for every instance (a numba device array type is
# always one): each training step asks ~140 times, and on a real GPU ``hasattr(x,
# "__cuda_array_interface__")`` builds the interface dict (pointer, contiguity, dtype string)
# only to drop it.  Other types (torch: CPU or CUDA per tensor) are asked every time.
_NUMBA_TYPE_VERDICT = {}


def is_device_array(x):
    """True when ``x`` is a CUDA device array (numba, simulator, CuPy, torch CUDA tensor).

    Examples
    --------
    >>> import numpy as np
    >>> is_device_array(np.zeros(3))
    False
    """
    if type(x) is np.ndarray:  # not isinstance: numba's mapped and managed arrays subclass it
        return False
    verdict = _NUMBA_TYPE_VERDICT.get(type(x))
    if verdict is not None:
        return verdict
    if type(x).__module__.startswith("numba"):
        verdict = _NUMBA_TYPE_VERDICT[type(x)] = _maybe_numba_device_array(x)
        return verdict
    return hasattr(x, "__cuda_array_interface__") or _maybe_numba_device_array(x)


def device_of(x):
    """``"cuda"`` for a device array, ``"cpu"`` for anything else (NumPy arrays, scalars).

    Examples
    --------
    >>> import numpy as np
    >>> device_of(np.ones(2))
    'cpu'
    """
    return "cuda" if is_device_array(x) else "cpu"


def check_same_device(**named_arrays):
    """Return the common device of the named arrays, or raise ValueError naming each one's device.

    ``None`` values are ignored (optional arguments such as a bias).

    Examples
    --------
    >>> import numpy as np
    >>> check_same_device(x=np.ones(2), w=np.ones(3))
    'cpu'
    """
    devices = {name: device_of(a) for name, a in named_arrays.items() if a is not None}
    found = set(devices.values())
    if len(found) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(
            f"all arrays must be on one device; got {listing}. Move them first, e.g. "
            "CSRMatrix.to('cuda') / numba.cuda.to_device(x), or .to('cpu') / x.copy_to_host()"
        )
    return found.pop() if found else "cpu"


def cuda_available():
    """Whether CUDA kernels can run here: ``(ok, reason)``.

    ``reason`` says why not (numba-cuda missing, no GPU/driver) or, when ``ok``, what will run
    them ("NVIDIA ... GPU" or "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1), for testing only").
    Importing numba.cuda happens here, on request only.
    """
    try:
        from numba import cuda  # noqa: PLC0415
    except ImportError as err:  # numba without its CUDA target
        return False, f"numba-cuda is not installed (pip install 'sparsenet[cuda]'): {err}"
    if _simulator_enabled():
        return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct but very slow, for testing only"
    from .cuda import memory  # noqa: PLC0415

    memory.install()  # the context opened below must already allocate through the cache
    try:
        ok = cuda.is_available()
    except Exception as err:  # a broken driver install raises instead of returning False
        return False, f"CUDA driver could not be initialised: {err}"
    if not ok:
        return False, "no usable NVIDIA GPU or CUDA driver was found (numba.cuda.is_available() is False)"
    try:
        dev = cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        return True, f"{name} (compute capability {dev.compute_capability[0]}.{dev.compute_capability[1]})"
    except Exception as err:
        return False, f"a GPU was reported but could not be opened: {err}"


def _simulator_enabled():
    """NUMBA_ENABLE_CUDASIM as numba sees it (read from numba.config once numba is imported)."""
    numba = sys.modules.get("numba")
    if numba is not None and hasattr(numba, "config"):
        return bool(getattr(numba.config, "ENABLE_CUDASIM", 0))
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
