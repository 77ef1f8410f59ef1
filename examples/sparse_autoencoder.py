"""Sparse autoencoder on digits: code sparsity, reconstruction error, learned filters as an image.

A 64 -> 100 -> 64 autoencoder with SparseLinear encoder and decoder (density 0.5) is trained
with Adam on MSE + beta * penalty, for penalty "kl" (sigmoid code, target mean activation
rho = 0.05) and "l1" (ReLU code), and beta = 0 (no activity penalty) as the reference.
The encoder's rows (each unit's incoming weights, 8x8) are saved as an image.

Run (~1 minute):  python examples/sparse_autoencoder.py --out examples/results
"""
import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see sparsity_sweep.py
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from sparsenet import nn, optim  # noqa: E402
from sparsenet.data import load_digits, train_test_split  # noqa: E402
from sparsenet.sparsity import SparseAutoencoder  # noqa: E402
from sparsenet.train import fit  # noqa: E402

CONFIGS = [  # (name, penalty, beta)
    ("kl, beta=0", "kl", 0.0),
    ("kl, beta=0.003", "kl", 0.003),
    ("kl, beta=0.01", "kl", 0.01),
    ("kl, beta=0.03", "kl", 0.03),
    ("l1, beta=0", "l1", 0.0),
    ("l1, beta=0.0003", "l1", 3e-4),
    ("l1, beta=0.001", "l1", 1e-3),
    ("l1, beta=0.003", "l1", 3e-3),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="examples/results")
    args = ap.parse_args()
    x, _ = load_digits()
    x, xt, _, _ = train_test_split(x, np.zeros(len(x), np.int64), test_size=0.25, rng=0)
    os.makedirs(args.out, exist_ok=True)
    print("| penalty | beta | test MSE | mean code activation | code sparsity (|h| < 0.05) | weights nnz |")
    print("|---|---|---|---|---|---|")
    for name, penalty, beta in CONFIGS:
        ae = SparseAutoencoder(64, args.hidden, penalty=penalty, rho=0.05, beta=beta, density=0.5, rng=args.seed)
        opt = optim.Adam(ae.parameters(), lr=3e-3)
        fit(ae, nn.MSELoss(), opt, (x, x), epochs=args.epochs, batch_size=32, progress=False, rng=args.seed)
        recon = ae(xt)
        mse = float(np.mean((recon - xt) ** 2))
        h = ae.encode(xt)
        nnz = ae.encoder.weight.csr.nnz + ae.decoder.weight.csr.nnz
        code_sparsity = ae.code_sparsity(xt, tol=0.05)
        print(f"| {penalty} | {beta} | {mse:.4f} | {h.mean():.3f} | {code_sparsity:.3f} | {nnz} |", flush=True)
        if name in ("kl, beta=0.01", "l1, beta=0.001"):
            save_filters(ae, os.path.join(args.out, f"autoencoder_filters_{penalty}.png"), name)


def save_filters(ae, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = ae.encoder.weight.csr.to_dense()
    n = w.shape[0]
    cols = 10
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols, rows))
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < n:
            f = w[i].reshape(8, 8)
            m = np.abs(f).max() or 1.0
            ax.imshow(f, cmap="RdBu_r", vmin=-m, vmax=m)
    fig.suptitle(f"encoder filters ({title}); white = absent connection")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print("saved", path)


if __name__ == "__main__":
    main()
