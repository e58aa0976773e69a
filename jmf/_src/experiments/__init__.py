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

The package: :mod:`.store` (the results file), :mod:`.prepare` (datasets),
:mod:`.spec` (the grid, TOML), :mod:`.runner` (cells through
:func:`jmf.fit_many`), :mod:`.report` (tables).
"""

from ..registry import DATASETS, make_solver, register_dataset
from .prepare import PreparedData, make_dataset
from .report import load_results, markdown_table, summary
from .runner import PlannedCell, plan, restart_keys, run
from .spec import DEFAULT_PARAMS, FIT_OPTIONS, Cell, Experiment, available_solvers, load_config, solver_parameters
from .store import ResultsWriter, read_rows

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
    "restart_keys",
    "DATASETS",
    "DEFAULT_PARAMS",
    "FIT_OPTIONS",
    "ResultsWriter",
    "plan",
    "PlannedCell",
    "solver_parameters",
]
