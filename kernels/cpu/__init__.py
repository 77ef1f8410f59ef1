"""Numba ``@njit`` CPU kernels.  Reach them through the dispatch in ``sparsenet.kernels``."""
