"""Accuracy vs sparsity of every sparsity method of sparsenet, same budget and seeds.

An MLP in -> H -> 10 (ReLU) is trained for the same number of epochs with Adam by each method:

* dense                    the reference (sparsity 0)
* static                   a fixed random CSR pattern (SparseLinear, density 1 - s)
* l1                       L1 proximal steps (λ swept), then ``compact``: sparsity is what λ gives
* group_lasso              group lasso over hidden neurons (λ swept), then ``compact`` (units removed)
* oneshot                  dense for half the epochs, magnitude pruned to s, fine-tuned
* gmp                      gradual magnitude pruning, cubic schedule over the first 60%, fine-tuned
* snip                     SNIP at initialisation, then trained sparse
* set                      SET from density 1 - s, ζ = 0.3 per epoch
* rigl                     RigL from density 1 - s, ΔT = 25 steps, f0 = 0.3, T_end = 75%
* grow                     growing network from 16 hidden units (density 0.25), grown whenever the training
                           loss improves by < 15% in an epoch, connection budget (1 - s) of the dense net

Sparse layers get the overall density split by the Erdős–Rényi rule (``erdos_renyi_densities``).

Sparsity is measured against the dense in -> H -> 10 network (removed neurons count as zeros).

Run (digits, about 1 minute):
    python examples/sparsity_sweep.py --out examples/results
MNIST / Fashion-MNIST (IDX files in a folder):
    python examples/sparsity_sweep.py --mnist ~/data/mnist --hidden 300 --epochs 10
"""
import argparse
import os
import time

# Small models on a small shared machine: OpenBLAS worker threads spin after each dense matmul
# and starve Numba's parallel kernels (measured 100x slower dense-MLP epochs on 2 cores), and a
# parallel region waits for its slowest thread when another process holds a core.  One thread
# each keeps epoch times stable; override from the shell for big models.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from sparsenet import nn, optim, sparsity  # noqa: E402
from sparsenet.data import load_digits, load_mnist, train_test_split  # noqa: E402
from sparsenet.train import evaluate, fit  # noqa: E402

LEVELS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
LAMBDAS = {"l1": (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0), "group_lasso": (0.05, 0.1, 0.2, 0.5, 1.0)}


def load(args):
    if args.mnist:
        x, y = load_mnist(args.mnist, "train")
        xt, yt = load_mnist(args.mnist, "test")
        return x[: args.n_train], y[: args.n_train], xt, yt
    x, y = load_digits()
    x, xt, y, yt = train_test_split(x, y, test_size=0.25, rng=0, stratify=True)
    return x, y, xt, yt


def mlp(n_in, hidden, n_out, density, seed):
    """Dense (density None) or sparse MLP; the overall density is split over layers by the ER rule."""
    if density is None:
        return nn.Sequential(nn.Linear(n_in, hidden, rng=seed), nn.ReLU(), nn.Linear(hidden, n_out, rng=seed + 1))
    d1, d2 = sparsity.erdos_renyi_densities([(hidden, n_in), (n_out, hidden)], density)
    return nn.Sequential(nn.SparseLinear(n_in, hidden, density=d1, rng=seed), nn.ReLU(),
                         nn.SparseLinear(hidden, n_out, density=d2, rng=seed + 1))


def weights(model):
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.SparseLinear))]


def n_weights(model):
    return sum(int(np.count_nonzero(m.weight.data)) for m in weights(model))


def n_params(model):
    return n_weights(model) + sum(m.bias.size for m in weights(model) if m.bias is not None)


