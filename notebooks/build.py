"""Build the jmf notebooks from the cell sources below, execute them, and save them with their outputs.

    python notebooks/build.py                 # build and execute all four
    python notebooks/build.py 01 03           # only those whose name starts with 01 or 03
    python notebooks/build.py --no-execute    # write them without outputs

The notebooks are generated (not edited by hand) so that they stay in sync
with the library: change a cell here, rebuild, commit the .ipynb with its
outputs.  ``tests/test_notebooks.py`` executes the committed notebooks.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

# Shared first cell: quiet, reproducible, small figures.
SETUP = """\
import os, tempfile, time
import numpy as np
import jax
import jmf
import jmf.experiments as E
import jmf.plotting as P
import matplotlib.pyplot as plt
%matplotlib inline

plt.rcParams["figure.dpi"] = 90
workdir = tempfile.mkdtemp(prefix="jmf-notebook-")   # results and saved models go here, not into the repository
print("jmf", jmf.__version__, "| jax", jax.__version__, "|", jax.devices()[0].platform)"""


def quickstart():
    return [
        ("md", """\
# jmf quickstart

**jmf** factorizes a matrix `A` (m × n) as `A ≈ W H` with `W` (m × k) and `H` (k × n), in JAX.
Every solver is a pair of pure functions (`init`, `step`); one compiled driver (`jmf.fit`) runs the
iterations, records the loss and decides when to stop; `jmf.fit_many` runs many restarts, ranks and
matrices in one compiled call.

This notebook covers the seed example, what a fit returns, missing entries, `fit_many`, the solvers and
saving a model."""),
        ("code", SETUP),
        ("md", """\
## The seed example

Factorize a 4 × 2 matrix with rank 2: `W` and `H` start uniform on [0, 1) and Adam (learning rate 0.01)
minimizes the mean squared error `mean((A - W H)²)` for 5000 iterations -- all of them inside one compiled loop.
`tol=None` runs exactly `max_iter` iterations; the loss is recorded every `check_every` iterations."""),
        ("code", """\
A = np.array([[5, 3], [3, 2], [2, 1], [1, 1]], dtype=np.float32)
res = jmf.fit(A, jmf.solvers.adam(0.01), rank=2, key=jax.random.key(0), init="uniform",
              max_iter=5000, tol=None, check_every=500, progress=False)
for it, loss in zip(res.iterations, res.loss_history):
    print(f"iteration {int(it):5d}  loss {float(loss):.3e}")
print("W =\\n", np.asarray(res.factors.W), "\\nH =\\n", np.asarray(res.factors.H))
print("W H =\\n", np.asarray(res.factors.W @ res.factors.H).round(4))"""),
        ("md", """\
`fit` returns a `FitResult`: the factors, the final loss, the loss history at the recorded iterations,
the number of iterations and a status (`CONVERGED` by the `tol` rule, `MAX_ITER`, `DIVERGED` or `STOPPED`)."""),
        ("code", """\
print(res)
print("status:", res.status_name, "| iterations:", int(res.n_iter), "| final loss:", float(res.loss))"""),
        ("md", """\
## A larger matrix, a stopping rule and the optimum

