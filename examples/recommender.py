"""A recommender walk-through on synthetic ratings with a known truth.

1. data: jmf.datasets.synthetic_ratings draws ratings (1..5, half steps) from a biased
   rank-5 model with power-law user and item activity: a jmf.Sparse of observed entries;
2. split: 20% of the ratings are held out (jmf.model_selection.train_test_split);
3. fit: biased matrix factorization by ALS, every candidate rank in ONE fit_many call;
4. choose the rank by held-out RMSE (jmf.metrics), and recommend unseen items (jmf.cf).

    python examples/recommender.py [--quick] [--out DIR]
"""

import argparse
import os

import numpy as np
from matplotlib.figure import Figure

import jmf
from jmf.plotting import plot_loss, save

GALLERY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "gallery")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer users, items and ranks (CI)")
    ap.add_argument("--out", default=GALLERY, help="folder for the figure (default: docs/gallery)")
    args = ap.parse_args(argv)

    size = dict(n_users=300, n_items=200, n_ratings=8_000) if args.quick else \
        dict(n_users=2000, n_items=1000, n_ratings=100_000)
    ratings = jmf.datasets.synthetic_ratings(key=0, rank=5, **size)
    train, test = jmf.model_selection.train_test_split(ratings.data, test_size=0.2, key=1)
    print(f"{ratings.data.shape[0]} users x {ratings.data.shape[1]} items, {train.nnz} training and "
          f"{test.nnz} held-out ratings ({ratings.data.nnz / np.prod(ratings.data.shape):.1%} observed)")

    ranks = [2, 5, 10] if args.quick else [1, 2, 5, 10, 20]
    solver = jmf.solvers.als(l2=3.0, biases=True)  # rating ~ offset + user bias + item bias + w_u . h_i
    many = jmf.fit_many(train, solver, ranks=ranks, key=0, init="normal", max_iter=30, tol=1e-5,
                         check_every=1, progress=False)
    rmse = []
    for i, k in enumerate(ranks):
        scores = jmf.metrics.rating_metrics(many.member(i).factors, test, clip=(1.0, 5.0))
        rmse.append(scores["rmse"])
        print(f"rank {k:2d}: held-out RMSE {scores['rmse']:.4f}  MAE {scores['mae']:.4f}")
    best = int(np.argmin(rmse))
    mean_rmse = float(np.sqrt(np.mean((np.asarray(test.vals) - np.mean(np.asarray(train.vals))) ** 2)))
    print(f"selected rank {ranks[best]} (the truth has rank 5); predicting the mean rating: RMSE {mean_rmse:.4f}")

    factors = many.member(best).factors
    items, item_scores = jmf.cf.recommend(factors, np.arange(3), n=5, seen=train)  # unseen items only
    for u in range(3):
        print(f"user {u}: recommended items {np.asarray(items[u]).tolist()}, "
              f"scores {np.round(np.asarray(item_scores[u], np.float64), 2).tolist()}")
    print("ranking on held-out ratings >= 4:",
          {k: round(float(v), 3) for k, v in jmf.metrics.ranking_metrics(factors, test, k=10, train=train,
                                                                        threshold=4.0).items()})

    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(ranks, rmse, "o-", label="biased MF, ALS (l2 = 3)")
    ax1.axhline(mean_rmse, color="gray", ls="--", lw=1, label="predict the mean rating")
    ax1.axvline(5, color="k", ls=":", lw=1, label="true rank 5")
    ax1.set_xscale("log")
    ax1.set_xticks(ranks, [str(k) for k in ranks])
    ax1.set_xlabel("rank k")
    ax1.set_ylabel("held-out RMSE")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    ax1.set_title("rank selection on held-out ratings", fontsize=10)
    plot_loss(many, ax=ax2, style="lines", labels=[f"rank {k}" for k in ranks],
              title="training loss of every rank (one fit_many call)")
    paths = save(fig, os.path.join(args.out, "recommender"), formats=("png",), dpi=90, png_colors=64)
    print("figure:", *(os.path.normpath(p) for p in paths))
    return dict(zip(ranks, rmse))


if __name__ == "__main__":
    main()
