"""What a recommender user gets with the defaults: whole processes, cold and warm, side by side with Surprise.

    python benchmarks/cf_defaults.py            # everything (about 10 minutes on 2 cores)
    python benchmarks/cf_defaults.py --quick    # a quarter of the ratings, fewer repeats
    python benchmarks/cf_defaults.py --part cli|api|folds|search|loop|compile|synthetic

Parts
-----
cli
    ``jmf fit ratings.csv --holdout 0.2 --json`` (no other option) as a fresh
    process: cold (``JMF_CACHE_DIR`` = an empty folder) and warm (the same
    folder again), against a Surprise script doing the same job on the SAME
    split (read the files, ``SVD()`` / ``BaselineOnly()`` with defaults, fit,
    evaluate).  Wall time of each whole process (median of ``--repeats``
    warm runs), held-out RMSE.
api
    The same split through the Python defaults: ``jmf.cf.fit_ratings(train)``
    and ``jmf.sklearn.RatingsRegressor()``.
folds
    5-fold CV (seeded folds over all ratings): the default model
    (``jmf.cf.fit_ratings``) and Surprise ``SVD()`` on the same folds.
search
    ``jmf.model_selection.grid_search``: 5 folds x 4 ranks x 6 penalties
    (120 fits of ``ratings_als``) in one call, against one warm fit of the
    same solver and against Surprise's ``GridSearchCV`` over the same grid
    (``SVD``: n_factors x reg_all, 5 folds).
loop
    A researcher's loop in a fresh process with an empty cache: ``ratings_als``
    (rank 32, 10 sweeps) at 6 penalties, then at 6 sweep counts (5 ... 30),
    one ``jmf.fit`` after another,
    held-out RMSE of each: programs compiled, compile seconds, whole
    process.  Run it with ``PYTHONPATH`` set to another tree to compare.
compile
    Cold compile time and number of programs per CF model, each in a fresh
    process with an empty cache: the default model, ratings_als, implicit_als,
    full-batch Adam on ratings.
synthetic
    Power-law synthetic ratings with known truth
    (``jmf.datasets.synthetic_ratings``): the defaults were not chosen on
    them.  Default model vs Surprise SVD, RMSE on a held-out 20 %.

Nothing here is tuned on the reported test data: the default model chooses
its rank on a validation holdout of the training part.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ML_SMALL = os.path.join(ROOT, "..", "shared", "data", "ml-latest-small", "ratings.csv")
JMF = [sys.executable, "-m", "jmf.cli"]

SURPRISE_SCRIPT = r"""
import sys, time, json
t0 = time.perf_counter()
import numpy as np, pandas as pd, surprise
train = pd.read_csv(sys.argv[1]); test = pd.read_csv(sys.argv[2])
lo, hi = float(train.rating.min()), float(train.rating.max())
ts = surprise.Dataset.load_from_df(train[["userId", "movieId", "rating"]],
                                   surprise.Reader(rating_scale=(lo, hi))).build_full_trainset()
