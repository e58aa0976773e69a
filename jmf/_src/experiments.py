"""Declarative experiment grids with resumable, crash-safe results.

An :class:`Experiment` is a grid ``datasets x solvers x hyperparameters x
ranks x restarts``.  :func:`run` executes it cell by cell, where a *cell*
is one (dataset, solver, hyperparameter setting): all ranks and restarts of
a cell are fitted by ONE :func:`jmf.fit_many` call, so each solver and shape
compiles once.  Every finished fit appends one row to a results file
(JSON lines); a rerun skips the rows already there.

Crash safety
------------
Rows are appended with ``O_APPEND``, one ``os.write`` of one complete line
followed by ``fsync``.  A process killed at any moment (even ``SIGKILL``)
can leave at most a torn *last* line; opening the file for a run truncates
such a tail, and readers ignore it.  A cell's rows are only written after
the whole cell finished, so a resumed run recomputes the unfinished cell
(all of it, with the shapes of the first attempt, so compiled code is
reused; fits are deterministic given their keys) and writes only the rows
that are missing.  Each row carries an ``id`` (a hash of everything that determines
the fit: dataset config, solver and hyperparameters, fit options, rank,
restart, seed); the file never holds two rows with the same id.  An
exclusive ``flock`` on the file stops two runs from writing to it at once.

Timing
------
``compile_seconds`` is the XLA tracing/lowering/compilation time spent in
the cell (from :mod:`jax.monitoring` events; 0 when the compiled function
was reused), ``cell_seconds`` the rest of the cell's wall time.  The members
of a cell run in lockstep inside one vmapped loop, so the time of a single
fit is estimated as ``seconds_per_iter = cell_seconds / (max n_iter x
members)`` and ``seconds = seconds_per_iter x n_iter``.

Example
-------
>>> exp = Experiment(
...     name="demo",
...     datasets=[{"kind": "low_rank", "m": 200, "n": 100, "rank": 5, "noise": 0.1}],
...     solvers=[{"solver": "adam", "learning_rate": [1e-2, 3e-2]}, {"solver": "als"}],
...     ranks=[3, 5, 8], restarts=4, max_iter=500)
>>> df = run(exp, "results/demo.jsonl")          # doctest: +SKIP
>>> summary(df)                                   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import hashlib
import inspect
import itertools
import json
import math
import os
import platform
import sys
import time
import warnings
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._validation import check_fraction, check_int, check_tol, numpy_rng
from .data import Dense, Sparse
from .factors import Factors
from .registry import DATASETS, SOLVERS, make_solver, register_dataset, solver_entry, solver_names

__all__ = [
    "Experiment",
    "Cell",
    "PreparedData",
    "run",
    "load_config",
    "read_rows",
    "load_results",
    "summary",
    "markdown_table",
    "make_solver",
    "available_solvers",
    "make_dataset",
    "register_dataset",
    "DATASETS",
    "ResultsWriter",
    "plan",
    "PlannedCell",
    "solver_parameters",
]

#: Keys of a solver spec that are fit options, not solver hyperparameters.
FIT_OPTIONS = ("max_iter", "tol", "check_every", "init")
_SOLVER_META = ("solver", "label") + FIT_OPTIONS


# -- solvers: the registry's names ----------------------------------------------------------

#: The declared default hyperparameters of every registered solver (used when a spec leaves them out).
DEFAULT_PARAMS: dict[str, dict] = {name: entry.defaults() for name, entry in SOLVERS.items()}


def available_solvers() -> list[str]:
    """Names usable as ``solver = "..."`` (the solver registry, :mod:`jmf._src.registry`)."""
    return solver_names()


def solver_parameters(name: str) -> dict:
    """The declared hyperparameters of solver ``name``: ``{name: Param}`` (type, default, range, doc)."""
    return {p.name: p for p in solver_entry(name).params}


# -- datasets -----------------------------------------------------------------------------


class PreparedData(NamedTuple):
    """A dataset ready to fit.

    Attributes
    ----------
    name : str
    config : dict
        JSON-serializable description (part of every row id).
    train : Dense or Sparse
        What the solvers fit (held-out entries removed or weighted 0).
    test : tuple (rows, cols, vals) of numpy arrays, or None
        Held-out entries for ``test_rmse``/``test_mae``.
    info : dict
        Known truth such as ``true_rank`` and ``noise`` (copied into rows).
    singular_values : ndarray or None
        Singular values of the fully observed unweighted dense training
        matrix (for the Eckart--Young optimum ``svd_rel_error``).
    """

    name: str
    config: dict
    train: Any
    test: Optional[tuple]
    info: dict
    singular_values: Optional[np.ndarray]


# Keys of a dataset spec that are options of the preparation, not parameters of the generator.
_DATA_OPTIONS = ("kind", "name", "seed", "missing", "holdout", "sparse", "dtype", "data")


def _fingerprint(data) -> str:
    h = hashlib.sha1()
    for leaf in jax.tree_util.tree_leaves(data):
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def _dataset_config(spec: Mapping) -> dict:
    """The JSON-able part of a dataset spec, validated (no data generated)."""
    spec = dict(spec)
    if "data" in spec:
        if "name" not in spec:
            raise ValueError("a dataset given as data needs a 'name'")
        data = spec.pop("data")
        spec["fingerprint"] = _fingerprint(data)
        spec.setdefault("kind", "data")
    kind = spec.get("kind")
    if kind is None:
        raise ValueError(f"dataset spec needs a 'kind' (one of {sorted(DATASETS)}) or 'data', got {spec}")
    if kind != "data":
        if kind not in DATASETS:
            raise ValueError(f"unknown dataset kind {kind!r}; available: {', '.join(sorted(DATASETS))}")
        params = {k: v for k, v in spec.items() if k not in _DATA_OPTIONS}
        gen = DATASETS[kind]
        sig = inspect.signature(gen)
        try:
            if "key" in sig.parameters:
                sig.bind(None, **params)
            else:
                sig.bind(**params)
        except TypeError as exc:
            raise ValueError(f"bad parameters for dataset kind {kind!r}: {exc}") from None
    for opt in ("missing", "holdout"):
        if opt in spec:
            spec[opt] = check_fraction(spec[opt], f"dataset option {opt}")
    if "dtype" in spec and spec["dtype"] not in ("float32", "float64"):
        raise ValueError(f"dataset option dtype must be 'float32' or 'float64', got {spec['dtype']!r}")
    if "seed" in spec:
        spec["seed"] = check_int(spec["seed"], "dataset option seed", lo=None)
    if "name" not in spec:
        extras = {k: v for k, v in spec.items() if k not in ("kind",)}
        spec["name"] = kind + (("-" + "-".join(f"{k}{v}" for k, v in sorted(extras.items()))) if extras else "")
    return _jsonable(spec)


def _split_entries(vals, weights, fraction, rng):
    """Hold out ``fraction`` of the observed entries; returns (train mask, test mask) over entries."""
    observed = np.flatnonzero(weights > 0) if weights is not None else np.arange(len(vals))
    n_test = int(round(fraction * len(observed)))
    test = np.zeros(len(vals), bool)
    test[rng.choice(observed, size=n_test, replace=False)] = True
    return ~test, test


def make_dataset(spec: Mapping) -> PreparedData:
    """Generate (or load) a dataset from its spec.

    Parameters
    ----------
    spec : dict
        ``kind`` (a key of :data:`DATASETS`) and its parameters, or ``data``
        (an array, Dense or Sparse) with a ``name``; plus options

        * ``seed`` (int, default 0): key of the generator and of the masks;
        * ``missing`` (fraction): entries hidden from the fit (never used);
        * ``holdout`` (fraction): observed entries held out as a test set;
        * ``sparse`` (bool): give the solvers a :class:`~jmf.Sparse` of the
          observed entries instead of a weighted :class:`~jmf.Dense`;
        * ``dtype`` ("float32" default, or "float64").

    Returns
    -------
    PreparedData
    """
    return _make_dataset(spec)


def _make_dataset(spec: Mapping, svd: bool = True) -> PreparedData:
    config = _dataset_config(spec)
    seed = int(config.get("seed", 0))
    key = jax.random.key(seed)
    k_gen, k_missing, k_holdout = jax.random.split(key, 3)
    dtype = np.float64 if config.get("dtype") == "float64" and jax.config.jax_enable_x64 else np.float32
    if "data" in spec:
        raw, info = spec["data"], {}
    else:
        gen = DATASETS[config["kind"]]
        params = {k: v for k, v in config.items() if k not in _DATA_OPTIONS}
        if "key" in inspect.signature(gen).parameters:
            params["key"] = k_gen
        raw = gen(**params)
        raw, info = raw if isinstance(raw, tuple) else (raw, {})
    info = dict(info)

    # Observed entries as triplets (dense matrices keep a weight array).
    if isinstance(raw, Sparse):
        if raw.batch_shape:
            raise ValueError(f"dataset {config['name']!r} is a batch; experiments take single matrices")
        shape = raw.shape
        rows, cols = np.asarray(raw.rows), np.asarray(raw.cols)
        vals = np.asarray(raw.vals, np.float64)
        weights = None if raw.weights is None else np.asarray(raw.weights, np.float64)
        dense = None
    else:
        if isinstance(raw, Dense):
            if raw.batch_shape:
                raise ValueError(f"dataset {config['name']!r} is a batch; experiments take single matrices")
            A = np.asarray(raw.A, np.float64)
            weights = None if raw.weights is None else np.asarray(raw.weights, np.float64)
        else:
            A = np.asarray(raw, np.float64)
            if A.ndim != 2:
                raise ValueError(f"dataset {config['name']!r} must be a 2-D matrix, got shape {A.shape}")
            weights = None
            if np.isnan(A).any():
                weights = (~np.isnan(A)).astype(np.float64)
                A = np.where(np.isnan(A), 0.0, A)
        shape = A.shape
        dense = A
        weights_full = weights
        rows, cols = (x.ravel() for x in np.indices(shape))
        vals = A.ravel()
        weights = None if weights_full is None else weights_full.ravel()

    rng_missing, rng_holdout = numpy_rng(k_missing), numpy_rng(k_holdout)
    keep = np.ones(len(vals), bool) if weights is None else weights > 0
    if config.get("missing"):
        _, hidden = _split_entries(vals, weights, config["missing"], rng_missing)
        keep &= ~hidden
    test = None
    if config.get("holdout"):
        w_keep = keep.astype(np.float64) if weights is None else weights * keep
        _, is_test = _split_entries(vals, w_keep, config["holdout"], rng_holdout)
        test = (rows[is_test].astype(np.int32), cols[is_test].astype(np.int32), vals[is_test])
        keep &= ~is_test
    if not keep.any():
        raise ValueError(f"dataset {config['name']!r}: no observed entry left after missing/holdout")

    full = keep.all() and weights is None
    if dense is not None and not config.get("sparse"):
        w = None if full else (keep * (1.0 if weights is None else weights)).reshape(shape)
        train = Dense(dense.astype(dtype), None if w is None else w.astype(dtype))
    else:
        sel = keep if weights is None else keep & (weights > 0)
        w = None if weights is None or np.all(weights[sel] == 1) else weights[sel].astype(dtype)
        train = Sparse(rows[sel], cols[sel], vals[sel].astype(dtype), shape, weights=w)
    sv = None
    if svd and dense is not None and full and shape[0] * shape[1] * min(shape) <= 4e9:  # a few seconds at most
        sv = np.linalg.svd(dense, compute_uv=False)
    info.update(shape=list(shape), n_observed=int(keep.sum()), n_test=0 if test is None else int(len(test[0])))
    return PreparedData(config["name"], config, train, test, _jsonable(info), sv)


# -- the grid -----------------------------------------------------------------------------


class Cell(NamedTuple):
    """One (dataset, solver, hyperparameters) combination: one :func:`jmf.fit_many` call."""

    dataset: dict  # the dataset spec as given (may hold arrays)
    dataset_config: dict  # its JSON-able config
    solver: str
    label: str
    params: dict
    fit_options: dict
    ranks: tuple
    restarts: int
    seed: int

    def row_id(self, rank: int, restart: int) -> str:
        """Stable id of one fit: a hash of everything that determines it."""
        payload = {"dataset": self.dataset_config, "solver": self.solver, "params": self.params,
                   "fit": self.fit_options, "rank": int(rank), "restart": int(restart), "seed": self.seed}
        return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]

    def row_ids(self) -> list[tuple[int, int, str]]:
        return [(r, s, self.row_id(r, s)) for r in self.ranks for s in range(self.restarts)]


def _expand(spec: Mapping) -> list[tuple[dict, dict]]:
    """Expand list-valued hyperparameters into a grid; returns [(params, varying)]."""
    params = {k: v for k, v in spec.items() if k not in _SOLVER_META}
    axes = {k: v for k, v in params.items() if isinstance(v, list)}
    fixed = {k: v for k, v in params.items() if k not in axes}
    for k, v in axes.items():
        if len(v) == 0:
            raise ValueError(f"solver {spec.get('solver')!r}: hyperparameter {k!r} has an empty list of values")
    out = []
    for combo in itertools.product(*axes.values()):
        varying = dict(zip(axes.keys(), combo))
        out.append(({k: varying[k] if k in varying else fixed[k] for k in params}, varying))
    return out


def _label(name: str, params: dict, varying: dict, label: Optional[str]) -> str:
    show = varying if label is not None else params
    base = label if label is not None else name
    if not show:
        return base
    return f"{base}(" + ", ".join(f"{k}={_short(v)}" for k, v in show.items()) + ")"


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "(" + ",".join(_short(x) for x in v) + ")"
    return str(v)


def _tol_option(value, owner=None):
    """``tol`` from a config: a nonnegative float, or None spelled None, "none" or false."""
    if value is False or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    try:
        return check_tol(value, owner=owner)
    except TypeError as exc:
        raise ValueError(f"{exc} (write tol = \"none\" to run max_iter iterations)") from None


def _check_ranks(ranks) -> tuple:
    if isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool):
        ranks = [int(ranks)]
    try:
        ranks = tuple(ranks)
    except TypeError:
        raise ValueError(f"ranks must be a list of positive ints, got {ranks!r}") from None
    if not ranks or any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1 for r in ranks):
        raise ValueError(f"ranks must be a non-empty list of positive ints, got {list(ranks)!r}")
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"ranks has repeated values: {list(ranks)}")
    return tuple(int(r) for r in ranks)


@dataclasses.dataclass
class Experiment:
    """A grid of fits: ``datasets x solvers (x hyperparameter grids) x ranks x restarts``.

    Parameters
    ----------
    name : str
    datasets : list of dict
        Dataset specs (see :func:`make_dataset`), e.g.
        ``{"kind": "low_rank", "m": 300, "n": 200, "rank": 10, "noise": 0.1, "holdout": 0.1}``.
    solvers : list of dict or str
        ``{"solver": "adam", "learning_rate": [1e-2, 3e-2]}``: a registered
        solver name (``jmf solvers`` lists them with their declared
        hyperparameters) plus hyperparameters.  A *list* value
        is a grid axis (every combination is a cell); a tuple (or in TOML a
        list of lists, e.g. ``l2 = [[0.1, 0.0]]``) is a single value.
        Optional keys: ``label`` (name in tables and plots) and per-solver
        fit options overriding the experiment's (``max_iter``, ``tol``,
        ``check_every``, ``init``).  Biases are a solver hyperparameter
        (``{"solver": "als", "biases": true}``).  A plain string is a name
        with default hyperparameters.
    ranks : list of int
    restarts : int, default 1
        Random initializations per rank.  Restart ``i`` uses key
        ``fold_in(key(seed), i)`` for every solver, so solvers start from the
        same factors.
    seed : int, default 0
    max_iter, tol, check_every, init
        Fit options (see :func:`jmf.fit`); ``tol=None`` runs ``max_iter`` iterations.
    """

    name: str = "experiment"
    datasets: Sequence = ()
    solvers: Sequence = ()
    ranks: Sequence = (2,)
    restarts: int = 1
    seed: int = 0
    max_iter: int = 200
    tol: Optional[float] = 1e-4
    check_every: int = 10
    init: str = "random"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if isinstance(self.datasets, Mapping):
            self.datasets = [self.datasets]
        if isinstance(self.solvers, (str, Mapping)):
            self.solvers = [self.solvers]
        self.datasets = [dict(d) for d in self.datasets]
        self.solvers = [{"solver": s} if isinstance(s, str) else dict(s) for s in self.solvers]
        if not self.datasets:
            raise ValueError("datasets is empty: give at least one dataset spec")
        if not self.solvers:
            raise ValueError("solvers is empty: give at least one solver spec, e.g. {'solver': 'adam'}")
        for i, s in enumerate(self.solvers):
            if "solver" not in s:
                raise ValueError(f"solvers[{i}] has no 'solver' name: {s}")
        self.ranks = _check_ranks(self.ranks)
        self.restarts = check_int(self.restarts, "restarts")
        self.seed = check_int(self.seed, "seed", lo=None)
        opts = self.fit_options({})  # max_iter, tol, check_every: refuse e.g. tol = "abc" now
        self.max_iter, self.tol, self.check_every = opts["max_iter"], opts["tol"], opts["check_every"]

    @classmethod
    def from_dict(cls, config: Mapping) -> "Experiment":
        """Build from a plain dict (e.g. parsed TOML); unknown keys are an error."""
        config = dict(config)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - fields - {"results", "factors", "out"})
        if unknown:
            raise ValueError(f"unknown experiment keys {unknown}; allowed: {sorted(fields)}")
        # TOML has no null: "none" (or false) spells tol=None.  Only a tol that is present is
        # translated -- a solver without its own tol must inherit the experiment's, not None.
        if "tol" in config:
            config["tol"] = _tol_option(config["tol"])
        solvers = config.get("solvers", [])
        if isinstance(solvers, (list, tuple)):
            config["solvers"] = [dict(s, tol=_tol_option(s["tol"])) if isinstance(s, Mapping) and "tol" in s else s
                                 for s in solvers]
        return cls(**{k: v for k, v in config.items() if k in fields})

    def fit_options(self, spec: Mapping) -> dict:
        """The fit options of one solver spec (the experiment's, overridden by the spec's), validated."""
        opts = {k: getattr(self, k) for k in FIT_OPTIONS}
        opts.update({k: spec[k] for k in FIT_OPTIONS if k in spec})
        where = f"solver {spec.get('solver')!r}" if any(k in spec for k in FIT_OPTIONS) else None
        opts["max_iter"] = check_int(opts["max_iter"], "max_iter", where)
        opts["check_every"] = check_int(opts["check_every"], "check_every", where)
        opts["tol"] = _tol_option(opts["tol"], where)
        return opts

    def cells(self) -> list[Cell]:
        """All cells, dataset-major (so each dataset is generated once), validated."""
        from .init import get_initializer

        solver_cells = []
        for spec in self.solvers:
            name = spec["solver"]
            opts = self.fit_options(spec)
            if isinstance(opts["init"], str):
                get_initializer(opts["init"])
            for params, varying in _expand(spec):
                make_solver(name, **params)  # validates name and hyperparameters now, before any fit
                label = _label(name, params, varying, spec.get("label"))
                solver_cells.append((name, label, _jsonable(params), _jsonable(opts)))
        labels = [c[1] for c in solver_cells]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"solver labels must be unique, {dup} repeat; give each spec a distinct 'label'")
        cells = []
        for d in self.datasets:
            config = _dataset_config(d)
            for name, label, params, opts in solver_cells:
                cells.append(Cell(d, config, name, label, params, opts, self.ranks, self.restarts, self.seed))
        return cells

    def row_ids(self) -> list[str]:
        """Ids of every row the complete experiment produces."""
        return [rid for cell in self.cells() for _, _, rid in cell.row_ids()]


def load_config(path) -> tuple[Experiment, dict]:
    """Read an experiment from a TOML file.

    Top-level keys are the :class:`Experiment` fields (``name``, ``ranks``,
    ``restarts``, ``seed``, ``max_iter``, ``tol`` (``"none"`` for None),
    ``check_every``, ``init``), tables ``[[datasets]]`` and ``[[solvers]]``,
    and optionally ``out`` (output directory, relative to the file) and
    ``factors`` (true: save every fit's factors).

    Returns
    -------
    (Experiment, dict)
        The experiment and the run options (``out``, ``factors``).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such experiment file: {path!r}")
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    with open(path, "rb") as fh:
        try:
            config = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path!r} is not valid TOML: {exc}") from None
    base = os.path.dirname(os.path.abspath(path))
    for d in config.get("datasets", []):
        if isinstance(d, dict) and d.get("kind") == "file" and "path" in d and not os.path.isabs(d["path"]):
            d["path"] = os.path.normpath(os.path.join(base, d["path"]))
    options = {"out": config.get("out"), "factors": bool(config.get("factors", False))}
    if options["out"] is not None and not os.path.isabs(options["out"]):
        options["out"] = os.path.normpath(os.path.join(base, options["out"]))
    return Experiment.from_dict(config), options


