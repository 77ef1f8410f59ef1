"""The example scripts run end to end (tiny settings) and write their outputs."""
import os
import pathlib
import runpy
import sys

import numba
import numpy as np
import pytest

from sparsenet import nn
from sparsenet.sparsity import SET, erdos_renyi_densities, set_update

from ._helpers import assert_canonical

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("script, args, outputs", [
    ("sparsity_sweep.py", ["--epochs", "2", "--seeds", "1", "--hidden", "32", "--levels", "0.9",
                           "--methods", "dense,static,oneshot,gmp,snip,set,rigl,grow"],
     ["sweep.md", "accuracy_vs_sparsity.png"]),
    ("growing_network.py", ["--epochs", "3"], ["growing_network.png"]),
    ("sparse_autoencoder.py", ["--epochs", "1", "--hidden", "20"], ["autoencoder_filters_kl.png"]),
])
def test_example_runs(tmp_path, monkeypatch, script, args, outputs):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    monkeypatch.setattr(sys, "argv", [script, "--out", str(tmp_path), *args])
    # The scripts default NUMBA_NUM_THREADS to 1 for a fresh process; here numba's pool is already
    # running, and a changed variable would make every later compilation fail.  Pin it as it is.
    monkeypatch.setenv("NUMBA_NUM_THREADS", str(numba.config.NUMBA_NUM_THREADS))
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    # as the scripts do for themselves when started fresh: one thread for these tiny models
    # (a parallel region on a shared 2-core machine waits for its slowest thread)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    finally:
        numba.set_num_threads(before)
    for name in outputs:
        assert (tmp_path / name).stat().st_size > 0


def test_er_densities_meet_the_budget():
    shapes = [(256, 64), (10, 256)]
    for density in (0.01, 0.1, 0.5, 0.9, 1.0):
        d = erdos_renyi_densities(shapes, density)
        total = sum(di * a * b for di, (a, b) in zip(d, shapes))
        assert total == pytest.approx(density * (256 * 64 + 10 * 256))
        assert all(0 < di <= 1 for di in d)
    with pytest.raises(ValueError):
        erdos_renyi_densities(shapes, 0.0)


def test_set_on_sparse_conv(rng):
    conv = nn.SparseConv2d(3, 8, 3, density=0.3, rng=0)
    nnz = conv.weight.csr.nnz
    set_update(conv.weight, 0.5, rng=rng)
    assert_canonical(conv.weight.csr)
    assert conv.weight.csr.nnz == nnz and conv.weight.csr.shape == (8, 27)
    SET(nn.Sequential(conv), zeta=0.2, rng=0).step()
    assert conv.weight.csr.nnz == nnz
    assert np.isfinite(conv.weight.data).all()