For an unweighted matrix the best rank-k approximation is the truncated SVD (Eckart–Young), so any
solver can be judged against it.  With `tol=1e-6` a fit stops when an improvement between two checks
falls below `tol` times the initial loss (scikit-learn's NMF rule)."""),
        ("code", """\
rng = np.random.default_rng(0)
B = (rng.standard_normal((200, 5)) @ rng.standard_normal((5, 100)) / np.sqrt(5)
     + 0.1 * rng.standard_normal((200, 100))).astype(np.float32)
s = np.linalg.svd(B, compute_uv=False)
optimum = np.sum(s[5:] ** 2) / B.size            # smallest mean squared error at rank 5

fits = {}
for solver in [jmf.solvers.als(), jmf.solvers.adam(0.03)]:
    r = fits[solver.name] = jmf.fit(B, solver, rank=5, key=0, init="normal", max_iter=2000, tol=1e-6,
                                    progress=False)
    print(f"{solver.name:5s} {r.status_name:9s} after {int(r.n_iter):4d} iterations: "
          f"loss {float(r.loss):.6f}, SVD optimum {optimum:.6f}")"""),
        ("md", """\
## Missing entries

Missing entries are *not* zeros: `jmf.Dense.from_nan` gives them weight 0, and `jmf.Sparse` stores only
the observed entries (nothing is ever densified).  The loss is the mean over observed entries, and the
fitted model predicts the missing ones."""),
        ("code", """\
M = B.copy()
hidden = rng.random(M.shape) < 0.5                   # hide half of the entries
M[hidden] = np.nan
dense = jmf.Dense.from_nan(M)
rows, cols = np.nonzero(~hidden)
sparse = jmf.Sparse.from_triplets(rows, cols, M[rows, cols], shape=M.shape)
print(dense, "\\n", sparse)

r = jmf.fit(sparse, jmf.solvers.als(l2=0.1), rank=5, key=0, init="normal", max_iter=100, progress=False)
pred = np.asarray(r.factors.predict())
print(f"RMSE on the hidden entries: {np.sqrt(np.mean((pred - B)[hidden] ** 2)):.4f} (noise level 0.1)")"""),
        ("md", """\
## Many fits in one call: `fit_many`

Restarts (`n_restarts` or `keys`) and ranks (`ranks`, padded to the largest and masked) are vmapped:
one compilation, one call, every member with its own `n_iter` and `status`.  `best()` keeps the
restart with the lowest loss for each rank."""),
        ("code", """\
t0 = time.perf_counter()
many = jmf.fit_many(B, jmf.solvers.als(), ranks=[2, 5, 8], n_restarts=4, key=0, init="normal",
                    max_iter=100, tol=1e-6, progress=False)
jax.block_until_ready(many)
print(f"{many.loss.size} fits in {time.perf_counter() - t0:.2f} s (including compilation); axes {many.axes}")
print("loss per (rank, restart):", many.loss.shape)
for rank, loss in zip(many.ranks, many.best().loss):
    print(f"rank {rank}: best loss {float(loss):.5f}, SVD optimum {np.sum(s[rank:] ** 2) / B.size:.5f}")
member = many.member(1, 0)                           # rank 5, restart 0, padding trimmed
print("one member:", member)"""),
        ("md", "## The solvers\n\nEach factory returns a `Solver`; hyperparameters are closed over (equal hyperparameters give the same object, so nothing recompiles)."),
        ("code", """\
for name in E.available_solvers():
    print(f"jmf.solvers.{name}")"""),
        ("md", "## Loss history\n\nThe recorded history of a fit (Adam on the 200 × 100 matrix, above); entries after the stop are NaN:"),
        ("code", """\
r = fits["adam"]
fig, ax = plt.subplots(figsize=(6, 3.4))
ax.semilogy(r.iterations, r.loss_history, label="Adam, lr 0.03")
ax.axhline(optimum, color="k", ls="--", lw=1, label="SVD optimum")
ax.set_xlabel("iteration"); ax.set_ylabel("loss (mean squared error)"); ax.legend(); ax.grid(alpha=0.3)
plt.show()"""),
        ("md", """\
## Saving a model

`jmf.io.save_factors` writes a pickle-free `.npz` atomically (a crash never leaves a half-written file);
`jmf.io.load_factors` reads it with `allow_pickle=False`."""),
        ("code", """\
path = jmf.io.save_factors(os.path.join(workdir, "model.npz"), r.factors, metadata={"solver": "adam", "rank": 5})
factors, meta = jmf.io.load_factors(path, with_metadata=True)
print(path.replace(workdir, "<workdir>"), meta, factors.W.shape, factors.H.shape)"""),
        ("md", """\
Next: `02_compare_solvers.ipynb` (solvers side by side), `03_collaborative_filtering.ipynb` (ratings),
`04_batch_fitting_and_rank_selection.ipynb` (many matrices at once, choosing the rank)."""),
    ]


