"""The ``jmf`` command line: help texts, argument types, the parser and usage errors."""

from __future__ import annotations

import argparse
import sys

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


def print_error(prog: str, message: str) -> None:
    one_line = " ".join(str(message).split())  # messages quoting files or TOML may hold newlines
    print(f"{prog}: error: {one_line} (see '{prog} --help')", file=sys.stderr)


def _param(text: str):
    """``KEY=VALUE`` as (key, raw text); the value is parsed once the solver, hence its type, is known."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{key!r} is not a valid hyperparameter name")
    return key, value


def solver_params(name: str, pairs) -> dict:
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
        print_error(self.prog, message)
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


