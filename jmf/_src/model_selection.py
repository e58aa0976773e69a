"""Seeded splits of observed entries: random holdout, per-user leave-k-out, k-fold.

Every split returns :class:`jmf.Sparse` pieces of the *same shape* as the
input (so factors fitted on the training part index the test part directly),
with entries kept in the canonical row-major order.  All randomness comes
from a ``jax.random`` key (or an int seed); splits run on the host with
numpy index arithmetic, O(nnz).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ._validation import as_key, numpy_rng
from .data import Sparse, _rebuild
from .data.checks import device_array
from .factors import Factors

__all__ = ["train_test_split", "leave_k_out", "kfold", "subset", "holdout_mask", "fold_stack", "grid_search",
           "SearchResult"]


def _check(data):
    if not isinstance(data, Sparse):
        raise TypeError(f"data must be a jmf.Sparse (observed entries), got {type(data).__name__}")
    if data.batch_shape:
        raise ValueError("data must be a single (unbatched) Sparse")


def subset(data: Sparse, index) -> Sparse:
    """Entries ``index`` (a boolean mask or integer positions) of ``data``, in row-major order, same shape."""
    index = np.asarray(index)
    if index.dtype == bool:
        if index.shape != (data.nnz,):
            raise ValueError(f"a boolean index must have shape ({data.nnz},), got {index.shape}")
        index = np.flatnonzero(index)
    index = np.sort(index.astype(np.int64))
    if index.size == 0:
        raise ValueError("the subset is empty")
    # on the host, like fold_stack: gathers on the device compiled a program per leaf and size
    w = None if data.weights is None else device_array(np.asarray(data.weights)[index])
    rows, cols, vals = (device_array(np.asarray(x)[index]) for x in (data.rows, data.cols, data.vals))
    return _rebuild(Sparse, (rows, cols, vals, w), data.shape)


# The permutation of the key-seeded splits as one program (eagerly, jax.random.permutation compiled five).
_key_permutation = jax.jit(jax.random.permutation, static_argnums=1)


def holdout_mask(n_entries: int, fraction: float, rng: np.random.Generator, weights=None) -> np.ndarray:
    """A boolean mask of ``round(fraction * n_observed)`` entries drawn without replacement.

    Entries with weight 0 (``weights``, optional) are never drawn.  ``rng``
    is a NumPy generator (see :func:`jmf._src._validation.numpy_rng` to
    derive one from a key); the experiment runner uses this to hide and
    hold out entries of its datasets.
    """
    observed = np.flatnonzero(np.asarray(weights) > 0) if weights is not None else np.arange(n_entries)
    n_test = int(round(fraction * len(observed)))
    mask = np.zeros(n_entries, bool)
    mask[rng.choice(observed, size=n_test, replace=False)] = True
    return mask


def train_test_split(data: Sparse, test_size: float = 0.2, key=0):
    """Random split of the observed entries.

    Parameters
    ----------
    data : Sparse
    test_size : float in (0, 1) or int
        Fraction (or number) of entries held out.
    key : jax.random.key or int

    Returns
    -------
    (train, test) : Sparse, Sparse
        Disjoint, together all entries, both of shape ``data.shape``.
    """
    _check(data)
    nnz = data.nnz
    if isinstance(test_size, float):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size must be in (0, 1) as a fraction, got {test_size}")
        n_test = int(round(test_size * nnz))
    elif isinstance(test_size, (int, np.integer)) and not isinstance(test_size, bool):
        n_test = int(test_size)
    else:
        raise TypeError(f"test_size must be a float fraction or an int count, got {test_size!r}")
    if not 1 <= n_test < nnz:
        raise ValueError(f"test_size gives {n_test} test entries out of {nnz}; need between 1 and nnz - 1")
    perm = np.asarray(_key_permutation(as_key(key), nnz))
    return subset(data, perm[n_test:]), subset(data, perm[:n_test])


def leave_k_out(data: Sparse, k: int = 1, key=0, min_train: int = 1):
    """Hold out ``k`` random entries of every user (row) that has at least ``k + min_train``.

    Users with fewer entries keep them all in the training part.

    Returns
    -------
    (train, test) : Sparse, Sparse
    """
    _check(data)
    for name, v, lo in (("k", k, 1), ("min_train", min_train, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    rows = np.asarray(data.rows).astype(np.int64)
    u = np.asarray(jax.random.uniform(as_key(key), (data.nnz,)))
    order = np.lexsort((u, rows))  # by row, random within row
    m = data.shape[0]
    counts = np.bincount(rows, minlength=m)
    starts = np.cumsum(counts) - counts
    pos = np.empty(data.nnz, np.int64)
    pos[order] = np.arange(data.nnz) - starts[rows[order]]
    test = (pos < k) & (counts[rows] >= k + min_train)
    if not test.any():
        raise ValueError(f"no user has at least k + min_train = {k + min_train} entries")
    if test.all():
        raise ValueError("every entry would be held out")
    return subset(data, ~test), subset(data, test)


def kfold(data: Sparse, n_splits: int = 5, key=0) -> Iterator:
    """``n_splits`` (train, test) pairs; each entry is in exactly one test fold (random, seeded).

    Yields
    ------
    (train, test) : Sparse, Sparse
    """
    _check(data)
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or not 2 <= n_splits <= data.nnz:
        raise ValueError(f"n_splits must be an int in [2, nnz={data.nnz}], got {n_splits!r}")
    perm = np.asarray(_key_permutation(as_key(key), data.nnz))
    folds = np.array_split(perm, n_splits)

    def gen():
        for f in folds:
            mask = np.zeros(data.nnz, bool)
            mask[f] = True
            yield subset(data, ~mask), subset(data, mask)

    return gen()


# -- batched cross-validation and hyperparameter search ---------------------------------------------


def fold_stack(data: Sparse, n_splits: int = 5, key=0, test_size: Optional[float] = None):
    """K-fold split of the observed entries as two stacked batches with equal ``nnz`` (host-side, no compilation).

    The entries are shuffled (seeded) and cut into ``n_splits`` test folds of
    ``nnz // n_splits`` entries each; the ``nnz % n_splits`` leftover entries
    are in every training part and never tested, so that all training parts
    have the same number of entries and stack without padding.  With
    ``n_splits=1`` there is one random holdout of ``test_size`` (a fraction
    in (0, 1)) of the entries: a validation split, the cheap alternative to
    K-fold when the fits are expensive.

    Returns
    -------
    train : Sparse, batch (n_splits, m, n)
        Training part of every fold (leaves of shape ``(n_splits, nnz - size)``).
    test : Sparse, batch (n_splits, m, n)
        Held-out part of every fold (``(n_splits, size)``).
    """
    _check(data)
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or not 1 <= n_splits <= data.nnz // 2:
        raise ValueError(f"n_splits must be an int in [1, nnz / 2 = {data.nnz // 2}], got {n_splits!r}")
    nnz = data.nnz
    if n_splits == 1:
        if isinstance(test_size, bool) or not isinstance(test_size, (float, int, np.floating)) \
                or not 0 < test_size < 1:
            raise ValueError(f"n_splits=1 (one holdout) needs test_size, a fraction in (0, 1); got {test_size!r}")
        size = min(max(int(round(test_size * nnz)), 1), nnz - 1)
    elif test_size is not None:
        raise ValueError(f"test_size is for n_splits=1 (one holdout); K-fold test folds are nnz / n_splits, "
                         f"got test_size={test_size!r} with n_splits={n_splits}")
    else:
        size = nnz // n_splits
    perm = numpy_rng(key).permutation(nnz)
    leaves = [np.asarray(x) for x in (data.rows, data.cols, data.vals)]
    w = None if data.weights is None else np.asarray(data.weights)
    train_idx, test_idx = [], []
    for i in range(n_splits):
        held = np.zeros(nnz, bool)
        held[perm[i * size:(i + 1) * size]] = True
        train_idx.append(np.flatnonzero(~held))  # sorted: the row-major order is kept
        test_idx.append(np.flatnonzero(held))

    def batch(idx):
        idx = np.stack(idx)
        arrays = tuple(device_array(x[idx]) for x in leaves) + (None if w is None else device_array(w[idx]),)
        return _rebuild(Sparse, arrays, data.shape)

    return batch(train_idx), batch(test_idx)


class SearchResult(NamedTuple):
    """Result of :func:`grid_search`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per setting (rank x hyperparameter point): ``rank``, the
        hyperparameters, ``rmse`` and ``mae`` (mean over folds), ``rmse_std``,
        ``split{i}_rmse``, and ``rank_test`` (1 = lowest mean RMSE).
    best : dict
        The best setting: ``{"rank": r, **hyperparameters}``.
    best_score : float
        Its mean held-out RMSE.
    factors : Factors or None
        The refit on all the data at the best setting (``refit=True``).
    refit : FitResult or None
        That fit's result.
    cv : tuple of FitManyResult
        The search's members, one entry per compiled call: one for padded
        ranks, one per rank when they were fitted unpadded (``pad_ranks``).
        Axes ``("matrix", ["param",] ["rank"])``: the "matrix" axis is the
        fold, and with ``refit="joint"`` its last entry is all the data;
        "rank" when several ranks share the call.
    rmse, mae : ndarray, shape (n_splits, n_points, n_ranks)
        Held-out errors of every member.
    seconds : dict
        Wall time of the search fit, the evaluation and the refit.
    """

    table: Any
    best: dict
    best_score: float
    factors: Optional[Factors]
    refit: Any
    cv: Any
    rmse: np.ndarray
    mae: np.ndarray
    seconds: dict


def _is_sampling(res) -> bool:
    from .solvers.bpmf import BPMFState

    return isinstance(res.state, BPMFState)


@jax.jit
def _posterior_means(f, st):
    """Posterior-mean factors of every member of a sampling solver (see :func:`jmf.solvers.bpmf`)."""
    from .solvers.bpmf import member_means

    return member_means(f, st)


@partial(jax.jit, static_argnames=("n_lead", "n_splits", "sampling"))
def _heldout_errors(f: Factors, st, rows, cols, vals, weights, lo, hi, n_lead: int, n_splits: int, sampling: bool):
    """RMSE and MAE of every member at its fold's held-out entries, in one program.

    ``f`` has leaves with ``n_lead`` member axes in front, the first one the
    fold (only the first ``n_splits`` are scored); ``rows``, ``cols``,
    ``vals``, ``weights`` are ``(n_splits, t)``.  Returns ``(n_splits, M)``
    arrays (the other member axes flattened).  Members are scored one after
    the other (``lax.map``), so memory stays ``O(t k)`` per fold; a sampling
    solver's members are scored by their posterior mean.
    """

    def lead(x):
        return None if x is None else x[:n_splits].reshape((n_splits, -1) + x.shape[n_lead:])

    f = jax.tree_util.tree_map(lead, f)
    if sampling:
        st = jax.tree_util.tree_map(lead, st)

    def fold(ff, ss, r, c, v, w):
        def member(args):
            fm, sm = args
            if sampling:
                from .solvers.bpmf import member_means

                fm = member_means(fm, sm)
            pred = jnp.sum(fm.W[r] * fm.H.T[c], axis=1)
            if fm.row_bias is not None:
                pred = pred + fm.row_bias[r] + fm.col_bias[c]
            if fm.offset is not None:
                pred = pred + fm.offset
            err = jnp.clip(pred, lo, hi) - v
            sw = jnp.sum(w)
            return jnp.sqrt(jnp.sum(w * err * err) / sw), jnp.sum(w * jnp.abs(err)) / sw

        return jax.lax.map(member, (ff, ss))

    st = st if sampling else None
    return jax.vmap(fold)(f, st, rows, cols, vals, weights)


def _host_member(tree, index):
    """Member ``index`` of a batched pytree, as host (numpy) leaves: indexing compiles nothing."""
    return jax.tree_util.tree_map(lambda x: None if x is None else np.asarray(x)[index], tree)


def _n_points(solver) -> int:
    """Points of a solver's hyperparameter grid (1 without one)."""
    return 1 if solver.grid is None else solver.grid.size


