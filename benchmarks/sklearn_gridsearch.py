"""GridSearchCV over n_components on digits: jmf.sklearn.NMF vs scikit-learn's NMF, side by side.

Both estimators get the same data (``load_digits``, 1797 x 64), the same grid
(``n_components`` in 5..30), the same 3 folds and the same scorer: the
negative mean squared reconstruction error of the held-out rows through
``transform`` / ``inverse_transform`` (:func:`jmf.sklearn.reconstruction_scorer`).

Two modes:

* ``tol``: the estimators' default stopping (``tol=1e-4``, ``max_iter=200``).
  The stopping rules differ (jmf: relative loss decrease every 10
  iterations; scikit-learn's cd: projected-gradient violation), so the
  iteration counts differ too; they are reported.
* ``fixed``: ``tol=0`` and ``max_iter`` iterations for both, i.e. the same
  work; the table gives the achieved GFLOP/s of the fits (HALS:
  ``4 m n k + 2 (m + n) k^2`` per iteration) next to the machine's measured
  float32/float64 matmul rate.

jmf timings are reported cold (first grid search in the process: includes
compilation, one per (fold shape, n_components)) and warm (median of the
repeats after that).  scikit-learn has no compilation; its median is over
all repeats.

Usage::

    .venv/bin/python benchmarks/sklearn_gridsearch.py            # full grid, 3 repeats
    .venv/bin/python benchmarks/sklearn_gridsearch.py --quick    # smoke test
    .venv/bin/python benchmarks/sklearn_gridsearch.py --x64      # float64 for both
    .venv/bin/python benchmarks/sklearn_gridsearch.py --threads 1   # single-threaded (shared machine)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small grid, 2 repeats, 50 iterations")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--x64", action="store_true", help="float64 data and JAX x64 (default: float32 for both)")
    p.add_argument("--grid", type=int, nargs="+", default=[5, 10, 15, 20, 25, 30])
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--modes", nargs="+", default=["tol", "fixed"], choices=["tol", "fixed"])
    p.add_argument("--threads", type=int, default=None,
                   help="threads for BLAS/OpenMP and XLA (default: the libraries' defaults); on a shared "
                        "machine 1 avoids the 10-40x slowdowns of oversubscribed multithreaded BLAS")
    return p.parse_args()


def main():
    args = _parse()
    if args.threads is not None:  # before numpy/jax start their thread pools
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
        if args.threads == 1:
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                       " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import numpy as np
    from _common import machine_info, matmul_rate, table
    from sklearn.datasets import load_digits
    from sklearn.decomposition import NMF as SkNMF
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, KFold

    from jmf.sklearn import NMF as JmfNMF
    from jmf.sklearn import reconstruction_scorer

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    if args.quick:
        args.grid, args.repeats, args.max_iter = [5, 10], 2, 50
    dtype = np.float64 if args.x64 else np.float32
    X = load_digits().data.astype(dtype)
    m, n = X.shape
    cv = KFold(args.folds, shuffle=True, random_state=0)
    grid = {"n_components": list(args.grid)}

    def run(make, mode):
        iters = []

        def scorer(est, Xt, y=None):  # records each fold's iteration count
            iters.append(int(est.n_iter_))
            return reconstruction_scorer(est, Xt)

        gs = GridSearchCV(make(mode), grid, cv=cv, scoring=scorer, refit=False, n_jobs=1)
        t = time.perf_counter()
        gs.fit(X)
        return time.perf_counter() - t, gs, iters

    def settings(mode):
        return dict(init="nndsvda", solver="cd", random_state=0, max_iter=args.max_iter,
                    tol=0.0 if mode == "fixed" else 1e-4)

    def fit_flops(k, n_iter):
        m_train = m - m // args.folds  # rows of a training fold
        return n_iter * (4 * m_train * n * k + 2 * (m_train + n) * k * k)

    rate = matmul_rate(dtype, n=1024)
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info())
    except Exception:  # pragma: no cover
        blas = "?"
    print(f"digits {m}x{n} {np.dtype(dtype).name}; grid n_components={args.grid}; {args.folds}-fold; "
          f"max_iter={args.max_iter}; repeats={args.repeats}")
    print(f"{machine_info()}; {jax.devices()[0].platform} x{len(jax.devices())}; {blas}; "
          f"numpy {np.dtype(dtype).name} matmul {rate / 1e9:.0f} GFLOP/s\n")
    rows = []
    for mode in args.modes:
        res = {}
        for name, make in (("scikit-learn", lambda mode: SkNMF(**settings(mode))),
                           ("jmf", lambda mode: JmfNMF(**settings(mode)))):
            times, cold, last = [], None, None
            for r in range(args.repeats + (1 if name == "jmf" else 0)):
                dt, gs, iters = run(make, mode)
                if name == "jmf" and r == 0:
                    cold = dt  # includes compilation
                    continue
                times.append(dt)
                last = (gs, iters)
            gs, iters = last
            med = statistics.median(times)
            ks = [k for k in args.grid for _ in range(args.folds)]
            flops = sum(fit_flops(k, it) for k, it in zip(ks, iters))
            res[name] = dict(mode=mode, impl=name, cold_s=cold if cold is not None else "-", median_s=med,
                             best_k=gs.best_params_["n_components"], best_score=gs.best_score_,
                             mean_iters=statistics.mean(iters), fit_gflops=flops / med / 1e9)
        res["jmf"]["speedup"] = res["scikit-learn"]["median_s"] / res["jmf"]["median_s"]
        res["scikit-learn"]["speedup"] = 1.0
        rows += [res["scikit-learn"], res["jmf"]]
    print(table(rows, ["mode", "impl", "cold_s", "median_s", "speedup", "best_k", "best_score", "mean_iters",
                       "fit_gflops"]))
    print("\ncold_s: first grid search in the process (jmf compiles there); median_s: median of the repeats "
          "after it; speedup: scikit-learn median / jmf median; fit_gflops: HALS FLOPs of the fits "
          "(4mnk + 2(m+n)k^2 per iteration) over the whole grid-search time, a lower bound.")


if __name__ == "__main__":
    main()