def run(method, level, data, args, seed):
    x, y, xt, yt = data
    n_in, hidden, n_out = x.shape[1], args.hidden, 10
    dense_size = n_in * hidden + hidden * n_out
    steps_per_epoch = int(np.ceil(len(x) / args.batch_size))
    total = steps_per_epoch * args.epochs
    loss = nn.CrossEntropyLoss()
    callbacks = []
    density = None if level is None else 1.0 - level
    pre_epochs = 0
    if method in ("dense", "l1", "group_lasso", "oneshot", "gmp", "snip"):
        model = mlp(n_in, hidden, n_out, None, seed)
    elif method == "grow":
        model = mlp(n_in, 16, n_out, 0.25, seed)
    else:
        model = mlp(n_in, hidden, n_out, density, seed)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    if method == "l1":
        callbacks.append(sparsity.L1Prox(model, lam=level))
    elif method == "group_lasso":
        callbacks.append(sparsity.GroupLassoProx(model, lam=level, layers=[weights(model)[0]]))
    elif method == "gmp":
        callbacks.append(sparsity.GradualMagnitudePruner(model, level, end_step=int(0.6 * total),
                                                         frequency=max(1, steps_per_epoch // 2)))
    elif method == "snip":
        idx = np.random.default_rng(seed).choice(len(x), 256, replace=False)
        sparsity.snip_prune(model, loss, x[idx], y[idx], level, opt, to_sparse_below=1.0)
        opt = optim.Adam(model.parameters(), lr=args.lr)
    elif method == "set":
        callbacks.append(sparsity.SET(model, zeta=0.3, rng=seed))
    elif method == "rigl":
        callbacks.append(sparsity.RigL(model, drop_fraction=0.3, update_every=25, end_step=int(0.75 * total)))
    elif method == "grow":
        callbacks.append(sparsity.GrowingNetwork(model, monitor="loss", patience=1, min_delta=0.15, relative=True,
                                                 units=16, connections=0.5, max_units=hidden,
                                                 max_params=int(density * dense_size), rng=seed))
    times = []
    if method == "oneshot":
        pre_epochs = args.epochs // 2
        h = fit(model, loss, opt, (x, y), epochs=pre_epochs, batch_size=args.batch_size, progress=False, rng=seed)
        times += h["time"]
        pruner = sparsity.magnitude_prune(model, level, opt, to_sparse_below=1.0)
        callbacks.append(pruner)
    h = fit(model, loss, opt, (x, y), epochs=args.epochs - pre_epochs, batch_size=args.batch_size,
            callbacks=callbacks, progress=False, rng=seed + 100)
    times += h["time"]
    if method in ("l1", "group_lasso"):
        sparsity.compact(model, opt)
    acc = evaluate(model, (xt, yt))["accuracy"]
    return {"method": method, "target": level, "sparsity": 1 - n_weights(model) / dense_size,
            "accuracy": acc, "params": n_params(model), "epoch_s": float(np.mean(times)),
            "hidden": weights(model)[0].weight.dense_shape[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", help="folder of MNIST/Fashion-MNIST IDX files (default: bundled digits)")
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default="dense,static,l1,group_lasso,oneshot,gmp,snip,set,rigl,grow")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), help="target sparsities, comma-separated")
    ap.add_argument("--out", default="examples/results")
    args = ap.parse_args()
    levels = tuple(float(v) for v in args.levels.split(","))
    data = load(args)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    t0 = time.time()
    for method in args.methods.split(","):
        grid = [None] if method == "dense" else LAMBDAS.get(method, levels)
        for level in grid:
            res = [run(method, level, data, args, seed) for seed in range(args.seeds)]
            row = {k: res[0][k] for k in ("method", "target")}
            for k in ("sparsity", "accuracy", "params", "epoch_s", "hidden"):
                row[k] = float(np.mean([r[k] for r in res]))
            row["accuracy_std"] = float(np.std([r["accuracy"] for r in res]))
            rows.append(row)
            print(f"{method:12s} target={level!s:8s} sparsity={row['sparsity']:.3f} acc={row['accuracy']:.4f}"
                  f"±{row['accuracy_std']:.4f} params={row['params']:.0f} hidden={row['hidden']:.0f} "
                  f"epoch={1e3 * row['epoch_s']:.0f}ms  [{time.time() - t0:.0f}s]", flush=True)
    table = ["| method | target (s or λ) | sparsity | test accuracy (mean ± sd) | params | hidden | ms / epoch |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['method']} | {r['target'] if r['target'] is not None else '-'} | {r['sparsity']:.3f} | "
                     f"{r['accuracy']:.4f} ± {r['accuracy_std']:.4f} | {r['params']:.0f} | {r['hidden']:.0f} | "
                     f"{1e3 * r['epoch_s']:.0f} |")
    with open(os.path.join(args.out, "sweep.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    print("\n".join(table))
    plot(rows, os.path.join(args.out, "accuracy_vs_sparsity.png"))


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for m in methods:
        pts = sorted((r["sparsity"], r["accuracy"], r["accuracy_std"]) for r in rows if r["method"] == m)
        s, a, e = map(np.array, zip(*pts))
        if m == "dense":
            ax.axhline(a[0], color="k", ls="--", lw=1, label="dense")
            continue
        ax.errorbar(-np.log10(1 - np.minimum(s, 0.999)), a, yerr=e, marker="o", ms=4, capsize=2, label=m)
    ticks = np.array([0.5, 0.8, 0.9, 0.95, 0.98, 0.99])
    ax.set_xticks(-np.log10(1 - ticks))
    ax.set_xticklabels([f"{t:.0%}" for t in ticks])
    ax.set_xlabel("sparsity (fraction of zero weights vs the dense network)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print("saved", path)


if __name__ == "__main__":
    main()
