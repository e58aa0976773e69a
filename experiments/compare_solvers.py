"""Compare jmf's solvers on three problems: dense low rank, nonnegative (NMF) and masked (missing entries).

For each problem every available solver fits every rank from the same
random starts (all ranks and restarts of a solver in ONE compiled
``jmf.fit_many`` call).  The script prints one table per problem --
error at the true rank against the SVD optimum (Eckart-Young; for NMF a
lower bound), held-out RMSE for the masked problem, iterations, time per
fit and compilation time -- and saves

    OUT/results.jsonl           one row per fit (resumable: a rerun skips finished fits)
    OUT/summary.csv             every (problem, solver, rank), best and median over restarts
    OUT/table.md                the printed tables, as Markdown
    OUT/figures/<problem>_overview.{png,svg}   loss vs iteration and vs time, error vs rank, error vs time
    OUT/figures/<problem>_{loss_vs_iteration,loss_vs_time,error_vs_rank,accuracy_vs_time}.{png,svg}
                                (the four panels one by one; not with --quick)

Built-in data only (synthetic low-rank matrices and scikit-learn's digits),
nothing is downloaded.

    python experiments/compare_solvers.py                 # defaults, about a minute on 2 cores
    python experiments/compare_solvers.py --quick         # small sizes for CI
    python experiments/compare_solvers.py --out DIR --problems dense masked --restarts 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jmf
import jmf.experiments as E

# Solvers per problem, in display order.  Names that this installation of
# jmf.solvers lacks are skipped with a note, so the script runs while the
# solver collection grows.  Per-solver fit options: ALS/HALS/SVD converge in
# few iterations, so they record the loss at every iteration.
DENSE_SOLVERS = [
    {"solver": "svd", "label": "svd", "max_iter": 1, "check_every": 1},
    {"solver": "als", "label": "als", "max_iter": 100, "check_every": 1},
    {"solver": "adam", "label": "adam", "learning_rate": 0.03},
    {"solver": "sgd", "label": "sgd+momentum", "learning_rate": 30.0, "momentum": 0.9},
]
NMF_SOLVERS = [
    {"solver": "hals", "label": "hals", "max_iter": 300, "check_every": 2},
    {"solver": "mu", "label": "mu", "max_iter": 1000},
    {"solver": "adam", "label": "adam (projected)", "learning_rate": 0.01, "projection": "nonnegative",
     "max_iter": 1000},
]
MASKED_SOLVERS = [
    {"solver": "als", "label": "als", "max_iter": 50, "check_every": 1},  # same objective as the others (no penalty)
    {"solver": "adam", "label": "adam", "learning_rate": 0.03},
    {"solver": "sgd", "label": "sgd+momentum", "learning_rate": 30.0, "momentum": 0.9},
]


# Left out of --quick runs.
QUICK_SKIP = ("sgd+momentum", "adam (projected)", "svd")


def problems(quick: bool) -> dict:
    """The three problems: dataset spec, ranks, true rank, init and solvers."""
    if quick:
        dense = {"kind": "low_rank", "m": 120, "n": 80, "rank": 5, "noise": 0.1, "name": "dense low rank 120x80"}
        nmf = {"kind": "nonnegative", "m": 100, "n": 60, "rank": 5, "noise": 0.02, "name": "nonnegative 100x60"}
        masked = {"kind": "low_rank", "m": 120, "n": 80, "rank": 5, "noise": 0.1, "missing": 0.6, "holdout": 0.1,
                  "name": "masked 120x80, 40% observed"}
        ranks, true = [3, 5, 8], 5
        nmf_ranks, nmf_true = [3, 5, 8], 5
    else:
        dense = {"kind": "low_rank", "m": 500, "n": 300, "rank": 10, "noise": 0.1, "name": "dense low rank 500x300"}
        nmf = {"kind": "digits", "name": "digits 1797x64 (NMF)"}
        masked = {"kind": "low_rank", "m": 500, "n": 300, "rank": 10, "noise": 0.1, "missing": 0.7, "holdout": 0.1,
                  "name": "masked 500x300, 30% observed"}
        ranks, true = [4, 7, 10, 13, 16], 10
        nmf_ranks, nmf_true = [5, 10, 15, 20], 10
    return {
        "dense": dict(dataset=dense, ranks=ranks, true_rank=true, init="normal", solvers=DENSE_SOLVERS,
                      metric="rel_error"),
        "nmf": dict(dataset=nmf, ranks=nmf_ranks, true_rank=nmf_true, init="random", solvers=NMF_SOLVERS,
                    metric="rel_error"),
        "masked": dict(dataset=masked, ranks=ranks, true_rank=true, init="normal", solvers=MASKED_SOLVERS,
                       metric="test_rmse"),
    }


def _table(df, problem: dict):
    """The printed table: one line per solver at the problem's true rank."""
    summ = E.summary(df)
    summ = summ[summ["rank"] == problem["true_rank"]].copy()
    cols = {"solver": "solver", "rank": "rank", "best_rel_error": "rel. error (best)"}
    if "gap_to_svd" in summ:
        summ["gap_to_svd"] = 100 * summ["gap_to_svd"]
        cols["gap_to_svd"] = "above SVD optimum (%)"
    if "best_test_rmse" in summ:
        cols["best_test_rmse"] = "held-out RMSE (best)"
        cols["median_test_rmse"] = "held-out RMSE (median)"
    summ["median_seconds"] = 1000 * summ["median_seconds"]
    cols.update({"median_n_iter": "iterations", "converged": "stopped by tol", "median_seconds": "ms per fit",
                 "compile_seconds": "compile (s)"})
    return summ[list(cols)].rename(columns=cols).reset_index(drop=True)


