"""CUDA kernels for optimizer updates (the math of ``sparsenet.optim``) over contiguous buffers.

Same contract as ``kernels/cpu/update.py``: flat, C-contiguous 1-D views of one parameter and
its state (a dense weight raveled, a CSR weight's nnz-long ``data``), updated in place; scalars
first, arrays after, nothing allocated.  The per-element math is ``kernels/cuda/scalar.py``,
shared with the CPU side.  Elements are independent: race-free and deterministic.

Geometry: 1-D blocks of UPDATE_THREADS threads, grid min(ceil(n / UPDATE_THREADS),
UPDATE_MAX_BLOCKS), grid-stride loop; consecutive threads touch consecutive elements
(coalesced).  The step count and the bias corrections derived from it are host scalars passed
as kernel arguments, so a training step never reads anything back from the device.
"""
from numba import cuda

from .block import kernel
from .scalar import adam_element, sgd_element

UPDATE_THREADS = 256
UPDATE_MAX_BLOCKS = 8192

_sgd_element = cuda.jit(device=True)(sgd_element)
_adam_element = cuda.jit(device=True)(adam_element)


@kernel
def sgd_update(lr, momentum, dampening, weight_decay, nesterov, first, param, grad, buf):
    """One SGD step in place (PyTorch's rule, see ``scalar.sgd_element``).

    param, grad (n,) float32|float64 contiguous; buf (n,) momentum buffer, untouched (any
    length) when ``momentum == 0``.  param and buf are updated in place.  O(n).
    """
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    use_buf = momentum != 0
    for i in range(start, param.shape[0], stride):
        b = buf[i] if use_buf else grad[i]
        p, b = _sgd_element(param[i], grad[i], b, lr, momentum, dampening, weight_decay, nesterov, first)
        param[i] = p
        if use_buf:
            buf[i] = b


@kernel
def adam_update(lr, beta1, beta2, eps, weight_decay, decoupled, step_size, bias_correction2_sqrt,
                param, grad, exp_avg, exp_avg_sq):
    """One Adam / AdamW step in place (PyTorch's rule, see ``scalar.adam_element``).

    ``step_size = lr / (1 - beta1**step)``, ``bias_correction2_sqrt = sqrt(1 - beta2**step)``
    (host scalars).  param, grad, exp_avg, exp_avg_sq (n,) contiguous, same dtype; param,
    exp_avg and exp_avg_sq are updated in place.  O(n).
    """
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, param.shape[0], stride):
        p, m, v = _adam_element(param[i], grad[i], exp_avg[i], exp_avg_sq[i], lr, beta1, beta2, eps,
                                weight_decay, decoupled, step_size, bias_correction2_sqrt)
        param[i] = p
        exp_avg[i] = m
        exp_avg_sq[i] = v
