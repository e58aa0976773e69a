"""Running an experiment: one :func:`fit_many` call per cell, rows appended as cells finish."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..._version import __version__
from ..compilation import compilations
from ..data import Dense
from ..factors import Factors
from ..fit import fit_many
from ..io import save_factors
from ..registry import make_solver
from ..run.loop import Status
from .prepare import PreparedData, _make_dataset, make_dataset
from .report import load_results
from .spec import Cell, Experiment, load_config
from .store import ResultsWriter, read_rows


def restart_keys(seed: int, restarts: int):
    """Keys of restarts ``0..restarts-1``; key ``i`` does not depend on ``restarts``."""
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(restarts, dtype=jnp.uint32))


def _environment() -> dict:
    dev = jax.devices()[0]
    return {
        "versions": {"jmf": __version__, "jax": jax.__version__, "jaxlib": getattr(jax.lib, "__version__", None)
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

    keys = restart_keys(cell.seed, cell.restarts)
    opts = dict(cell.fit_options)
    with compilations() as timer:
        t0 = time.perf_counter()
        many = fit_many(data.train, solver, ranks=list(ranks), keys=keys, progress=False, **opts)
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
    try:
        return Status(v).name
    except ValueError:
        return str(v)


def _compatibility(solver, data) -> Optional[str]:
    from ..fit import _check_solver

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
