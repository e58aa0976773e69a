"""Fit many matrices at once: one ``jmf.fit_many`` call over a stack of matrices.

A stack ``jmf.Dense(A)`` with ``A`` of shape ``(B, m, n)`` is a batch: the
driver is vmapped over it, every member converges (or not) on its own and
reports its own ``n_iter`` and ``status``, and the whole batch compiles once.
This script measures fits per second against batch size for

* the seed problem: B perturbed copies of the 4x2 matrix, rank 2, Adam
  (lr 0.01) for a fixed number of steps, and
* B random 100x50 matrices of rank 5 plus noise, rank 5, Adam,

next to a Python loop of ``jmf.fit`` calls (the same compiled function
called once per matrix), checks that batch member i equals fitting matrix i
alone, and saves

    OUT/batch_fit.csv, OUT/batch_fit.json    fits/s per problem and batch size
    OUT/figures/batch_fit_throughput.{png,svg}

Times are warm (compilation is reported separately).  For the benchmark
against PyTorch see benchmarks/.

    python experiments/batch_fit.py [--quick] [--out DIR] [--sizes 1 10 100 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

import jmf

SEED_A = np.array([[5.0, 3.0], [3.0, 2.0], [2.0, 1.0], [1.0, 1.0]], dtype=np.float32)


def seed_batch(B: int, key) -> np.ndarray:
    """``B`` copies of the seed matrix with 5% multiplicative noise (copy 0 is exact)."""
    noise = np.array(jax.random.normal(key, (B, 4, 2)), np.float32)
    noise[0] = 0
    return SEED_A[None] * (1 + 0.05 * noise)


def low_rank_batch(B: int, key, m: int = 100, n: int = 50, rank: int = 5, noise: float = 0.1) -> np.ndarray:
    kU, kV, kE = jax.random.split(key, 3)
    U = jax.random.normal(kU, (B, m, rank))
    V = jax.random.normal(kV, (B, rank, n))
    return np.asarray(U @ V / np.sqrt(rank) + noise * jax.random.normal(kE, (B, m, n)), np.float32)


def _timed(fn, repeats: int = 2):
    """(first call seconds incl. compilation, best warm seconds, result)."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        warm.append(time.perf_counter() - t0)
    return first, min(warm), out


def measure(name: str, make, sizes, solver, rank: int, steps: int, key, loop_fits: int = 5, init="uniform"):
    """Rows of fits/s for each batch size, plus a Python-loop baseline and an equivalence check."""
    rows = []
    opts = dict(rank=rank, max_iter=steps, tol=None, check_every=steps, init=init, progress=False)
    k_data, k_fit = jax.random.split(key)
    biggest = None
    for B in sizes:
        A = make(B, k_data)
        data = jmf.Dense(A)
        first, warm, res = _timed(lambda: jmf.fit_many(data, solver, key=k_fit, **opts))
        rows.append({"problem": name, "mode": "fit_many", "B": B, "seconds": warm, "fits_per_s": B / warm,
                     "compile_seconds": max(first - warm, 0.0), "median_loss": float(np.median(np.asarray(res.loss))),
                     "diverged": int(np.sum(np.asarray(res.status) == int(jmf.Status.DIVERGED)))})
        biggest = (A, res)
    # Baseline: the same fits one at a time from Python (one compiled function, called per matrix).
    A, res = biggest
    n_loop = min(loop_fits, A.shape[0])
    single = [jmf.Dense(A[i]) for i in range(n_loop)]
    jax.block_until_ready(jmf.fit(single[0], solver, key=k_fit, **opts))  # compile
    t0 = time.perf_counter()
    loop = [jax.block_until_ready(jmf.fit(d, solver, key=k_fit, **opts)) for d in single]
    loop_s = time.perf_counter() - t0
    rows.append({"problem": name, "mode": "python loop of jmf.fit", "B": n_loop, "seconds": loop_s,
                 "fits_per_s": n_loop / loop_s, "compile_seconds": None,
                 "median_loss": float(np.median([float(r.loss) for r in loop])), "diverged": 0})
    # Member i of the batch is the fit of matrix i alone (same key, same compiled driver).
    diff = max(float(np.max(np.abs(np.asarray(res.factors.W[i]) - np.asarray(loop[i].factors.W))))
               for i in range(n_loop))
    return rows, diff


