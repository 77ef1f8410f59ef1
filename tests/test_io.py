import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from sparsenet import io, nn, optim
from sparsenet.io import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(seed=0):
    return nn.Sequential(nn.SparseLinear(6, 8, density=0.4, rng=seed, dtype=np.float64), nn.ReLU(),
                         nn.BatchNorm1d(8, dtype=np.float64), nn.Dropout(0.2, rng=seed),
                         nn.Linear(8, 3, rng=seed + 1, dtype=np.float64))


def _train_steps(model, opt, rng, steps=3):
    crit = nn.CrossEntropyLoss()
    model.train()
    for _ in range(steps):
        x, y = rng.standard_normal((5, 6)), rng.integers(0, 3, 5)
        opt.zero_grad()
        crit(model(x), y)
        model.backward(crit.backward())
        opt.step()


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW])
def test_round_trip_resumes_exactly(tmp_path, rng, cls):
    model = _model()
    opt = cls(model.parameters(), lr=0.05, **({"momentum": 0.9} if cls is optim.SGD else {}))
    _train_steps(model, opt, np.random.default_rng(1))
    path = tmp_path / "ckpt.npz"
    io.save(path, model, opt, epoch=3, note="hello", history=[{"loss": 1.0}])
    ckpt = io.load(path)
    assert ckpt.meta == {"epoch": 3, "note": "hello", "history": [{"loss": 1.0}]}
    assert type(ckpt.optimizer) is cls
    for (n1, a), (n2, b) in zip(model.named_parameters(), ckpt.model.named_parameters()):
        assert n1 == n2
        np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(model[0].weight.csr.indices, ckpt.model[0].weight.csr.indices)
    np.testing.assert_array_equal(model[2].running_var, ckpt.model[2].running_var)
    # continuing both gives identical parameters: optimizer state, dropout RNG and buffers were restored
    _train_steps(model, opt, np.random.default_rng(2))
    _train_steps(ckpt.model, ckpt.optimizer, np.random.default_rng(2))
    for a, b in zip(model.parameters(), ckpt.model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_changed_sparse_pattern_round_trips(tmp_path, rng):
    from sparsenet import CSRMatrix

    model = _model()
    dense = model[0].weight.csr.to_dense()
    dense[:, 0] = 0.5  # grow a column
    model[0].weight.set_csr(CSRMatrix.from_dense(dense))
    io.save(tmp_path / "c.npz", model)
    loaded = io.load(tmp_path / "c.npz").model
    np.testing.assert_array_equal(loaded[0].weight.csr.to_dense(), dense)
    assert loaded[0].weight.data is loaded[0].weight.csr.data


def test_no_pickle_and_json_meta(tmp_path):
    io.save(tmp_path / "c.npz", _model(), epoch=np.int64(2))
    with np.load(tmp_path / "c.npz", allow_pickle=False) as f:
        meta = json.loads(f["__meta__"].tobytes())
    assert meta["architecture"]["class"] == "Sequential" and meta["meta"]["epoch"] == 2
    with pytest.raises(TypeError, match="JSON"):
        io.save(tmp_path / "d.npz", _model(), bad=object())
    assert not (tmp_path / "d.npz").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temp file left behind


def test_truncated_and_tampered(tmp_path):
    path = tmp_path / "c.npz"
    io.save(path, _model())
    raw = path.read_bytes()
    (tmp_path / "t.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        io.load(tmp_path / "t.npz")
    # tamper: rewrite one array with other values, keeping a valid zip
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["model/4.bias"] = arrays["model/4.bias"] + 1
    np.savez(tmp_path / "x.npz", **arrays)
    with pytest.raises(CheckpointError, match="checksum"):
        io.load(tmp_path / "x.npz")
    del arrays["model/4.bias"]
    np.savez(tmp_path / "y.npz", **arrays)
    with pytest.raises(CheckpointError, match="missing or were added"):
        io.load(tmp_path / "y.npz")
    np.savez(tmp_path / "z.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="no sparsenet metadata"):
        io.load(tmp_path / "z.npz")
    with pytest.raises(FileNotFoundError):
        io.load(tmp_path / "nope.npz")


def test_load_state_dict_errors():
    model = _model()
    sd = model.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['4.bias'\]"):
        model.load_state_dict({k: v for k, v in sd.items() if k != "4.bias"})
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        model.load_state_dict({**sd, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match="size mismatch for '4.weight'"):
        model.load_state_dict({**sd, "4.weight": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="invalid sparse pattern"):
        model.load_state_dict({**sd, "0.weight.indices": sd["0.weight.indices"] + 100})
    model.load_state_dict({"4.bias": np.ones(3)}, strict=False)
    np.testing.assert_array_equal(model[4].bias.data, 1.0)


_KILLED_SAVE = """
import os, sys, time
sys.path.insert(0, {root!r})
import numpy as np
from sparsenet import io, nn
model = nn.Sequential(nn.Linear(300, 300, rng=1, dtype=np.float64))
real_fsync = os.fsync
def hang(fd):
    print("writing", flush=True)
    time.sleep(60)
os.fsync = hang
io.save({path!r}, model)
"""


def test_save_killed_midway_keeps_previous(tmp_path):
    path = tmp_path / "ckpt.npz"
    model = _model()
    io.save(path, model, epoch=1)
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE.format(root=ROOT, path=str(path))],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"  # temp file written, not yet renamed
        proc.kill()
    finally:
        proc.wait(timeout=30)
    assert path.read_bytes() == before
    ckpt = io.load(path)
    assert ckpt.meta["epoch"] == 1
    leftovers = [p for p in tmp_path.iterdir() if p.name != "ckpt.npz"]
    assert all(p.name.endswith(".tmp") for p in leftovers)
