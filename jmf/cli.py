"""The ``jmf`` command: factorize a matrix file, or run an experiment grid.

    jmf fit data.npy --rank 10                      # A ~ W H with the default solver, summary printed
    jmf fit ratings.csv --holdout 0.2 --out model.npz   # the default ratings model, rank chosen on the data
    jmf fit u1.base --test u1.test --json           # evaluate on a given test file
    jmf recommend model.npz --user 1 -n 10 --items movies.csv
    jmf experiment grid.toml --out results/grid     # resumable grid of fits, table and figures
    jmf solvers                                     # what --solver accepts

Exit status: 0 on success, 2 for a usage problem (missing file, unknown
solver, bad option), 1 if a fit diverged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

DESCRIPTION = """\
jmf: matrix factorization with JAX.  Approximates a matrix A (m x n) by the
product of two thin matrices, A ~ W H with W (m x k) and H (k x n), for
compression, denoising, parts-based representations (nonnegative
factorization) and predicting missing entries (recommendation).
"""

EPILOG = """\
examples:
  jmf fit data.npy --rank 10
  jmf fit data.csv --rank 5 --solver hals --max-iter 500 --out model.npz
  jmf fit ratings.csv --holdout 0.2 --out model.npz
  jmf fit u1.base --test u1.test --json
  jmf recommend model.npz --user 1 -n 10 --items movies.csv
  jmf experiment grid.toml --out results/grid
  jmf fit --help        (options of one command)

Python: import jmf; jmf.fit(A, jmf.solvers.als(), rank=10, key=0).  See README.md.
"""

FIT_HELP = """\
Factorize the matrix in FILE as A ~ W H with rank k and print a summary.

FILE formats:
  .npy            one 2-D numeric array
  .npz            one 2-D array (or named 'A'), or a scipy.sparse.save_npz file
  .mtx            Matrix Market (sparse: stored entries are the observed ones)
  .csv .tsv .txt  a dense numeric table (NaN or an empty field = missing entry),
                  or a ratings table: one 'user,item,rating' row per observed entry
                  (recognized by its header, or force with --format ratings)
  .data .dat      ratings files such as MovieLens u.data / ratings.dat

The loss is the mean squared error over the observed entries (plus any
penalty); missing entries are ignored, never treated as zeros.

A ratings table without --solver gets the default ratings model
(jmf.cf.fit_ratings): Bayesian PMF with biases, its rank chosen on a
validation holdout of the training entries (--rank fixes it instead).
Any other matrix, or a named --solver, needs --rank.
"""


def _param(text: str):
    """``KEY=VALUE`` as (key, raw text); the value is parsed once the solver, hence its type, is known."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{key!r} is not a valid hyperparameter name")
    return key, value


def _solver_params(name: str, pairs) -> dict:
    """Typed hyperparameters of solver ``name`` from ``-p`` pairs, parsed by the registry's declared types.

    Unknown keys and values that do not fit the declared type are usage errors.
    """
    from jmf._src.registry import parse_param

    params = {}
    for key, text in pairs:
        try:
            params[key] = parse_param(name, key, text)
        except (ValueError, TypeError) as exc:
            raise UsageError(str(exc)) from None
    return params