def compare_solvers():
    return [
        ("md", """\
# Comparing solvers

`jmf.experiments` describes a grid -- datasets × solvers × hyperparameters × ranks × restarts -- and runs
it with one `fit_many` call per (dataset, solver) cell, so each solver compiles once.  Every fit becomes
one row of a JSON-lines results file (crash-safe and resumable), `summary` makes the table and
`jmf.plotting` the figures.  The same grid can be written as a TOML file and run with
`jmf experiment grid.toml`.  `experiments/compare_solvers.py` is the full-size version of this notebook."""),
        ("code", SETUP),
        ("md", """\
## Dense low rank

A 300 × 200 matrix of rank 8 plus noise (entries of the clean part have unit variance, noise 0.1).
All solvers start from the same random factors (restart *i* uses the same key for every solver)."""),
        ("code", """\
dense = E.Experiment(
    name="nb-dense",
    datasets=[{"kind": "low_rank", "m": 300, "n": 200, "rank": 8, "noise": 0.1, "name": "low rank 300x200"}],
    solvers=[
        {"solver": "svd", "max_iter": 1, "check_every": 1},
        {"solver": "als", "max_iter": 50, "check_every": 1},
        {"solver": "adam", "label": "adam", "learning_rate": 0.03},
    ],
    ranks=[4, 8, 12], restarts=3, init="normal", max_iter=1000, tol=1e-6)
results = os.path.join(workdir, "results.jsonl")
df = E.run(dense, results, progress=False)
print(len(df), "fits;", "columns:", ", ".join(df.columns[:16]), "...")
E.summary(df).round(6)"""),
        ("md", """\
`rel_error` is ‖A − WH‖_F / ‖A‖_F and `svd_rel_error` the Eckart–Young optimum at that rank, so
`gap_to_svd` says how far from optimal a solver stopped.  `median_seconds` is the time of one fit
excluding compilation (see `jmf.experiments` for how it is measured); `compile_seconds` is paid once
per solver and shape.

### Loss against iteration and against time"""),
        ("code", """\
P.loss_curves(df, rank=8)"""),
        ("code", """\
P.loss_curves(df, x="seconds", rank=8, show_restarts=False)"""),
        ("md", "### Error against rank (median over restarts, band from best to worst restart)"),
        ("code", "P.error_vs_rank(df)"),
        ("md", "### Accuracy against time, and compilation"),
        ("code", "P.accuracy_vs_time(df, rank=8)"),
        ("code", "P.timing(df)"),
        ("md", """\
## Nonnegative factorization of the digits

scikit-learn's 8 × 8 digits (1797 × 64, scaled to [0, 1]): HALS (coordinate descent), multiplicative
updates.  For NMF the SVD error is only a lower bound (it ignores the sign
constraint)."""),
        ("code", """\
nmf = E.Experiment(
    name="nb-nmf", datasets=[{"kind": "digits", "name": "digits"}],
    solvers=[{"solver": "hals", "max_iter": 200, "check_every": 2},
             {"solver": "mu", "max_iter": 500}],
    ranks=[5, 10, 20], restarts=2, init="random", tol=1e-6)
df_nmf = E.run(nmf, results, factors_dir=os.path.join(workdir, "factors"), progress=False)
E.summary(df_nmf)[["solver", "rank", "best_rel_error", "svd_rel_error", "median_n_iter", "median_seconds"]].round(4)"""),
        ("code", "P.error_vs_rank(df_nmf)"),
        ("md", "The parts found by HALS at rank 10 (rows of `H`, each an 8 × 8 image), read back from the factors the run saved with each row:"),
        ("code", """\
row = df_nmf[(df_nmf.solver == "hals") & (df_nmf["rank"] == 10)].sort_values("loss").iloc[0]
H = jmf.io.load_factors(row["factors_file"]).H
fig, axes = plt.subplots(1, 10, figsize=(10, 1.4))
for ax, h in zip(axes, H):
    ax.imshow(h.reshape(8, 8), cmap="gray_r"); ax.axis("off")
fig.suptitle(f"NMF parts of the digits (HALS, rank 10, relative error {row['rel_error']:.3f})")
plt.show()"""),
        ("md", """\
## Rerunning is free

The results file already holds every row, so running the same grid again fits nothing -- this is also
what happens after a crash or a `kill -9`: the run resumes where it stopped."""),
        ("code", """\
t0 = time.perf_counter()
again = E.run(dense, results, progress=False)
print(f"{len(again)} rows in {time.perf_counter() - t0:.3f} s, nothing refitted")"""),
    ]


