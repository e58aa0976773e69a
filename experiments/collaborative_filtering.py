"""Collaborative filtering: compare jmf's rating models (and implicit ALS) on a ratings data set.

Usage
-----
    python experiments/collaborative_filtering.py                      # built-in synthetic ratings
    python experiments/collaborative_filtering.py --data PATH/ml-latest-small   # a MovieLens folder or ratings file
    python experiments/collaborative_filtering.py --train u1.base --test u1.test --json out.json
    python experiments/collaborative_filtering.py --cv --data PATH     # the hyperparameter search behind DEFAULTS
    python experiments/collaborative_filtering.py --quick              # small and fast

Every model is fitted with its default hyperparameters (``DEFAULTS``; those
of als-wr and implicit-als chosen by 5-fold cross-validation on the training
part of ml-latest-small, see ``--cv`` and BENCHMARKS.md), fitted once and timed (compile time, or the time
to load the programs from the persistent cache, reported separately; ``--refit`` times a second fit on the same
shapes instead), and scored on
the test split: RMSE and MAE (predictions clipped to the rating scale;
unknown users/items fall back to the biases), and precision / recall / NDCG
at 10 with "relevant" = held-out rating >= 4 and the user's training items
excluded.  Results are printed as a table and written to ``--out``
(``cf_results.md`` and ``cf_results.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import jax  # noqa: E402

import jmf  # noqa: E402
import jmf.experiments as E  # noqa: E402
from jmf._src.compilation import compilations  # noqa: E402

# Each model is a solver of the registry (`jmf solvers`) with fixed hyperparameters; the tuned ones
# (l2, learning_rate, alpha, batch_size) come from DEFAULTS and CV_GRID.
MODELS = {
    "als-wr": ("ratings_als", dict(count_scaled=True)),  # ALS-WR with CG solves
    "als-core": ("als", dict(biases=True, count_scaled=True)),  # the same model, exact solves
    "adam": ("ratings_gradient", dict(optimizer="adam", count_scaled=True)),
    "minibatch-adam": ("adam", dict(count_scaled=True, biases=True)),
    "implicit-als": ("implicit_als", {}),
}
# Keys of DEFAULTS / CV_GRID entries that set the fit, not the solver.
FIT_KEYS = ("rank", "sweeps", "epochs", "checkpoints")
# als-wr and implicit-als: chosen by 5-fold CV on the training part (80%) of ml-latest-small (see --cv and
# BENCHMARKS.md); the others are hand-set reference points (not cross-validated).
DEFAULTS = {
    "als-wr": dict(rank=32, l2=0.15, sweeps=10),
    "als-core": dict(rank=32, l2=0.1, sweeps=10),
    "adam": dict(rank=32, l2=0.1, learning_rate=0.01, epochs=300),
    "minibatch-adam": dict(rank=32, l2=0.1, learning_rate=0.002, epochs=20, batch_size=4096),
    "implicit-als": dict(rank=64, l2=30.0, alpha=0.5, sweeps=15),
}
EXPLICIT = ("als-wr", "als-core", "adam", "minibatch-adam")
RELEVANT = 4.0  # held-out ratings >= this count as relevant for the ranking metrics


def make_solver(name: str, p: dict):
    """``(solver, max_iter)`` for a model name and its settings (registry solver + hyperparameters)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; models: {', '.join(MODELS)}")
    solver_name, fixed = MODELS[name]
    params = {**fixed, **{k: v for k, v in p.items() if k not in FIT_KEYS}}
    return E.make_solver(solver_name, **params), p.get("sweeps", p.get("epochs"))


