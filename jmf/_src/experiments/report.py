"""Tables of results: load a results file, summarize over restarts, print markdown."""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import numpy as np

from .store import read_rows

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
