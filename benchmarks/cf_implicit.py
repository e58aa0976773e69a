"""Implicit-feedback top-N benchmark: jmf's iALS and BPR against the ``implicit`` library, side by side.

    python benchmarks/cf_implicit.py            # full run (ml-latest-small when present)
    python benchmarks/cf_implicit.py --quick    # small grids, few sweeps: checks that everything runs
    python benchmarks/cf_implicit.py --factors 64 --out results.json
    python benchmarks/cf_implicit.py --seed 1               # another test split
    python benchmarks/cf_implicit.py --data synthetic       # data the grids were not chosen on

Protocol
--------
* Data: ml-latest-small ratings (``../shared/data/ml-latest-small``; synthetic
  power-law ratings from :func:`jmf.datasets.synthetic_ratings` when absent).
  Ratings >= 4 are the positives (an interaction with value 1); the rest is dropped.
* Split: a seeded per-user holdout -- every user with at least 5 positives
  has 20% of them (at least one) drawn into the test set (``numpy`` generator
  seeded by ``--seed``).  The same procedure, with another seed, carves a
  *validation* set out of the training part: every hyperparameter is chosen
  on it, never on the test set; the chosen setting is then refitted on the
  whole training part and scored once on the test set.
* Metrics: NDCG@10 and MAP@10 (and AUC) from :func:`jmf.metrics.ranking_metrics`,
  training items excluded, every held-out positive relevant; the same
  function scores every model.
* Models, all at the same number of factors (``--factors``, default 64):
  ``implicit.cpu.als.AlternatingLeastSquares`` with its defaults, and tuned
  on the validation set over regularization x alpha; jmf ``implicit_als``
  (iALS with the unobserved weight and frequency-scaled penalty of Rendle
  et al. 2021) tuned over l2 x unobserved_weight x nu, the whole grid in ONE
  :func:`jmf.fit_many` call per rank; jmf ``bpr`` (Adam); a popularity baseline.
* Times: wall clock of the fit, warm (jmf: a second call with the same
  shapes, compile time reported apart); ``implicit`` with one BLAS thread
  (as it recommends).  The machine may be shared: times are indicative.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

ML_SMALL = os.path.join(ROOT, "..", "shared", "data", "ml-latest-small")


def load_positives(quick: bool, threshold: float = 4.0, data: str = "auto"):
    """``(rows, cols, shape, name)`` of the positive interactions."""
    import jmf

    path = os.path.join(ML_SMALL, "ratings.csv")
    if data != "synthetic" and os.path.exists(path):
        df = jmf.datasets.movielens("latest-small", path=ML_SMALL, as_frame=True)
        df = df[df["rating"] >= threshold]
        R = jmf.datasets.index_ratings(df)
        d = R.data
        return np.asarray(d.rows), np.asarray(d.cols), d.shape, "ml-latest-small (ratings >= 4)"
    out = jmf.datasets.synthetic_ratings(key=0, n_users=600 if not quick else 300, n_items=2000 if not quick else 500,
                                         n_ratings=60_000 if not quick else 15_000)
    d = out.data
    keep = np.asarray(d.vals) >= threshold
    why = "" if data == "synthetic" else "; ml-latest-small not found"
    return (np.asarray(d.rows)[keep], np.asarray(d.cols)[keep], d.shape,
            f"synthetic power-law ratings (ratings >= 4{why})")


def per_user_holdout(rows, cols, fraction: float, seed: int, min_count: int = 5):
    """Boolean mask of held-out entries: ``round(fraction * count)`` (>= 1) per user with >= ``min_count``."""
    rng = np.random.default_rng(seed)
    u = rng.random(rows.size)
    order = np.lexsort((u, rows))
    counts = np.bincount(rows)
    starts = np.cumsum(counts) - counts
    pos = np.empty(rows.size, np.int64)
    pos[order] = np.arange(rows.size) - starts[rows[order]]
    n_out = np.maximum(1, np.round(fraction * counts)).astype(np.int64)
    return (pos < n_out[rows]) & (counts[rows] >= min_count)


def sparse(rows, cols, shape):
    import jmf

    return jmf.Sparse(rows, cols, np.ones(rows.size, np.float32), shape)


def evaluate(factors, test, train, k=10):
    import jmf

    r = jmf.metrics.ranking_metrics(factors, test, k=k, train=train)
    return {"ndcg": r["ndcg"], "map": r["map"], "auc": r["auc"], "precision": r["precision"], "recall": r["recall"]}


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


# -- jmf ---------------------------------------------------------------------------------------


def jmf_ials_search(train, valid, factors, grid, sweeps):
    """Fit the whole grid in one fit_many call; return (best point, table, seconds warm, seconds first)."""
    import jmf

    solver = jmf.solvers.implicit_als(alpha=0.0, **{k: np.asarray(v, float) for k, v in grid.items()})
    kw = dict(rank=factors, key=0, init="normal", max_iter=sweeps, tol=None, progress=False)
    many, first = timed(lambda: jmf.fit_many(train, solver, **kw))
    many, warm = timed(lambda: jmf.fit_many(train, solver, **kw))
    table = []
    P = solver.grid.size
    for p in range(P):
        point = {k: float(v[p]) for k, v in many.params.items()}
        table.append((point, evaluate(many.member(p).factors, valid, train)))
    best = max(table, key=lambda t: t[1]["ndcg"])
    return best[0], table, warm, first


def jmf_ials_fit(train, factors, point, sweeps):
    import jmf

    solver = jmf.solvers.implicit_als(alpha=0.0, **point)
    kw = dict(rank=factors, key=0, init="normal", max_iter=sweeps, tol=None, progress=False)
    res, first = timed(lambda: jmf.fit(train, solver, **kw))
    res, warm = timed(lambda: jmf.fit(train, solver, **kw))
    return res.factors, warm, first


def jmf_bpr_search(train, valid, factors, lr, l2s, epochs):
    """BPR over a grid of l2 in one fit_many call; (best l2, seconds)."""
    import optax

    import jmf

    solver = jmf.solvers.bpr(optax.adam(lr), l2=np.asarray(l2s, float), batch_size=1024)
    many, seconds = timed(lambda: jmf.fit_many(train, solver, rank=factors, key=0, init="normal", max_iter=epochs,
                                               tol=None, progress=False))
    scores = [evaluate(many.member(p).factors, valid, train)["ndcg"] for p in range(len(l2s))]
    return float(np.asarray(many.params["l2"])[int(np.argmax(scores))]), seconds


def jmf_bpr_fit(train, factors, lr, l2, epochs):
    import optax

    import jmf

    solver = jmf.solvers.bpr(optax.adam(lr), l2=l2, batch_size=1024)
    kw = dict(rank=factors, key=0, init="normal", max_iter=epochs, tol=None, progress=False)
    res, first = timed(lambda: jmf.fit(train, solver, **kw))
    res, warm = timed(lambda: jmf.fit(train, solver, **kw))
    return res.factors, warm, first


# -- implicit ----------------------------------------------------------------------------------


def implicit_fit(train, factors, iterations, **params):
    import implicit
    from threadpoolctl import threadpool_limits

    import jmf

    ui = train.to_scipy().astype(np.float32).tocsr()

    def fit():
        model = implicit.cpu.als.AlternatingLeastSquares(factors=factors, iterations=iterations, random_state=0,
                                                         **params)
        with threadpool_limits(1, "blas"):
            model.fit(ui, show_progress=False)
        return model

    model, seconds = timed(fit)
    f = jmf.Factors(np.asarray(model.user_factors), np.asarray(model.item_factors).T)
    return f, seconds, dict(regularization=model.regularization, alpha=model.alpha)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small grids and few sweeps (a smoke run)")
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--sweeps", type=int, default=15, help="ALS sweeps (jmf and implicit)")
    ap.add_argument("--bpr-epochs", type=int, default=100)
    ap.add_argument("--bpr-lr", type=float, default=0.003, help="Adam learning rate of BPR")
    ap.add_argument("--seed", type=int, default=0, help="seed of the test holdout (validation: seed + 1)")
    ap.add_argument("--data", choices=("auto", "synthetic"), default="auto",
                    help="auto: ml-latest-small when present, else synthetic")
    ap.add_argument("--no-implicit-tuning", action="store_true", help="implicit with its defaults only")
    ap.add_argument("--out", help="write the results as JSON")
    args = ap.parse_args(argv)

    import jax

    import jmf

    sweeps = 4 if args.quick else args.sweeps
    epochs = 5 if args.quick else args.bpr_epochs
    rows, cols, shape, name = load_positives(args.quick, data=args.data)
    test_mask = per_user_holdout(rows, cols, 0.2, args.seed)
    tr_rows, tr_cols = rows[~test_mask], cols[~test_mask]
    valid_mask = per_user_holdout(tr_rows, tr_cols, 0.2, args.seed + 1)
    train = sparse(tr_rows, tr_cols, shape)
    test = sparse(rows[test_mask], cols[test_mask], shape)
    inner = sparse(tr_rows[~valid_mask], tr_cols[~valid_mask], shape)
    valid = sparse(tr_rows[valid_mask], tr_cols[valid_mask], shape)
    print(f"{name}: {shape[0]} users x {shape[1]} items, {rows.size} positives; train {train.nnz}, "
          f"test {test.nnz} (validation {valid.nnz} carved from train); factors {args.factors}; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)

    results = []

    def report(model, f, seconds, compile_s=0.0, params=None):
        r = evaluate(f, test, train)
        results.append(dict(model=model, **r, fit_seconds=seconds, compile_seconds=compile_s, params=params or {}))
        print(f"  {model:<44} NDCG@10 {r['ndcg']:.4f}  MAP@10 {r['map']:.4f}  AUC {r['auc']:.4f}  "
              f"fit {seconds:.2f} s" + (f" (+ compile {compile_s:.1f} s)" if compile_s else ""), flush=True)

    # popularity
    pop = np.bincount(np.asarray(train.cols), minlength=shape[1]).astype(np.float32)
    report("popularity", jmf.Factors(np.zeros((shape[0], 1), np.float32), np.zeros((1, shape[1]), np.float32),
                                     col_bias=pop), 0.0)

    # implicit, defaults and tuned
    try:
        import implicit  # noqa: F401

        have_implicit = True
    except ImportError:
        have_implicit = False
        print("  implicit is not installed: pip install implicit threadpoolctl")
    if have_implicit:
        f, s, p = implicit_fit(train, args.factors, sweeps)
        report("implicit ALS (defaults)", f, s, params=p)
        if not args.no_implicit_tuning:
            regs = (0.01, 1.0) if args.quick else (0.01, 0.1, 1.0, 10.0, 30.0, 100.0, 300.0)
            alphas = (1.0, 10.0) if args.quick else (1.0, 3.0, 10.0, 30.0, 100.0)
            scores, t0 = [], time.perf_counter()
            for reg in regs:
                for alpha in alphas:
                    fv, _, _ = implicit_fit(inner, args.factors, sweeps, regularization=reg, alpha=alpha)
                    scores.append((evaluate(fv, valid, inner)["ndcg"], reg, alpha))
            search_s = time.perf_counter() - t0
            _, reg, alpha = max(scores)
            f, s, p = implicit_fit(train, args.factors, sweeps, regularization=reg, alpha=alpha)
            report(f"implicit ALS (tuned: reg {reg:g}, alpha {alpha:g})", f, s, params=dict(p, search_seconds=search_s,
                                                                                           grid_points=len(scores)))

    # jmf iALS: grid on the validation split, refit on train
    if args.quick:
        grid = dict(l2=[0.1, 1.0], unobserved_weight=[0.1, 0.5], nu=[1.0])
    else:
        grid = dict(l2=[0.03, 0.1, 0.3, 1.0], unobserved_weight=[0.03, 0.1, 0.3], nu=[0.25, 0.5, 1.0])
    point, table, warm, first = jmf_ials_search(inner, valid, args.factors, grid, sweeps)
    print(f"  jmf iALS grid: {len(table)} points in one fit_many call, {warm:.2f} s warm "
          f"({first:.1f} s first); best on validation {point}", flush=True)
    f, s, first = jmf_ials_fit(train, args.factors, point, sweeps)
    pt = ", ".join(f"{k} {v:g}" for k, v in point.items())
    report(f"jmf implicit_als (tuned: {pt})", f, s, first - s, params=dict(point, search_seconds=warm,
                                                                           grid_points=len(table)))

    # item kNN (cosine of the interaction columns), the classic item-item recommender
    knn_k = 100
    model, first = timed(lambda: jmf.cf.item_knn(train, k=knn_k, similarity="cosine"))
    model, s = timed(lambda: jmf.cf.item_knn(train, k=knn_k, similarity="cosine"))
    report(f"jmf item_knn (cosine, k {knn_k})", model.factors(), s, max(first - s, 0.0))

    # jmf BPR
    lr = args.bpr_lr
    l2s = [0.01, 0.03] if args.quick else [0.003, 0.01, 0.03, 0.1]
    l2, search_s = jmf_bpr_search(inner, valid, args.factors, lr, l2s, epochs)
    print(f"  jmf bpr grid: l2 in {l2s} in one fit_many call, {search_s:.1f} s; best on validation l2 {l2:g}",
          flush=True)
    f, s, first = jmf_bpr_fit(train, args.factors, lr, l2, epochs)
    report(f"jmf bpr (tuned: adam {lr:g}, l2 {l2:g}, {epochs} epochs)", f, s, first - s,
           params=dict(lr=lr, l2=l2, epochs=epochs, search_seconds=search_s))

    print()
    print(f"Implicit feedback, {name}, {args.factors} factors, {sweeps} ALS sweeps")
    print("| model | NDCG@10 | MAP@10 | AUC | fit s (warm) | compile s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['ndcg']:.4f} | {r['map']:.4f} | {r['auc']:.4f} | {r['fit_seconds']:.2f} | "
              f"{r['compile_seconds']:.1f} |")
    by = {r["model"].split(" (")[0] + (" tuned" if "tuned" in r["model"] else ""): r for r in results}
    if "implicit ALS" in by and "jmf implicit_als tuned" in by:
        j = by["jmf implicit_als tuned"]["ndcg"]
        print(f"\njmf tuned iALS / implicit ALS (defaults): NDCG@10 x{j / by['implicit ALS']['ndcg']:.2f}")
        if "implicit ALS tuned" in by:
            print(f"jmf tuned iALS / implicit ALS (tuned):    NDCG@10 x{j / by['implicit ALS tuned']['ndcg']:.2f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(data=name, factors=args.factors, sweeps=sweeps, results=results), fh, indent=1)
    return results


if __name__ == "__main__":
    main()
