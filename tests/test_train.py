import numpy as np
import pytest

from sparsenet import nn, optim
from sparsenet.train import Callback, EarlyStopping, ModelCheckpoint, evaluate, fit, model_sparsity


def _blobs(rng, n=120):
    y = rng.integers(0, 3, n)
    x = (np.eye(3)[y] * 3 + rng.standard_normal((n, 3)) * 0.5).astype(np.float32)
    return x, y


def _model(seed=0):
    return nn.Sequential(nn.SparseLinear(3, 16, density=0.5, rng=seed), nn.ReLU(), nn.Linear(16, 3, rng=seed))


def test_fit_learns_and_records_history(rng):
    x, y = _blobs(rng)
    model = _model()
    opt = optim.Adam(model.parameters(), lr=0.05)
    hist = fit(model, nn.CrossEntropyLoss(), opt, (x, y), (x, y), epochs=8, batch_size=16, progress=False,
               rng=0, scheduler=optim.StepLR(opt, 4, 0.5))
    assert len(hist) == 8
    assert set(hist.last) >= {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "sparsity", "time", "lr"}
    assert hist["loss"][-1] < hist["loss"][0]
    assert hist.last["val_accuracy"] > 0.9
    assert hist["lr"] == [0.05] * 4 + [0.025] * 4
    assert hist.last["sparsity"] == pytest.approx(model_sparsity(model))
    assert not model.training
    res = evaluate(model, (x, y))
    assert res["accuracy"] == pytest.approx(hist.last["val_accuracy"])


def test_progress_bar_can_be_enabled(rng, capsys):
    pytest.importorskip("tqdm")
    x, y = _blobs(rng, 32)
    model = _model()
    fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), epochs=1, progress=True)


def test_callbacks_order_and_stop(rng):
    x, y = _blobs(rng, 64)
    calls = []

    class Recorder(Callback):
        def on_train_begin(self, t):
            calls.append("begin")

        def on_after_backward(self, t):
            assert all(p.grad is not None for p in t.model.parameters())
            calls.append("grad")

        def on_batch_end(self, t, batch, logs):
            calls.append("batch")

        def on_epoch_end(self, t, epoch, logs):
            calls.append("epoch")
            if epoch == 1:
                t.stop_training = True

        def on_train_end(self, t):
            calls.append("end")

    model = _model()
    hist = fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), epochs=5,
               batch_size=32, callbacks=[Recorder()], progress=False)
    assert len(hist) == 2
    assert calls == ["begin"] + (["grad", "batch"] * 2 + ["epoch"]) * 2 + ["end"]


def test_early_stopping_restores_best(rng):
    x, y = _blobs(rng, 64)
    model = _model()
    es = EarlyStopping(monitor="val_loss", patience=2)
    # lr=0: the validation loss never improves after the first epoch
    fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.0), (x, y), (x, y), epochs=10,
        callbacks=[es], progress=False)
    assert es.best_epoch == 0 and es.wait == 2
    with pytest.raises(ValueError, match="val_data"):
        fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), epochs=1,
            callbacks=[EarlyStopping()], progress=False)


def test_checkpoint_and_resume_match_uninterrupted(tmp_path, rng):
    from sparsenet import io
    from sparsenet.data import DataLoader

    x, y = _blobs(rng, 64)

    def run(epochs, initial=0, model=None, opt=None, loader_state=None, history=None, path=None):
        model = model or _model(3)
        opt = opt or optim.Adam(model.parameters(), lr=0.01)
        loader = DataLoader(x, y, 16, rng=5)
        if loader_state:
            loader.rng.bit_generator.state = loader_state
        cbs = [ModelCheckpoint(path)] if path else []
        fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=epochs, initial_epoch=initial, callbacks=cbs,
            history=history, progress=False)
        return model

    full = run(4)
    run(2, path=tmp_path / "c.npz")
    ck = io.load(tmp_path / "c.npz")
    assert ck.meta["epoch"] == 2 and len(ck.meta["history"]) == 2
    resumed = run(4, 2, ck.model, ck.optimizer, ck.meta["loader_rng"], ck.meta["history"])
    for a, b in zip(full.parameters(), resumed.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fit_validation(rng):
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="DataLoader"):
        fit(model, nn.CrossEntropyLoss(), opt, np.zeros((3, 3)), progress=False)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, nn.CrossEntropyLoss(), opt, (np.zeros((3, 3)), np.zeros(3, int)), epochs=-1)
    with pytest.raises(FloatingPointError, match="learning rate"):
        x, y = _blobs(rng, 32)
        fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=1e30), (x * 1e20, y), epochs=3,
            progress=False)