# Padded-search FLOPs above which a program per rank is worth compiling: about the seconds that compiling
# the extra programs costs, on a CPU core (see BENCHMARKS.md, "Evening, 2026-12-01").
_UNPADDED_MIN_FLOPS = 2e11


def _unpadded_pays(ranks, train_shape, points: int, max_iter: int) -> bool:
    """Whether fitting each rank unpadded beats padding every member to ``max(ranks)`` (``pad_ranks="auto"``).

    The work of a sweep is dominated by the Gram blocks, ``2 nnz r^2`` FLOPs per side at rank ``r``: padding
    costs ``len(ranks) max^2`` against ``sum r^2`` unpadded.  Unpadded needs a program per rank, so it is
    chosen only when it at least halves the work and the padded search is large.
    """
    top = max(ranks)
    padded = len(ranks) * top**2
    flops = 4.0 * train_shape[-1] * train_shape[0] * points * padded * max_iter
    return sum(r * r for r in ranks) * 2 <= padded and flops >= _UNPADDED_MIN_FLOPS


def _append_full(train: Sparse, data: Sparse) -> Sparse:
    """The stacked folds with all of ``data`` as one more matrix, every part padded to ``data.nnz``."""
    nnz = data.nnz
    pad = nnz - train.rows.shape[1]
    K = train.rows.shape[0]
    last = data.shape[0] - 1

    def grow(x, fill, full):
        x = np.asarray(x)
        x = np.concatenate([x, np.full((K, pad), fill, x.dtype)], axis=1)
        return device_array(np.concatenate([x, np.asarray(full, x.dtype)[None]], axis=0))

    tw = np.ones(train.rows.shape, np.asarray(data.vals).dtype) if train.weights is None else train.weights
    dw = np.ones(nnz, np.asarray(data.vals).dtype) if data.weights is None else data.weights
    leaves = (grow(train.rows, last, data.rows), grow(train.cols, 0, data.cols), grow(train.vals, 0, data.vals),
              grow(tw, 0, dw))
    return _rebuild(Sparse, leaves, data.shape)