def collaborative_filtering():
    return [
        ("md", """\
# Collaborative filtering

Predict missing ratings of a sparse user × item matrix.  The data here are jmf's built-in synthetic
ratings (`jmf.datasets.synthetic_ratings`): a known biased low-rank model (rank 5), power-law user and
item activity, ratings 1–5 in half steps.  The same code runs on MovieLens with `jmf.datasets.movielens`.

Observed ratings live in a `jmf.Sparse` (COO entries); nothing of size users × items is ever built."""),
        ("code", SETUP),
        ("code", """\
ratings = jmf.datasets.synthetic_ratings(key=0, n_users=1000, n_items=500, n_ratings=30_000, rank=5)
data = ratings.data
train, test = jmf.model_selection.train_test_split(data, test_size=0.2, key=1)
print(data)
print("train:", train.nnz, "ratings | test:", test.nnz, "ratings | density", f"{data.nnz / np.prod(data.shape):.2%}")"""),
        ("md", """\
## Biased matrix factorization, every rank in one call

The model is `rating ≈ mean + user bias + item bias + w_u · h_i`, fitted by alternating least squares
with an L2 penalty (`jmf.solvers.als(l2=3.0, biases=True)`, chosen on this split: 0.1 overfits, 30 underfits; `jmf.solvers.ratings_als` is the variant
tuned for very large sparse data).  `fit_many` fits all candidate ranks in one compiled call; each is
judged by RMSE on the held-out ratings (`jmf.metrics.rating_metrics`)."""),
        ("code", """\
ranks = [1, 2, 5, 10, 20]
t0 = time.perf_counter()
many = jmf.fit_many(train, jmf.solvers.als(l2=3.0, biases=True), ranks=ranks, key=0, init="normal",
                    max_iter=30, tol=1e-5, progress=False)
jax.block_until_ready(many)
print(f"{len(ranks)} ranks in {time.perf_counter() - t0:.1f} s (including compilation)")
scores = [jmf.metrics.rating_metrics(many.member(i).factors, test, clip=(1.0, 5.0)) for i in range(len(ranks))]
mean_rmse = float(np.sqrt(np.mean((np.asarray(test.vals) - float(np.mean(np.asarray(train.vals)))) ** 2)))
for r, sc in zip(ranks, scores):
    print(f"rank {r:2d}: held-out RMSE {sc['rmse']:.4f}, MAE {sc['mae']:.4f}")
print(f"predicting the global mean: RMSE {mean_rmse:.4f}")"""),
        ("code", """\
fig, ax = plt.subplots(figsize=(5.5, 3.4))
ax.plot(ranks, [sc["rmse"] for sc in scores], "o-", label="biased MF (ALS, l2 = 3)")
ax.axvline(5, color="k", ls="--", lw=1, label="true rank 5")
ax.set_xscale("log"); ax.set_xticks(ranks); ax.set_xticklabels(ranks)
ax.set_xlabel("rank k"); ax.set_ylabel("held-out RMSE"); ax.legend(); ax.grid(alpha=0.3)
plt.show()"""),
        ("md", """\
## The same model trained by Adam

Any Optax optimizer can train the same biased model on the same regularized loss; here full-batch Adam.
ALS reaches a lower held-out error in far fewer (more expensive) iterations."""),
        ("code", """\
best_als = many.member(ranks.index(5))
t0 = time.perf_counter()
adam = jmf.fit(train, jmf.solvers.adam(0.03, biases=True, loss=jmf.losses.frobenius(l2=3.0)), rank=5, key=0,
               init="normal", max_iter=300, tol=1e-5, progress=False)
jax.block_until_ready(adam)
print(f"Adam: {adam.status_name} after {int(adam.n_iter)} iterations ({time.perf_counter() - t0:.1f} s incl. compilation)")
import pandas as pd
pd.DataFrame([
    {"model": "ALS, rank 5", "iterations": int(best_als.n_iter), **jmf.metrics.rating_metrics(best_als.factors, test, clip=(1.0, 5.0))},
    {"model": "Adam, rank 5", "iterations": int(adam.n_iter), **jmf.metrics.rating_metrics(adam.factors, test, clip=(1.0, 5.0))},
]).round(4)"""),
        ("md", """\
## Recommendations

Top-5 unseen items for a few users (`jmf.cf.recommend`, batched over users; items a user already rated
in the training set are excluded), and ranking quality on the held-out ratings (items rated ≥ 4 are
relevant)."""),
        ("code", """\
f = best_als.factors
items, item_scores = jmf.cf.recommend(f, np.arange(3), n=5, seen=train)
for u in range(3):
    print(f"user {u}: items {np.asarray(items[u]).tolist()}, scores {np.asarray(item_scores[u], np.float64).round(2).tolist()}")
jmf.metrics.ranking_metrics(f, test, k=10, train=train, threshold=4.0)"""),
        ("md", """\
Predictions for users or items unseen in training fall back to the biases (index `-1` marks an unknown
id in `jmf.cf.predict`).  For the full comparison on MovieLens, see `experiments/collaborative_filtering.py`."""),
        ("code", """\
np.asarray(jmf.cf.predict(f, np.array([0, -1, 5]), np.array([3, 3, -1]), clip=(1.0, 5.0))).round(3)"""),
    ]


