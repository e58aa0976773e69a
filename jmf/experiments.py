"""Declarative experiment grids (Python or TOML) with crash-safe, resumable JSON-lines results.

See :mod:`jmf._src.experiments` for the file format and the guarantees.
"""

from jmf._src.experiments import (
    DATASETS,
    DEFAULT_PARAMS,
    Cell,
    Experiment,
    PlannedCell,
    PreparedData,
    ResultsWriter,
    available_solvers,
    load_config,
    load_results,
    make_dataset,
    make_solver,
    markdown_table,
    plan,
    read_rows,
    register_dataset,
    restart_keys,
    run,
    solver_parameters,
    summary,
)

__all__ = ["Experiment", "Cell", "PreparedData", "run", "load_config", "read_rows", "load_results", "summary",
           "markdown_table", "make_solver", "available_solvers", "make_dataset", "register_dataset",
           "restart_keys", "DATASETS", "DEFAULT_PARAMS", "ResultsWriter", "plan", "PlannedCell", "solver_parameters"]
