"""``jmf fit FILE``: factorize one matrix or ratings file and print (or save) a summary."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

from .parser import UsageError, solver_params


def cmd_fit(args) -> int:
    """``jmf fit FILE``: check the options and the file, then fit the named solver or the default ratings model."""
    import jmf
    import jmf.experiments as E
    from jmf._src.registry import make_solver, solver_entry

    default_model = args.solver is None and not args.param and not args.biases
    name = args.solver or "als"
    solver = params = None
    if not default_model or args.format == "dense":
        try:
            entry = solver_entry(name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        params = solver_params(name, args.param)
        if args.biases:
            if "biases" not in entry.defaults():
                raise UsageError(f"--biases: solver {name!r} has no bias terms (try als or adam)")
            params.setdefault("biases", True)
        try:
            solver = make_solver(name, **params)
        except (ValueError, TypeError) as exc:
            raise UsageError(str(exc)) from None
    if args.test is not None and not os.path.isfile(args.test):
        raise UsageError(f"--test: file not found: {args.test}")
    try:
        data, info = jmf.io.load_matrix(args.file, format=args.format)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise UsageError(f"cannot read {args.file!r}: {exc}") from None
    ratings = info.get("kind") == "ratings"
    if args.test is not None and not ratings:
        raise UsageError(f"--test needs a ratings table as FILE (user, item, rating rows); {args.file!r} is a matrix")
    shape = data.shape
    if args.rank is not None and args.rank > min(shape):
        raise UsageError(f"--rank {args.rank} is too large for a {shape[0]} x {shape[1]} matrix "
                         f"(at most {min(shape)})")
    if args.out is not None:
        out_dir = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(out_dir):
            raise UsageError(f"--out: directory {out_dir!r} does not exist")
    if info.get("duplicates"):
        print(f"note: {info['duplicates']} duplicate ratings (same user and item) in {args.file} were merged, "
              "keeping the last one", file=sys.stderr)
    try:
        prepared = E.make_dataset({"name": os.path.basename(args.file), "data": data, "holdout": args.holdout})
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--holdout {args.holdout}: {exc}" if args.holdout else str(exc)) from None
    test = _test_entries(args.test, info) if args.test is not None else None
    if ratings and solver is None:
        return _fit_ratings_model(args, info, prepared, test)
    if solver is None:  # a matrix: the default solver
        params = solver_params(name, args.param)
        solver = make_solver(name, **params)
    if args.rank is None:
        raise UsageError("--rank K is required for " + (f"--solver {name}" if ratings else "a matrix")
                         + " (only the default ratings model, a ratings table without --solver, chooses its rank)")
    return _fit_solver(args, name, solver, params, info, prepared, test)


def _test_entries(path: str, info: dict):
    """``(rows, cols, vals)`` of a test ratings file in the training file's index (``-1``: unknown id)."""
    import numpy as np

    from jmf._src.datasets.readers import read_ratings

    try:
        df = read_ratings(path)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--test: cannot read {path!r} as ratings: {exc}") from None

    from jmf._src.datasets.ratings import _lookup

    def index(known, raw):
        known = np.asarray(known)
        raw = np.asarray(raw).astype(known.dtype) if known.dtype.kind != "U" else np.asarray(raw).astype(str)
        return _lookup(known, raw).astype(np.int32)

    return (index(info["user_ids"], df["user"].to_numpy()), index(info["item_ids"], df["item"].to_numpy()),
            df["rating"].to_numpy(np.float64))


def _errors(predicted, vals) -> dict:
    import numpy as np

    err = np.asarray(predicted, np.float64) - np.asarray(vals, np.float64)
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def _compile_note(log) -> str:
    if not log.programs:
        return ""
    if log.cache_hits >= log.programs:
        return f" (compiled programs loaded from the cache: {log.programs})"
    return (f" including {log.seconds:.1f} s compiling {log.programs - log.cache_hits} programs "
            "(first run on this machine; later runs load them from the cache)")


