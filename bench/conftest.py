"""Shared benchmark fixtures: thread control for every peer in one place."""
import contextlib

import numba
import pytest


@contextlib.contextmanager
def threads(n):
    """Run numba, BLAS (via threadpoolctl when installed) and torch with ``n`` threads."""
    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    torch = None
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(limits=n))
        except ImportError:
            pass
        try:
            import torch

            torch_before = torch.get_num_threads()
            torch.set_num_threads(n)
        except ImportError:
            torch = None
        try:
            yield
        finally:
            numba.set_num_threads(before)
            if torch is not None:
                torch.set_num_threads(torch_before)


@pytest.fixture(params=[1, 2], ids=lambda n: f"t{n}")
def n_threads(request):
    with threads(request.param):
        yield request.param
