"""``jmf experiment CONFIG.toml``: run a resumable grid of fits, then print its table and save figures."""

from __future__ import annotations

import os

from .parser import UsageError


def cmd_experiment(args) -> int:
    """``jmf experiment CONFIG.toml``: plan the grid, run what is not done yet, print the table, save figures."""
    import jmf.experiments as E

    try:
        exp, options = E.load_config(args.config)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{args.config}: {exc}") from None
    out = args.out or options.get("out") or os.path.join("results", exp.name)
    results = os.path.join(out, "results.jsonl")
    # Build every solver and every dataset now (no fitting): what cannot run fails here, before
    # the first fit, and the header says what will run and what will be skipped.
    try:
        planned = E.plan(exp, results)
    except (ValueError, TypeError, OSError) as exc:
        raise UsageError(f"{args.config}: {exc}") from None
    todo, done, skipped = (sum(getattr(p, k) for p in planned) for k in ("todo", "done", "skipped"))
    total = todo + done + skipped
    print(f"experiment {exp.name!r}: {len(planned)} cells (dataset x solver x hyperparameters), {total} fits: "
          f"{todo} to run, {done} already done, {skipped} skipped -> {results}")
    for p in planned:
        if p.reason is not None:
            print(f"  skipping {p.cell.label} on {p.cell.dataset_config['name']}: {p.reason}")
    if args.dry_run:
        for p in planned:
            c = p.cell
            state = "skip" if p.reason else f"{p.todo} to run" + (f", {p.done} done" if p.done else "")
            print(f"  {c.dataset_config['name']:<40} {c.label:<36} ranks {list(c.ranks)} x {c.restarts} restarts"
                  f"  ({state})")
        return 0
    if args.compile_cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    factors_dir = os.path.join(out, "factors") if (args.factors or options.get("factors")) else None
    try:
        # Skips were listed with the header; the run does not repeat them.
        df = E.run(exp, results, factors_dir=factors_dir, progress=not args.quiet, log=lambda msg: None)
    except RuntimeError as exc:  # another run holds the results file
        raise UsageError(str(exc)) from None
    except (ValueError, TypeError, OSError) as exc:  # what only shows while running
        raise UsageError(f"{args.config}: {exc}") from None
    import pandas as pd

    summ = E.summary(df)
    from jmf.io import atomic_write

    with atomic_write(os.path.join(out, "summary.csv"), "w") as fh:
        summ.to_csv(fh, index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(summ.to_string(index=False) if len(summ) else "(no results)")
    figures = []
    if not args.no_figures and len(df):
        import jmf.plotting as P

        for dataset, sub in df.groupby("dataset", sort=False):
            metric = "test_rmse" if "test_rmse" in sub and sub["test_rmse"].notna().any() else "rel_error"
            stem = os.path.join(out, "figures", _slug(dataset))
            figures += P.save(P.overview(sub, metric=metric), stem + "_overview")
    print(f"results: {os.path.abspath(results)} ({len(df)} fits)")
    print(f"table:   {os.path.abspath(os.path.join(out, 'summary.csv'))}")
    if figures:
        print(f"figures: {os.path.abspath(os.path.join(out, 'figures'))}/")
    return 0


def _slug(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return keep.strip("_")[:80] or "dataset"


