"""jmf.sklearn.NMF vs scikit-learn's NMF at default settings: digits (dense) and a large sparse matrix.

Both estimators get the same data and the same parameters, in the same run:

* ``digits``: ``load_digits().data`` (1797 x 64, float64), ``NMF(16,
  init="nndsvda", solver=...)`` for ``solver`` in cd and mu, defaults
  otherwise (``tol=1e-4``, ``max_iter=200``).
* ``sparse``: a 20000 x 5000 CSR matrix with 10^5 uniformly placed nonzeros
  (values in [0, 1), float64), ``NMF(10)`` at its defaults (cd, init
  "nndsvda").  jmf keeps it sparse (absent entries are zeros, as in
  scikit-learn): ``O(nnz k)`` memory.

Every (case, library) runs in a **fresh subprocess**, so its peak resident
memory (``ru_maxrss``) is its own: the table gives the peak of the whole
process and, next to it, the peak minus the resident memory just before the
first fit (imports and data loaded: jmf's includes JAX and scikit-learn).
Times are whole ``fit`` calls: *cold* is the first fit in the process (jmf
compiles then, unless JAX's persistent compilation cache already holds the
program), *warm* the median of the ``--repeats`` fits after it.  Errors are
``reconstruction_err_`` (the Frobenius norm of ``X - W H``).

Usage::

    python benchmarks/sklearn_nmf.py              # 5 warm repeats per case
    python benchmarks/sklearn_nmf.py --quick      # 1 repeat, sparse case at a quarter of the size
    python benchmarks/sklearn_nmf.py --out benchmarks/results/sklearn_nmf.txt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SPARSE_SHAPE = (20000, 5000)
SPARSE_NNZ = 100_000


def sparse_matrix(m: int, n: int, nnz: int, seed: int = 0):
    """A CSR matrix with exactly ``nnz`` distinct uniformly placed entries, values in [0, 1) (never dense)."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    flat = np.unique(rng.integers(0, m * n, size=int(nnz * 1.05) + 16))
    flat = rng.permutation(flat)[:nnz]
    return sp.csr_matrix((rng.random(nnz), (flat // n, flat % n)), shape=(m, n))


def _peak_mb() -> float:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb / 1024.0


def _worker(case: str, lib: str, repeats: int, quick: bool) -> dict:
    """One (case, library) in this process: cold fit, ``repeats`` warm fits, peak memory."""
    warnings.simplefilter("ignore")
    if lib == "jmf":
        sys.path.insert(0, ROOT)
        from jmf.sklearn import NMF
    else:
        from sklearn.decomposition import NMF
    if case == "sparse":
        m, n = SPARSE_SHAPE
        nnz = SPARSE_NNZ
        if quick:
            m, n, nnz = m // 2, n // 2, nnz // 4
        X = sparse_matrix(m, n, nnz)
        make = lambda: NMF(10, random_state=0)  # noqa: E731
        shape = f"{m}x{n} CSR, nnz {X.nnz}"
    else:
        from sklearn.datasets import load_digits

        X = load_digits().data
        solver = case.split("-")[1]
        make = lambda: NMF(16, init="nndsvda", solver=solver, random_state=0)  # noqa: E731
        shape = f"{X.shape[0]}x{X.shape[1]} dense"
    base = _peak_mb()
    times = []
    for _ in range(1 + repeats):
        est = make()
        t0 = time.perf_counter()
        est.fit(X)
        times.append(time.perf_counter() - t0)
    return dict(case=case, lib=lib, data=shape, cold=times[0], warm=statistics.median(times[1:]) if repeats else None,
                n_iter=int(est.n_iter_), error=float(est.reconstruction_err_), peak_mb=_peak_mb(),
                fit_mb=_peak_mb() - base)


def _run(case: str, lib: str, repeats: int, quick: bool) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", case, lib, "--repeats", str(repeats)]
    if quick:
        cmd.append("--quick")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 warm repeat; the sparse case at 10000x2500, nnz 25000")
    p.add_argument("--repeats", type=int, default=None, help="warm fits per case (default 5, --quick 1)")
    p.add_argument("--cases", default="digits-cd,digits-mu,sparse")
    p.add_argument("--out", default=None, help="also write the report to this file")
    p.add_argument("--worker", nargs=2, metavar=("CASE", "LIB"), help=argparse.SUPPRESS)
    args = p.parse_args()
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    if args.worker:
        print(json.dumps(_worker(*args.worker, repeats, args.quick)))
        return

    sys.path.insert(0, HERE)
    from _common import machine_info, table

    rows = []
    for case in args.cases.split(","):
        res = {lib: _run(case, lib, repeats, args.quick) for lib in ("sklearn", "jmf")}
        ref = res["sklearn"]["error"]
        for lib, r in res.items():
            rows.append({
                "case": case, "data": r["data"], "library": lib,
                "cold s": f"{r['cold']:.2f}",
                "warm s (median)": "" if r["warm"] is None else f"{r['warm']:.2f}",
                "iterations": r["n_iter"],
                "reconstruction_err_": f"{r['error']:.6g}",
                "err vs sklearn": f"{100 * (r['error'] / ref - 1):+.3f}%",
                "peak RSS MB": f"{r['peak_mb']:.0f}",
                "fit MB": f"{r['fit_mb']:.0f}",
            })
        print(f"done: {case}", file=sys.stderr, flush=True)
    import sklearn

    lines = [
        "jmf.sklearn.NMF vs sklearn.decomposition.NMF (default settings; each row a fresh process)",
        f"machine: {machine_info()}, scikit-learn {sklearn.__version__}",
        f"command: python benchmarks/sklearn_nmf.py{' --quick' if args.quick else ''}"
        f"{'' if args.repeats is None else f' --repeats {args.repeats}'}",
        "",
        table(rows),
        "",
        "cold: first fit of the process (jmf: includes compilation unless the persistent cache has it); "
        f"warm: median of {repeats} more fits; peak RSS: whole process; fit MB: peak minus the resident "
        "memory just before the first fit.",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(report + "\n")


if __name__ == "__main__":
    main()
