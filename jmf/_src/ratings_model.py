"""The default model for explicit ratings: Bayesian PMF, its rank chosen on the training data at fit time.

Why this model: on MovieLens latest-small (an 80/20 split, everything
chosen on the 80 %), Bayesian PMF (:func:`jmf.solvers.bpmf`) has no penalty
to tune -- the prior precisions are sampled from the data -- and its
posterior-mean predictions beat ALS-WR with the best penalty of a 5-fold
grid (BENCHMARKS.md, collaborative filtering).  The one choice left, the
rank, is made by :func:`jmf.model_selection.grid_search` on a validation
holdout of the training data: every candidate rank runs as a member of ONE
compiled call, together with the refit of every rank on all the data
(``refit="joint"``), so the whole choice costs ``2 x len(ranks)`` fits at
the largest rank and compiles one program, whatever wins.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from ._validation import check_int
from .cf import predict
from .data import Sparse
from .factors import Factors
from .fit import fit
from .model_selection import grid_search
from .solvers.bpmf import bpmf, posterior_mean

__all__ = ["RatingsModel", "fit_ratings", "DEFAULT_RANKS"]

# Candidate ranks of the automatic choice; the search costs 2 * len(DEFAULT_RANKS) fits at the largest one.
DEFAULT_RANKS = (8, 16, 32)
DEFAULT_SWEEPS = 60  # Gibbs sweeps per fit
DEFAULT_BURN_IN = 20  # sweeps discarded before samples are averaged
VALIDATION = 0.1  # fraction of the training entries held out to choose the rank


class RatingsModel(NamedTuple):
    """A fitted ratings model (see :func:`fit_ratings`).

    Attributes
    ----------
    factors : Factors
        Posterior-mean factors: ``factors.predict`` (or :func:`jmf.cf.predict`)
        gives the average prediction of the kept Gibbs samples.
    rank : int
        The rank used (chosen on a validation holdout when ``rank="auto"``).
    params : dict
        What was fitted: ``model``, ``rank``, ``max_iter``, ``burn_in``, ``n_keep``.
    search : pandas.DataFrame or None
        The validation table of the automatic choice (one row per rank).
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

    def predict(self, rows, cols) -> jax.Array:
        """Clipped predictions at ``(rows[p], cols[p])``; ``-1`` marks an unknown user or item (biases only)."""
        return predict(self.factors, rows, cols, clip=self.clip)


def fit_ratings(data: Sparse, rank="auto", *, key=0, ranks: Sequence[int] = DEFAULT_RANKS,
                validation: float = VALIDATION, max_iter: int = DEFAULT_SWEEPS, burn_in: int = DEFAULT_BURN_IN,
                n_keep: int = 32, progress: bool = False) -> RatingsModel:
    r"""Fit the default model for explicit ratings, choosing its rank on ``data`` itself.

    Bayesian probabilistic matrix factorization with user and item biases
    (:func:`jmf.solvers.bpmf`, Salakhutdinov & Mnih 2008), ``max_iter``
    Gibbs sweeps, predictions averaged over the samples after ``burn_in``.
    With ``rank="auto"`` every rank of ``ranks`` is fitted on ``1 -
    validation`` of the entries and scored on the rest, and all of them are
    refitted on all of ``data`` in the same compiled call
    (:func:`jmf.model_selection.grid_search` with ``n_splits=1``); the rank
    with the lowest validation RMSE is returned.  Nothing outside ``data``
    is looked at.

    Parameters
    ----------
    data : Sparse, shape (m, n)
        Observed ratings (e.g. ``jmf.io.load_matrix("ratings.csv")[0]``).
    rank : "auto" or int, default "auto"
    key : jax.random.key or int, default 0
        Seeds the validation split and the samplers.
    ranks : sequence of int, default (8, 16, 32)
        Candidates of the automatic choice (those above ``min(m, n)`` are dropped).
    validation : float in (0, 1), default 0.1
        Fraction of the entries held out to choose the rank.
    max_iter, burn_in, n_keep : int
        Gibbs sweeps, sweeps discarded, samples averaged (see :func:`jmf.solvers.bpmf`).
    progress : bool, default False

    Returns
    -------
    RatingsModel
        ``factors`` (posterior mean), ``rank``, ``params``, ``search`` (the
        validation table), ``clip``; ``model.predict(rows, cols)``.

    Examples
    --------
    >>> import jmf
    >>> table = jmf.datasets.synthetic_ratings(0, n_users=60, n_items=40, n_ratings=900).data
    >>> model = jmf.cf.fit_ratings(table, ranks=(2, 4), max_iter=12, burn_in=4)
    >>> model.rank in (2, 4)
    True
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
    limit = min(data.shape)
    vals = np.asarray(data.vals)
    clip = (float(vals.min()), float(vals.max()))
    solver = bpmf(burn_in=burn_in, n_keep=n_keep)
    params = {"model": "bpmf", "max_iter": max_iter, "burn_in": burn_in, "n_keep": n_keep}
    if rank == "auto":
        try:
            candidates = sorted({int(r) for r in ranks})
        except (TypeError, ValueError):
            raise TypeError(f"{who}: ranks must be a sequence of ints, got {ranks!r}") from None
        candidates = [r for r in candidates if 1 <= r <= limit] or [min(limit, 1)]
        res = grid_search(data, solver, candidates, n_splits=1, test_size=validation, key=key, max_iter=max_iter,
                          tol=None, refit="joint", progress=progress)
        best = int(res.best["rank"])
        factors = _drop_padding(res.factors)
        table = res.table[["rank", "rmse", "mae"]].rename(columns={"rmse": "validation_rmse",
                                                                    "mae": "validation_mae"})
        return RatingsModel(factors, best, {**params, "rank": best}, table, clip, dict(res.seconds))
    check_int(rank, "rank", who, lo=1, hi=limit)
    t0 = time.perf_counter()
    out = fit(data, solver, rank=int(rank), key=key, max_iter=max_iter, tol=None, progress=progress)
    factors = posterior_mean(out)
    jax.block_until_ready(factors)
    return RatingsModel(factors, int(rank), {**params, "rank": int(rank)}, None, clip,
                        {"fit": time.perf_counter() - t0})


def _drop_padding(factors: Factors) -> Factors:
    """Posterior-mean factors of a rank-padded member without the padded (all-zero) columns."""
    W, H = np.asarray(factors.W), np.asarray(factors.H)
    keep = np.flatnonzero(np.any(W != 0, axis=0) | np.any(H != 0, axis=1))
    return factors._replace(W=jax.device_put(W[:, keep]), H=jax.device_put(H[keep])) if keep.size else factors

