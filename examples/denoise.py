"""Denoising: a low-rank image with Gaussian noise and gross outliers, noisy against recovered.

The clean image is a smooth rank-4 pattern (96 x 128).  We add Gaussian noise and
replace 5% of the pixels by gross outliers, then fit rank-4 factors:

* plain least squares (the Frobenius loss): removes the Gaussian noise, but every
  outlier pulls on its whole row and column;
* the same loss with the outliers down-weighted: iteratively reweighted least squares
  with Huber weights, w = min(1, c / |residual|), passed as jmf.Dense weights and
  warm-started from the previous factors.

    python examples/denoise.py [--quick] [--out DIR]
"""
# TODO(lead): when jmf.losses.huber / jmf.losses.l1 land in main, fit the robust model directly, e.g.
#   jmf.fit(noisy, jmf.solvers.adam(1e-2, loss=jmf.losses.huber(delta)), rank=4, ...)
# and compare it with the reweighting below (the solver engineer is adding those losses).

import argparse
import os

import numpy as np

import jmf
from jmf.compress import psnr
from jmf.plotting import plot_reconstructions, save

GALLERY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "gallery")


def low_rank_image(m, n, rank, rng):
    y, x = np.linspace(0, 1, m)[:, None], np.linspace(0, 1, n)[:, None]
    U = np.hstack([np.cos(np.pi * (i + 1) * y + rng.uniform(0, 3)) for i in range(rank)])
    V = np.hstack([np.sin(np.pi * (i + 1) * x + rng.uniform(0, 3)) for i in range(rank)]).T
    A = U @ V
    return (A - A.min()) / (A.max() - A.min())  # values in [0, 1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller image and fewer reweighting rounds (CI)")
    ap.add_argument("--out", default=GALLERY, help="folder for the figure (default: docs/gallery)")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    m, n, rank = (48, 64, 4) if args.quick else (96, 128, 4)
    clean = low_rank_image(m, n, rank, rng)
    noisy = clean + 0.05 * rng.standard_normal((m, n))
    outliers = rng.random((m, n)) < 0.05
    noisy[outliers] = rng.choice([-1.0, 2.0], size=outliers.sum())  # gross errors, far outside [0, 1]
    noisy = noisy.astype(np.float32)

    solver = jmf.solvers.als()
    plain = jmf.fit(noisy, solver, rank=rank, key=0, init="svd", max_iter=50, progress=False)
    f = plain.factors
    for _ in range(3 if args.quick else 10):  # Huber reweighting: big residuals get small weights
        r = noisy - np.asarray(f.W @ f.H)
        c = 1.345 * 1.4826 * np.median(np.abs(r))  # Huber's constant times a robust noise scale
        w = np.minimum(1.0, c / np.maximum(np.abs(r), 1e-12)).astype(np.float32)
        f = jmf.fit(jmf.Dense(noisy, weights=w), solver, init=f, max_iter=20, progress=False).factors

    recovered = {
        "noisy (5% gross outliers)": noisy,
        "rank 4, least squares": np.asarray(plain.factors.W @ plain.factors.H),
        "rank 4, outliers down-weighted": np.asarray(f.W @ f.H),
    }
    for label, img in recovered.items():
        print(f"{label:32s} PSNR against the clean image {psnr(clean, img, data_range=1.0):5.1f} dB")
    fig = plot_reconstructions(clean, recovered, data_range=1.0, vmin=0.0, vmax=1.0, cmap="viridis",
                               original_label="clean (rank 4)", size=2.8,
                               title="denoising by low-rank fitting (colour scale clipped to [0, 1])")
    paths = save(fig, os.path.join(args.out, "denoise"), formats=("png",), dpi=90, png_colors=128)
    print("figure:", *(os.path.normpath(p) for p in paths))
    return {k: psnr(clean, v, data_range=1.0) for k, v in recovered.items()}


if __name__ == "__main__":
    main()