algo = {"SVD": lambda: surprise.SVD(), "BaselineOnly": lambda: surprise.BaselineOnly(verbose=False)}[sys.argv[3]]()
algo.fit(ts)
est = np.array([algo.predict(u, i).est for u, i in zip(test.userId, test.movieId)])
rmse = float(np.sqrt(np.mean((est - test.rating.to_numpy()) ** 2)))
print(json.dumps({"test_rmse": rmse, "seconds": time.perf_counter() - t0}))
"""


def _run(cmd, env=None):
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=ROOT)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout[out.stdout.index("{"):]), wall


def _ratings_file(quick, tmp):
    import pandas as pd

    if os.path.exists(ML_SMALL):
        df = pd.read_csv(ML_SMALL)
        name = "ml-latest-small"
    else:
        import jmf

        s = jmf.datasets.synthetic_ratings(0, n_users=610, n_items=9000, n_ratings=100_000).data
        df = pd.DataFrame({"userId": np.asarray(s.rows), "movieId": np.asarray(s.cols),
                           "rating": np.round(np.asarray(s.vals) * 2) / 2, "timestamp": 0})
        name = "synthetic (ml-latest-small absent)"
    if quick:
        df = df.iloc[: len(df) // 4]
        name += " (first quarter, --quick)"
    path = os.path.join(tmp, "ratings.csv")
    df.to_csv(path, index=False)
    return path, df, name


def _cli_split(path, tmp):
    """The train/test split ``jmf fit FILE --holdout 0.2`` makes, written as two files with raw ids."""
    import pandas as pd

    import jmf
    import jmf.experiments as E

    data, info = jmf.io.load_matrix(path)
    prep = E.make_dataset({"name": os.path.basename(path), "data": data, "holdout": 0.2})
    users, items = np.asarray(info["user_ids"]), np.asarray(info["item_ids"])
    tr = prep.train
    r, c, v = prep.test
    files = []
    for name, (rr, cc, vv) in (("train", (np.asarray(tr.rows), np.asarray(tr.cols), np.asarray(tr.vals))),
                               ("test", (np.asarray(r), np.asarray(c), np.asarray(v)))):
        f = os.path.join(tmp, f"{name}.csv")
        pd.DataFrame({"userId": users[rr], "movieId": items[cc], "rating": vv}).to_csv(f, index=False)
        files.append(f)
    return files, prep


def part_cli(args, path, tmp):
    (train_csv, test_csv), _ = _cli_split(path, tmp)
    rows = []
    cache = tempfile.mkdtemp(prefix="jmf-cold-cache-")
    cmd = JMF + ["fit", path, "--holdout", "0.2", "--json"]
    cold, cold_wall = _run(cmd, {"JMF_CACHE_DIR": cache})
    warm = [_run(cmd, {"JMF_CACHE_DIR": cache}) for _ in range(args.repeats)]
    warm_wall = statistics.median(w for _, w in warm)
    rows.append(dict(what="jmf fit ratings.csv --holdout 0.2", rmse=cold["test_rmse"], cold=cold_wall,
                     warm=warm_wall, note=f"{cold['choice']} chosen (width {cold['rank']}); "
                                          f"{cold['compiled_programs']} programs compiled cold in "
                                          f"{cold['compile_seconds']:.1f} s"))
    script = os.path.join(tmp, "surprise_job.py")
    with open(script, "w") as fh:
        fh.write(SURPRISE_SCRIPT)
    for algo in ("SVD", "BaselineOnly"):
        runs = [_run([sys.executable, script, train_csv, test_csv, algo]) for _ in range(args.repeats)]
        wall = statistics.median(w for _, w in runs)
        rows.append(dict(what=f"Surprise {algo}() (same split)", rmse=runs[0][0]["test_rmse"], cold=wall, warm=wall,
                         note="no compilation"))
    svd = rows[1]
    for r in rows:
        r["cold_vs_svd"] = r["cold"] / svd["cold"]
        r["warm_vs_svd"] = r["warm"] / svd["warm"]
    _table("cli: whole process (import, read, fit, evaluate), seconds", rows,
           ["what", "rmse", "cold", "warm", "cold_vs_svd", "warm_vs_svd", "note"])
    return rows


def part_api(args, path, tmp):
    import jax

    import jmf

    _, prep = _cli_split(path, tmp)
    train = prep.train
    r, c, v = (np.asarray(x) for x in prep.test)
    rows = []
    t = time.perf_counter()
    model = jmf.cf.fit_ratings(train)
    jax.block_until_ready(model.factors)
    p = np.asarray(model.predict(r, c))
    rows.append(dict(what="jmf.cf.fit_ratings(train)", rmse=float(np.sqrt(np.mean((p - v) ** 2))),
                     seconds=time.perf_counter() - t, note=f"rank {model.rank}"))
    try:
        import scipy.sparse as sp

        from jmf.sklearn import RatingsRegressor

        X_train = np.stack([np.asarray(train.rows), np.asarray(train.cols)], axis=1)
        t = time.perf_counter()
        reg = RatingsRegressor().fit(X_train, np.asarray(train.vals))
        p = reg.predict(np.stack([r, c], axis=1))
        rows.append(dict(what="jmf.sklearn.RatingsRegressor()", rmse=float(np.sqrt(np.mean((p - v) ** 2))),
                         seconds=time.perf_counter() - t, note=str(getattr(reg, "best_params_", ""))))
        del sp
    except ImportError as exc:
        print(f"  RatingsRegressor skipped: {exc}")
    _table("api: the same split through the Python defaults (seconds in this process, compilation included "
           "unless cached)", rows, ["what", "rmse", "seconds", "note"])
    return rows


def part_folds(args, path, tmp):
    import pandas as pd

    import jmf

    df = pd.read_csv(path)
    perm = np.random.default_rng(0).permutation(len(df))
    folds = np.array_split(perm, 5)
    out = {"jmf default (fit_ratings)": [], "Surprise SVD()": []}
    try:
        import surprise
    except ImportError:
        surprise = None
    for f in folds:
        mask = np.zeros(len(df), bool)
        mask[f] = True
        tr, te = df[~mask], df[mask]
        R = jmf.datasets.index_ratings(tr.rename(columns={"userId": "user", "movieId": "item"}))
        rr, cc, vv = R.encode(te.rename(columns={"userId": "user", "movieId": "item"}))
        model = jmf.cf.fit_ratings(R.data)
        p = np.asarray(model.predict(rr, cc))
        out["jmf default (fit_ratings)"].append(float(np.sqrt(np.mean((p - vv) ** 2))))
        if surprise is not None:
            lo, hi = float(tr.rating.min()), float(tr.rating.max())
            ts = surprise.Dataset.load_from_df(tr[["userId", "movieId", "rating"]],
                                               surprise.Reader(rating_scale=(lo, hi))).build_full_trainset()
            algo = surprise.SVD().fit(ts)
            est = np.array([algo.predict(u, i).est for u, i in zip(te.userId, te.movieId)])
            out["Surprise SVD()"].append(float(np.sqrt(np.mean((est - te.rating.to_numpy()) ** 2))))
        print("  fold: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in out.items() if v), flush=True)
    rows = [dict(what=k, mean_rmse=float(np.mean(v)), std=float(np.std(v)), folds=len(v)) for k, v in out.items() if v]
    _table("folds: 5-fold CV RMSE (same folds)", rows, ["what", "mean_rmse", "std", "folds"])
    return rows


def part_search(args, path, tmp):
    import jax

    import jmf

    data, _ = jmf.io.load_matrix(path)
    ranks = [8, 16, 32, 64]
    l2 = np.array([0.03, 0.05, 0.08, 0.12, 0.2, 0.3])
    solver = jmf.solvers.ratings_als(l2=l2, count_scaled=True)
    one = jmf.solvers.ratings_als(l2=0.1, count_scaled=True)
    kw = dict(key=0, max_iter=10, tol=None, progress=False)
    jax.block_until_ready(jmf.fit(data, one, rank=64, **kw).factors)  # compile
    t = time.perf_counter()
    jax.block_until_ready(jmf.fit(data, one, rank=64, **kw).factors)
    single = time.perf_counter() - t
    jmf.model_selection.grid_search(data, solver, ranks, n_splits=5, key=0, max_iter=10, refit=False)  # compile
    t = time.perf_counter()
    res = jmf.model_selection.grid_search(data, solver, ranks, n_splits=5, key=0, max_iter=10, refit=False)
    search = time.perf_counter() - t
    padded_kw = dict(n_splits=5, key=0, max_iter=10, refit=False, pad_ranks=True)
    jmf.model_selection.grid_search(data, solver, ranks, **padded_kw)  # compile
    t = time.perf_counter()
    jmf.model_selection.grid_search(data, solver, ranks, **padded_kw)
    padded = time.perf_counter() - t
    rows = [dict(what="jmf one ratings_als fit (rank 64, 10 sweeps, warm)", seconds=single, ratio=1.0),
            dict(what="jmf grid_search 5 folds x 4 ranks x 6 l2 = 120 fits (warm)", seconds=search,
                 ratio=search / single, note=f"best {res.best} cv rmse {res.best_score:.4f}; "
                                             f"{'padded' if len(res.cv) == 1 else 'a call per rank'}"),
            dict(what="the same, pad_ranks=True: every member at rank 64, one program", seconds=padded,
                 ratio=padded / single)]
    try:
        import pandas as pd
        import surprise
        from surprise.model_selection import GridSearchCV

        df = pd.read_csv(path)
        lo, hi = float(df.rating.min()), float(df.rating.max())
        sd = surprise.Dataset.load_from_df(df[["userId", "movieId", "rating"]], surprise.Reader(rating_scale=(lo, hi)))
        grid = {"n_factors": ranks, "reg_all": [0.005, 0.01, 0.02, 0.04, 0.08, 0.16]}
        gs = GridSearchCV(surprise.SVD, grid, measures=["rmse"], cv=5, n_jobs=1)
        t = time.perf_counter()
        gs.fit(sd)
        gsec = time.perf_counter() - t
        rows.append(dict(what="Surprise GridSearchCV(SVD, 4 x 6, cv=5) = 120 fits", seconds=gsec, ratio=gsec / single,
                         note=f"best {gs.best_params['rmse']} cv rmse {gs.best_score['rmse']:.4f}; "
                              f"{gsec / search:.1f}x jmf's search"))
    except ImportError:
        print("  Surprise not installed: GridSearchCV skipped")
    _table("search: 120 fits in one call", rows, ["what", "seconds", "ratio", "note"])
    return rows


COMPILE_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import jax, numpy as np, jmf
from jmf._src.compilation import compilations
data, _ = jmf.io.load_matrix(sys.argv[1])
what = sys.argv[2]
with compilations() as log:
    t = time.perf_counter()
    if what == "default":
        out = jmf.cf.fit_ratings(data).factors
    elif what == "ratings_als":
        out = jmf.fit(data, jmf.solvers.ratings_als(count_scaled=True), rank=32, key=0, max_iter=10, tol=None,
                      progress=False).factors
    elif what == "implicit_als":
        out = jmf.fit(data, jmf.solvers.implicit_als(), rank=32, key=0, max_iter=10, tol=None, progress=False).factors
    else:
        import optax
        out = jmf.fit(data, jmf.solvers.ratings_gradient(optax.adam(0.01)), rank=32, key=0, max_iter=200, tol=None,
                      progress=False).factors
    jax.block_until_ready(out)
    fit_s = time.perf_counter() - t
print(json.dumps({"programs": log.programs, "cache_hits": log.cache_hits, "compile_seconds": log.seconds,
                  "fit_seconds": fit_s, "process_seconds": time.perf_counter() - t0}))
"""


