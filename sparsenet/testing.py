"""Test helpers for users and for our own suite (like ``chainer.gradient_check``)."""
import numpy as np

from ._validation import check_random_state

__all__ = ["gradcheck"]


def gradcheck(fn, inputs, grad_out, grads, *, eps=1e-6, rtol=1e-6, atol=1e-9, rng=None):
    """Check analytic gradients against central finite differences along random directions.

    For each input ``x_j`` with analytic gradient ``grads[j]`` (``None`` to skip), the scalar
    ``phi(x_j) = <fn(*inputs), grad_out>`` is differentiated along a random direction ``v``:
    ``(phi(x_j + eps v) - phi(x_j - eps v)) / (2 eps)`` must equal ``<grads[j], v>``.  Two
    evaluations per input instead of two per element; run it in float64.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs) -> ndarray``; must not mutate its inputs.
    inputs : sequence of ndarray
        Points at which to check (float64 recommended).
    grad_out : ndarray
        Upstream gradient, same shape as ``fn(*inputs)``.
    grads : sequence of ndarray or None
        Analytic gradients of ``<fn(*inputs), grad_out>`` with respect to each input.
    eps, rtol, atol : float
        Step and tolerances of the comparison.
    rng : None, int or numpy.random.Generator
        Source of the directions.

    Raises
    ------
    AssertionError
        Naming the input whose gradient disagrees, with both values.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([1.0, 2.0])
    >>> gradcheck(lambda a: a ** 2, [x], np.ones(2), [2 * x], rng=0)
    """
    rng = check_random_state(rng)
    inputs = [np.asarray(a) for a in inputs]
    grad_out = np.asarray(grad_out, dtype=np.float64)
    for j, (x, g) in enumerate(zip(inputs, grads)):
        if g is None:
            continue
        g = np.asarray(g)
        if g.shape != x.shape:
            raise AssertionError(f"gradient {j} has shape {g.shape}, input {j} has shape {x.shape}")
        v = rng.standard_normal(x.shape)

        def phi(step):
            moved = list(inputs)
            moved[j] = x + step * v
            return float(np.sum(np.asarray(fn(*moved), dtype=np.float64) * grad_out))

        numeric = (phi(eps) - phi(-eps)) / (2 * eps)
        analytic = float(np.sum(np.asarray(g, dtype=np.float64) * v))
        if not abs(numeric - analytic) <= atol + rtol * max(abs(numeric), abs(analytic)):
            raise AssertionError(
                f"gradient of input {j} disagrees with finite differences: "
                f"analytic {analytic!r}, numeric {numeric!r} (eps={eps})"
            )
