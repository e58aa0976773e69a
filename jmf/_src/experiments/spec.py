"""The grid: :class:`Experiment` (Python or TOML), its cells, and the solver names it accepts."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import sys
from typing import Mapping, NamedTuple, Optional, Sequence

import numpy as np

from .._validation import check_int, check_tol
from ..registry import SOLVERS, make_solver, solver_entry, solver_names
from .prepare import _dataset_config
from .store import _jsonable

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
        from ..init import get_initializer

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