LOOP_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import jax, numpy as np, jmf
from jmf._src.compilation import compilations
data, _ = jmf.io.load_matrix(sys.argv[1])
train, test = jmf.model_selection.train_test_split(data, 0.2, key=0)
r, c, v = (np.asarray(x) for x in (test.rows, test.cols, test.vals))
rmse = {}
# "l2": 6 penalties at 10 sweeps; "max_iter": 5, 10, ..., 30 sweeps at l2 = 0.12
settings = ([(l2, 10) for l2 in (0.05, 0.08, 0.12, 0.15, 0.2, 0.3)] if sys.argv[2] == "l2"
            else [(0.12, it) for it in (5, 10, 15, 20, 25, 30)])
with compilations() as log:
    for l2, sweeps in settings:
        res = jmf.fit(train, jmf.solvers.ratings_als(l2=l2), rank=32, key=0, max_iter=sweeps, tol=None,
                      progress=False)
        p = np.clip(np.asarray(res.factors.predict(r, c)), 0.5, 5.0)
        rmse[l2 if sys.argv[2] == "l2" else sweeps] = float(np.sqrt(np.mean((p - v) ** 2)))
print(json.dumps({"programs": log.programs, "compile_seconds": log.seconds, "rmse": rmse,
                  "process_seconds": time.perf_counter() - t0}))
