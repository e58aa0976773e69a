"""Collaborative filtering benchmarks: jmf vs Surprise and implicit side by side, and ML-20M-scale timings.

    python benchmarks/cf.py                 # all parts
    python benchmarks/cf.py --quick         # small sizes (checks that everything runs)
    python benchmarks/cf.py --part explicit|implicit|scale [--scale-ratings N]

Parts
-----
explicit
    ml-latest-small, split: rows shuffled with ``numpy.random.default_rng(0).permutation(n)``,
    first 20% test.  Surprise SVD and BaselineOnly (defaults) against jmf's
    default models (experiments/collaborative_filtering.py DEFAULTS).  RMSE,
    MAE, fit time (median of ``--repeats`` warm fits; jmf compile time
    separately), and 5-fold CV RMSE on the whole data set for the headline models.
implicit
    The same training split as implicit feedback (every rating an
    interaction with confidence from its value); implicit's
    ``AlternatingLeastSquares(factors=64, iterations=15)`` vs jmf's
    ``implicit_als`` (64 factors, 15 sweeps).  NDCG@10 / P@10 / R@10 on the
    test split (relevant = held-out rating >= 4, training items excluded),
    both scored by the same jmf.metrics.ranking_metrics.
scale
    Synthetic ratings at ML-20M scale (138,493 x 26,744, 20M ratings), rank
    64, in a subprocess: time per ratings-ALS sweep and per full-batch Adam
    epoch (chunked ratings loss), peak RSS (``resource.getrusage``), against
    the floors measured in the same process (copy bandwidth, float32 matmul FLOP/s).

Needs the ``bench`` extra (``pip install -e .[bench]``: scikit-surprise, implicit).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

ML_SMALL = os.path.join(ROOT, "..", "shared", "data", "ml-latest-small")


def _load_small(quick):
    import jmf

    if os.path.exists(os.path.join(ML_SMALL, "ratings.csv")):
        df = jmf.datasets.movielens("latest-small", path=ML_SMALL, as_frame=True)
        name = "ml-latest-small"
    else:
        import pandas as pd

        s = jmf.datasets.synthetic_ratings(0, n_users=610, n_items=9000, n_ratings=100_000, rank=8)
        df = pd.DataFrame({"user": np.asarray(s.data.rows), "item": np.asarray(s.data.cols),
                           "rating": np.asarray(s.data.vals)})
        name = "synthetic (ml-latest-small absent)"
    if quick:
        df = df.iloc[: len(df) // 4]
        name += " (first quarter, --quick)"
    return df, name


def _median_time(fn, repeats):
    ts = []
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return out, statistics.median(ts)


# -- explicit ------------------------------------------------------------------------------------


def _time_jmf_fit(data, solver, rank, iters, repeats):
    """``(result, median warm seconds, first-call seconds)`` of a fixed-iteration ``jmf.fit``.

    The first call (compilation included) uses another key than the timed ones.
    """
    import jax

    import jmf

    def run(key):
        res = jmf.fit(data, solver, rank=rank, key=key, init="normal", max_iter=iters, tol=None,
                      check_every=iters, progress=False)
        jax.block_until_ready(res.factors)
        return res

    t0 = time.perf_counter()
    run(jax.random.key(1))
    first = time.perf_counter() - t0
    res, t = _median_time(lambda: run(jax.random.key(0)), repeats)
    return res, t, first


def explicit(args):
    import collaborative_filtering as cf

    import jmf

    df, name = _load_small(args.quick)
    train_df, test_df = cf.split_frame(df, 0.2, seed=0)
    R = jmf.datasets.index_ratings(train_df)
    test = R.encode(test_df)
    scale = (float(df["rating"].min()), float(df["rating"].max()))
    rows = []
    try:
        import surprise

        reader = surprise.Reader(rating_scale=scale)
        tr = surprise.Dataset.load_from_df(train_df[["user", "item", "rating"]], reader).build_full_trainset()
        testset = list(zip(test_df["user"], test_df["item"], test_df["rating"].astype(float)))
        for label, make in (("Surprise SVD", lambda: surprise.SVD(random_state=0)),
                            ("Surprise BaselineOnly", lambda: surprise.BaselineOnly(verbose=False))):
            algo, t = _median_time(lambda: make().fit(tr), args.repeats)
            pred = algo.test(testset)
            est = np.array([p.est for p in pred])
            rows.append(dict(solver=label, rmse=jmf.metrics.rmse(test[2], est), mae=jmf.metrics.mae(test[2], est),
                             fit_seconds=t, compile_seconds=0.0))
            print(f"  {label:24s} rmse {rows[-1]['rmse']:.4f} fit {t:.3f} s", flush=True)
    except ImportError:
        print("  scikit-surprise is not installed: pip install -e .[bench]")
    for model in ("als-wr", "als-core", "adam", "minibatch-adam"):
        p = dict(cf.DEFAULTS[model])
        solver, iters = cf.make_solver(model, p)

        res, t, first = _time_jmf_fit(R.data, solver, p["rank"], iters, args.repeats)
        m = jmf.metrics.rating_metrics(res.factors, test, clip=scale)
        rows.append(dict(solver=f"jmf {model}", rmse=m["rmse"], mae=m["mae"], fit_seconds=t,
                         compile_seconds=max(first - t, 0.0), params=p))
        print(f"  jmf {model:20s} rmse {m['rmse']:.4f} fit {t:.3f} s (compile {first - t:.1f} s)", flush=True)
    folds = {}
    if args.folds:
        folds = five_fold(df, args, scale)
    return dict(data=name, rows=rows, folds=folds)


def five_fold(df, args, scale):
    """5-fold CV RMSE on the whole data set: jmf als-wr (defaults) and Surprise SVD, same folds."""
    import collaborative_filtering as cf

    import jmf

    perm = np.random.default_rng(0).permutation(len(df))
    folds = np.array_split(perm, args.folds)
    out = {"jmf als-wr": [], "Surprise SVD": []}
    try:
        import surprise
    except ImportError:
        surprise = None
    for i, f in enumerate(folds):
        mask = np.zeros(len(df), bool)
        mask[f] = True
        tr, te = df[~mask], df[mask]
        R = jmf.datasets.index_ratings(tr)
        factors, _, _ = cf.fit_model("als-wr", cf.DEFAULTS["als-wr"], R.data)
        out["jmf als-wr"].append(jmf.metrics.rating_metrics(factors, R.encode(te), clip=scale)["rmse"])
        if surprise is not None:
            reader = surprise.Reader(rating_scale=scale)
            trs = surprise.Dataset.load_from_df(tr[["user", "item", "rating"]], reader).build_full_trainset()
            algo = surprise.SVD(random_state=0).fit(trs)
            est = np.array([p.est for p in algo.test(list(zip(te["user"], te["item"], te["rating"].astype(float))))])
            out["Surprise SVD"].append(jmf.metrics.rmse(te["rating"].to_numpy(), est))
        print(f"  fold {i}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in out.items() if v), flush=True)
    return {k: v for k, v in out.items() if v}


# -- implicit ------------------------------------------------------------------------------------


def implicit_part(args):
    import collaborative_filtering as cf

    import jmf

    df, name = _load_small(args.quick)
    train_df, test_df = cf.split_frame(df, 0.2, seed=0)
    R = jmf.datasets.index_ratings(train_df)
    test = R.to_sparse(test_df)
    rows = []
    p = dict(cf.DEFAULTS["implicit-als"])
    solver, iters = cf.make_solver("implicit-als", p)

    res, t, first = _time_jmf_fit(R.data, solver, p["rank"], iters, args.repeats)
    r = jmf.metrics.ranking_metrics(res.factors, test, k=10, train=R.data, threshold=cf.RELEVANT)
    rows.append(dict(solver="jmf implicit_als", ndcg_at_10=r["ndcg"], precision_at_10=r["precision"],
                     recall_at_10=r["recall"], fit_seconds=t, compile_seconds=max(first - t, 0.0), params=p))
    print(f"  jmf implicit_als       ndcg@10 {r['ndcg']:.4f} fit {t:.3f} s (compile {first - t:.1f} s)", flush=True)
    try:
        import implicit
        from threadpoolctl import threadpool_limits

        ui = R.data.to_scipy().astype(np.float32).tocsr()

        def fit_implicit():
            model = implicit.cpu.als.AlternatingLeastSquares(factors=64, iterations=15, random_state=0)
            with threadpool_limits(1, "blas"):
                model.fit(ui, show_progress=False)
            return model

        model, t = _median_time(fit_implicit, args.repeats)
        f = jmf.Factors(np.asarray(model.user_factors), np.asarray(model.item_factors).T)
        r = jmf.metrics.ranking_metrics(f, test, k=10, train=R.data, threshold=cf.RELEVANT)
        rows.append(dict(solver="implicit AlternatingLeastSquares", ndcg_at_10=r["ndcg"],
                         precision_at_10=r["precision"],
                         recall_at_10=r["recall"], fit_seconds=t, compile_seconds=0.0,
                         params=dict(factors=64, iterations=15, regularization=model.regularization,
                                     alpha=model.alpha)))
        print(f"  implicit ALS           ndcg@10 {r['ndcg']:.4f} fit {t:.3f} s", flush=True)
    except ImportError:
        print("  implicit is not installed: pip install -e .[bench]")
    # popularity baseline for scale
    pop = np.bincount(np.asarray(R.data.cols), minlength=R.data.shape[1]).astype(np.float32)
    f = jmf.Factors(np.zeros((R.data.shape[0], 1), np.float32), np.zeros((1, R.data.shape[1]), np.float32),
                    col_bias=pop)
    r = jmf.metrics.ranking_metrics(f, test, k=10, train=R.data, threshold=cf.RELEVANT)
    rows.append(dict(solver="popularity", ndcg_at_10=r["ndcg"], precision_at_10=r["precision"],
                     recall_at_10=r["recall"], fit_seconds=0.0, compile_seconds=0.0))
    return dict(data=name, rows=rows)


# -- scale ---------------------------------------------------------------------------------------


def _copy_bandwidth():
    a = np.ones(1 << 26, np.float32)  # 256 MB
    b = np.empty_like(a)
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        ts.append(time.perf_counter() - t)
    return 2 * a.nbytes / min(ts)  # read + write


def _matmul_flops():
    import jax
    import jax.numpy as jnp

    x = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        f(x).block_until_ready()
        ts.append(time.perf_counter() - t)
    return 2 * 2048 ** 3 / min(ts)


def scale_child(n_users, n_items, n_ratings, rank, sweeps, epochs):
    """Runs in a subprocess; prints one JSON line."""
    import jax
    import optax

    import jmf
    out = dict(n_users=n_users, n_items=n_items, n_ratings=n_ratings, rank=rank)
    t = time.perf_counter()
    s = jmf.datasets.synthetic_ratings(0, n_users=n_users, n_items=n_items, n_ratings=n_ratings, rank=8)
    data = s.data
    out["generate_seconds"] = time.perf_counter() - t
    out["copy_bandwidth"] = _copy_bandwidth()
    out["matmul_flops"] = _matmul_flops()
    del s
    for label, solver, iters in (
        ("als", jmf.solvers.ratings_als(l2=0.1, count_scaled=True), sweeps),
        ("adam", jmf.solvers.ratings_gradient(optax.adam(0.01), l2=0.1, count_scaled=True, name="adam"), epochs),
    ):
        # One compiled chunk per iteration; the callback stamps the wall clock after each.  Every chunk
        # also evaluates the loss once (check_every=1), which is timed separately and subtracted.
        stamps = []
        t0 = time.perf_counter()
        res = jmf.fit(data, solver, rank=rank, key=0, init="normal", max_iter=iters + 1, tol=None, check_every=1,
                      chunk_size=1, progress=False, callback=lambda info: stamps.append(time.perf_counter()))
        jax.block_until_ready(res.factors)
        loss_fn = jax.jit(solver.loss.value)
        jax.block_until_ready(loss_fn(res.factors, data))
        lt = []
        for _ in range(3):
            t = time.perf_counter()
            jax.block_until_ready(loss_fn(res.factors, data))
            lt.append(time.perf_counter() - t)
        per = np.diff(np.asarray(stamps))
        out[f"{label}_loss_seconds"] = min(lt)
        out[f"{label}_seconds_per_iter"] = max(float(np.median(per)) - min(lt), 1e-9)
        out[f"{label}_iter_seconds_raw"] = per.tolist()
        out[f"{label}_compile_seconds"] = stamps[0] - t0 - float(np.median(per))
        out[f"{label}_final_loss"] = float(res.loss)
        del res
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out), flush=True)


def scale(args):
    if args.quick:
        dims = (13_849, 2_674, 500_000)
    else:
        dims = (138_493, 26_744, args.scale_ratings)
    cmd = [sys.executable, __file__, "--child", *map(str, dims), str(args.rank), str(args.sweeps), str(args.epochs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit("scale child failed")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    r = json.loads(line)
    nnz, k, m, n = r["n_ratings"], r["rank"], r["n_users"], r["n_items"]
    K = k + 1
    # ALS FLOP floor: Gram matrices 2 nnz K^2 per side (one symmetric product each) + solves (m + n) K^3 / 3
    r["als_flops"] = 2 * (2 * nnz * K * K) + (m + n) * K ** 3 / 3
    r["als_floor_seconds"] = r["als_flops"] / r["matmul_flops"]
    # Adam epoch bytes (a floor: every byte touched once): per entry read row, col, value (12 B) and
    # gather the other side's factor row (k 4 B); per parameter Adam reads/writes param, grad, m, v
    # (~7 x 4 B) for (m + n)(k + 1) parameters.
    r["adam_bytes"] = nnz * (12 + k * 4) + (m + n) * K * 7 * 4
    r["adam_floor_seconds"] = r["adam_bytes"] / r["copy_bandwidth"]
    r["als_ratio"] = r["als_seconds_per_iter"] / r["als_floor_seconds"]
    r["adam_ratio"] = r["adam_seconds_per_iter"] / r["adam_floor_seconds"]
    return r


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        a = sys.argv[2:]
        scale_child(int(a[0]), int(a[1]), int(a[2]), int(a[3]), int(a[4]), int(a[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=("explicit", "implicit", "scale", "all"), default="all")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--folds", type=int, default=5, help="k-fold CV for the explicit part (0: skip)")
    ap.add_argument("--scale-ratings", type=int, default=20_000_000)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--sweeps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 1
        args.folds = min(args.folds, 2) if args.folds else 0
    results = {"load_average": os.getloadavg(), "cpus": os.cpu_count()}
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    if args.part in ("explicit", "all"):
        print("== explicit ratings ==", flush=True)
        results["explicit"] = explicit(args)
    if args.part in ("implicit", "all"):
        print("== implicit feedback ==", flush=True)
        results["implicit"] = implicit_part(args)
    if args.part in ("scale", "all"):
        print("== ML-20M scale ==", flush=True)
        results["scale"] = scale(args)
    results["load_average_end"] = os.getloadavg()
    print_tables(results)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1, default=float)


def print_tables(res):
    if "explicit" in res:
        e = res["explicit"]
        print(f"\nExplicit ratings: {e['data']}")
        print("| solver | RMSE | MAE | fit s (median, warm) | compile s |\n|---|---|---|---|---|")
        svd = next((r["fit_seconds"] for r in e["rows"] if r["solver"] == "Surprise SVD"), None)
        for r in e["rows"]:
            ratio = f" ({r['fit_seconds'] / svd:.2f}x SVD)" if svd else ""
            print(f"| {r['solver']} | {r['rmse']:.4f} | {r['mae']:.4f} | {r['fit_seconds']:.3f}{ratio} | "
                  f"{r['compile_seconds']:.1f} |")
        for k, v in e.get("folds", {}).items():
            print(f"{len(v)}-fold RMSE {k}: {np.mean(v):.4f} +- {np.std(v):.4f}  ({', '.join(f'{x:.4f}' for x in v)})")
    if "implicit" in res:
        e = res["implicit"]
        print(f"\nImplicit feedback: {e['data']}")
        print("| model | NDCG@10 | P@10 | R@10 | fit s (median, warm) | compile s |\n|---|---|---|---|---|---|")
        for r in e["rows"]:
            print(f"| {r['solver']} | {r['ndcg_at_10']:.4f} | {r['precision_at_10']:.4f} | {r['recall_at_10']:.4f} | "
                  f"{r['fit_seconds']:.3f} | {r['compile_seconds']:.1f} |")
    if "scale" in res:
        r = res["scale"]
        print(f"\nScale: {r['n_users']} x {r['n_items']}, {r['n_ratings']} ratings, rank {r['rank']}")
        print(f"copy bandwidth {r['copy_bandwidth'] / 1e9:.1f} GB/s, "
              f"float32 matmul {r['matmul_flops'] / 1e9:.0f} GFLOP/s")
        print("| step | seconds | floor s | ratio | compile s |\n|---|---|---|---|---|")
        print(f"| ALS sweep (ratings_als, CG) | {r['als_seconds_per_iter']:.2f} | {r['als_floor_seconds']:.2f} "
              f"({r['als_flops'] / 1e9:.0f} GFLOP) | {r['als_ratio']:.1f}x | {r['als_compile_seconds']:.1f} |")
        print(f"| Adam epoch (full batch, ratings_gradient) | {r['adam_seconds_per_iter']:.2f} | "
              f"{r['adam_floor_seconds']:.2f} ({r['adam_bytes'] / 1e9:.1f} GB) | {r['adam_ratio']:.1f}x | "
              f"{r['adam_compile_seconds']:.1f} |")
        print(f"peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB (data generation {r['generate_seconds']:.1f} s)")


if __name__ == "__main__":
    main()
