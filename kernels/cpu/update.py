"""CPU kernels for optimizer updates (the math of ``sparsenet.optim``).

Every kernel works on flat, C-contiguous 1-D views of one parameter and its state: a dense
weight of any shape is raveled by the dispatch, a sparse (CSR) weight is already its nnz-long
``data`` vector, so the same kernel serves both.  Parameters and state are updated in place
(that *is* the output); scalars come first, arrays after, nothing is allocated.

The arithmetic follows PyTorch's ``torch.optim`` single-tensor ("foreach=False") code path
operation by operation, so float64 trajectories agree to rounding.  No fastmath: reassociating
``beta * m + (1 - beta) * g`` would change the last bits and break step-by-step parity.
The kernels are serial on purpose: an update is one streaming pass over memory (a few
flops per element), so a thread team buys little even for millions of elements, while its
fork/join costs tens of microseconds per parameter and, on an oversubscribed machine, can
stall for milliseconds waiting for a descheduled worker (measured: 16 ms instead of 0.04 ms for
a 40k-element SGD step on a busy 2-core host).
"""
import math

from numba import njit


@njit(cache=True, nogil=True)
def sgd_update(lr, momentum, dampening, weight_decay, nesterov, first, param, grad, buf):
    """One SGD step in place: PyTorch's ``torch.optim.SGD`` rule.

    ``d = grad + weight_decay * param``; with momentum, ``buf = d`` on the first step
    (``first``) else ``buf = momentum * buf + (1 - dampening) * d``, and ``d = d + momentum * buf``
    (Nesterov) or ``d = buf``; finally ``param -= lr * d``.

    param, grad (n,) float32|float64 contiguous; buf (n,) momentum buffer (ignored, may be
    length 0, when ``momentum == 0``).  param and buf are updated in place.  O(n).
    """
    n = param.shape[0]
    for i in range(n):
        d = grad[i]
        if weight_decay != 0:
            d = d + weight_decay * param[i]
        if momentum != 0:
            if first:
                b = d
            else:
                b = momentum * buf[i] + (1 - dampening) * d
            buf[i] = b
            if nesterov:
                d = d + momentum * b
            else:
                d = b
        param[i] = param[i] - lr * d


@njit(cache=True, nogil=True)
def adam_update(lr, beta1, beta2, eps, weight_decay, decoupled, step, param, grad, exp_avg, exp_avg_sq):
    """One Adam / AdamW step in place: PyTorch's ``torch.optim.Adam`` / ``AdamW`` rule.

    Coupled L2 (Adam): ``g = grad + weight_decay * param``.  Decoupled (AdamW):
    ``param *= 1 - lr * weight_decay`` and ``g = grad``.  Then
    ``m = m + (1 - beta1) * (g - m)`` (torch's lerp), ``v = beta2 * v + (1 - beta2) * g * g``,
    ``param -= lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)``.

    ``step`` is the 1-based step count *after* incrementing.  param, grad, exp_avg, exp_avg_sq
    (n,) contiguous, same dtype; param, exp_avg and exp_avg_sq are updated in place.  O(n).
    """
    bias_correction1 = 1 - beta1 ** step
    bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
    step_size = lr / bias_correction1
    n = param.shape[0]
    for i in range(n):
        p = param[i]
        g = grad[i]
        if weight_decay != 0:
            if decoupled:
                p = p * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * p
        m = exp_avg[i]
        m = m + (1 - beta1) * (g - m)
        v = beta2 * exp_avg_sq[i] + (1 - beta2) * g * g
        exp_avg[i] = m
        exp_avg_sq[i] = v
        denom = math.sqrt(v) / bias_correction2_sqrt + eps
        param[i] = p - step_size * (m / denom)