def _figure(out, rows, subtitle=""):
    from matplotlib.figure import Figure

    import jmf.plotting as P

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    colors = {"seed 4x2": "tab:blue", "100x50 rank 5": "tab:orange"}
    for problem in dict.fromkeys(r["problem"] for r in rows):
        pts = [r for r in rows if r["problem"] == problem and r["mode"] == "fit_many"]
        loop = [r for r in rows if r["problem"] == problem and r["mode"] != "fit_many"]
        c = colors.get(problem, None)
        ax.plot([r["B"] for r in pts], [r["fits_per_s"] for r in pts], "o-", color=c, lw=2,
                label=f"{problem}: fit_many over B matrices")
        if loop:
            ax.axhline(loop[0]["fits_per_s"], color=c, ls="--", lw=1.2, label=f"{problem}: Python loop of jmf.fit")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size B (matrices per fit_many call)")
    ax.set_ylabel("fits per second (warm, excluding compilation)")
    ax.set_title("Batched fitting throughput" + (f" ({subtitle})" if subtitle else ""), fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return P.save(fig, os.path.join(out, "figures", "batch_fit_throughput"))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Fit many matrices in one fit_many call; fits/s against batch size.")
    parser.add_argument("--out", default=os.path.join("results", "batch_fit"),
                        help="output directory (default: results/batch_fit)")
    parser.add_argument("--quick", action="store_true", help="small batches and few steps (CI)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="batch sizes (default 1 10 100 1000; quick 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the initial factors")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([32] if args.quick else [1, 10, 100, 1000])
    if any(b < 1 for b in sizes):
        parser.error("--sizes must be positive")
    steps_seed, steps_big = (1000, 200) if args.quick else (5000, 1000)
    big_sizes = [4] if args.quick and args.sizes is None else ([b for b in sizes if b <= 100] or [1])
    key = jax.random.key(args.seed)
    k1, k2 = jax.random.split(key)

    rows, checks = [], {}
    print(f"seed problem: B copies of the 4x2 matrix, rank 2, Adam lr 0.01, {steps_seed} steps")
    r, checks["seed 4x2"] = measure("seed 4x2", seed_batch, sizes, jmf.solvers.adam(0.01), 2, steps_seed, k1)
    rows += r
    print(f"100x50 matrices of rank 5 plus noise, rank 5, Adam lr 0.03, {steps_big} steps")
    r, checks["100x50 rank 5"] = measure("100x50 rank 5", low_rank_batch, big_sizes, jmf.solvers.adam(0.03), 5,
                                         steps_big, k2, init="normal")
    rows += r

    import pandas as pd

    df = pd.DataFrame(rows)
    with pd.option_context("display.width", 160, "display.float_format", "{:.4g}".format):
        print(df.to_string(index=False))
    for problem, diff in checks.items():
        print(f"{problem}: batch member i vs fitting matrix i alone, max |W difference| = {diff:.2e}")
    best = df[df["mode"] == "fit_many"].groupby("problem")["fits_per_s"].max()
    loop = df[df["mode"] != "fit_many"].set_index("problem")["fits_per_s"]
    for problem in best.index:
        print(f"{problem}: {best[problem]:.4g} fits/s batched, {best[problem] / loop[problem]:.1f}x the Python loop")

    os.makedirs(os.path.join(args.out, "figures"), exist_ok=True)
    from jmf.io import atomic_write

    with atomic_write(os.path.join(args.out, "batch_fit.csv"), "w") as fh:
        df.to_csv(fh, index=False)
    with atomic_write(os.path.join(args.out, "batch_fit.json"), "w") as fh:
        json.dump({"rows": rows, "max_abs_diff_vs_single": checks, "devices": [str(d) for d in jax.devices()],
                   "jax": jax.__version__, "jmf": jmf.__version__}, fh, indent=1)
    paths = _figure(args.out, rows, f"Adam, {steps_seed} steps for 4x2, {steps_big} for 100x50")
    out = os.path.abspath(args.out)
    print(f"results: {os.path.join(out, 'batch_fit.csv')}")
    print(f"figure:  {os.path.abspath(paths[0])}")
    return df, checks


if __name__ == "__main__":
    main(sys.argv[1:])
