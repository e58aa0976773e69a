"""Figures for experiment results, fit results and images (matplotlib, no pyplot state).

The experiment figures take the DataFrame of :func:`jmf.experiments.load_results`
(one row per fit); every function returns a :class:`matplotlib.figure.Figure` built
without :mod:`matplotlib.pyplot`, so nothing depends on the interactive
backend and figures render with Agg when saved.  :func:`save` writes PNG
and SVG.  Colours are stable per solver label across figures.

* :func:`loss_curves` -- loss against iteration or against wall time, every
  restart thin and the median restart bold, with the SVD optimum when known;
* :func:`error_vs_rank` -- final error against rank, median over restarts
  with the min-max spread as a band;
* :func:`accuracy_vs_time` -- final error against time per fit;
* :func:`timing` -- time per fit and compilation time per solver;
* :func:`overview` -- the four panels in one figure.

For results and images (no experiment table needed):

* :func:`plot_loss` -- the loss curve of a :class:`jmf.FitResult`, or of
  every member of a :class:`jmf.FitManyResult` (lines or a band);
* :func:`plot_components` -- a grid of components as images (NMF parts);
* :func:`plot_reconstructions` -- an image beside its reconstructions, with PSNR.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence

import numpy as np

__all__ = ["loss_curves", "error_vs_rank", "accuracy_vs_time", "timing", "overview", "save", "solver_colors",
           "plot_loss", "plot_components", "plot_reconstructions"]

_METRIC_LABELS = {
    "rel_error": "relative error  ‖A − WH‖$_F$ / ‖A‖$_F$ (training entries)",
    "test_rmse": "held-out RMSE",
    "test_mae": "held-out MAE",
    "train_rmse": "training RMSE",
    "loss": "final loss (mean over observed entries)",
}
_SHORT = {"rel_error": "relative error", "test_rmse": "held-out RMSE", "test_mae": "held-out MAE",
          "train_rmse": "training RMSE", "loss": "final loss"}


def _figure(ax=None, figsize=(6.4, 4.2)):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def solver_colors(labels: Sequence[str]) -> dict:
    """A stable colour per solver label (sorted labels over the tab10 cycle)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {lab: cmap(i % 10) for i, lab in enumerate(sorted(set(labels)))}


def _select(df, dataset=None, rank=None):
    if df is None or len(df) == 0:
        raise ValueError("no results to plot (the DataFrame is empty)")
    if dataset is None:
        names = list(dict.fromkeys(df["dataset"]))
        if len(names) > 1:
            raise ValueError(f"results hold several datasets {names}; choose one with dataset=...")
        dataset = names[0]
    sub = df[df["dataset"] == dataset]
    if len(sub) == 0:
        raise ValueError(f"no results for dataset {dataset!r}; have {sorted(set(df['dataset']))}")
    if rank is not None:
        sub = sub[sub["rank"] == rank]
        if len(sub) == 0:
            raise ValueError(f"no results at rank {rank} for dataset {dataset!r}")
    return sub, dataset