def fit_model(name: str, p: dict, train, seed: int = 0, refit: bool = False):
    """Fit; returns ``(factors, fit_seconds, compile_seconds)``.

    ``compile_seconds`` is what JAX reported for tracing, lowering and compiling (or loading from the
    persistent cache) during the fit, and ``fit_seconds`` the rest of its time.  ``refit`` times a second
    fit on the same shapes instead (nothing left to compile), at the cost of fitting twice.
    """
    solver, iters = make_solver(name, p)
    init = "normal"

    def run(key):
        t = time.perf_counter()
        with compilations() as log:
            res = jmf.fit(train, solver, rank=p["rank"], key=key, init=init, max_iter=iters, tol=None,
                          check_every=iters, progress=False)
            jax.block_until_ready(res.factors)
        return res, time.perf_counter() - t, log.seconds

    if not refit:
        res, total, comp = run(jax.random.key(seed))
        return res.factors, max(total - comp, 0.0), comp
    _, first, _ = run(jax.random.key(seed + 1000))
    res, warm, _ = run(jax.random.key(seed))
    return res.factors, warm, max(first - warm, 0.0)


def evaluate(name, factors, train, test_triplets, test_sparse, scale):
    row = {}
    if name in EXPLICIT:
        m = jmf.metrics.rating_metrics(factors, test_triplets, clip=scale)
        row.update(rmse=m["rmse"], mae=m["mae"])
    else:
        row.update(rmse=float("nan"), mae=float("nan"))
    if test_sparse is not None:
        try:
            r = jmf.metrics.ranking_metrics(factors, test_sparse, k=10, train=train, threshold=RELEVANT)
            row.update(precision_at_10=r["precision"], recall_at_10=r["recall"], ndcg_at_10=r["ndcg"])
        except ValueError:
            pass
    return row


# -- data ----------------------------------------------------------------------------------


def load_split(args):
    """``(ratings index, train Sparse, test triplets, test Sparse, scale, description)``."""
    if args.train or args.test:
        if not (args.train and args.test):
            raise SystemExit("--train and --test go together")
        tr = jmf.datasets.read_ratings(args.train)
        te = jmf.datasets.read_ratings(args.test)
        desc = f"{os.path.basename(args.train)} / {os.path.basename(args.test)}"
    elif args.data:
        df = _read_folder(args.data)
        tr, te = split_frame(df, 0.2, seed=0)
        desc = f"{args.data} (random 80/20 split, seed 0)"
    else:
        n = (400, 300, 20_000) if args.quick else (3000, 1500, 200_000)
        s = jmf.datasets.synthetic_ratings(0, n_users=n[0], n_items=n[1], n_ratings=n[2], rank=8)
        import pandas as pd

        df = pd.DataFrame({"user": np.asarray(s.data.rows), "item": np.asarray(s.data.cols),
                           "rating": np.asarray(s.data.vals)})
        tr, te = split_frame(df, 0.2, seed=0)
        desc = f"synthetic ratings ({n[0]} users x {n[1]} items, {n[2]} ratings, rank 8)"
    R = jmf.datasets.index_ratings(tr)
    test_trip = R.encode(te)
    test_sparse = R.to_sparse(te) if ((test_trip[0] >= 0) & (test_trip[1] >= 0)).any() else None
    lo, hi = float(min(tr["rating"].min(), te["rating"].min())), float(max(tr["rating"].max(), te["rating"].max()))
    return R, R.data, test_trip, test_sparse, (lo, hi), desc


def _read_folder(path):
    if os.path.isfile(path):
        return jmf.datasets.read_ratings(path)
    for variant in ("latest-small", "100k", "1m", "10m", "20m", "25m"):
        try:
            return jmf.datasets.movielens(variant, path=path, as_frame=True)
        except FileNotFoundError:
            continue
    raise SystemExit(f"no MovieLens ratings file found in {path}")


def split_frame(df, test_fraction=0.2, seed=0):
    """Shuffle rows with ``numpy.random.default_rng(seed).permutation`` and hold out the first fraction."""
    perm = np.random.default_rng(seed).permutation(len(df))
    n_test = int(round(test_fraction * len(df)))
    return df.iloc[perm[n_test:]].reset_index(drop=True), df.iloc[perm[:n_test]].reset_index(drop=True)


# -- cross-validation search -----------------------------------------------------------------

