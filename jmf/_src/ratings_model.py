"""The default model for explicit ratings: Bayesian PMF, its rank chosen on the training data at fit time.

Why this model: on MovieLens latest-small (an 80/20 split, everything
chosen on the 80 %), Bayesian PMF (:func:`jmf.solvers.bpmf`) has no penalty
to tune -- the prior precisions are sampled from the data -- and its
posterior-mean predictions beat ALS-WR with the best penalty of a 5-fold
grid (BENCHMARKS.md, collaborative filtering).  The one choice left, the
rank, is made on a validation holdout of the training data, as in
:func:`jmf.model_selection.grid_search`: every candidate rank runs as a
member of ONE compiled call, together with the refit of every rank on all
the data, so the whole choice costs ``2 x len(ranks)`` fits at the largest
rank and compiles one program, whatever wins.  The ensemble of the ranks
(their average prediction) is a candidate too, at no extra cost.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, Optional, Sequence

import jax
import numpy as np

from ._validation import as_key, check_int
from .data import Sparse
from .factors import Factors, predict_entries
from .fit import fit, fit_many
from .model_selection import _append_full, _posterior_means, fold_stack
from .solvers.bpmf import bpmf, posterior_mean

__all__ = ["RatingsModel", "fit_ratings", "DEFAULT_RANKS"]

# Candidate ranks of the automatic choice; the search costs 2 * len(DEFAULT_RANKS) fits at the largest one.
DEFAULT_RANKS = (5, 10)
# Gibbs sweeps per fit and sweeps discarded before the samples are averaged (every sweep after them is).
# Chosen on the training part of MovieLens latest-small (BENCHMARKS.md): 100 sweeps gave a validation
# RMSE 0.003 lower for 1.7x the time, 40 sweeps 0.003 higher.
DEFAULT_SWEEPS = 60
DEFAULT_BURN_IN = 15
VALIDATION = 0.1  # fraction of the training entries held out to choose the rank


class RatingsModel(NamedTuple):
    """A fitted ratings model (see :func:`fit_ratings`).

    Attributes
    ----------
    factors : Factors
        Posterior-mean factors (NumPy leaves): ``factors.predict`` (or
        :func:`jmf.cf.predict`) gives the average prediction of the kept Gibbs samples.
    rank : int
        The rank used (chosen on a validation holdout when ``rank="auto"``).
    params : dict
        What was fitted: ``model``, ``rank``, ``choice``, ``max_iter``, ``burn_in``, ``n_keep``.
    search : pandas.DataFrame or None
        The validation table of the automatic choice: one row per rank and one for their ensemble.
    clip : (float, float)
        The rating scale (observed range) predictions are clipped to.
    seconds : dict
        Wall time of the search (or the fit) and of the evaluation.
    """

    factors: Factors
    rank: int
    params: dict
    search: Any
    clip: tuple
    seconds: dict

    def predict(self, rows, cols) -> np.ndarray:
        """Clipped predictions at ``(rows[p], cols[p])``; ``-1`` marks an unknown user or item (biases only).

        Evaluated with NumPy on the host (O(p k), compiles nothing); :func:`jmf.cf.predict` does the
        same on the device.
        """
        return _predict_host(self.factors, rows, cols, self.clip)


def fit_ratings(data: Sparse, rank="auto", *, key=0, ranks: Sequence[int] = DEFAULT_RANKS,
                validation: float = VALIDATION, max_iter: int = DEFAULT_SWEEPS, burn_in: int = DEFAULT_BURN_IN,
                n_keep: Optional[int] = None, progress: bool = False) -> RatingsModel:
    r"""Fit the default model for explicit ratings, choosing its rank on ``data`` itself.

    Bayesian probabilistic matrix factorization with user and item biases
    (:func:`jmf.solvers.bpmf`, Salakhutdinov & Mnih 2008), ``max_iter``
    Gibbs sweeps, predictions averaged over the samples after ``burn_in``.
    With ``rank="auto"`` one compiled :func:`jmf.fit_many` call fits every
    rank of ``ranks`` twice: on ``1 - validation`` of the entries and on
    all of them.  The candidates are each rank alone and the *ensemble* of
    all ranks (predictions averaged, Bayesian model averaging on the cheap:
    its members are already fitted); the one with the lowest RMSE on the
    held-out ``validation`` entries is returned, as fitted on all the data.
    Nothing outside ``data`` is looked at.

    Parameters
    ----------
    data : Sparse, shape (m, n)
        Observed ratings (e.g. ``jmf.io.load_matrix("ratings.csv")[0]``).
    rank : "auto" or int, default "auto"
    key : jax.random.key or int, default 0
        Seeds the validation split and the samplers.
    ranks : sequence of int, default (5, 10)
        Candidates of the automatic choice (those above ``min(m, n)`` are
        dropped).  Cost: ``2 len(ranks)`` fits at the largest rank.
    validation : float in (0, 1), default 0.1
        Fraction of the entries held out to choose.
    max_iter, burn_in : int, default 60, 15
        Gibbs sweeps, and sweeps discarded before samples are kept.
    n_keep : int, optional
        Samples averaged (the last ``n_keep``; default: every sweep after
        the burn-in, ``max_iter - burn_in``); see :func:`jmf.solvers.bpmf`.
    progress : bool, default False

    Returns
    -------
    RatingsModel
        ``factors`` (posterior mean), ``rank`` (for an ensemble: the sum of
        its members' ranks), ``params`` (``choice``: ``"rank r"`` or
        ``"ensemble"``), ``search`` (the validation table), ``clip``;
        ``model.predict(rows, cols)``.

    Examples
    --------
    >>> import jmf
    >>> table = jmf.datasets.synthetic_ratings(0, n_users=60, n_items=40, n_ratings=900).data
    >>> model = jmf.cf.fit_ratings(table, ranks=(2, 4), max_iter=12, burn_in=4)
    >>> sorted(model.search["choice"])
    ['ensemble', 'rank 2', 'rank 4']
    """
    if not isinstance(data, Sparse) or data.batch_shape:
        raise TypeError(f"data must be one jmf.Sparse of observed ratings, got {type(data).__name__}"
                        + (f" with batch shape {data.batch_shape}" if isinstance(data, Sparse) else ""))
    who = "fit_ratings"
    check_int(max_iter, "max_iter", who, lo=1)
    check_int(burn_in, "burn_in", who, lo=0)
    if burn_in >= max_iter:
        raise ValueError(f"{who}: burn_in ({burn_in}) must be smaller than max_iter ({max_iter}): "
                         "no sample would be averaged")
    n_keep = max_iter - burn_in if n_keep is None else check_int(n_keep, "n_keep", who, lo=1)
    limit = min(data.shape)
    vals = np.asarray(data.vals)
    observed = vals if data.weights is None else vals[np.asarray(data.weights) > 0]  # weight 0: padding
    if observed.size == 0:
        raise ValueError(f"{who}: data has no observed rating (every weight is 0)")
    clip = (float(observed.min()), float(observed.max()))
    solver = bpmf(burn_in=burn_in, n_keep=n_keep)
    params = {"model": "bpmf", "max_iter": max_iter, "burn_in": burn_in, "n_keep": n_keep}
    t0 = time.perf_counter()
    if rank != "auto":
        check_int(rank, "rank", who, lo=1, hi=limit)
        out = fit(data, solver, rank=int(rank), key=key, init="normal", max_iter=max_iter, tol=None,
                  check_every=max_iter, progress=progress)
        factors = _host(posterior_mean(out))
        return RatingsModel(factors, int(rank), {**params, "rank": int(rank), "choice": f"rank {rank}"}, None, clip,
                            {"fit": time.perf_counter() - t0})
    try:
        candidates = sorted({int(r) for r in ranks})
    except (TypeError, ValueError):
        raise TypeError(f"{who}: ranks must be a sequence of ints, got {ranks!r}") from None
    candidates = [r for r in candidates if 1 <= r <= limit] or [1]
    if not 0 < validation < 1:
        raise ValueError(f"{who}: validation must be a fraction in (0, 1), got {validation!r}")
    fit_key = as_key(key)
    train, held = fold_stack(data, 1, fit_key, validation)
    # The validation fold and all the data, every candidate rank: one compiled call (see grid_search).
    res = fit_many(_append_full(train, data), solver, ranks=candidates, key=fit_key, init="normal",
                   max_iter=max_iter, tol=None, check_every=max_iter, progress=progress)
    means = _posterior_means(res.result.factors, res.result.state)  # leaves (2, R, ...)
    t1 = time.perf_counter()
    rows, cols, target = (np.asarray(x)[0] for x in (held.rows, held.cols, held.vals))
    if held.weights is not None:  # score the observed ratings only
        keep = np.asarray(held.weights)[0] > 0
        rows, cols, target = rows[keep], cols[keep], target[keep]
    means = _host(means)
    preds = np.stack([_predict_host(_member(means, 0, j), rows, cols, clip) for j in range(len(candidates))])
    options = {f"rank {r}": [j] for j, r in enumerate(candidates)}
    if len(candidates) > 1:
        options["ensemble"] = list(range(len(candidates)))
    table = []
    for choice, members in options.items():
        err = np.mean(preds[members], axis=0) - target
        table.append({"choice": choice, "rank": int(sum(candidates[j] for j in members)),
                      "validation_rmse": float(np.sqrt(np.mean(err**2))),
                      "validation_mae": float(np.mean(np.abs(err)))})
    import pandas as pd  # only here, so that `import jmf` does not pay for pandas

    table = pd.DataFrame(table)
    best = int(np.argmin(table["validation_rmse"].to_numpy()))
    choice = table["choice"][best]
    factors = _ensemble([_drop_padding(_member(means, 1, j)) for j in options[choice]])
    return RatingsModel(factors, int(table["rank"][best]), {**params, "rank": int(table["rank"][best]),
                                                             "choice": choice, "ranks": candidates}, table, clip,
                        {"search": t1 - t0, "evaluate": time.perf_counter() - t1})


def _host(tree):
    """NumPy leaves: the evaluation and ensembling below run on the host and compile nothing."""
    return jax.tree_util.tree_map(np.asarray, tree)


def _member(tree, *index) -> Factors:
    return jax.tree_util.tree_map(lambda x: x[index], tree)


def _predict_host(f: Factors, rows, cols, clip) -> np.ndarray:
    rows, cols = np.asarray(rows), np.asarray(cols)
    ku, ki = rows >= 0, cols >= 0
    out = predict_entries(f, np.where(ku, rows, 0), np.where(ki, cols, 0), known_rows=ku, known_cols=ki)
    return np.clip(out, *clip)


def _ensemble(members: list) -> Factors:
    """Factors predicting the average of the members' predictions (factors side by side, scaled by 1/sqrt(R))."""
    if len(members) == 1:
        return members[0]
    dtype = members[0].W.dtype
    s = np.asarray(1 / np.sqrt(len(members)), dtype)
    W = np.concatenate([np.asarray(f.W) * s for f in members], axis=1)
    H = np.concatenate([np.asarray(f.H) * s for f in members], axis=0)
    mean = lambda name: sum(getattr(f, name) for f in members) / np.asarray(len(members), dtype)  # noqa: E731
    return Factors(W, H, mean("row_bias"), mean("col_bias"), members[0].offset)


def _drop_padding(factors: Factors) -> Factors:
    """Posterior-mean factors of a rank-padded member without the padded (all-zero) columns."""
    W, H = np.asarray(factors.W), np.asarray(factors.H)
    keep = np.flatnonzero(np.any(W != 0, axis=0) | np.any(H != 0, axis=1))
    return factors._replace(W=W[:, keep], H=H[keep]) if keep.size else factors

