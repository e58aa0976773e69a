"""Small SPD factor-and-solve kernels without LAPACK, and what they buy the default ratings model.

    python benchmarks/spd_kernels.py                 # both parts (about 2 minutes on 2 cores)
    python benchmarks/spd_kernels.py --part kernels  # per-solve times only

Parts
-----
kernels
    ``x = P^-1 b + L^-T z`` (a Gaussian draw, as Bayesian PMF samples its rows) for ``S`` SPD systems of
    width ``q``: jaxlib's LAPACK (``lax.linalg.cholesky`` + two ``triangular_solve``) against
    ``jmf._src.solvers._normal.spd_draw`` (straight-line XLA code up to width 16, loops above).
    Compile seconds (persistent cache off) and the median of 30 calls, float32 and float64.
default
    ``jmf.cf.fit_ratings(train)`` on the 80 % training part of ml-latest-small (the CLI's seeded split),
    warm (second call in the process), in fresh processes with 1 and with 2 CPU devices
    (``JMF_CPU_DEVICES``; ``import jmf`` gives one per core by default).  With LAPACK in the program the
    four chains ran one after another on one device; without it they split over the devices.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ML_SMALL = os.path.join(ROOT, "..", "shared", "data", "ml-latest-small", "ratings.csv")

DEFAULT_SCRIPT = r"""
import json, sys, time
import jmf
from jmf._src.experiments import prepare
data, _ = jmf.io.load_matrix(sys.argv[1])
train = prepare.make_dataset({"name": "ratings", "data": data, "holdout": 0.2}).train
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    model = jmf.cf.fit_ratings(train)
    times.append(time.perf_counter() - t)
import jax
print(json.dumps({"devices": len(jax.devices()), "times": times, "choice": model.params["choice"]}))
"""


def kernels(repeats: int) -> None:
    os.environ["JMF_CACHE_DIR"] = "off"  # compile times of a fresh machine
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    jax.config.update("jax_enable_x64", True)
    import jmf  # noqa: F401  (configures devices before JAX starts)
    from jmf._src.solvers._normal import spd_draw

    def lapack(P, b, z):
        L = lax.linalg.cholesky(P, symmetrize_input=False)
        y = lax.linalg.triangular_solve(L, b[..., None], left_side=True, lower=True) + z[..., None]
        return lax.linalg.triangular_solve(L, y, left_side=True, lower=True, transpose_a=True)[..., 0]

    def timed(fn, args):
        t = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        compile_s = time.perf_counter() - t
        jax.block_until_ready(compiled(*args))
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            runs.append(time.perf_counter() - t)
        return compile_s, statistics.median(runs), compiled(*args)

    rng = np.random.default_rng(0)
    print("kernels: x = P^-1 b + L^-T z for S systems of width q; compile s (cache off), median ms of "
          f"{repeats} calls")
    print(f"  {'dtype':8s} {'S':>6s} {'q':>3s}  {'lapack ms':>9s} {'xla ms':>7s} {'speed-up':>8s}  "
          f"{'lapack compile':>14s} {'xla compile':>11s}  max rel diff")
    for dtype in ("float32", "float64"):
        for S, q in ((9724, 6), (9724, 11), (610, 11), (2048, 16), (2048, 17), (2048, 33)):
            X = rng.standard_normal((S, q, 2 * q))
            P = jnp.asarray(X @ X.transpose(0, 2, 1) + np.eye(q), dtype)
            b, z = (jnp.asarray(rng.standard_normal((S, q)), dtype) for _ in range(2))
            cl, tl, xl = timed(lapack, (P, b, z))
            cx, tx, xx = timed(spd_draw, (P, b, z))
            diff = float(jnp.max(jnp.abs(xl - xx)) / jnp.max(jnp.abs(xl)))
            print(f"  {dtype:8s} {S:6d} {q:3d}  {tl * 1e3:9.2f} {tx * 1e3:7.2f} {tl / tx:8.2f}  {cl:14.2f} "
                  f"{cx:11.2f}  {diff:.1e}", flush=True)


def default_model(repeats: int) -> None:
    if not os.path.exists(ML_SMALL):
        print("default: skipped (no ../shared/data/ml-latest-small)")
        return
    print(f"default: jmf.cf.fit_ratings(train) on ml-latest-small's 80 % split; seconds per call "
          f"(first call loads or compiles its programs; median of calls 2..{repeats})")
    for devices in (1, 2):
        env = dict(os.environ, JMF_CPU_DEVICES=str(devices))
        out = subprocess.run([sys.executable, "-c", DEFAULT_SCRIPT, ML_SMALL, str(repeats)], env=env,
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        warm = statistics.median(r["times"][1:])
        print(f"  {r['devices']} CPU device(s): first {r['times'][0]:.2f} s, warm {warm:.2f} s "
              f"(chose {r['choice']})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("kernels", "default", "all"), default="all")
    ap.add_argument("--repeats", type=int, default=30, help="calls per kernel (default part: 4 fits)")
    args = ap.parse_args()
    if args.part in ("default", "all"):  # first: the kernels part switches the cache off in this process
        default_model(4 if args.part == "all" else max(2, args.repeats))
    if args.part in ("kernels", "all"):
        kernels(args.repeats)


if __name__ == "__main__":
    main()