def _maybe_log(ax, values, axis="y", ratio=20.0):
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0], dtype=float)
    if v.size and v.max() / v.min() > ratio:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def loss_curves(df, *, x: str = "iteration", dataset: Optional[str] = None, rank: Optional[int] = None,
                ax=None, title: Optional[str] = None, show_restarts: bool = True, logx: bool = False):
    """Loss against iteration (``x="iteration"``) or wall time (``x="seconds"``), one colour per solver.

    Each restart is a thin line; the restart with the median final loss is
    bold.  Wall time is the estimated time of a single fit, excluding
    compilation (``iteration x seconds_per_iter``, see :mod:`jmf.experiments`);
    ``logx=True`` puts it on a log scale (dropping the t = 0 point).
    With fully observed dense data, the dashed line is the SVD optimum
    (the smallest unregularized loss at this rank, Eckart--Young).

    Parameters
    ----------
    df : DataFrame from :func:`jmf.experiments.load_results`
    x : {"iteration", "seconds"}
    dataset : str, optional
        Required when ``df`` holds several datasets.
    rank : int, optional
        Defaults to the largest rank in ``df``.
    """
    if x not in ("iteration", "seconds"):
        raise ValueError(f"x must be 'iteration' or 'seconds', got {x!r}")
    sub, dataset = _select(df, dataset)
    if rank is None:
        rank = int(sub["rank"].max())
    sub = sub[sub["rank"] == rank]
    if len(sub) == 0:
        raise ValueError(f"no results at rank {rank} for dataset {dataset!r}")
    fig, ax = _figure(ax)
    colors = solver_colors(df["solver"])
    ys = []
    for label, g in sub.groupby("solver", sort=True):
        finals = g["loss"].to_numpy(dtype=float)
        order = np.argsort(np.where(np.isfinite(finals), finals, np.inf))
        median_pos = order[(len(order) - 1) // 2]
        for pos, (_, row) in enumerate(g.iterrows()):
            its = np.asarray(row["history_iterations"], dtype=float)
            loss = np.asarray(row["history_loss"], dtype=float)
            xs = its if x == "iteration" else its * float(row["seconds_per_iter"])
            if logx:  # the first point (iteration 0) cannot sit on a log axis
                xs, loss = xs[1:], loss[1:]
            ys.extend(loss.tolist())
            # Against time the loss is only known at the checks: draw it as a staircase (a result is
            # available from the moment it is computed), and mark the points of short histories.
            style = {"drawstyle": "steps-post" if x == "seconds" else "default",
                     "marker": "o" if len(xs) <= 12 else None, "ms": 3}
            if pos == median_pos:
                ax.plot(xs, loss, color=colors[label], lw=2.0, label=f"{label} (median of {len(g)})", **style)
            elif show_restarts:
                ax.plot(xs, loss, color=colors[label], lw=0.7, alpha=0.35, **style)
    opt = sub["svd_loss"].dropna() if "svd_loss" in sub else []
    if len(opt):
        ax.axhline(float(opt.iloc[0]), color="black", ls="--", lw=1.0, label="SVD optimum")
        ys.append(float(opt.iloc[0]))
    ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    if x == "seconds":
        ax.set_xlabel("wall time per fit (s, excluding compilation)")
    else:
        ax.set_xlabel("iteration")
    ax.set_ylabel("loss (mean squared error over observed entries)")
    ax.set_title(title or f"{dataset}: loss against {'time' if x == 'seconds' else 'iteration'}, rank {rank}",
                 fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def error_vs_rank(df, *, metric: str = "rel_error", dataset: Optional[str] = None, ax=None,
                  title: Optional[str] = None, true_rank: Optional[int] = None):
    """Final ``metric`` against rank: median over restarts, band from best to worst restart.

    The SVD optimum (dashed) is drawn for ``rel_error`` on fully observed
    dense data; ``true_rank`` (default: the dataset's known rank, if any)
    is marked with a vertical dotted line.
    """
    sub, dataset = _select(df, dataset)
    if metric not in sub or sub[metric].isna().all():
        raise ValueError(f"metric {metric!r} is not in the results (has the dataset a holdout for test metrics?)")
    fig, ax = _figure(ax)
    colors = solver_colors(df["solver"])
    ys = []
    for label, g in sub.groupby("solver", sort=True):
        stats = g.groupby("rank")[metric].agg(["median", "min", "max"]).sort_index()
        r = stats.index.to_numpy()
        ax.plot(r, stats["median"], "o-", color=colors[label], lw=1.6, ms=4, label=f"{label} (median)")
        ax.fill_between(r, stats["min"], stats["max"], color=colors[label], alpha=0.2, lw=0)
        ys.extend(stats["min"].tolist() + stats["max"].tolist())
    ax.fill_between([], [], color="gray", alpha=0.2, lw=0, label="spread over restarts (min–max)")
    if metric == "rel_error" and "svd_rel_error" in sub and sub["svd_rel_error"].notna().any():
        opt = sub.groupby("rank")["svd_rel_error"].first().sort_index()
        ax.plot(opt.index, opt.to_numpy(), "k--", lw=1.0, label="SVD optimum (Eckart–Young)")
        ys.extend(opt.tolist())
    if true_rank is None and "dataset_info" in sub:
        info = sub["dataset_info"].iloc[0]
        if isinstance(info, dict):
            true_rank = info.get("true_rank")
    if true_rank is not None:
        ax.axvline(true_rank, color="gray", ls=":", lw=1.2, label=f"true rank {true_rank}")
    _maybe_log(ax, ys)
    ax.set_xlabel("rank k")
    ax.set_ylabel(_METRIC_LABELS.get(metric, metric))
    ranks = sorted(set(sub["rank"]))
    if len(ranks) <= 20:
        ax.set_xticks(ranks)
    ax.set_title(title or f"{dataset}: {_SHORT.get(metric, metric)} against rank", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def accuracy_vs_time(df, *, metric: str = "rel_error", dataset: Optional[str] = None, rank: Optional[int] = None,
                     ax=None, title: Optional[str] = None):
    """Final ``metric`` against time per fit, one point per solver (medians; bars span the restarts).

    For ``rel_error`` with a known SVD optimum the y axis is the relative
    error above the optimum in percent, ``100 (rel_error / svd_rel_error - 1)``,
    on a log scale (values below 1e-9 % are drawn at 1e-9 %).
    """
    sub, dataset = _select(df, dataset)
    if rank is None:
        rank = int(sub["rank"].max())
    sub = sub[sub["rank"] == rank]
    if metric not in sub or sub[metric].isna().all():
        raise ValueError(f"metric {metric!r} is not in the results")
    fig, ax = _figure(ax)
    colors = solver_colors(df["solver"])
    gap = metric == "rel_error" and "svd_rel_error" in sub and sub["svd_rel_error"].notna().all()
    ys = []
    for label, g in sub.groupby("solver", sort=True):
        t = g["seconds"].to_numpy(dtype=float)
        e = g[metric].to_numpy(dtype=float)
        if gap:  # distance to the optimum spans orders of magnitude: show it on a log axis
            e = np.maximum(100 * (e / g["svd_rel_error"].to_numpy(dtype=float) - 1), 1e-9)
        tm, em = np.median(t), np.median(e)
        ax.errorbar([tm], [em], xerr=[[tm - t.min()], [t.max() - tm]], yerr=[[em - e.min()], [e.max() - em]],
                    fmt="o", ms=7, color=colors[label], capsize=3, label=label)
        ys.extend(e.tolist())
    ax.set_xscale("log")
    if gap:
        ax.set_yscale("log")
        ax.set_ylabel("relative error above the SVD optimum (%)")
    else:
        _maybe_log(ax, ys, ratio=5.0)
        ax.set_ylabel(_METRIC_LABELS.get(metric, metric))
    ax.set_xlabel("wall time per fit (s, excluding compilation)")
    ax.set_title(title or f"{dataset}: {_SHORT.get(metric, metric)} against time, rank {rank}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def timing(df, *, dataset: Optional[str] = None, ax=None, title: Optional[str] = None):
    """Median time per fit and compilation time per solver (log scale bars)."""
    sub, dataset = _select(df, dataset)
    fig, ax = _figure(ax)
    colors = solver_colors(df["solver"])
    g = sub.groupby("solver", sort=True)
    labels = list(g.groups)
    fit_s = g["seconds"].median().reindex(labels).to_numpy(dtype=float)
    comp_s = g["compile_seconds"].max().reindex(labels).to_numpy(dtype=float)
    pos = np.arange(len(labels))
    ax.bar(pos - 0.2, fit_s, width=0.4, color=[colors[lab] for lab in labels])
    ax.bar(pos + 0.2, np.maximum(comp_s, 1e-6), width=0.4, color=[colors[lab] for lab in labels], alpha=0.4,
           hatch="//")
    ax.bar([0], [np.nan], color="gray", label="fit (median per fit)")
    ax.bar([0], [np.nan], color="gray", alpha=0.4, hatch="//", label="compilation (once per solver and shape)")
    ax.set_yscale("log")
    ax.set_xticks(pos)
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_xlabel("solver")
    ax.set_ylabel("seconds")
    ax.set_title(title or f"{dataset}: time per fit and compilation", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def overview(df, *, dataset: Optional[str] = None, rank: Optional[int] = None, metric: str = "rel_error",
             title: Optional[str] = None):
    """Four panels: loss vs iteration, loss vs time, ``metric`` vs rank, ``metric`` vs time."""
    from matplotlib.figure import Figure

    sub, dataset = _select(df, dataset)
    fig = Figure(figsize=(12, 8.4), layout="constrained")
    axes = fig.subplots(2, 2)
    loss_curves(sub, x="iteration", rank=rank, ax=axes[0, 0], show_restarts=True)
    loss_curves(sub, x="seconds", rank=rank, ax=axes[0, 1], show_restarts=False)
    if sub["rank"].nunique() > 1:
        error_vs_rank(sub, metric=metric, ax=axes[1, 0])
    else:
        timing(sub, ax=axes[1, 0])
    accuracy_vs_time(sub, metric=metric, rank=rank, ax=axes[1, 1])
    fig.suptitle(title or dataset, fontsize=12)
    return fig


def save(fig, path, formats: Sequence[str] = ("png", "svg"), dpi: int = 120,
         png_colors: Optional[int] = None) -> list[str]:
    """Save ``fig`` as ``path.png`` and ``path.svg`` (``path`` without extension); returns the paths.

    Each file is written to a temporary name and renamed, so an existing
    figure is only replaced by a complete one.  ``png_colors`` (e.g. 256)
    stores the PNG with a palette of that many colours (needs pillow):
    several times smaller files for figures committed to a repository.
    """
    from .io import atomic_write

    path = os.fspath(path)
    stem, ext = os.path.splitext(path)
    if ext.lower() in (".png", ".svg", ".pdf"):
        path = stem
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    out = []
    for fmt in formats:
        target = f"{path}.{fmt}"
        with atomic_write(target, "wb") as fh:
            if fmt == "png" and png_colors:
                import io

                from PIL import Image

                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=dpi)
                buf.seek(0)
                img = Image.open(buf).convert("RGB").quantize(colors=int(png_colors), method=Image.Quantize.MEDIANCUT)
                img.save(fh, format="png", optimize=True)
            else:
                fig.savefig(fh, format=fmt, dpi=dpi)
        out.append(target)
    return out


# -- figures of fit results and images ----------------------------------------------------


def _histories(res):
    """``(iterations (T,), histories (M, T))`` of a FitResult / FitManyResult, members flattened."""
    if not hasattr(res, "loss_history") or not hasattr(res, "iterations"):
        raise TypeError(f"expected a jmf FitResult or FitManyResult, got {type(res).__name__}")
    its = np.asarray(res.iterations, dtype=float)
    hist = np.asarray(res.loss_history, dtype=float)
    if its.ndim != 1 or hist.shape[-1] != its.shape[0]:
        raise ValueError(f"loss_history {hist.shape} does not match iterations {its.shape}")
    return its, hist.reshape(-1, its.shape[0])


def _finite_prefix(x, y):
    """The points before the NaN tail of a stopped member (and any other non-finite point)."""
    keep = np.isfinite(y)
    return x[keep], y[keep]


def plot_loss(result, ax=None, *, style: str = "auto", label: Optional[str] = None, color=None,
              labels: Optional[Sequence[str]] = None, logy: bool = True, title: Optional[str] = None):
    """Loss against iteration for a :class:`jmf.FitResult` or a :class:`jmf.FitManyResult`.

    The history is recorded every ``check_every`` iterations; the NaN tail
    after a member stopped is dropped.  A result with several members (a
    :func:`jmf.fit_many` result, all axes flattened) is drawn as one thin
    line per member (``style="lines"``) or as the median with a min--max
    band (``style="band"``; a stopped member keeps its final loss).
    ``"auto"`` draws lines for up to 10 members and a band beyond.

    Parameters
    ----------
    result : FitResult or FitManyResult
    ax : matplotlib Axes, optional
        Draw into it (e.g. to overlay several solvers); default a new figure.
    style : {"auto", "lines", "band"}
    label, color : optional
        Legend label and colour of the curve(s); without a colour, the
        member lines take the colours of matplotlib's cycle, one each.
    labels : sequence of str, optional
        ``style="lines"``: one legend label per member (in the flattened
        member order, e.g. ``[f"rank {k}" for k in ranks]``).
    logy : bool, default True
        Log-scale loss axis.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if style not in ("auto", "lines", "band"):
        raise ValueError(f"style must be 'auto', 'lines' or 'band', got {style!r}")
    its, hist = _histories(result)
    n = hist.shape[0]
    if style == "auto":
        style = "lines" if n <= 10 else "band"
    fig, ax = _figure(ax)
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} members")
    if n == 1 or style == "lines":
        for i in range(n):
            x, y = _finite_prefix(its, hist[i])
            lab = labels[i] if labels is not None else (label if i == 0 else None)
            ax.plot(x, y, color=color, lw=1.6 if n == 1 else 1.0, alpha=1.0 if n == 1 else 0.8, label=lab)
    else:
        filled = hist.copy()
        for row in filled:  # a stopped member keeps its final loss
            ok = np.isfinite(row)
            if ok.any():
                last = np.flatnonzero(ok)[-1]
                row[last + 1:] = row[last]
        alive = np.isfinite(hist).any(axis=0)
        x = its[alive]
        with warnings.catch_warnings():  # columns where every member diverged are all-NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(filled[:, alive], axis=0)
            lo = np.nanmin(filled[:, alive], axis=0)
            hi = np.nanmax(filled[:, alive], axis=0)
        (line,) = ax.plot(x, med, color=color, lw=1.6, label=f"{label or 'median'} ({n} members)")
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.25, lw=0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (mean over observed entries)")
    if title is not None:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return fig


def plot_components(factor, shape, *, n_cols: Optional[int] = None, cmap: str = "gray",
                    titles: bool = True, size: float = 1.2, title: Optional[str] = None):
    """A grid of components as images, e.g. NMF parts of digits.

    Parameters
    ----------
    factor : array, (k, prod(shape)) or (prod(shape), k)
        ``H`` (components as rows) or ``W`` (components as columns); the
        axis of length ``prod(shape)`` is the image.
    shape : tuple of int
        Image shape of one component, e.g. ``(8, 8)`` for digits.
    n_cols : int, optional
        Images per row (default about ``sqrt(k)``, at most 10).
    cmap : str, default "gray"
    titles : bool, default True
        Label each image with its component index.
    size : float
        Inches per image.

    Returns
    -------
    matplotlib.figure.Figure
        With one axes per component.
    """
    from matplotlib.figure import Figure

    F = np.asarray(factor, dtype=float)
    pixels = int(np.prod(shape))
    if F.ndim != 2:
        raise ValueError(f"factor must be a 2-D array (H or W), got shape {F.shape}")
    if F.shape[1] == pixels:
        comps = F
    elif F.shape[0] == pixels:
        comps = F.T
    else:
        raise ValueError(f"neither axis of factor {F.shape} has prod(shape) = {pixels} entries")
    k = comps.shape[0]
    n_cols = int(n_cols) if n_cols else min(10, int(np.ceil(np.sqrt(k))))
    n_rows = int(np.ceil(k / n_cols))
    fig = Figure(figsize=(size * n_cols, size * n_rows + (0.4 if title else 0.0)), layout="constrained")
    for i in range(k):
        ax = fig.add_subplot(n_rows, n_cols, i + 1)
        ax.imshow(comps[i].reshape(shape), cmap=cmap, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if titles:
            ax.set_title(str(i), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _as_image(x):
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer):
        return np.clip(x, 0, 255).astype(np.uint8)
    x = x.astype(float)
    if np.nanmax(x) > 1.0 + 1e-6:  # 0..255 floats
        return np.clip(x, 0, 255).astype(np.uint8)
    return np.clip(x, 0.0, 1.0)


def plot_reconstructions(original, reconstructions: dict, *, n_cols: Optional[int] = None,
                         show_psnr: bool = True, data_range: Optional[float] = None, cmap: str = "gray",
                         vmin: Optional[float] = None, vmax: Optional[float] = None, size: float = 3.0,
                         original_label: str = "original", title: Optional[str] = None):
    """The original image beside its reconstructions (e.g. one per rank), each titled with its PSNR.

    Parameters
    ----------
    original : array, (h, w) or (h, w, 3)
        A matrix or grey image ``(h, w)`` is drawn with ``cmap`` on one
        colour scale for all panels (``vmin``/``vmax``, default the
        original's range).  Colour images: integer ones as 0..255, float ones
        as 0..1, or as 0..255 when their values exceed 1 (clipped).
    reconstructions : dict of label -> array
        Same shape as ``original``; drawn in the dict's order.
    n_cols : int, optional
        Images per row (default: all in one row, at most 4).
    show_psnr : bool, default True
        Add ``PSNR xx.x dB`` (:func:`jmf.compress.psnr`) to each title.
    data_range : float, optional
        For the PSNR (see :func:`jmf.compress.psnr`).
    cmap, vmin, vmax : optional
        Colour map and scale of 2-D panels.
    original_label : str, default "original"
        Title of the first panel (e.g. "clean").

    Returns
    -------
    matplotlib.figure.Figure
        With ``1 + len(reconstructions)`` axes.
    """
    from matplotlib.figure import Figure

    from .compress import psnr

    if not isinstance(reconstructions, dict):
        raise TypeError(f"reconstructions must be a dict of label -> image, got {type(reconstructions).__name__}")
    original = np.asarray(original)
    items = [(original_label, original, None)]
    for lab, rec in reconstructions.items():
        rec = np.asarray(rec)
        if rec.shape != original.shape:
            raise ValueError(f"reconstruction {lab!r} has shape {rec.shape}, the original {original.shape}")
        score = psnr(original, rec, data_range) if show_psnr else None
        items.append((str(lab), rec, score))
    n = len(items)
    n_cols = int(n_cols) if n_cols else min(n, 4)
    n_rows = int(np.ceil(n / n_cols))
    h, w = original.shape[:2]
    fig = Figure(figsize=(size * n_cols, size * n_rows * h / w + 0.35 * n_rows + (0.4 if title else 0.0)),
                 layout="constrained")
    for i, (lab, img, score) in enumerate(items):
        ax = fig.add_subplot(n_rows, n_cols, i + 1)
        if img.ndim == 2:
            lo = float(np.nanmin(original)) if vmin is None else vmin
            hi = float(np.nanmax(original)) if vmax is None else vmax
            ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        else:
            ax.imshow(_as_image(img), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(lab if score is None else f"{lab}\nPSNR {score:.1f} dB", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
