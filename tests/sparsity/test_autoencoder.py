"""Sparse autoencoder: penalty gradients, full backward, training lowers the objective."""
import numpy as np
import pytest

from sparsenet import nn, optim
from sparsenet.sparsity import SparseAutoencoder, kl_sparsity, kl_sparsity_backward, l1_activity, l1_activity_backward
from sparsenet.testing import gradcheck
from sparsenet.train import fit


def test_kl_penalty_gradient(rng):
    h = rng.uniform(0.05, 0.95, (6, 5))
    gradcheck(lambda a: np.array(kl_sparsity(a, 0.1)), [h], np.array(1.0), [kl_sparsity_backward(h, 0.1)], rng=rng)
    assert kl_sparsity(np.full((3, 4), 0.2), 0.2) == pytest.approx(0.0, abs=1e-12)
    assert kl_sparsity(h, 0.1) > 0


def test_l1_penalty_gradient(rng):
    h = rng.standard_normal((6, 5))
    gradcheck(lambda a: np.array(l1_activity(a)), [h], np.array(1.0), [l1_activity_backward(h)], rng=rng)


@pytest.mark.parametrize("penalty", ["kl", "l1"])
@pytest.mark.parametrize("output", ["sigmoid", "linear"])
def test_backward_is_gradient_of_full_objective(rng, penalty, output):
    ae = SparseAutoencoder(7, 4, penalty=penalty, beta=0.7, density=0.6, output=output, rng=0, dtype=np.float64)
    x = rng.random((5, 7))
    g = rng.standard_normal((5, 7))
    ae(x)
    grad_x = ae.backward(g)

    def objective(xx):
        y = ae(xx)
        return np.array(np.sum(y * g) + ae.penalty_value)

    gradcheck(objective, [x], np.array(1.0), [grad_x], rng=rng, rtol=1e-5, atol=1e-8)
    # parameter gradient along the encoder weights
    p = ae.encoder.weight
    analytic = p.grad.copy()
    v = rng.standard_normal(p.size)
    w0 = p.data.copy()
    eps = 1e-6
    vals = []
    for s in (eps, -eps):
        p.data[...] = w0 + s * v
        vals.append(float(objective(x)))
    p.data[...] = w0
    assert (vals[0] - vals[1]) / (2 * eps) == pytest.approx(float(analytic @ v), rel=1e-5, abs=1e-8)


def test_training_reduces_loss_and_code_is_sparse(rng):
    x = (rng.random((64, 16)) < 0.3).astype(np.float32)
    ae = SparseAutoencoder(16, 12, penalty="kl", rho=0.05, beta=0.5, density=0.5, rng=0)
    opt = optim.Adam(ae.parameters(), lr=0.02)
    hist = fit(ae, nn.MSELoss(), opt, (x, x), epochs=15, batch_size=16, progress=False, rng=0)
    assert hist["loss"][-1] < hist["loss"][0]
    assert ae.encode(x).mean() < 0.3


def test_codes_must_be_batch_by_hidden(rng):
    ae = SparseAutoencoder(5, 4, density=1.0, rng=0, dtype=np.float64)
    for shape in ((5,), (2, 3, 5), (0, 5)):
        with pytest.raises(ValueError, match="code h"):
            ae(np.zeros(shape))


def test_bad_arguments():
    with pytest.raises(ValueError, match="rho"):
        SparseAutoencoder(4, 2, rho=1.0)
    with pytest.raises(ValueError, match="beta"):
        SparseAutoencoder(4, 2, beta=-1.0)
    with pytest.raises(ValueError, match="penalty"):
        SparseAutoencoder(4, 2, penalty="l2")


def test_module_protocol(rng):
    ae = SparseAutoencoder(10, 6, penalty="l1", beta=0.1, density=0.5, rng=0, dtype=np.float64)
    x = rng.random((4, 10))
    x0 = x.copy()
    y = ae(x)
    g = np.ones_like(y)
    ae.backward(g)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(g, np.ones_like(y))
    with pytest.raises(RuntimeError):
        ae.backward(g)
    clone = nn.from_config(ae.describe())
    clone.load_state_dict(ae.state_dict())
    np.testing.assert_array_equal(clone(x), y)
    assert [n for n, _ in ae.named_parameters()] == ["encoder.weight", "encoder.bias", "decoder.weight",
                                                      "decoder.bias"]


def test_backward_params_matches_backward(rng):
    """The autoencoder's encoder skips its input gradient under backward_params; the parameter
    gradients (penalty included) are those of backward."""
    x = rng.random((6, 10))
    grads = []
    for lean in (False, True):
        ae = SparseAutoencoder(10, 4, penalty="kl", beta=0.5, rho=0.1, rng=0, dtype=np.float64)
        y = ae(x)
        g = y - x
        if lean:
            assert ae.backward_params(g) is None
        else:
            assert ae.backward(g).shape == x.shape
        grads.append([p.grad for p in ae.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)
