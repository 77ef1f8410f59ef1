"""Growing a sparse network on digits: hidden units and connections over time, plotted.

Starts from 64 -> 8 -> 10 at density 0.25 (SparseLinear) and trains with Adam; after every epoch
in which the validation loss improved by less than 5% the network grows (8 hidden units,
function-preserving, plus 30% more connections where the gradient is largest), within a budget
of 128 hidden units and 4,000 connections, until the validation accuracy reaches 97%.  Every
3 epochs the units whose summed |incoming weights| fell below 0.25 are pruned (neuron
importance).

Run (~30 s):  python examples/growing_network.py --out examples/results
"""
import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see sparsity_sweep.py
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from sparsenet import nn, optim, sparsity  # noqa: E402
from sparsenet.data import load_digits, train_test_split  # noqa: E402
from sparsenet.train import Callback, fit  # noqa: E402


class PruneEvery(Callback):
    """Neuron-importance pruning every ``every`` epochs (the counterpart of growth)."""

    def __init__(self, grower, every, below):
        self.grower, self.every, self.below = grower, every, below
        self.removed = []

    def on_epoch_end(self, trainer, epoch, logs):
        n = 0
        if (epoch + 1) % self.every == 0:
            for a, b in self.grower.pairs:
                imp = sparsity.unit_importance(a)
                n += len(sparsity.prune_units(a, b, int(np.sum(imp < self.below)), trainer.optimizer))
        self.removed.append(n)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="examples/results")
    args = ap.parse_args()
    x, y = load_digits()
    x, xv, y, yv = train_test_split(x, y, test_size=0.25, rng=0, stratify=True)
    model = nn.Sequential(nn.SparseLinear(64, 8, density=0.25, rng=args.seed), nn.ReLU(),
                          nn.SparseLinear(8, 10, density=0.5, rng=args.seed + 1))
    opt = optim.Adam(model.parameters(), lr=3e-3)
    grower = sparsity.GrowingNetwork(model, monitor="val_loss", target=None, patience=1, min_delta=0.05,
                                     relative=True, units=8, connections=0.3, max_units=128, max_params=4000,
                                     rng=args.seed)
    stop = AccuracyTarget(0.97)
    pruner = PruneEvery(grower, 3, 0.25)
    hist = fit(model, nn.CrossEntropyLoss(), opt, (x, y), (xv, yv), epochs=args.epochs, batch_size=32,
               callbacks=[grower, pruner, stop], progress=False, rng=args.seed)
    print("| epoch | hidden units | connections | grown | units pruned | val accuracy |")
    print("|---|---|---|---|---|---|")
    for r, h, p in zip(grower.log, hist, pruner.removed):
        print(f"| {r['epoch']} | {r['hidden_units'][0]} | {r['connections']} | {'yes' if r['grown'] else ''} | "
              f"{p or ''} | {h['val_accuracy']:.4f} |")
    os.makedirs(args.out, exist_ok=True)
    plot(grower.log, hist, os.path.join(args.out, "growing_network.png"))


class AccuracyTarget(Callback):
    def __init__(self, target):
        self.target = target

    def on_epoch_end(self, trainer, epoch, logs):
        if logs.get("val_accuracy", 0) >= self.target:
            trainer.stop_training = True


def plot(log, hist, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in log]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    axes[0].step(ep, [r["hidden_units"][0] for r in log], where="post")
    axes[0].set_title("hidden units")
    axes[1].step(ep, [r["connections"] for r in log], where="post", color="C1")
    axes[1].set_title("connections (nnz)")
    axes[2].plot(ep, hist["val_accuracy"], color="C2", label="validation")
    axes[2].plot(ep, hist["accuracy"], color="C3", ls="--", label="training")
    axes[2].set_title("accuracy")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        for r in log:
            if r["grown"]:
                ax.axvline(r["epoch"], color="grey", lw=0.5, alpha=0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print("saved", path)


if __name__ == "__main__":
    main()