def grid_search(data: Sparse, solver, ranks, *, n_splits: int = 5, test_size: Optional[float] = None, key=0,
                max_iter: int = 10, tol=None, check_every: Optional[int] = None, init="normal", clip="auto",
                refit="joint", pad_ranks="auto", progress: bool = False) -> SearchResult:
    r"""K-fold cross-validation of every rank x hyperparameter setting, in one compiled call (or one per rank).

    The folds (:func:`fold_stack`: equal-size test folds over the observed
    entries) are stacked as the "matrix" axis of :func:`jmf.fit_many`, the
    solver's hyperparameter grid (e.g. ``jmf.solvers.ratings_als(l2=np.array([0.05, 0.1, 0.2]))``)
    is its "param" axis and ``ranks`` its "rank" axis: ``n_splits x P x R``
    fits run as members of one compiled program (or one per rank, see
    ``pad_ranks``).  The held-out RMSE and MAE of every member are computed
    by one more compiled program (no Python loop over members), the setting
    with the lowest mean RMSE is chosen and, with ``refit=True``, refitted on
    all of ``data``.  Calls with the same shapes reuse the compiled programs.

    Parameters
    ----------
    data : Sparse, shape (m, n)
        Observed entries (e.g. ratings).
    solver : Solver
        A solver for sparse data, optionally carrying a hyperparameter grid
        (built with arrays for its searchable hyperparameters).  Sampling
        solvers (:func:`jmf.solvers.bpmf`) are scored by their posterior mean.
    ranks : int or sequence of int
        Ranks to try.
    n_splits : int, default 5
        Number of folds; 1 for a single validation holdout of ``test_size``.
    test_size : float in (0, 1), optional
        The held-out fraction when ``n_splits=1`` (see :func:`fold_stack`).
    key : jax.random.key or int
        Seeds the folds and the initial factors (every fold starts from the
        same factors, as separate fits with this key would).
    max_iter, tol, check_every, init
        As in :func:`jmf.fit` (default: exactly ``max_iter`` iterations).
    clip : "auto", None or (low, high), default "auto"
        Clip predictions to the rating scale before scoring ("auto": the
        observed range of ``data``).
    refit : {"joint", "separate", False}, default "joint"
        Fit the best setting on all of ``data``: ``"joint"`` (or True) fits
        every setting on all the data as one more matrix of the same compiled
        call (``n_splits + 1`` matrices; no program of its own, whichever
        setting wins), ``"separate"`` fits the best one afterwards (one fit,
        but programs for its rank), ``False`` skips it.
    pad_ranks : {"auto", True, False}, default "auto"
        True: every rank is a member of the same call, padded to
        ``max(ranks)`` columns (one program; each member costs as much as one
        at the largest rank).  False: one call per rank, unpadded (a program
        per rank; ``sum r^2`` instead of ``len(ranks) max(ranks)^2`` work).
        "auto" pads unless that at least doubles the work and the padded
        search is large enough (over ~2e11 FLOPs) for the saving to outweigh
        compiling a program per rank.
    progress : bool, default False

    Returns
    -------
    SearchResult
        ``table`` (pandas), ``best``, ``best_score``, ``factors`` (the refit),
        the members' ``rmse`` / ``mae`` of shape ``(n_splits, P, R)``.

    Notes
    -----
    Held-out RMSE of member ``(f, p, r)``:
    ``sqrt(mean_{(i,j) in test_f} (clip(yhat_ij) - a_ij)^2)``.  Users or
    items whose entries all fall in one fold's test part are predicted from
    what the model has for them (biases, or 0 factors), as in use.
    """
    import time

    import pandas as pd

    from .fit import fit, fit_many
    from .solvers.base import Solver, at_point

    _check(data)
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a jmf Solver, got {type(solver).__name__}")
    if "sparse" not in solver.data_kinds:
        raise ValueError(f"solver {solver.name!r} does not fit sparse data")
    rank_list = [ranks] if isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool) else list(ranks)
    if not rank_list:
        raise ValueError("ranks is empty")
    for r in rank_list:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 1 <= r <= min(data.shape):
            raise ValueError(f"ranks must be ints in [1, min(m, n) = {min(data.shape)}], got {r!r}")
    if clip == "auto":
        v = np.asarray(data.vals)
        lo, hi = float(v.min()), float(v.max())
    elif clip is None:
        lo, hi = -np.inf, np.inf
    else:
        try:
            lo, hi = (float(x) for x in clip)
        except (TypeError, ValueError):
            raise TypeError(f"clip must be 'auto', None or a (low, high) pair, got {clip!r}") from None
        if not lo < hi:
            raise ValueError(f"clip must have low < high, got {clip!r}")
    if refit not in (True, False, "joint", "separate"):
        raise ValueError(f"refit must be True, False, 'joint' or 'separate', got {refit!r}")
    joint = refit is True or refit == "joint"
    if not (pad_ranks is True or pad_ranks is False or pad_ranks == "auto"):
        raise ValueError(f"pad_ranks must be 'auto', True or False, got {pad_ranks!r}")
    check_every = max_iter if check_every is None else check_every
    fit_key = as_key(key)
    train, test = fold_stack(data, n_splits, fit_key, test_size)  # the folds come from a numpy stream of the key
    if joint:
        # All the data as one more matrix of the stack: every setting is refitted in the same compiled call,
        # so the refit never needs a program of its own (whatever rank wins); the folds are padded to its
        # nnz with weight-0 entries, which no solve sees.
        train = _append_full(train, data)
    kw = dict(init=init, max_iter=max_iter, tol=tol, check_every=check_every, progress=progress)

    if pad_ranks == "auto":
        pad_ranks = not _unpadded_pays(rank_list, train.rows.shape, _n_points(solver), max_iter)
    groups = [rank_list] if pad_ranks else [[r] for r in rank_list]

    t0 = time.perf_counter()
    cvs = []
    for group in groups:
        # a single rank is no "rank" axis: no rank masks in the programs, which are smaller and compile faster
        ranked = {"ranks": group} if len(group) > 1 else {"rank": group[0]}
        cvs.append(fit_many(train, solver, key=fit_key, **ranked, **kw))
        jax.block_until_ready(cvs[-1].result.factors)
    t1 = time.perf_counter()
    sampling = _is_sampling(cvs[0].result)
    dtype = np.dtype(cvs[0].result.factors.W.dtype)
    weights = np.ones(test.vals.shape, dtype) if test.weights is None else test.weights
    P = _n_points(solver)
    R = len(rank_list)
    rmse, mae = [], []
    for cv, group in zip(cvs, groups):
        e = _heldout_errors(cv.result.factors, cv.result.state if sampling else None, test.rows, test.cols,
                            test.vals, weights, np.asarray(lo, dtype), np.asarray(hi, dtype),
                            n_lead=len(cv.axes), n_splits=n_splits, sampling=sampling)
        rmse.append(np.asarray(e[0], np.float64).reshape(n_splits, P, len(group)))
        mae.append(np.asarray(e[1], np.float64).reshape(n_splits, P, len(group)))
    rmse, mae = np.concatenate(rmse, axis=2), np.concatenate(mae, axis=2)
    t2 = time.perf_counter()

    rows = []
    params = cvs[0].params
    names = () if params is None else tuple(params)
    for p in range(P):
        for j, r in enumerate(rank_list):
            row = {"rank": int(r)}
            row.update({n: float(params[n][p]) for n in names})
            row.update(rmse=float(np.mean(rmse[:, p, j])), rmse_std=float(np.std(rmse[:, p, j])),
                       mae=float(np.mean(mae[:, p, j])))
            row.update({f"split{i}_rmse": float(rmse[i, p, j]) for i in range(n_splits)})
            rows.append(row)
    table = pd.DataFrame(rows)
    score = table["rmse"].to_numpy()
    score = np.where(np.isfinite(score), score, np.inf)
    table["rank_test"] = pd.Series(score).rank(method="min").astype(int).to_numpy()
    b = int(np.argmin(score))
    best = {k: table.loc[b, k] for k in ("rank",) + names}
    best = {k: v.item() if isinstance(v, np.generic) else v for k, v in best.items()}  # plain Python numbers
    best["rank"] = int(best["rank"])
    best_score = float(table.loc[b, "rmse"])

    refit_res = factors = None
    if joint:
        p, j = divmod(b, R)
        won, j = (cvs[0], j) if pad_ranks else (cvs[j], 0)
        index = (n_splits,) + ((p,) if "param" in won.axes else ()) + ((j,) if "rank" in won.axes else ())
        res = _host_member(won.result._replace(iterations=None), index)
        refit_res = res._replace(iterations=won.result.iterations)
        if sampling:
            factors = _posterior_means(refit_res.factors, refit_res.state)
        else:  # drop the rank padding
            f = refit_res.factors
            factors = f._replace(W=f.W[:, : best["rank"]], H=f.H[: best["rank"]])
            refit_res = refit_res._replace(factors=factors)
    elif refit:
        point = {n: best[n] for n in names}
        best_solver = at_point(solver, point) if names else solver
        refit_res = fit(data, best_solver, rank=best["rank"], key=fit_key, **kw)
        factors = _posterior_means(refit_res.factors, refit_res.state) if sampling else refit_res.factors
        jax.block_until_ready(factors)
    t3 = time.perf_counter()
    return SearchResult(table, best, best_score, factors, refit_res, tuple(cvs), rmse, mae,
                        {"search": t1 - t0, "evaluate": t2 - t1, "refit": t3 - t2})