# Each entry is one fit per fold; "checkpoints" are the sweep / epoch counts scored from that same fit.
CV_GRID = {
    "als-wr": [dict(rank=r, l2=lam, sweeps=10, checkpoints=(4, 6, 8, 10))
               for r in (16, 32) for lam in (0.1, 0.15, 0.2)],
    "adam": [dict(rank=32, l2=lam, learning_rate=lr, epochs=400, checkpoints=(100, 200, 300, 400))
             for lam in (0.05, 0.1) for lr in (0.005, 0.01, 0.02)],
    "minibatch-adam": [dict(rank=32, l2=lam, learning_rate=lr, epochs=30, batch_size=4096, checkpoints=(10, 20, 30))
                       for lam in (0.05, 0.1) for lr in (0.001, 0.002, 0.005)],
    # ranking model: scored by NDCG@10 (higher is better); rank and sweeps fixed by the benchmark (64, 15)
    "implicit-als": [dict(rank=64, l2=lam, alpha=a, sweeps=15, checkpoints=(15,)) for a in (0.5, 1.0)
                     for lam in (10.0, 20.0, 30.0, 50.0)],
}


def cross_validate(args):
    """k-fold CV (``--folds``, default 5) on the training part of the benchmark split of ml-latest-small.

    The test part of the split is never used.

    Rating models are scored by RMSE, implicit ALS by minus NDCG@10 (relevant:
    held-out rating >= 4, the fold's training items excluded); lower is better.

    The training part is indexed once (every fold has the same shape, so each
    configuration compiles once); its entries are cut into 3 equal folds
    (seeded); users or items absent from a fold's training entries fall
    back to the biases, as they would in use.
    """
    path = args.data or os.path.join(HERE, "..", "..", "shared", "data", "ml-latest-small")
    df = _read_folder(path)
    train_df, _ = split_frame(df, 0.2, seed=0)  # the benchmark's training part only
    R = jmf.datasets.index_ratings(train_df)
    data = R.data
    n_f = args.folds
    size = data.nnz // n_f
    perm = np.random.default_rng(1).permutation(data.nnz)
    lo, hi = float(df["rating"].min()), float(df["rating"].max())
    models = args.models or list(CV_GRID)
    rows = []
    for name in models:
        grid = CV_GRID[name][: (2 if args.quick else None)]
        if args.grid_from:
            grid = grid[args.grid_from:]
        for p in grid:
            checkpoints = p["checkpoints"]
            scores = {c: [] for c in checkpoints}
            for i in range(n_f):
                mask = np.zeros(data.nnz, bool)
                mask[perm[i * size:(i + 1) * size]] = True
                mask[perm[n_f * size:]] = True  # the few leftover entries are never trained on
                fold_train = jmf.model_selection.subset(data, ~mask)
                held_sparse = jmf.model_selection.subset(data, perm[i * size:(i + 1) * size])
                held = (held_sparse.rows, held_sparse.cols, held_sparse.vals)
                solver, iters = make_solver(name, p)
                got = {}

                def cb(info, got=got, fold_train=fold_train, held_sparse=held_sparse):
                    if info.iteration in checkpoints:
                        if name in EXPLICIT:
                            got[info.iteration] = jmf.metrics.rating_metrics(info.factors, held, clip=(lo, hi))["rmse"]
                        else:
                            got[info.iteration] = -jmf.metrics.ranking_metrics(
                                info.factors, held_sparse, k=10, train=fold_train, threshold=RELEVANT)["ndcg"]

                step = int(np.gcd.reduce(np.asarray(checkpoints)))
                jmf.fit(fold_train, solver, rank=p["rank"], key=jax.random.key(i), init="normal", max_iter=iters,
                        tol=None, check_every=step, chunk_size=step, callback=cb, progress=False)
                for c in checkpoints:
                    scores[c].append(got[c])
            for c in checkpoints:
                q = {k: v for k, v in p.items() if k != "checkpoints"}
                q["sweeps" if "sweeps" in q else "epochs"] = c
                rows.append(dict(model=name, params=q, cv_rmse=float(np.mean(scores[c])),
                                 cv_std=float(np.std(scores[c]))))
                what = "CV RMSE" if name in EXPLICIT else "CV -NDCG@10"
                print(f"{name:15s} {json.dumps(q):75s} {what} {rows[-1]['cv_rmse']:.4f} +- {rows[-1]['cv_std']:.4f}",
                      flush=True)
    print("\nbest per model:")
    for name in models:
        best = min((r for r in rows if r["model"] == name), key=lambda r: r["cv_rmse"])
        print(f"  {name:15s} {json.dumps(best['params'])}  CV score {best['cv_rmse']:.4f}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "cf_cv.json"), "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


# -- main --------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="a MovieLens folder (e.g. an extracted ml-latest-small.zip) or a ratings file "
                    "(default: built-in synthetic ratings; jmf.datasets.movielens downloads MovieLens)")
    ap.add_argument("--train", help="training ratings file (any supported format)")
    ap.add_argument("--test", help="test ratings file")
    ap.add_argument("--json", help="write one JSON row per solver here")
    ap.add_argument("--out", help="folder for cf_results.md / cf_results.json", default=None)
    ap.add_argument("--models", nargs="*", help=f"subset of {list(DEFAULTS)}")
    ap.add_argument("--quick", action="store_true", help="small data and short fits")
    ap.add_argument("--refit", action="store_true", help="time a second fit of every model on the same shapes "
                    "(nothing left to compile) instead of subtracting the compile time from the first")
    ap.add_argument("--cv", action="store_true", help="run the cross-validation search behind DEFAULTS on --data "
                    "(the ml-latest-small folder)")
    ap.add_argument("--grid-from", type=int, default=0, help="--cv: start at this grid position (resume)")
    ap.add_argument("--folds", type=int, default=5, help="--cv: number of folds")
    args = ap.parse_args(argv)
    if args.cv:
        cross_validate(args)
        return
    R, train, test_trip, test_sparse, scale, desc = load_split(args)
    print(f"data: {desc}; train {train.shape[0]} users x {train.shape[1]} items, {train.nnz} ratings; "
          f"test {len(test_trip[2])} ratings", flush=True)
    models = args.models or list(DEFAULTS)
    rows = []
    for name in models:
        p = dict(DEFAULTS[name])
        if args.quick:
            for key in ("sweeps", "epochs"):
                if key in p:
                    p[key] = max(2, p[key] // 3)
        factors, warm, comp = fit_model(name, p, train, refit=args.refit)
        row = dict(solver=name, **evaluate(name, factors, train, test_trip, test_sparse, scale),
                   fit_seconds=warm, compile_seconds=comp, params=p)
        rows.append(row)
        print(f"  {name:15s} rmse {row['rmse']:.4f}  ndcg@10 {row.get('ndcg_at_10', float('nan')):.4f}  "
              f"fit {warm:.3f} s  compile {comp:.1f} s", flush=True)
    table = format_table(rows, desc)
    print("\n" + table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([{k: v for k, v in r.items()} for r in rows], fh, indent=1)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "cf_results.md"), "w") as fh:
            fh.write(table + "\n")
        with open(os.path.join(args.out, "cf_results.json"), "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


def format_table(rows, desc):
    head = ("| solver | RMSE | MAE | P@10 | R@10 | NDCG@10 | fit s (excl. compile) | compile s |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [f"Data: {desc}", "", head]
    for r in rows:
        lines.append("| {} | {:.4f} | {:.4f} | {:.4f} | {:.4f} | {:.4f} | {:.3f} | {:.1f} |".format(
            r["solver"], r["rmse"], r["mae"], r.get("precision_at_10", float("nan")),
            r.get("recall_at_10", float("nan")), r.get("ndcg_at_10", float("nan")), r["fit_seconds"],
            r["compile_seconds"]))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
