import gzip
import struct

import numpy as np
import pytest

from sparsenet.data import DataLoader, Standardizer, load_digits, load_idx, load_mnist, train_test_split


def _write_idx(path, array, code=0x08, compress=False):
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, rng, compress):
    a = rng.integers(0, 255, (3, 4, 5)).astype(np.uint8)
    p = tmp_path / "a.idx"
    _write_idx(p, a, compress=compress)
    np.testing.assert_array_equal(load_idx(p), a)
    f = rng.standard_normal((2, 3)).astype(np.float32)
    _write_idx(tmp_path / "f.idx", f, code=0x0D)
    np.testing.assert_array_equal(load_idx(tmp_path / "f.idx"), f)


def test_idx_errors(tmp_path, rng):
    with pytest.raises(FileNotFoundError):
        load_idx(tmp_path / "missing")
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 not idx at all")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_idx(tmp_path / "junk")
    a = rng.integers(0, 255, (10, 4)).astype(np.uint8)
    _write_idx(tmp_path / "t.idx", a)
    raw = (tmp_path / "t.idx").read_bytes()
    (tmp_path / "t.idx").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match="truncated"):
        load_idx(tmp_path / "t.idx")
    (tmp_path / "t.idx").write_bytes(raw + b"xx")
    with pytest.raises(ValueError, match="trailing"):
        load_idx(tmp_path / "t.idx")
    (tmp_path / "c.gz").write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(ValueError, match="gzip"):
        load_idx(tmp_path / "c.gz")


def test_load_mnist(tmp_path, rng):
    for kind, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{kind}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8),
                   compress=True)
        _write_idx(tmp_path / f"{kind}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    x, y = load_mnist(tmp_path)
    assert x.shape == (6, 784) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert y.dtype == np.int64
    x, _ = load_mnist(tmp_path, "test", images=True)
    assert x.shape == (4, 1, 28, 28)
    with pytest.raises(ValueError, match="kind"):
        load_mnist(tmp_path, "val")
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        load_mnist(tmp_path, "test")
    # images and labels of different counts
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="equal n"):
        load_mnist(tmp_path, "test")


def test_digits():
    pytest.importorskip("sklearn")
    x, y = load_digits(images=True, dtype=np.float64)
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float64 and set(np.unique(y)) == set(range(10))


def test_dataloader(rng):
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10)
    loader = DataLoader(x, y, batch_size=4, rng=0)
    assert len(loader) == 3
    epoch1 = np.concatenate([yb for _, yb in loader])
    epoch2 = np.concatenate([yb for _, yb in loader])
    assert sorted(epoch1) == list(range(10)) and not np.array_equal(epoch1, epoch2)
    again = np.concatenate([yb for _, yb in DataLoader(x, y, batch_size=4, rng=0)])
    np.testing.assert_array_equal(epoch1, again)
    for xb, yb in loader:
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)
    assert len(DataLoader(x, y, batch_size=4, drop_last=True)) == 2
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(x, y, batch_size=0)
    with pytest.raises(ValueError, match="same number of samples"):
        DataLoader(x, y[:5])


def test_split_and_standardize(rng):
    x, y = rng.standard_normal((100, 3)) * 5 + 2, np.repeat(np.arange(4), 25)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, rng=0, stratify=True)
    assert len(xte) == 20 and len(xtr) == 80
    assert np.all(np.bincount(yte) == 5)
    assert sorted(np.concatenate([ytr, yte]).tolist()) == sorted(y.tolist())
    with pytest.raises(ValueError, match="test_size"):
        train_test_split(x, y, test_size=1.5)
    s = Standardizer().fit(xtr)
    z = s.transform(xtr)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-12)
    with pytest.raises(RuntimeError, match="before fit"):
        Standardizer().transform(x)
