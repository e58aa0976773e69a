"""Does SVD++'s implicit term pay?  jmf ``svdpp`` against ``ratings_gradient``, Surprise and jmf's default model.

    PYTHONPATH=. python benchmarks/svdpp.py             # about 6 minutes on 2 cores
    PYTHONPATH=. python benchmarks/svdpp.py --no-surprise-svdpp   # skip Surprise's slow SVDpp

Data: MovieLens latest-small (``../shared/data/ml-latest-small/ratings.csv``), the 80/20 split of
``jmf fit FILE --holdout 0.2`` (the one ``benchmarks/cf_defaults.py`` reports on, so figures compare).

Rows (held-out RMSE on the 20 %, and the *warm* fit time: a second identical fit in this process, so
compilation is excluded for jmf; Surprise has none):

* jmf ``svdpp`` (Adam, full batch) at the hyperparameters chosen below;
* jmf ``ratings_gradient`` with the SAME optimizer, learning rate, steps, rank and ``l2``: the implicit
  term's gain isolated;
* jmf ``ratings_gradient`` at its own validated ``l2`` and rank (same procedure as svdpp), the fair baseline;
* Surprise ``SVD()`` and ``SVDpp()`` at their defaults, on the same split;
* jmf's default model ``jmf.cf.fit_ratings(train)`` (Bayesian PMF).

Hyperparameters are chosen ONLY inside the training part: it is split again 80/20
(``train_test_split(train, 0.2, key=1)``), every grid point is fitted on the 80 % and scored by RMSE on
the 20 % validation part, and the best point is refitted on the whole training part.  The grid: Adam with
learning rate 0.01 and 300 full-batch steps (fixed), rank in {10, 40} (one ``fit_many`` call per
penalty), ``l2`` in {5, 10, 20, 40}, and for svdpp ``implicit_l2`` in {l2, 4 l2}.  The reported test part
is never seen before the final scores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import table  # noqa: E402

ML_SMALL = os.path.join(HERE, "..", "..", "shared", "data", "ml-latest-small", "ratings.csv")
LR, STEPS, RANKS = 0.01, 300, (10, 40)
L2S = (5.0, 10.0, 20.0, 40.0)
IMPLICIT = (1.0, 4.0)  # implicit_l2 / l2


def _rmse(f, test):
    import jmf

    r, c, v = (np.asarray(x) for x in test)
    return float(np.sqrt(np.mean((np.asarray(jmf.cf.predict(f, r, c)) - v) ** 2)))


def _member(f, i):
    import jax

    return jax.tree_util.tree_map(lambda x: x[i], f)


def _solver(kind, l2, ratio):
    import optax

    import jmf

    if kind == "svdpp":
        return jmf.solvers.svdpp(optax.adam(LR), l2=l2, implicit_l2=ratio * l2)
    return jmf.solvers.ratings_gradient(optax.adam(LR), l2=l2)


def _select(kind, train):
    """(validation RMSE, l2, implicit ratio, rank) of the best grid point, fitted on 80 % of ``train``."""
    import jmf

    tr, va = jmf.model_selection.train_test_split(train, 0.2, key=1)
    val = (va.rows, va.cols, va.vals)
    best = None
    for l2 in L2S:
        for ratio in IMPLICIT if kind == "svdpp" else (1.0,):
            res = jmf.fit_many(tr, _solver(kind, l2, ratio), ranks=list(RANKS), key=0, max_iter=STEPS, tol=None,
                               check_every=STEPS, progress=False)
            for i, rank in enumerate(RANKS):
                score = _rmse(_member(res.factors, i), val)
                print(f"  {kind:16s} l2={l2:<5g} implicit/l2={ratio:<3g} rank={rank:<3d} validation RMSE {score:.4f}",
                      flush=True)
                if best is None or score < best[0]:
                    best = (score, l2, ratio, rank)
    return best


def _jmf_fit(kind, train, test, l2, ratio, rank):
    """Held-out RMSE and warm seconds of one fit on the whole training part."""
    import jax

    import jmf

    solver = _solver(kind, l2, ratio)

    def run():
        res = jmf.fit(train, solver, rank=rank, key=0, max_iter=STEPS, tol=None, check_every=STEPS, progress=False)
        jax.block_until_ready(res.factors)
        return res

    run()  # compile
    t = time.perf_counter()
    res = run()
    return _rmse(res.factors, test), time.perf_counter() - t


def _surprise(name, train, test):
    import pandas as pd
    import surprise

    df = pd.DataFrame({"u": np.asarray(train.rows), "i": np.asarray(train.cols), "r": np.asarray(train.vals)})
    ts = surprise.Dataset.load_from_df(df, surprise.Reader(rating_scale=(float(df.r.min()), float(df.r.max()))))
    ts = ts.build_full_trainset()
    algo = getattr(surprise, name)(random_state=0)
    t = time.perf_counter()
    algo.fit(ts)
    seconds = time.perf_counter() - t
    r, c, v = (np.asarray(x) for x in test)
    est = np.array([algo.predict(int(u), int(i)).est for u, i in zip(r, c)])
    return float(np.sqrt(np.mean((est - v) ** 2))), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-surprise-svdpp", action="store_true", help="skip Surprise SVDpp (the slowest row)")
    args = parser.parse_args()

    import jax

    import jmf
    import jmf.experiments as E

    if not os.path.exists(ML_SMALL):
        sys.exit(f"MovieLens latest-small not found at {ML_SMALL}")
    data, _ = jmf.io.load_matrix(ML_SMALL)
    prep = E.make_dataset({"name": "ratings.csv", "data": data, "holdout": 0.2})
    train, test = prep.train, prep.test
    print(f"ml-latest-small: {train.nnz} training ratings, {len(np.asarray(test[0]))} test ratings; "
          f"jax {jax.__version__}, {os.cpu_count()} cores")

    print("validation inside the training part:")
    chosen = {kind: _select(kind, train) for kind in ("svdpp", "ratings_gradient")}
    rows = []
    _, l2, ratio, rank = chosen["svdpp"]
    setting = f"adam({LR}), {STEPS} steps, rank {rank}, l2 {l2:g}"
    rmse, sec = _jmf_fit("svdpp", train, test, l2, ratio, rank)
    rows.append(dict(model="jmf svdpp", rmse=rmse, warm_s=sec, setting=f"{setting}, implicit_l2 {ratio * l2:g}"))
    rmse, sec = _jmf_fit("ratings_gradient", train, test, l2, 1.0, rank)
    rows.append(dict(model="jmf ratings_gradient (svdpp's setting)", rmse=rmse, warm_s=sec, setting=setting))
    _, l2g, _, rankg = chosen["ratings_gradient"]
    rmse, sec = _jmf_fit("ratings_gradient", train, test, l2g, 1.0, rankg)
    rows.append(dict(model="jmf ratings_gradient (own validated)", rmse=rmse, warm_s=sec,
                     setting=f"adam({LR}), {STEPS} steps, rank {rankg}, l2 {l2g:g}"))
    for name in ("SVD",) + (() if args.no_surprise_svdpp else ("SVDpp",)):
        rmse, sec = _surprise(name, train, test)
        rows.append(dict(model=f"Surprise {name}()", rmse=rmse, warm_s=sec, setting="defaults, random_state=0"))
    r, c, v = (np.asarray(x) for x in test)
    jmf.cf.fit_ratings(train)  # compile
    t = time.perf_counter()
    model = jmf.cf.fit_ratings(train)
    jax.block_until_ready(model.factors)
    sec = time.perf_counter() - t
    rmse = float(np.sqrt(np.mean((np.asarray(model.predict(r, c)) - v) ** 2)))
    rows.append(dict(model="jmf.cf.fit_ratings(train) (BPMF default)", rmse=rmse, warm_s=sec,
                     setting=f"rank {model.rank}"))
    print()
    print(table(rows, ["model", "rmse", "warm_s", "setting"]))


if __name__ == "__main__":
    main()
