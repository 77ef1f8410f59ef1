"""Per-element optimizer math as plain Python: written once, wrapped for each backend.

``numba.cuda.jit(device=True)(sgd_element)`` is what the CUDA update kernels call;
``numba.njit(sgd_element)`` gives the CPU twin the very same expression (the CUDA simulator
cannot call an ``@njit`` function from a kernel, hence plain Python here).  This module imports
only ``math``, so importing it never pulls in numba.cuda.

The operation order is PyTorch's ``torch.optim`` single-tensor path, and the same as
``kernels/cpu/update.py``, so CPU and GPU trajectories agree to rounding.
"""
import math


def sgd_element(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """One SGD step for one element; returns (new_param, new_momentum_buffer).

    ``d = g + weight_decay * p``; with momentum, ``buf = d`` on the first step else
    ``buf = momentum * buf + (1 - dampening) * d``, then ``d = d + momentum * buf`` (Nesterov)
    or ``d = buf``; ``p - lr * d``.  ``buf`` is returned unchanged when ``momentum == 0``.
    """
    d = g
    if weight_decay != 0:
        d = d + weight_decay * p
    if momentum != 0:
        if first:
            buf = d
        else:
            buf = momentum * buf + (1 - dampening) * d
        if nesterov:
            d = d + momentum * buf
        else:
            d = buf
    return p - lr * d, buf


def adam_element(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, step_size,
                 bias_correction2_sqrt):
    """One Adam/AdamW step for one element; returns (new_param, new_exp_avg, new_exp_avg_sq).

    ``step_size = lr / (1 - beta1**step)`` and ``bias_correction2_sqrt = sqrt(1 - beta2**step)``
    are per-step scalars computed once on the host.  Decoupled (AdamW): ``p *= 1 - lr * wd``;
    coupled (Adam): ``g += wd * p``.  ``m += (1 - beta1) * (g - m)`` (torch's lerp),
    ``v = beta2 * v + (1 - beta2) * g * g``, ``p -= step_size * m / (sqrt(v) / bc2 + eps)``.
    """
    if weight_decay != 0:
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
    m = m + (1 - beta1) * (g - m)
    v = beta2 * v + (1 - beta2) * g * g
    denom = math.sqrt(v) / bias_correction2_sqrt + eps
    return p - step_size * (m / denom), m, v