def _fit_ratings_model(args, info: dict, prepared, test) -> int:
    """``jmf fit RATINGS`` without --solver: :func:`jmf.cf.fit_ratings`, evaluated on --holdout / --test."""
    import numpy as np

    import jmf
    from jmf._src.compilation import compilations

    train = prepared.train
    rank = "auto" if args.rank is None else args.rank
    if not args.json:
        print(f"data    {args.file}: ratings {train.shape[0]} x {train.shape[1]}, {prepared.info['n_observed']} "
              f"observed entries" + (f" ({prepared.info['n_test']} held out)" if args.holdout else ""))
        print("model   Bayesian PMF with biases (Gibbs sampling), rank "
              + ("chosen on a validation holdout of the training entries" if rank == "auto" else str(rank)),
              flush=True)
    t0 = time.perf_counter()
    with compilations() as log:
        model = jmf.cf.fit_ratings(train, rank, key=args.seed, progress=not args.quiet and not args.json)
        train_err = _errors(model.predict(train.rows, train.cols), train.vals)
        metrics = {"train_rmse": train_err["rmse"]}
        if prepared.test is not None and len(prepared.test[0]):
            r, c, v = prepared.test
            e = _errors(model.predict(np.asarray(r), np.asarray(c)), v)
            metrics.update(test_rmse=e["rmse"], test_mae=e["mae"])
        if test is not None:
            r, c, v = test
            e = _errors(model.predict(r, c), v)
            metrics.update(test_rmse=e["rmse"], test_mae=e["mae"], test_file=args.test, test_n=int(len(v)),
                           test_unknown=int(np.sum((r < 0) | (c < 0))))
    seconds = time.perf_counter() - t0
    summary = {"file": args.file, "shape": list(train.shape), "n_observed": prepared.info["n_observed"],
               "model": "bpmf", "choice": model.params["choice"], "params": model.params, "rank": model.rank,
               "rank_chosen": rank == "auto",
               **metrics, "seconds": seconds, "compiled_programs": log.programs - log.cache_hits,
               "compile_seconds": log.seconds}
    if model.search is not None:
        summary["validation"] = model.search.to_dict(orient="records")
    if args.out is not None:
        arrays = {"user_ids": np.asarray(info["user_ids"]), "item_ids": np.asarray(info["item_ids"]),
                  "train_rows": np.asarray(train.rows), "train_cols": np.asarray(train.cols)}
        summary["saved"] = jmf.io.save_factors(args.out, model.factors, arrays=arrays, metadata={
            k: v for k, v in summary.items() if k not in ("validation",)} | {"clip": list(model.clip)})
    if args.json:
        print(json.dumps(summary, indent=1, default=float))
        return 0
    if model.search is not None:
        tried = ", ".join(f"{r['choice']} {r['validation_rmse']:.4f}" for r in summary["validation"])
        print(f"        chose {model.params['choice']} (validation RMSE: {tried})")
    print(f"result  training RMSE {metrics['train_rmse']:.4g}")
    if "test_rmse" in metrics:
        where = f"{args.test} ({metrics['test_n']} ratings)" if test is not None else "held-out"
        print(f"        {where} RMSE {metrics['test_rmse']:.4g}, MAE {metrics['test_mae']:.4g}")
    print(f"time    {seconds:.2f} s{_compile_note(log)}")
    if args.out is not None:
        print(f"saved   {summary['saved']}; try: jmf recommend {summary['saved']} --user ID")
    return 0