"""


def part_loop(args, path, tmp):
    script = os.path.join(tmp, "loop_child.py")
    with open(script, "w") as fh:
        fh.write(LOOP_CHILD)
    import jmf

    rows = []
    for loop in ("l2", "max_iter"):
        cache = tempfile.mkdtemp(prefix="jmf-loop-cache-")
        for run in ("cold", "warm"):
            out, wall = _run([sys.executable, script, path, loop], {"JMF_CACHE_DIR": cache})
            best = min(out["rmse"], key=out["rmse"].get)
            rows.append(dict(loop=loop, run=run, jmf=os.path.dirname(jmf.__file__), programs=out["programs"],
                             compile_s=out["compile_seconds"], process_s=wall,
                             note=f"best {loop} {best}: rmse {out['rmse'][best]:.4f}"))
    _table("loop: ratings_als at 6 penalties (l2) or 6 sweep counts (max_iter), one fit after another "
           "(fresh process)", rows, ["loop", "run", "programs", "compile_s", "process_s", "note", "jmf"])
    return rows


def part_compile(args, path, tmp):
    script = os.path.join(tmp, "compile_child.py")
    with open(script, "w") as fh:
        fh.write(COMPILE_CHILD)
    rows = []
    for what in ("default", "ratings_als", "implicit_als", "ratings_gradient_adam"):
        cache = tempfile.mkdtemp(prefix="jmf-cold-cache-")
        cold, _ = _run([sys.executable, script, path, what], {"JMF_CACHE_DIR": cache})
        warm, _ = _run([sys.executable, script, path, what], {"JMF_CACHE_DIR": cache})
        rows.append(dict(model=what, programs=cold["programs"], compile_cold=cold["compile_seconds"],
                         fit_cold=cold["fit_seconds"], fit_warm=warm["fit_seconds"],
                         warm_cache_hits=warm["cache_hits"], process_warm=warm["process_seconds"]))
    _table("compile: per CF model, fresh processes (fit_* include compilation / cache loading)", rows,
           ["model", "programs", "compile_cold", "fit_cold", "fit_warm", "warm_cache_hits", "process_warm"])
    return rows


def part_synthetic(args, path, tmp):
    import jmf

    rows = []
    for seed, (m, n, nnz) in enumerate([(1000, 1500, 60_000), (3000, 800, 80_000)]):
        table = jmf.datasets.synthetic_ratings(seed, n_users=m, n_items=n, n_ratings=nnz).data
        train, test = jmf.model_selection.train_test_split(table, 0.2, key=seed)
        r, c, v = (np.asarray(x) for x in (test.rows, test.cols, test.vals))
        model = jmf.cf.fit_ratings(train)
        p = np.asarray(model.predict(r, c))
        row = dict(data=f"synthetic {m}x{n}, {nnz} ratings (seed {seed})", jmf_default=float(np.sqrt(np.mean(
            (p - v) ** 2))), rank=model.rank)
        try:
            import pandas as pd
            import surprise

            df = pd.DataFrame({"u": np.asarray(train.rows), "i": np.asarray(train.cols), "r": np.asarray(train.vals)})
            lo, hi = float(df.r.min()), float(df.r.max())
            ts = surprise.Dataset.load_from_df(df, surprise.Reader(rating_scale=(lo, hi))).build_full_trainset()
            algo = surprise.SVD().fit(ts)
            est = np.array([algo.predict(int(a), int(b)).est for a, b in zip(r, c)])
            row["surprise_svd"] = float(np.sqrt(np.mean((est - v) ** 2)))
        except ImportError:
            pass
        rows.append(row)
    _table("synthetic: data the defaults never saw (held-out RMSE)", rows,
           ["data", "jmf_default", "rank", "surprise_svd"])
    return rows


def _table(title, rows, cols):
    print(f"\n{title}")
    width = {c: max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in cols}
    print("  " + "  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  " + "  ".join(_fmt(r.get(c, "")).ljust(width[c]) for c in cols), flush=True)


def _fmt(x):
    if isinstance(x, float):
        return f"{x:.4f}" if abs(x) < 10 else f"{x:.1f}"
    return str(x)


PARTS = {"cli": part_cli, "api": part_api, "folds": part_folds, "search": part_search, "compile": part_compile,
         "loop": part_loop, "synthetic": part_synthetic}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=tuple(PARTS) + ("all",), default="all")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 1
    tmp = tempfile.mkdtemp(prefix="jmf-cf-defaults-")
    path, _, name = _ratings_file(args.quick, tmp)
    print(f"data: {name}; {os.cpu_count()} CPUs")
    results = {}
    for part, fn in PARTS.items():
        if args.part in (part, "all"):
            results[part] = fn(args, path, tmp)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