def _tol(text: str):
    if text.lower() in ("none", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"tol must be a number or 'none', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"tol must be >= 0, got {text!r}")
    return value


def _seed(text: str):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < 2**63:  # jax.random.key overflows beyond 64 bits
        raise argparse.ArgumentTypeError(f"the seed must be in [0, 2**63), got {text}")
    return value


def _positive_int(text: str):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _fraction(text: str):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, like every other error of the command."""

    def error(self, message):
        _print_error(self.prog, message)
        self.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jmf", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the versions of jmf and JAX, and the devices")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")

    fit = sub.add_parser("fit", help="factorize one matrix file and print a summary (loss, status, errors)",
                         description=FIT_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    fit.add_argument("file", metavar="FILE", help="the matrix (.npy .npz .mtx .csv .tsv .txt, or a ratings table)")
    fit.add_argument("--rank", "-k", type=_positive_int, default=None, metavar="K",
                     help="number of components k (1 <= k <= min(m, n)); optional for a ratings table "
                          "(chosen on the training data)")
    fit.add_argument("--solver", "-s", default=None, metavar="NAME",
                     help="solver name: als (default for matrices), adam, sgd, hals, mu, svd, ... (see 'jmf solvers'); "
                          "a ratings table gets the default ratings model unless one is named")
    fit.add_argument("--param", "-p", type=_param, action="append", default=[], metavar="KEY=VALUE",
                     help="solver hyperparameter, repeatable, e.g. -p l2=0.1 -p learning_rate=0.01")
    fit.add_argument("--max-iter", type=_positive_int, default=200, metavar="N",
                     help="maximum number of iterations (default 200)")
    fit.add_argument("--tol", type=_tol, default=1e-4,
                     help="stop when the loss improves by less than tol x the initial loss between checks "
                          "(default 1e-4; 'none' runs all iterations)")
    fit.add_argument("--check-every", type=_positive_int, default=10, metavar="N",
                     help="iterations between loss checks (default 10)")
    fit.add_argument("--init", default="random",
                     help="initializer: random (default), normal, uniform, svd, nndsvd, ...")
    fit.add_argument("--seed", type=_seed, default=0, help="random seed of the initialization (default 0)")
    fit.add_argument("--biases", action="store_true",
                     help="also fit row and column biases and a global offset (ratings)")
    fit.add_argument("--holdout", type=_fraction, default=0.0, metavar="F",
                     help="hold out a fraction F of the observed entries and report the RMSE on them")
    fit.add_argument("--test", default=None, metavar="TEST_FILE",
                     help="a ratings file to evaluate on (e.g. MovieLens u1.test); ids are matched to FILE's")
    fit.add_argument("--format", choices=["auto", "dense", "ratings"], default="auto",
                     help="how to read a text file (default: auto-detect)")
    fit.add_argument("--out", "-o", default=None, metavar="MODEL.npz",
                     help="save the factors (W, H, biases; ratings ids) as a pickle-free .npz")
    fit.add_argument("--json", action="store_true", help="print the summary as JSON")
    fit.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    exp = sub.add_parser("experiment", help="run a grid of fits from a TOML file (resumable; table, figures)",
                         description="Run every fit of the grid in CONFIG.toml that is not already in the results "
                                     "file, then print a summary table and save figures.  A killed run resumes "
                                     "where it stopped.  See jmf.experiments for the file format.",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EXAMPLE_TOML)
    exp.add_argument("config", metavar="CONFIG.toml", help="the experiment description")
    exp.add_argument("--out", "-o", default=None, metavar="DIR",
                     help="output directory (default: 'out' in the file, else results/<name>)")
    exp.add_argument("--factors", action="store_true", help="save every fit's factors under DIR/factors/")
    exp.add_argument("--dry-run", action="store_true", help="list the grid and exit without fitting")
    exp.add_argument("--no-figures", action="store_true", help="skip the figures")
    exp.add_argument("--compile-cache", default=None, metavar="DIR",
                     help="persistent JAX compilation cache, so a resumed run does not recompile")
    exp.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    rec = sub.add_parser("recommend", help="top-n items for a user from a model saved by 'jmf fit --out'",
                         description="Print the n items with the highest predicted rating for a user (raw id as in "
                                     "the ratings file), leaving out the items the user rated in training.  With "
                                     "--items (e.g. MovieLens movies.csv: id,title,...) the titles are printed.")
    rec.add_argument("model", metavar="MODEL.npz", help="a model saved by 'jmf fit RATINGS --out MODEL.npz'")
    rec.add_argument("--user", "-u", required=True, metavar="ID", help="the user's raw id")
    rec.add_argument("-n", type=_positive_int, default=10, metavar="N", help="number of items (default 10)")
    rec.add_argument("--items", default=None, metavar="ITEMS.csv",
                     help="a table whose first column is the item id and second its title")
    rec.add_argument("--json", action="store_true", help="print the list as JSON")

    sub.add_parser("solvers", help="list the available solvers and their hyperparameters",
                   description="List the solver names --solver and experiment files accept.")
    return parser


_EXAMPLE_TOML = """\
example CONFIG.toml:
  name = "demo"
  ranks = [2, 5, 10]
  restarts = 3
  max_iter = 500
  tol = 1e-6

  [[datasets]]
  kind = "low_rank"          # also: nonnegative, digits, image, file (path = "..."), ratings
  m = 300
  n = 200
  rank = 5
  noise = 0.1
  holdout = 0.1              # optional: held-out entries for test RMSE

  [[solvers]]
  solver = "adam"
  learning_rate = [0.01, 0.03]   # a list is a grid axis

  [[solvers]]
  solver = "als"
  max_iter = 50                  # per-solver fit options
"""


class UsageError(Exception):
    """A problem with the user's input: reported in one line, exit status 2."""


def _print_error(prog: str, message: str) -> None:
    one_line = " ".join(str(message).split())  # messages quoting files or TOML may hold newlines
    print(f"{prog}: error: {one_line} (see '{prog} --help')", file=sys.stderr)


def _fail(parser: argparse.ArgumentParser, message: str) -> int:
    _print_error(parser.prog, message)
    return 2


def _cmd_fit(args) -> int:
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
        params = _solver_params(name, args.param)
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
        params = _solver_params(name, args.param)
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
        penalized = any(k.startswith(("l1", "l2")) and v for k, v in params.items())
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


def _cmd_recommend(args) -> int:
    """``jmf recommend MODEL --user ID``: the user's top-n unseen items, with titles from --items."""
    import numpy as np

    import jmf

    try:
        factors, meta = jmf.io.load_factors(args.model, with_metadata=True)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except (ValueError, TypeError, OSError) as exc:
        raise UsageError(f"cannot read model {args.model!r}: {exc}") from None
    arrays = meta.get("arrays", {})
    if "user_ids" not in arrays or "item_ids" not in arrays:
        raise UsageError(f"{args.model!r} has no user and item ids: save it with 'jmf fit RATINGS --out MODEL.npz'")
    users, items = np.asarray(arrays["user_ids"]), np.asarray(arrays["item_ids"])
    raw = args.user
    if users.dtype.kind in "iuf":
        try:
            raw = users.dtype.type(float(args.user))
        except ValueError:
            raise UsageError(f"--user: {args.user!r} is not an id of this model (ids are numbers)") from None
    hit = np.flatnonzero(users.astype(str) == str(raw)) if users.dtype.kind not in "iuf" else np.flatnonzero(
        users == raw)
    if hit.size == 0:
        raise UsageError(f"--user: {args.user!r} is not in the model ({len(users)} users, ids "
                         f"{users[0]} ... {users[-1]}); a new user has no factors to rank with")
    n_items = len(items)
    if args.n > n_items:
        raise UsageError(f"-n {args.n}: the model has only {n_items} items")
    titles = _item_titles(args.items, items) if args.items is not None else None
    seen = None
    if "train_rows" in arrays:
        r, c = np.asarray(arrays["train_rows"]), np.asarray(arrays["train_cols"])
        seen = jmf.Sparse(r, c, np.ones(len(r), np.float32), shape=(len(users), n_items))
    ranked, scores = jmf.cf.recommend(jmf.Factors(*(np.asarray(x) if x is not None else None for x in factors)),
                                      hit[:1], n=args.n, exclude_seen=seen is not None, seen=seen)
    ranked, scores = np.asarray(ranked)[0], np.asarray(scores)[0]
    offset = float(np.asarray(factors.offset)) if factors.offset is not None else 0.0
    row_bias = float(np.asarray(factors.row_bias)[hit[0]]) if factors.row_bias is not None else 0.0
    out = [{"item": items[j].item(), "predicted": float(sc) + offset + row_bias,
            **({"title": titles.get(str(items[j]), "")} if titles is not None else {})}
           for j, sc in zip(ranked, scores) if np.isfinite(sc)]
    if args.json:
        print(json.dumps({"user": raw.item() if hasattr(raw, "item") else raw, "items": out}, indent=1))
        return 0
    print(f"top {len(out)} for user {args.user}" + (" (items rated in training left out)" if seen is not None else ""))
    for i, rec in enumerate(out, 1):
        print(f"{i:3d}. {rec['item']!s:>10}  {rec['predicted']:.2f}" + (f"  {rec['title']}" if titles else ""))
    return 0


def _item_titles(path: str, items) -> dict:
    """Raw item id (as text) -> title, from a table whose first two columns are id and title."""
    import pandas as pd

    if not os.path.isfile(path):
        raise UsageError(f"--items: file not found: {path}")
    try:
        df = pd.read_csv(path, sep=None, engine="python", dtype=str, encoding_errors="replace")
    except (ValueError, OSError) as exc:
        raise UsageError(f"--items: cannot read {path!r}: {exc}") from None
    if df.shape[1] < 2:
        raise UsageError(f"--items: {path!r} needs at least two columns (item id, title)")
    ids = df.iloc[:, 0].astype(str).str.strip()
    if items.dtype.kind == "f":  # ids read as floats: match "1.0" to "1"
        ids = ids.str.replace(r"\.0$", "", regex=True)
    return dict(zip(ids, df.iloc[:, 1].astype(str)))


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


def _cmd_experiment(args) -> int:
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


def _cmd_solvers() -> int:
    from jmf._src.registry import describe_solvers

    print("solvers (use with --solver NAME and -p KEY=VALUE, or solver = \"NAME\" in an experiment file;\n"
          "a pair is written -p l2=[0.1,0.2], none/null where allowed):")
    print(describe_solvers())
    return 0


def _cmd_version() -> int:
    import jax

    import jmf

    print(f"jmf {jmf.__version__}, jax {jax.__version__}, devices: {', '.join(str(d) for d in jax.devices())}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``jmf`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0)
    if args.version:
        return _cmd_version()
    if args.command is None:
        parser.print_help()
        return 2
    sub = parser._subparsers._group_actions[0].choices[args.command]
    try:
        if args.command == "fit":
            return _cmd_fit(args)
        if args.command == "experiment":
            return _cmd_experiment(args)
        if args.command == "recommend":
            return _cmd_recommend(args)
        return _cmd_solvers()
    except UsageError as exc:
        return _fail(sub, str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
