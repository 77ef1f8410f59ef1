"""sparsenet.connectivity: the parameter-sharing arithmetic agrees with the layers' real shapes."""
import doctest

import numpy as np
import pytest

import sparsenet.connectivity
from sparsenet import connectivity_costs


def test_doctests():
    assert doctest.testmod(sparsenet.connectivity, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


def test_counts_match_layer_shapes():
    c = connectivity_costs((3, 10, 9), 4, (3, 2), stride=2, padding=1, density=0.5)
    oh, ow = (10 + 2 - 3) // 2 + 1, (9 + 2 - 2) // 2 + 1
    assert c["conv"].weights == 4 * 3 * 3 * 2 and c["conv"].macs == 4 * 3 * 3 * 2 * oh * ow
    assert c["locally_connected"].weights == np.prod((oh, ow, 4, 3, 3, 2))
    assert c["dense"].weights == 3 * 10 * 9 * 4 * oh * ow
    assert c["sparse_conv"].weights == 36


def test_bad_geometry():
    with pytest.raises(ValueError, match="larger than the padded input"):
        connectivity_costs((1, 4, 4), 1, 5)
    with pytest.raises(TypeError):
        connectivity_costs((4, 4), 1, 3)
