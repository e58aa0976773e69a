"""NMF parts of handwritten digits: nonnegative factors learn strokes.

scikit-learn's digits (1797 images of 8 x 8 pixels, values 0..16) form a 1797 x 64
nonnegative matrix A.  Nonnegative matrix factorization A ~ W H with W, H >= 0 (HALS
solver) writes every image as an additive mix of k parts, the rows of H: pieces of
strokes rather than whole digits.  Plotted: the parts, a few digits beside their
rank-k reconstructions, and the loss curves of 4 random restarts fitted in one call.

    python examples/nmf_digits.py [--quick] [--out DIR]
"""

import argparse
import os

import numpy as np
from sklearn.datasets import load_digits

import jmf
from jmf.plotting import plot_components, plot_loss, plot_reconstructions, save

GALLERY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "gallery")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="rank 8 and fewer iterations (CI)")
    ap.add_argument("--out", default=GALLERY, help="folder for the figures (default: docs/gallery)")
    args = ap.parse_args(argv)

    A = load_digits().data.astype(np.float32)  # (1797, 64), values 0..16
    rank, max_iter = (8, 100) if args.quick else (16, 400)

    # 4 random restarts in one compiled call; keep the one with the lowest final loss.
    many = jmf.fit_many(A, jmf.solvers.hals(), rank=rank, n_restarts=4, key=0, init="uniform",
                        max_iter=max_iter, tol=1e-5, progress=False)
    best = many.best()
    W, H = np.asarray(best.factors.W), np.asarray(best.factors.H)
    rel = np.linalg.norm(A - W @ H) / np.linalg.norm(A)
    print(f"rank {rank}: relative error {rel:.3f}, W >= 0: {bool((W >= 0).all())}, H >= 0: {bool((H >= 0).all())}, "
          f"statuses {np.asarray(many.status_name).tolist()}")

    parts = plot_components(H, (8, 8), n_cols=8, size=1.0, title=f"the {rank} NMF parts (rows of H)")
    pick = [0, 1, 2, 3, 4]
    strip = np.hstack([A[i].reshape(8, 8) for i in pick])  # five digits side by side
    recon = np.hstack([(W[i] @ H).reshape(8, 8) for i in pick])
    digits = plot_reconstructions(strip, {f"rank {rank} NMF": recon}, n_cols=1, data_range=16.0, size=4.0,
                                  original_label="digits")
    curves = plot_loss(many, style="lines", title="HALS, 4 random restarts (one fit_many call)")

    paths = []
    for fig, name in ((parts, "nmf_digits_parts"), (digits, "nmf_digits_reconstructions"), (curves, "nmf_digits_loss")):
        paths += save(fig, os.path.join(args.out, name), formats=("png",), dpi=90, png_colors=64)
    print("figures:", *(os.path.normpath(p) for p in paths))
    return rel


if __name__ == "__main__":
    main()