def batch_and_rank():
    return [
        ("md", """\
# Batch fitting and rank selection

A stack of same-shape matrices, `jmf.Dense(A)` with `A` of shape `(B, m, n)`, is fitted by one
`fit_many` call: the driver is vmapped over the matrices (and, if asked, over ranks and restarts
too), compiles once, and every member stops on its own."""),
        ("code", SETUP),
        ("md", """\
## 2000 small matrices at once

Copies of the seed matrix with 5% noise, rank 2, Adam for 2000 steps."""),
        ("code", """\
seed = np.array([[5, 3], [3, 2], [2, 1], [1, 1]], dtype=np.float32)
noise = np.asarray(jax.random.normal(jax.random.key(1), (2000, 4, 2)), np.float32)
stack = seed * (1 + 0.05 * noise)
opts = dict(rank=2, key=0, init="uniform", max_iter=2000, tol=None, check_every=2000, progress=False)
batch = jmf.fit_many(jmf.Dense(stack), jmf.solvers.adam(0.01), **opts)   # compiles
t0 = time.perf_counter()
batch = jax.block_until_ready(jmf.fit_many(jmf.Dense(stack), jmf.solvers.adam(0.01), **opts))
seconds = time.perf_counter() - t0
print(f"{len(stack)} fits in {seconds:.3f} s = {len(stack) / seconds:,.0f} fits/s (warm); axes {batch.axes}")
print("statuses:", dict(zip(*np.unique(batch.status_name, return_counts=True))))
# member i is exactly the fit of matrix i alone
alone = jmf.fit(stack[7], jmf.solvers.adam(0.01), **opts)
print("max |W difference| member 7 vs alone:", float(np.max(np.abs(batch.factors.W[7] - alone.factors.W))))"""),
        ("code", """\
fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.hist(np.log10(np.asarray(batch.loss, np.float64) + 1e-16), bins=40)
ax.set_xlabel("log10 final loss"); ax.set_ylabel("matrices"); ax.set_title("final loss of 2000 batched fits")
plt.show()"""),
        ("md", """\
## Choosing the rank by cross-validation

Hold out entries, fit every candidate rank on the rest, and pick the rank with the smallest error on the
held-out entries.  Here: 5 random matrices of true rank 4 (100 × 60, noise 0.3), 3 folds of entries
each -- 15 masked matrices -- times 7 ranks: 105 fits in **one** `fit_many` call.
The training error keeps falling with the rank; the held-out error has its minimum at the true rank."""),
        ("code", """\
S, K, m, n, true_rank, ranks = 5, 3, 100, 60, 4, list(range(1, 8))
As, masks = [], []
for s in range(S):
    As.append(np.asarray(E.make_dataset({"kind": "low_rank", "m": m, "n": n, "rank": true_rank,
                                         "noise": 0.3, "seed": s}).train.A))
    perm = np.asarray(jax.random.permutation(jax.random.key(100 + s), m * n))
    fold = np.empty(m * n, int); fold[perm] = np.arange(m * n) % K
    masks.append(np.stack([(fold == k).reshape(m, n) for k in range(K)]))
A = np.repeat(np.stack(As)[:, None], K, axis=1).reshape(S * K, m, n)
held = np.stack(masks).reshape(S * K, m, n)
data = jmf.Dense(A, (~held).astype(np.float32))               # weight 0 = held out

t0 = time.perf_counter()
cv = jmf.fit_many(data, jmf.solvers.als(l2=0.01), ranks=ranks, key=0, init="normal",
                  max_iter=50, tol=1e-6, progress=False)
pred = np.einsum("brik,brkj->brij", np.asarray(cv.factors.W), np.asarray(cv.factors.H))
err2 = (A[:, None] - pred) ** 2
test_mse = ((err2 * held[:, None]).sum((2, 3)) / held.sum((1, 2))[:, None]).reshape(S, K, -1).mean(1)
train_mse = ((err2 * ~held[:, None]).sum((2, 3)) / (~held).sum((1, 2))[:, None]).reshape(S, K, -1).mean(1)
selected = np.asarray(ranks)[test_mse.argmin(1)]
print(f"{cv.loss.size} fits in {time.perf_counter() - t0:.1f} s (including compilation)")
print("selected ranks:", selected.tolist(), f"-> true rank {true_rank} found in {np.sum(selected == true_rank)} of {S}")"""),
        ("code", """\
fig, ax = plt.subplots(figsize=(6, 3.6))
for i in range(S):
    ax.plot(ranks, np.sqrt(test_mse[i]), color="tab:blue", alpha=0.4, lw=0.8)
ax.plot(ranks, np.median(np.sqrt(test_mse), 0), "o-", color="tab:blue", lw=2, label="held-out RMSE (median)")
ax.plot(ranks, np.median(np.sqrt(train_mse), 0), "s--", color="tab:orange", label="training RMSE (median)")
ax.axvline(true_rank, color="gray", ls=":", label="true rank")
ax.set_yscale("log"); ax.set_xlabel("rank k"); ax.set_ylabel("RMSE"); ax.legend(); ax.grid(alpha=0.3)
plt.show()"""),
        ("md", """\
`experiments/rank_selection.py` runs the same procedure over 20 seeds and 5 folds and reports how often
the true rank is recovered; `experiments/batch_fit.py` measures fits per second against the batch size."""),
    ]