def _fit_solver(args, name: str, solver, params: dict, info: dict, prepared, test) -> int:
    """``jmf fit FILE --rank K [--solver NAME]``: one fit of the named solver."""
    import jax
    import numpy as np

    import jmf
    from jmf._src.compilation import compilations
    from jmf._src.experiments.runner import _compatibility, _member_metrics

    shape = prepared.train.shape
    try:
        jmf.init.get_initializer(args.init)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--init: {exc}") from None
    problem = _compatibility(solver, prepared.train)
    if problem is not None:
        raise UsageError(f"solver {name!r} cannot fit this data: {problem}")
    note = _underdetermined(name, params, prepared.train, args.rank)
    if note:
        print(f"note: {note}", file=sys.stderr)

    label = name + ("(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")
    if not args.json:
        kind = info.get("kind", "dense")
        observed = prepared.info["n_observed"]
        print(f"data    {args.file}: {kind} {shape[0]} x {shape[1]}, {observed} observed entries"
              + (f" ({prepared.info['n_test']} held out)" if args.holdout else ""))
        print(f"solver  {label}, rank {args.rank}, init {args.init}, seed {args.seed}, max_iter {args.max_iter}, "
              f"tol {args.tol}")
    t0 = time.perf_counter()
    with compilations() as log:
        try:
            res = jmf.fit(prepared.train, solver, rank=args.rank, key=jax.random.key(args.seed), init=args.init,
                          max_iter=args.max_iter, tol=args.tol, check_every=args.check_every,
                          progress=not args.quiet and not args.json)
            res = jax.block_until_ready(res)
        except (ValueError, TypeError) as exc:
            raise UsageError(str(exc)) from None
    seconds = time.perf_counter() - t0
    f = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), res.factors)
    metrics = _member_metrics(prepared, f.W, f.H, f.row_bias, f.col_bias, f.offset, args.rank)
    if test is not None:
        r, c, v = test
        e = _errors(jmf.cf.predict(res.factors, r, c), v)
        metrics.update(test_rmse=e["rmse"], test_mae=e["mae"], test_file=args.test, test_n=int(len(v)))
    summary = {"file": args.file, "shape": list(shape), "n_observed": prepared.info["n_observed"],
               "solver": name, "params": params, "rank": args.rank, "status": res.status_name,
               "n_iter": int(res.n_iter), "loss": float(res.loss), **metrics, "seconds": seconds,
               "compiled_programs": log.programs - log.cache_hits, "compile_seconds": log.seconds}
    if args.out is not None:
        arrays = {}
        for k in ("user_ids", "item_ids"):
            if k in info:
                arrays[k] = np.asarray(info[k])
        if info.get("kind") == "ratings":
            arrays.update(train_rows=np.asarray(prepared.train.rows), train_cols=np.asarray(prepared.train.cols))
        path = jmf.io.save_factors(args.out, res.factors, metadata={k: v for k, v in summary.items()},
                                   arrays=arrays)
        summary["saved"] = path
    if args.json:
        print(json.dumps(summary, indent=1, default=float))
    else:
        from jmf._src.registry import solver_entry

        # The solver's defaults count too (ratings_gradient's l2 = 0.1, svdpp's l2 and implicit_l2).
        settings = {**solver_entry(name).defaults(), **params}
        penalized = any(("l1" in k or "l2" in k) and v for k, v in settings.items())
        print(f"result  {res.status_name} after {int(res.n_iter)} iterations; final loss {float(res.loss):.6g} "
              f"(mean squared error over observed entries{' plus penalty' if penalized else ''})")
        line = f"        relative error {metrics['rel_error']:.4g}, training RMSE {metrics['train_rmse']:.4g}"
        if "svd_rel_error" in metrics:
            line += f" (best possible at rank {args.rank}, SVD: {metrics['svd_rel_error']:.4g})"
        print(line)
        if "test_rmse" in metrics:
            where = args.test if test is not None else "held-out"
            print(f"        {where} RMSE {metrics['test_rmse']:.4g}, MAE {metrics['test_mae']:.4g}")
        print(f"time    {seconds:.2f} s{_compile_note(log)}")
        if args.out is not None:
            W, H = res.factors.W, res.factors.H
            print(f"saved   {summary['saved']} (W {W.shape[0]}x{W.shape[1]}, H {H.shape[0]}x{H.shape[1]}"
                  f"{', biases' if res.factors.has_biases else ''}); load with jmf.io.load_factors")
    return 1 if res.status_name == "DIVERGED" else 0


def _underdetermined(name: str, params: dict, data, rank: int) -> Optional[str]:
    """A warning when plain ALS (no ridge) fits rows or columns that observe fewer entries than the rank.

    Their normal equations are singular: the solver stays finite (a rounding-level floor), but
    those factors are fitted to nothing, which shows as a training error far below the
    held-out one -- or, before the floor, as a silent DIVERGED.
    """
    import numpy as np

    from jmf._src.data import Dense

    l2 = params.get("l2", 0.0)  # already checked by the solver factory: a number or a pair
    if name != "als" or any(v > 0 for v in (l2 if isinstance(l2, (list, tuple)) else [l2])):
        return None
    if isinstance(data, Dense):
        if data.weights is None:
            return None
        w = np.asarray(data.weights) > 0
        per_row, per_col = w.sum(axis=1), w.sum(axis=0)
    else:
        live = np.ones(data.nnz, bool) if data.weights is None else np.asarray(data.weights) > 0
        per_row = np.bincount(np.asarray(data.rows)[live], minlength=data.shape[0])
        per_col = np.bincount(np.asarray(data.cols)[live], minlength=data.shape[1])
    rows, cols = int((per_row < rank).sum()), int((per_col < rank).sum())
    if not rows and not cols:
        return None
    return (f"als without a ridge penalty: {rows} rows and {cols} columns have fewer observed entries than "
            f"rank {rank}, so their factors are not determined by the data (overfitting, or a singular "
            "solve); add a penalty, e.g. -p l2=1")