def run(out: str, quick: bool = False, restarts: int = 3, seed: int = 0, which=None, progress: bool = True,
        max_iter: int = None) -> dict:
    """Run the comparison; returns ``{problem: (results DataFrame, table DataFrame)}``."""
    import jmf.plotting as P

    os.makedirs(os.path.join(out, "figures"), exist_ok=True)
    results_path = os.path.join(out, "results.jsonl")
    available = set(E.available_solvers())
    outputs = {}
    missing_solvers = set()
    for name, problem in problems(quick).items():
        if which and name not in which:
            continue
        solvers = problem["solvers"]
        if quick:  # CI: fewer compilations; the full run compares everything
            solvers = [s for s in solvers if s["label"] not in QUICK_SKIP]
        solvers = [s for s in solvers if s["solver"] in available]
        missing_solvers.update(s["solver"] for s in problem["solvers"] if s["solver"] not in available)
        if max_iter is not None:
            solvers = [{**s, "max_iter": min(s.get("max_iter", max_iter), max_iter)} for s in solvers]
        exp = E.Experiment(name=f"compare-{name}", datasets=[problem["dataset"]], solvers=solvers,
                           ranks=problem["ranks"], restarts=restarts, seed=seed, init=problem["init"],
                           max_iter=300 if quick else 2000, tol=1e-6, check_every=10)
        skipped = []
        df = E.run(exp, results_path, progress=progress, log=skipped.append)
        for msg in skipped:
            print("note:", msg)
        if len(df) == 0:
            continue
        table = _table(df, problem)
        outputs[name] = (df, table)
        stem = os.path.join(out, "figures", name)
        rank = problem["true_rank"]
        metric = problem["metric"]
        P.save(P.overview(df, rank=rank, metric=metric), stem + "_overview")
        if not quick:  # the overview has all four panels; the full run also saves them one by one
            P.save(P.loss_curves(df, rank=rank), stem + "_loss_vs_iteration")
            P.save(P.loss_curves(df, x="seconds", rank=rank, show_restarts=False), stem + "_loss_vs_time")
            P.save(P.error_vs_rank(df, metric=metric), stem + "_error_vs_rank")
            P.save(P.accuracy_vs_time(df, metric=metric, rank=rank), stem + "_accuracy_vs_time")
    if missing_solvers:
        print(f"note: solvers not in this installation, skipped: {', '.join(sorted(missing_solvers))}")
    return outputs


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Compare jmf solvers (dense low rank, NMF, masked): tables and figures.",
        epilog="A rerun with the same --out reuses finished fits (delete OUT/results.jsonl to start afresh).")
    parser.add_argument("--out", default=os.path.join("results", "compare_solvers"),
                        help="output directory (default: results/compare_solvers)")
    parser.add_argument("--quick", action="store_true", help="small problems and few iterations (CI)")
    parser.add_argument("--restarts", type=int, default=3, help="random starts per solver and rank (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random starts (default 0)")
    parser.add_argument("--problems", nargs="+", choices=["dense", "nmf", "masked"],
                        help="run only these problems (default: all three)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.restarts < 1:
        parser.error("--restarts must be at least 1")

    t0 = time.perf_counter()
    outputs = run(args.out, quick=args.quick, restarts=args.restarts, seed=args.seed, which=args.problems,
                  progress=not args.no_progress)
    import pandas as pd

    md = [f"# jmf solver comparison{' (--quick)' if args.quick else ''}", "",
          f"jmf {jmf.__version__}, restarts {args.restarts}, seed {args.seed}; "
          "time per fit excludes compilation (see jmf.experiments for how it is measured).", ""]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        for name, (df, table) in outputs.items():
            title = f"{name}: {df['dataset'].iloc[0]}, rank {int(table['rank'].iloc[0]) if len(table) else '?'}"
            print("\n" + title)
            print(table.to_string(index=False))
            md += [f"## {title}", "", E.markdown_table(table), ""]
    summ = pd.concat([E.summary(df) for df, _ in outputs.values()]) if outputs else pd.DataFrame()
    from jmf.io import atomic_write

    with atomic_write(os.path.join(args.out, "summary.csv"), "w") as fh:
        summ.to_csv(fh, index=False)
    with atomic_write(os.path.join(args.out, "table.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    out = os.path.abspath(args.out)
    print(f"\nfinished in {time.perf_counter() - t0:.1f} s")
    print(f"table:   {os.path.join(out, 'table.md')}  (all ranks: {os.path.join(out, 'summary.csv')})")
    print(f"results: {os.path.join(out, 'results.jsonl')}")
    print(f"figures: {os.path.join(out, 'figures')}/  (e.g. dense_overview.png)")
    return outputs


if __name__ == "__main__":
    main(sys.argv[1:])