NOTEBOOKS = {
    "01_quickstart.ipynb": quickstart,
    "02_compare_solvers.ipynb": compare_solvers,
    "03_collaborative_filtering.ipynb": collaborative_filtering,
    "04_batch_fitting_and_rank_selection.ipynb": batch_and_rank,
}


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, source in cells:
        nb.cells.append(new_markdown_cell(source) if kind == "md" else new_code_cell(source))
    # Stable cell ids keep rebuilt notebooks diff-friendly.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    return nb


def execute(nb, timeout: int = 600):
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": HERE}})
    client.execute()
    return nb


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build (and execute) the jmf notebooks.")
    parser.add_argument("only", nargs="*", help="name prefixes to build (default: all)")
    parser.add_argument("--no-execute", action="store_true", help="write the notebooks without outputs")
    args = parser.parse_args(argv)
    for name, make in NOTEBOOKS.items():
        if args.only and not any(name.startswith(p) for p in args.only):
            continue
        nb = build(make())
        t0 = time.perf_counter()
        if not args.no_execute:
            execute(nb)
        path = os.path.join(HERE, name)
        nbformat.validate(nb)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            nbformat.write(nb, fh)
        os.replace(tmp, path)
        print(f"{name}: {len(nb.cells)} cells, {'executed in %.1f s' % (time.perf_counter() - t0) if not args.no_execute else 'not executed'}")


if __name__ == "__main__":
    main(sys.argv[1:])
