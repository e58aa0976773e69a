"""Classical solvers side by side: jmf HALS / MU vs scikit-learn NMF, ALS / Adam / svd vs scipy and sklearn SVDs.

    python benchmarks/classical.py            # full sizes (a few minutes)
    python benchmarks/classical.py --quick    # small sizes, a fast check that everything runs

Sections (float32 and float64 each; medians of repeated warm runs; compile time reported apart):

(a) nonnegative 2000 x 1000, rank 20 + small noise, NNDSVDa start shared by both libraries.
    scikit-learn ``NMF(solver='cd' | 'mu', tol=1e-4)`` runs to its own stopping rule; jmf HALS
    (resp. MU) is then timed for the number of iterations it needs to reach the *same final
    error*.  FLOP floor = 4 m n k per iteration at the best matmul rate (numpy or jnp) measured
    in this run.  Goals: >= 2.5x faster than scikit-learn, <= 1.5x the FLOP floor.
(b) digits (``sklearn.datasets.load_digits``, 1797 x 64): the same comparison at rank 10, and
    the error against rank k = 2..20 from ONE ``jmf.fit_many(ranks=...)`` call against a loop of
    scikit-learn fits (same NNDSVDa starts, same iteration count).
(c) dense 2000 x 2000, rank 32 + noise: time to reach 1% of the SVD optimum (loss <= 1.01 opt)
    for ALS (random start), Adam and ``svd()`` (exact and randomized), against
    ``scipy.sparse.linalg.svds`` and ``sklearn.utils.extmath.randomized_svd`` (k = 32).
    Goal: ALS reaches it >= 2x faster than svds computes the exact answer.
(d) sparse ALS with biases (ALS-WR) on synthetic power-law ratings (default 40k x 8k, 3M ratings,
    rank 64; ``--ratings M N NNZ`` to change, e.g. ``138000 27000 20000000`` for MovieLens-20M
    scale), in a fresh process: time per sweep against the FLOP floor ``4 nnz q^2 + (m + n) q^3 / 3``
    (``q = k + 1``) at the float32 matmul rate, and the process's peak resident memory.

BLAS threads.  jmf's matrix products run in XLA's own thread pool; only its LAPACK calls (SVD,
Cholesky, QR) go through OpenBLAS, whose 2-thread mode collapses when the other core is busy
(measured: a 1797 x 64 SVD took 1.5 s with 2 OpenBLAS threads under load and 4 ms with 1).  jmf
therefore runs with OpenBLAS limited to 1 thread (threadpoolctl).  Every numpy/scipy/scikit-learn
peer is run both with 1 and with 2 BLAS threads in each round and credited with the faster.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import jax_matmul_rate, machine_info, matmul_rate, median_time, table  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import jmf  # noqa: E402

DTYPES = (np.float32, np.float64)


def _sk_nmf(A, W0, H0, solver, tol, max_iter, beta_loss="frobenius"):
    from sklearn.decomposition import NMF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = NMF(W0.shape[1], init="custom", solver=solver, beta_loss=beta_loss, tol=tol, max_iter=max_iter)
        W = model.fit_transform(A, W=W0.copy(), H=H0.copy())
    return W, model.components_, model.n_iter_


def _err(A, W, H):
    return float(np.linalg.norm(A - W @ H))


def _fit(data, solver, f0, n_iter, check_every=None):
    return jmf.fit(data, solver, init=f0, max_iter=n_iter, tol=None, check_every=check_every or n_iter, progress=False)


def _iters_to_reach(data, solver, f0, target_loss, max_iter):
    """First iteration whose loss is <= target (history checked every iteration); None if never."""
    res = _fit(data, solver, f0, max_iter, check_every=1)
    h = np.asarray(res.loss_history)
    hit = np.flatnonzero(h <= target_loss)
    return (int(hit[0]) if hit.size else None), float(np.nanmin(h))


def _time_fit(data, solver, f0, n_iter, repeats):
    """(median seconds of a warm jmf.fit, compile seconds = first call - median)."""
    t0 = time.perf_counter()
    jax.block_until_ready(_fit(data, solver, f0, n_iter).factors)
    first = time.perf_counter() - t0
    t = median_time(lambda: jax.block_until_ready(_fit(data, solver, f0, n_iter).factors), repeats=repeats, warmup=0)
    return t, max(first - t, 0.0)


def interleaved(fns: dict, repeats: int) -> dict:
    """Run every ``fns[name]()`` once per round, ``repeats`` rounds: ``{name: [seconds, ...]}``.

    Interleaving keeps peers and references under the same machine load, so
    per-round ratios stay meaningful on a shared machine even when absolute
    times drift.
    """
    out = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
    return out


def peers(name: str, fn) -> dict:
    """``{name@1: fn with 1 BLAS thread, name@2: fn with 2}``, for :func:`interleaved`."""

    def with_threads(t):
        def run():
            with threadpool_limits(limits=t, user_api="blas"):
                return fn()
        return run

    return {f"{name}@1": with_threads(1), f"{name}@2": with_threads(2)}


def best_of(times: dict, name: str) -> list:
    """Per-round minimum over the thread variants of peer ``name``."""
    return list(np.minimum(times[f"{name}@1"], times[f"{name}@2"]))


def _square_matmul(dtype, n=1000):
    """A warm ``n x n`` matmul (numpy and jnp, whichever is faster in the round): ``(fn, flops)``."""
    rng = np.random.default_rng(1)
    a = rng.random((n, n)).astype(dtype)
    ja = jnp.asarray(a)
    mm = jax.jit(jnp.matmul)
    mm(ja, ja).block_until_ready()

    def fn():
        with threadpool_limits(limits=2, user_api="blas"):
            t0 = time.perf_counter()
            a @ a
            t1 = time.perf_counter()
        mm(ja, ja).block_until_ready()
        t2 = time.perf_counter()
        return min(t1 - t0, t2 - t1)

    return fn, 2 * n**3


def rates(quick):
    n = 1000 if quick else 2000
    out = {}
    for dt in DTYPES:
        name = np.dtype(dt).name
        out[name] = max(matmul_rate(dt, n=n), jax_matmul_rate(name, n=n))
        out[name + "_np"] = matmul_rate(dt, n=n)
        out[name + "_jnp"] = jax_matmul_rate(name, n=n)
    return out


# -- (a) and (b): NMF ----------------------------------------------------------------------


def nmf_race(A, k, repeats, label, sk_max_iter=1000):
    """HALS vs cd and MU vs mu from the same NNDSVDa start; jmf timed to scikit-learn's final error."""
    m, n = A.shape
    rows = []
    data = jmf.Dense(A)
    f0 = jax.jit(jmf.init.nndsvda, static_argnums=(2, 3))(jax.random.key(0), data, k)
    W0, H0 = np.asarray(f0.W), np.asarray(f0.H)
    mm, mm_flops = _square_matmul(A.dtype)
    contenders = ((jmf.solvers.hals(), "hals", "cd"), (jmf.solvers.hals(inner="auto"), "hals(inner=auto)", "cd"),
                  (jmf.solvers.mu(), "mu", "mu"), (jmf.solvers.mu(inner="auto"), "mu(inner=auto)", "mu"))
    for jsolver, jname, sksolver in contenders:
        W, H, it_sk = _sk_nmf(A, W0, H0, sksolver, 1e-4, sk_max_iter)
        e_sk = _err(A, W, H)
        target = e_sk**2 / (m * n) * (1 + 1e-6)  # jmf's loss is the mean squared error
        it, best = _iters_to_reach(data, jsolver, f0, target, max(2 * it_sk, it_sk + 100))
        reached = it is not None
        it = it if reached else max(2 * it_sk, it_sk + 100)
        t0 = time.perf_counter()
        jax.block_until_ready(_fit(data, jsolver, f0, it).factors)
        first = time.perf_counter() - t0
        mm_times = []
        times = interleaved({
            **peers("sk", lambda: _sk_nmf(A, W0, H0, sksolver, 1e-4, sk_max_iter)),
            "jmf": lambda: jax.block_until_ready(_fit(data, jsolver, f0, it).factors),
            "mm": lambda: mm_times.append(mm()),
        }, repeats)
        times["sk"] = best_of(times, "sk")
        t_sk, t_jmf = np.median(times["sk"]), np.median(times["jmf"])
        # FLOP floor of each round at the matmul rate measured in that round.
        floor = [4 * m * n * k * it * tm / mm_flops for tm in mm_times]
        rows.append({
            "problem": label, "dtype": A.dtype.name, "solver": f"{jname} vs {sksolver}",
            "sklearn iters": it_sk, "sklearn s": t_sk, "final error": e_sk,
            "jmf iters": it if reached else f"{it} (best {np.sqrt(best * m * n):.5g})",
            "jmf s": t_jmf, "speed-up": float(np.median(np.array(times["sk"]) / np.array(times["jmf"]))),
            "jmf / floor": float(np.median(np.array(times["jmf"]) / np.array(floor))),
            "matmul GFLOP/s": float(np.median([mm_flops / tm for tm in mm_times]) / 1e9),
            "compile s": max(first - t_jmf, 0.0),
        })
    return rows


