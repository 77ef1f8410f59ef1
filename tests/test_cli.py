import os
import re
import subprocess
import sys

import pytest

from sparsenet.cli import build_preset, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("sparsenet", "numpy", "numba", "threads", "CUDA"):
        assert word in out


def test_train_checkpoint_resume_evaluate(tmp_path, capsys):
    pytest.importorskip("sklearn")
    ckpt = str(tmp_path / "m.npz")
    args = ["train", "--preset", "mlp", "--hidden", "32", "--density", "0.5", "--threads", "1", "--batch-size", "64", "--seed", "1", "--no-progress",
            "--checkpoint", ckpt]
    assert main(args + ["--epochs", "2"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"test accuracy (\d\.\d+) \| sparsity (\d\.\d+) \| time", out)
    assert m and float(m.group(1)) > 0.5 and float(m.group(2)) == pytest.approx(0.5, abs=0.01)
    assert main(args + ["--epochs", "3", "--resume", "-v"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "epoch   3/3" in out and "epoch   2/3" not in out
    assert main(["evaluate", ckpt]) == 0
    out = capsys.readouterr().out
    assert "epoch 3" in out and "test accuracy" in out


def test_train_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--preset", "nope"])
    with pytest.raises(SystemExit, match="--data-dir"):
        main(["train", "--dataset", "mnist"])
    assert main(["evaluate", str(tmp_path / "missing.npz")]) == 2
    assert "not found" in capsys.readouterr().err


def test_bench_small(capsys):
    assert main(["bench", "--samples", "256", "--hidden", "64", "--layers", "2", "--batch-size", "64"]) == 0
    assert "one training epoch" in capsys.readouterr().out


def test_presets():
    assert len(build_preset("lenet", (1, 8, 8), 10, rng=0).parameters()) == 8
    with pytest.raises(ValueError, match="unknown preset"):
        build_preset("resnet", (64,), 10)


def test_python_dash_m():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "sparsenet", "--help"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0 and "train" in res.stdout and "evaluate" in res.stdout


def test_threads_option_restores_limits(capsys):
    import numba

    before = numba.get_num_threads()
    assert main(["bench", "--samples", "128", "--hidden", "16", "--layers", "1", "--threads", "1"]) == 0
    assert numba.get_num_threads() == before
    assert main(["bench", "--samples", "128", "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_train_on_cuda_without_a_gpu_is_a_clear_error():
    """Run in a subprocess: probing for a GPU initialises the CUDA driver in the process."""
    pytest.importorskip("sklearn")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    res = subprocess.run([sys.executable, "-m", "sparsenet", "train", "--device", "cuda", "--hidden", "8",
                          "--epochs", "1", "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    if res.returncode == 0:  # a machine with a GPU: it trained there
        assert "device cuda" in res.stdout
    else:
        assert res.returncode == 2, res.stderr
        assert "cannot train on 'cuda'" in res.stderr