# -- results file -------------------------------------------------------------------------


def _clean(x):
    """JSON-safe value: numpy scalars to Python, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _jsonable(d):
    return json.loads(json.dumps(_clean(d), sort_keys=True))


def read_rows(path, *, strict: bool = False) -> list[dict]:
    """Rows of a results file, tolerating a torn last line.

    Everything after the last newline (a line cut by a crash) is ignored.
    A complete line that is not valid JSON (which jmf never writes) is
    skipped with a warning, or raises with ``strict=True``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    with open(path, "rb") as fh:
        raw = fh.read()
    return _parse(raw, path, strict)[0]


def _parse(raw: bytes, path: str, strict: bool):
    end = raw.rfind(b"\n") + 1  # bytes after the last newline are a torn tail
    rows = []
    for lineno, line in enumerate(raw[:end].split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            if strict:
                raise ValueError(f"{path}:{lineno}: invalid results line: {exc}") from None
            warnings.warn(f"{path}:{lineno}: skipping an invalid results line", RuntimeWarning, stacklevel=3)
            continue
        rows.append(row)
    return rows, end


class ResultsWriter:
    """Append-only, crash-safe JSON-lines writer (one ``os.write`` + ``fsync`` per row).

    Opening takes an exclusive lock, truncates a torn last line left by a
    killed run, and loads the ids already present.  Use as a context manager.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.fd: Optional[int] = None
        self.ids: set = set()

    def __enter__(self) -> "ResultsWriter":
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        created = not os.path.exists(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _lock(fd, self.path)
            raw = _read_all(fd)
            rows, end = _parse(raw, self.path, strict=False)
            if end < len(raw):  # a torn line from a killed run: cut it off before appending
                os.ftruncate(fd, end)
                os.fsync(fd)
            self.ids = {r.get("id") for r in rows}
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        if created:
            from .io import _fsync_dir

            _fsync_dir(directory)
        return self

    def append(self, row: dict) -> None:
        if self.fd is None:
            raise RuntimeError("ResultsWriter is not open")
        rid = row.get("id")
        if rid in self.ids:
            return
        data = (json.dumps(_clean(row), sort_keys=True, allow_nan=False) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        os.fsync(self.fd)
        self.ids.add(rid)

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # also releases the lock
            self.fd = None


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, min(1 << 24, size - offset), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _lock(fd: int, path: str) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise RuntimeError(f"{path!r} is being written by another running experiment") from None
        raise


# -- running --------------------------------------------------------------------------------


class _CompileTimer:
    """Sum of JAX compilation event durations (tracing, lowering, XLA compile) inside the block."""

    def __init__(self):
        self.seconds = 0.0

    def _listen(self, event: str, duration: float, **_):
        if event.startswith("/jax/core/compile/"):
            self.seconds += duration

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
        if unregister is not None:
            with contextlib.suppress(Exception):
                unregister(self._listen)


def restart_keys(seed: int, restarts: int):
    """Keys of restarts ``0..restarts-1``; key ``i`` does not depend on ``restarts``."""
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(restarts, dtype=jnp.uint32))


def _environment() -> dict:
    import jmf

    dev = jax.devices()[0]
    return {
        "versions": {"jmf": jmf.__version__, "jax": jax.__version__, "jaxlib": getattr(jax.lib, "__version__", None)
                     or _jaxlib_version(), "numpy": np.__version__, "python": platform.python_version()},
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
        "n_devices": jax.device_count(),
        "x64": bool(jax.config.jax_enable_x64),
    }


def _jaxlib_version():
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # pragma: no cover
        return None


def _member_metrics(data: PreparedData, W, H, rb, cb, off, rank: int) -> dict:
    """Training relative error / RMSE, held-out RMSE / MAE and the SVD optimum (float64, host)."""
    out: dict = {}
    train = data.train
    model = Factors(W, H, rb, cb, off)  # NumPy float64 leaves: predicted on the host in float64
    if isinstance(train, Dense):
        A = np.asarray(train.A, np.float64)
        resid = A - model.predict()
        w = None if train.weights is None else np.asarray(train.weights, np.float64)
        num = np.sum(resid**2) if w is None else np.sum(w * resid**2)
        den = np.sum(A**2) if w is None else np.sum(w * A**2)
        n_obs = A.size if w is None else np.sum(w)
    else:
        rows, cols = np.asarray(train.rows), np.asarray(train.cols)
        vals = np.asarray(train.vals, np.float64)
        w = np.ones_like(vals) if train.weights is None else np.asarray(train.weights, np.float64)
        resid = vals - model.predict(rows, cols)
        num, den, n_obs = np.sum(w * resid**2), np.sum(w * vals**2), np.sum(w)
    out["rel_error"] = float(np.sqrt(num / den)) if den > 0 else float("nan")
    out["train_rmse"] = float(np.sqrt(num / n_obs))
    if data.singular_values is not None:
        s2 = data.singular_values.astype(np.float64) ** 2
        out["svd_rel_error"] = float(np.sqrt(np.sum(s2[rank:]) / np.sum(s2)))
        out["svd_loss"] = float(np.sum(s2[rank:]) / n_obs)  # the best unregularized loss at this rank
    if data.test is not None and len(data.test[0]):
        r, c, v = data.test
        err = v - model.predict(r, c)
        out["test_rmse"] = float(np.sqrt(np.mean(err**2)))
        out["test_mae"] = float(np.mean(np.abs(err)))
    return out


def _history(loss_history, iterations, n_iter) -> tuple[list, list]:
    h = np.asarray(loss_history, np.float64)
    it = np.asarray(iterations)
    keep = np.isfinite(h)  # entries after the fit stopped are NaN
    return np.minimum(it[keep], n_iter).tolist(), h[keep].tolist()


def _run_cell(cell: Cell, data: PreparedData, solver, ranks: tuple):
    """Fit one cell (all ``ranks`` x restarts) in one fit_many call; returns rows."""
    import jmf

    keys = restart_keys(cell.seed, cell.restarts)
    opts = dict(cell.fit_options)
    with _CompileTimer() as timer:
        t0 = time.perf_counter()
        many = jmf.fit_many(data.train, solver, ranks=list(ranks), keys=keys, progress=False, **opts)
        many = jax.block_until_ready(many)
        wall = time.perf_counter() - t0
    compile_s = min(timer.seconds, wall)
    run_s = wall - compile_s
    res = jax.tree_util.tree_map(np.asarray, many.result._replace(state=None))
    n_iter = np.asarray(res.n_iter)
    members = int(n_iter.size)
    per_iter = run_s / max(int(n_iter.max()) * members, 1)
    f = res.factors
    rows = []
    for i, r in enumerate(ranks):
        for s in range(cell.restarts):
            W, H = f.W[i, s, :, :r].astype(np.float64), f.H[i, s, :r, :].astype(np.float64)
            leaf = lambda x: None if x is None else np.asarray(x[i, s], np.float64)  # noqa: E731
            metrics = _member_metrics(data, W, H, leaf(f.row_bias), leaf(f.col_bias), leaf(f.offset), r)
            its, hist = _history(res.loss_history[i, s], res.iterations, int(n_iter[i, s]))
            rows.append({
                "id": cell.row_id(r, s),
                "dataset": data.name,
                "solver": cell.label,
                "solver_name": cell.solver,
                "params": cell.params,
                "rank": int(r),
                "restart": int(s),
                "seed": cell.seed,
                **cell.fit_options,
                "loss": float(res.loss[i, s]),
                **metrics,
                "n_iter": int(n_iter[i, s]),
                "status": _status_name(int(res.status[i, s])),
                "seconds": per_iter * int(n_iter[i, s]),
                "seconds_per_iter": per_iter,
                "compile_seconds": compile_s,
                "cell_seconds": run_s,
                "members": members,
                "history_iterations": its,
                "history_loss": hist,
                "dataset_config": cell.dataset_config,
                "dataset_info": data.info,
            })
    return rows, (f, ranks)


def _status_name(v: int) -> str:
    from .fit import Status

    try:
        return Status(v).name
    except ValueError:
        return str(v)


def _compatibility(solver, data) -> Optional[str]:
    from .fit import _check_solver

    try:
        _check_solver(solver, data)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


class PlannedCell(NamedTuple):
    """What :func:`run` will do with one cell: ``todo`` fits to run, ``done`` already in the results, ``skipped``."""

    cell: Cell
    todo: int
    done: int
    skipped: int
    reason: Optional[str] = None


def _as_experiment(experiment) -> "Experiment":
    if isinstance(experiment, (str, os.PathLike)):
        experiment, _ = load_config(experiment)
    elif isinstance(experiment, Mapping):
        experiment = Experiment.from_dict(experiment)
    if not isinstance(experiment, Experiment):
        raise TypeError(f"experiment must be an Experiment, a dict or a TOML path, got {type(experiment).__name__}")
    return experiment


def _check_ranks_fit(cell: Cell, data: PreparedData) -> None:
    too_big = [r for r in cell.ranks if r > min(data.train.shape)]
    if too_big:
        raise ValueError(f"ranks {too_big} exceed min(m, n) = {min(data.train.shape)} "
                         f"of dataset {data.name!r} {data.train.shape}")


def plan(experiment, results=None) -> list[PlannedCell]:
    """What :func:`run` would do, cell by cell, without fitting anything.

    Every dataset is generated (or read) once, as :func:`run` does, so the
    problems :func:`run` would only meet on the way -- a missing or unreadable
    file, a rank larger than a dataset, a solver that cannot fit a dataset
    (skipped) -- are known before any fit starts.  Rows already in
    ``results`` count as ``done``.

    Raises
    ------
    ValueError, TypeError, FileNotFoundError
        For an invalid experiment or dataset, or ranks that exceed a dataset's shape.
    """
    experiment = _as_experiment(experiment)
    cells = experiment.cells()
    have = {r.get("id") for r in read_rows(results)} if results is not None else set()
    out, prepared = [], {}
    for cell in cells:
        ids = [rid for _, _, rid in cell.row_ids()]
        done = sum(rid in have for rid in ids)
        dkey = json.dumps(cell.dataset_config, sort_keys=True)
        if dkey not in prepared:
            prepared.clear()  # cells are dataset-major: keep one dataset in memory
            prepared[dkey] = _make_dataset(cell.dataset, svd=False)
        data = prepared[dkey]
        problem = _compatibility(make_solver(cell.solver, **cell.params), data.train)
        if problem is not None:
            out.append(PlannedCell(cell, 0, done, len(ids) - done, problem))
            continue
        _check_ranks_fit(cell, data)
        out.append(PlannedCell(cell, len(ids) - done, done, 0))
    return out


def run(
    experiment,
    results="results.jsonl",
    *,
    factors_dir: Optional[str] = None,
    progress: bool = True,
    on_incompatible: str = "skip",
    log: Optional[Callable[[str], Any]] = None,
):
    """Run every missing fit of an experiment, appending one row per fit to ``results``.

    Parameters
    ----------
    experiment : Experiment, dict or path of a TOML file
    results : str
        JSON-lines results file (created with its directory; rows already in
        it are not recomputed).
    factors_dir : str, optional
        Also save each fit's factors as ``<factors_dir>/<row id>.npz`` (no
        pickle, atomic); the row's ``factors_file`` names it.  The file is
        written before the row, so a row always has its factors.
    progress : bool, default True
        tqdm bar over the fits of the grid.
    on_incompatible : {"skip", "error"}
        What to do with a solver that cannot fit a dataset (e.g. a
        nonnegative solver on signed data, a dense-only solver on sparse data).
    log : callable, optional
        Receives one-line messages (skipped cells); default: ``warnings.warn``
        for skips.

    Returns
    -------
    pandas.DataFrame
        The rows of this experiment found in ``results`` (see :func:`load_results`).
    """
    experiment = _as_experiment(experiment)
    if on_incompatible not in ("skip", "error"):
        raise ValueError(f"on_incompatible must be 'skip' or 'error', got {on_incompatible!r}")
    cells = experiment.cells()  # validates everything before any compute
    env = _environment()
    total = sum(len(c.ranks) * c.restarts for c in cells)
    if log is None:
        log = lambda msg: warnings.warn(msg, RuntimeWarning, stacklevel=3)  # noqa: E731

    with ResultsWriter(results) as writer:
        done = sum(1 for c in cells for _, _, rid in c.row_ids() if rid in writer.ids)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=done, unit="fit", desc=experiment.name, dynamic_ncols=True)
        try:
            prepared: dict[str, PreparedData] = {}
            for cell in cells:
                todo = [(r, s, rid) for r, s, rid in cell.row_ids() if rid not in writer.ids]
                if not todo:
                    continue
                if bar is not None:
                    bar.set_postfix_str(f"{cell.dataset_config['name']} / {cell.label}", refresh=True)
                dkey = json.dumps(cell.dataset_config, sort_keys=True)
                if dkey not in prepared:
                    prepared.clear()  # cells are dataset-major: keep one dataset in memory
                    prepared[dkey] = make_dataset(cell.dataset)
                data = prepared[dkey]
                solver = make_solver(cell.solver, **cell.params)
                problem = _compatibility(solver, data.train)
                if problem is not None:
                    msg = f"skipping {cell.label} on {data.name}: {problem}"
                    if on_incompatible == "error":
                        raise ValueError(msg)
                    log(msg)
                    if bar is not None:
                        bar.total -= len(todo)
                        bar.refresh()
                    continue
                # Refit the whole cell even if only some rows are missing: the same shapes as the first
                # attempt hit the compilation caches (in-process and JAX's persistent cache).
                ranks = cell.ranks
                _check_ranks_fit(cell, data)
                rows, (factors, _) = _run_cell(cell, data, solver, ranks)
                todo_ids = {t[2] for t in todo}
                for row in rows:
                    if row["id"] not in todo_ids:
                        continue
                    if factors_dir is not None:
                        from .factors import Factors
                        from .io import save_factors

                        i, s = ranks.index(row["rank"]), row["restart"]
                        r = row["rank"]
                        pick = lambda x: None if x is None else x[i, s]  # noqa: E731
                        ff = Factors(factors.W[i, s, :, :r], factors.H[i, s, :r, :], pick(factors.row_bias),
                                     pick(factors.col_bias), pick(factors.offset))
                        os.makedirs(factors_dir, exist_ok=True)
                        row["factors_file"] = save_factors(os.path.join(factors_dir, row["id"] + ".npz"), ff,
                                                           metadata={"id": row["id"], "solver": row["solver"],
                                                                     "dataset": row["dataset"], "rank": r,
                                                                     "restart": s})
                    row.update(experiment=experiment.name, time=datetime.datetime.now(datetime.timezone.utc)
                               .isoformat(timespec="seconds"), **env)
                    writer.append(row)
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    wanted = set(experiment.row_ids())
    return load_results(results, ids=wanted)


# -- tables ---------------------------------------------------------------------------------

_FRONT = ["dataset", "solver", "rank", "restart", "loss", "svd_loss", "rel_error", "svd_rel_error", "train_rmse",
          "test_rmse", "test_mae", "n_iter", "status", "seconds", "compile_seconds"]


def load_results(path, *, ids: Optional[Iterable[str]] = None):
    """Results file as a pandas DataFrame (one row per fit; torn last line ignored).

    Columns include ``dataset``, ``solver`` (label), ``solver_name``,
    ``params`` (dict), ``rank``, ``restart``, ``loss``, ``rel_error``,
    ``train_rmse``, ``svd_rel_error`` (dense fully observed data),
    ``test_rmse``/``test_mae`` (with a holdout), ``n_iter``, ``status``,
    ``seconds``, ``seconds_per_iter``, ``compile_seconds``,
    ``history_iterations``/``history_loss`` (lists), the fit options,
    ``versions``, ``device`` and ``time``.
    """
    import pandas as pd

    rows = read_rows(path)
    if ids is not None:
        ids = set(ids)
        rows = [r for r in rows if r.get("id") in ids]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["id"] + _FRONT)
    front = [c for c in _FRONT if c in df.columns]
    df = df[front + [c for c in df.columns if c not in front]]
    return df.sort_values(["dataset", "solver", "rank", "restart"], kind="stable").reset_index(drop=True)


def summary(df, by: Sequence[str] = ("dataset", "solver", "rank")):
    """One line per ``by`` group: best and median errors over restarts, iterations, time.

    Columns: ``fits``; ``best_rel_error``, ``median_rel_error`` and
    ``svd_rel_error`` with ``gap_to_svd = best / svd - 1`` where the SVD
    optimum is known; ``best_test_rmse``/``median_test_rmse`` with a
    holdout; ``median_n_iter``; ``converged`` (fraction of fits with status
    CONVERGED); ``median_seconds`` (per fit) and ``compile_seconds``.
    """
    import pandas as pd

    if df is None or len(df) == 0:
        return pd.DataFrame()
    by = [b for b in by if b in df.columns]
    g = df.groupby(by, sort=False)
    out = pd.DataFrame({"fits": g.size()})
    if "rel_error" in df:
        out["best_rel_error"] = g["rel_error"].min()
        out["median_rel_error"] = g["rel_error"].median()
    if "svd_rel_error" in df and df["svd_rel_error"].notna().any():
        out["svd_rel_error"] = g["svd_rel_error"].first()
        out["gap_to_svd"] = out["best_rel_error"] / out["svd_rel_error"] - 1
    if "test_rmse" in df and df["test_rmse"].notna().any():
        out["best_test_rmse"] = g["test_rmse"].min()
        out["median_test_rmse"] = g["test_rmse"].median()
    out["median_n_iter"] = g["n_iter"].median()
    out["converged"] = g["status"].apply(lambda s: float(np.mean(s == "CONVERGED")))
    out["median_seconds"] = g["seconds"].median()
    out["compile_seconds"] = g["compile_seconds"].max()
    return out.reset_index()


def markdown_table(df, digits: int = 4) -> str:
    """A DataFrame as a GitHub Markdown table (floats to ``digits`` significant digits; no extra dependency)."""

    def fmt(v):
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return ""
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.{digits}g}"
        return str(v)

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)