def rank_sweep(A, ranks, n_iter, repeats):
    """Error vs rank: one fit_many (HALS, NNDSVDa) against a loop of scikit-learn cd fits, same iterations."""
    data = jmf.Dense(A)
    solver = jmf.solvers.hals()

    def jmf_run():
        return jmf.fit_many(data, solver, ranks=ranks, key=0, init="nndsvda", max_iter=n_iter, tol=None,
                            check_every=n_iter, progress=False)

    t0 = time.perf_counter()
    many = jax.block_until_ready(jmf_run())
    first = time.perf_counter() - t0
    t_jmf = median_time(lambda: jax.block_until_ready(jmf_run().result.factors), repeats=repeats, warmup=0)
    errs_jmf = np.sqrt(np.asarray(many.loss) * A.size)

    init = jax.jit(jmf.init.nndsvda, static_argnums=(2, 3))
    starts = {r: [np.asarray(x) for x in init(jax.random.key(0), data, r)[:2]] for r in ranks}

    def sk_run():
        out = []
        for r in ranks:
            W0, H0 = starts[r]  # the same NNDSVDa starts as the fit_many members (exact SVD)
            W, H, _ = _sk_nmf(A, W0, H0, "cd", 0.0, n_iter)
            out.append(_err(A, W, H))
        return out

    times = interleaved({"jmf": lambda: jax.block_until_ready(jmf_run().result.factors), **peers("sk", sk_run)},
                        max(1, repeats // 2))
    times["sk"] = best_of(times, "sk")
    t_sk = float(np.median(times["sk"]))
    t_jmf = min(t_jmf, float(np.median(times["jmf"])))
    errs_sk = sk_run()
    rows = [{"rank": int(r), "jmf error": float(e1), "sklearn error": float(e2), "rel. diff": float(e1 / e2 - 1)}
            for r, e1, e2 in zip(ranks, errs_jmf, errs_sk)]
    summary = {"dtype": A.dtype.name, "ranks": f"{ranks[0]}..{ranks[-1]} ({len(ranks)} fits)", "iterations": n_iter,
               "jmf fit_many s": t_jmf, "jmf compile s": max(first - t_jmf, 0.0), "sklearn loop s": t_sk,
               "speed-up": float(np.median(np.array(times["sk"]) / np.array(times["jmf"])))}
    return rows, summary


# -- (c): low rank ---------------------------------------------------------------------------


def low_rank_race(A, k, repeats, quick):
    from scipy.sparse.linalg import svds
    from sklearn.utils.extmath import randomized_svd as sk_rsvd

    m, n = A.shape
    s = np.linalg.svd(A.astype(np.float64), compute_uv=False)
    opt = float(np.sum(s[k:] ** 2) / (m * n))
    target = 1.01 * opt
    data = jmf.Dense(A)
    rows = []
    t_svds = float(np.median(best_of(interleaved(peers("svds", lambda: svds(A, k=k)), repeats), "svds")))
    U, S, Vt = svds(A, k=k)
    rows.append({"method": f"scipy svds (k={k})", "iterations": "", "seconds": t_svds,
                 "loss / opt": float(np.sum((A - (U * S) @ Vt) ** 2) / (m * n) / opt), "compile s": ""})
    t_rs = float(np.median(best_of(interleaved(peers("rs", lambda: sk_rsvd(A, k, random_state=0)), repeats), "rs")))
    U, S, Vt = sk_rsvd(A, k, random_state=0)
    rows.append({"method": "sklearn randomized_svd", "iterations": "", "seconds": t_rs,
                 "loss / opt": float(np.sum((A - (U * S) @ Vt) ** 2) / (m * n) / opt), "compile s": ""})
    f_rand = jax.jit(jmf.init.normal, static_argnums=(2, 3))(jax.random.key(0), data, k)
    candidates = [("als", jmf.solvers.als(), f_rand, 50),
                  ("svd(exact)", jmf.solvers.svd("exact"), f_rand, 1),
                  ("svd(randomized)", jmf.solvers.svd("randomized"), f_rand, 1)]
    for lr in (1e-2, 3e-2):
        candidates.append((f"adam(lr={lr:g})", jmf.solvers.adam(lr), f_rand, 400 if quick else 600))
    for name, solver, f0, max_iter in candidates:
        it, best = _iters_to_reach(data, solver, f0, target, max_iter)
        if it is None:
            rows.append({"method": f"jmf {name}", "iterations": f"> {max_iter}", "seconds": float("nan"),
                         "loss / opt": best / opt, "compile s": ""})
            continue
        it = max(it, 1)
        t0 = time.perf_counter()
        jax.block_until_ready(_fit(data, solver, f0, it).factors)
        first = time.perf_counter() - t0
        times = interleaved({"jmf": lambda: jax.block_until_ready(_fit(data, solver, f0, it).factors),
                             **peers("svds", lambda: svds(A, k=k))}, repeats)
        times["svds"] = best_of(times, "svds")
        t = float(np.median(times["jmf"]))
        loss = float(_fit(data, solver, f0, it).loss)
        rows.append({"method": f"jmf {name}", "iterations": it, "seconds": t, "loss / opt": loss / opt,
                     "compile s": max(first - t, 0.0),
                     "vs svds": float(np.median(np.array(times["svds"]) / np.array(times["jmf"])))})
    for r in rows:
        r["dtype"] = A.dtype.name
        if "vs svds" not in r:
            r["vs svds"] = t_svds / r["seconds"] if r["seconds"] == r["seconds"] else ""
    return rows


# -- (d): sparse ALS at scale ------------------------------------------------------------------


def sparse_als_child(m, n, nnz, k, repeats):
    """Runs in a fresh process: one line of key=value results on stdout."""
    threadpool_limits(limits=1, user_api="blas")
    rng = np.random.default_rng(0)
    item_p = rng.pareto(1.0, n) + 1
    user_p = rng.pareto(1.5, m) + 1
    rows = rng.choice(m, nnz, p=user_p / user_p.sum())
    cols = rng.choice(n, nnz, p=item_p / item_p.sum())
    lin = np.unique(rows.astype(np.int64) * n + cols)
    del rows, cols
    data = jmf.Sparse(lin // n, lin % n, rng.integers(1, 6, lin.size).astype(np.float32), (m, n))
    del lin
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    solver = jmf.solvers.als(l2=0.05, biases=True, count_scaled=True)
    f0 = jmf.init.add_biases(jmf.init.normal(jax.random.key(0), data, k), data)
    t0 = time.perf_counter()
    state = jax.block_until_ready(jax.jit(solver.init)(f0, data, None))
    t_layout = time.perf_counter() - t0
    step = jax.jit(solver.step)
    t0 = time.perf_counter()
    f, _ = jax.block_until_ready(step(f0, state, data, None))
    first = time.perf_counter() - t0
    t = median_time(lambda: jax.block_until_ready(step(f, state, data, None)), repeats=repeats, warmup=0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"RESULT nnz={data.nnz} sweep={t} compile={max(first - t, 0)} layout={t_layout} "
          f"rss_data={rss_data} rss={rss}")


def sparse_als(m, n, nnz, k, repeats, rate32):
    cmd = [sys.executable, os.path.abspath(__file__), "--child-ratings", str(m), str(n), str(nnz), str(k),
           "--repeats", str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT")][-1]
    vals = dict(kv.split("=") for kv in line.split()[1:])
    q = k + 1
    nnz_real = int(vals["nnz"])
    floor = (4 * nnz_real * q * q + (m + n) * q**3 / 3) / rate32
    sweep = float(vals["sweep"])
    return [{"shape": f"{m}x{n}", "ratings": nnz_real, "rank": k, "sweep s": sweep, "floor s": floor,
             "sweep / floor": sweep / floor, "compile s": float(vals["compile"]), "layout s": float(vals["layout"]),
             "peak RSS MB": float(vals["rss"]), "RSS after data MB": float(vals["rss_data"])}]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    p.add_argument("--sections", default="abcd", help="subset of 'abcd' to run")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--ratings", type=int, nargs=3, metavar=("M", "N", "NNZ"), default=None,
                   help="shape and number of draws of the synthetic ratings matrix of section (d)")
    p.add_argument("--rank", type=int, default=64, help="rank of section (d)")
    p.add_argument("--child-ratings", type=int, nargs=4, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_ratings:
        sparse_als_child(*args.child_ratings, repeats=args.repeats or 2)
        return
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    rng = np.random.default_rng(0)

    print(f"# Classical solvers benchmark ({'quick' if quick else 'full'})\n")
    print(machine_info(), f"| XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}\n")
    r = rates(quick)
    threadpool_limits(limits=1, user_api="blas")  # jmf's LAPACK calls; peers choose per round (see the docstring)
    print(table([{"dtype": d, "numpy GFLOP/s": r[d + "_np"] / 1e9, "jnp GFLOP/s": r[d + "_jnp"] / 1e9}
                 for d in ("float32", "float64")]))
    print()

    if "a" in args.sections:
        m, n, k = (400, 200, 10) if quick else (2000, 1000, 20)
        A = rng.random((m, k)) @ rng.random((k, n)) + 0.01 * rng.random((m, n))
        rows = []
        for dt in DTYPES:
            rows += nmf_race(A.astype(dt), k, repeats, f"{m}x{n} k={k}")
        print(f"## (a) nonnegative {m}x{n}, rank {k} + noise, NNDSVDa start: "
              "time to scikit-learn's final error (tol 1e-4)\n")
        print(table(rows))
        print()

    if "b" in args.sections:
        from sklearn.datasets import load_digits

        X = load_digits().data
        k = 10
        rows = []
        for dt in DTYPES:
            rows += nmf_race(X.astype(dt), k, repeats, f"digits k={k}")
        print(f"## (b) digits {X.shape[0]}x{X.shape[1]}, rank {k}: time to scikit-learn's final error (tol 1e-4)\n")
        print(table(rows))
        print()
        ranks = list(range(2, 7)) if quick else list(range(2, 21))
        n_iter = 50 if quick else 200
        summaries = []
        for dt in DTYPES:
            rows_r, summary = rank_sweep(X.astype(dt), ranks, n_iter, repeats)
            summaries.append(summary)
            if dt == np.float64:
                print(f"### error vs rank (HALS / cd, NNDSVDa, {n_iter} iterations each; float64)\n")
                print(table(rows_r))
                print()
        print("### one fit_many over ranks vs a loop of scikit-learn fits\n")
        print(table(summaries))
        print()

    if "c" in args.sections:
        m, n, k = (400, 400, 8) if quick else (2000, 2000, 32)
        A = rng.standard_normal((m, k)) @ rng.standard_normal((k, n)) / np.sqrt(k) + 0.1 * rng.standard_normal((m, n))
        rows = []
        for dt in DTYPES:
            rows += low_rank_race(A.astype(dt), k, repeats, quick)
        print(f"## (c) dense {m}x{n}, rank {k} + noise: time to reach 1% of the SVD optimum\n")
        print(table(rows, ["dtype", "method", "iterations", "seconds", "vs svds", "loss / opt", "compile s"]))
        print()
    if "d" in args.sections:
        m, n, nnz = args.ratings or ((4000, 1000, 200_000) if quick else (40_000, 8_000, 4_000_000))
        k = 16 if quick and args.ratings is None else args.rank
        rows = sparse_als(m, n, nnz, k, repeats, r["float32"])
        print("## (d) sparse ALS with biases (ALS-WR), synthetic power-law ratings, float32, fresh process\n")
        print(table(rows))
        print()
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
