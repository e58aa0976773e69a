r"""Alternating least squares, with or without biases and ALS-WR's count-scaled penalty.

Each step solves two ridge regressions: ``W`` given ``H`` (:attr:`Solver.update_w`),
then ``H`` given the new ``W``.  On an unweighted dense matrix::

    W = A H^T (H H^T + l2 I)^-1,        H = (W^T W + l2 I)^-1 W^T A

(two ``(k x k)`` Cholesky solves after ``4 m n k`` FLOPs of matrix products).
With weights (a dense mask) or sparse observed entries every row of ``W``
solves its own normal equations ``(sum_j w_ij h_j h_j^T + l2 s_i I) w_i =
sum_j w_ij a_ij h_j``: for dense weights all Gram blocks come from one
Khatri--Rao matrix product (:mod:`._normal`); for sparse data the rows are
processed in buckets of similar length by the sparse engine
(:mod:`._blocked`: memory ``O(nnz + (m + n) k)``, never ``m x n``), which
solves them exactly (Cholesky) or with a few warm-started conjugate-gradient
iterations that never form the Gram matrices.

Biases (``yhat = offset + b_i + c_j + w_i . h_j``) are fitted in the same
solves by augmenting the factors with a constant column: the row-side
unknown is ``[w_i, b_i]`` against ``[h_j, 1]`` and target ``a_ij - offset - c_j``
(ridge ``bias_l2`` on the bias).  The offset stays at the observed mean.

``s_i = 1`` (plain ridge) or, with ``count_scaled=True``, the sum of the
weights of row ``i`` (its number of ratings): ALS-WR (Zhou et al. 2008),
which regularizes heavy users and popular items more.  Every half-step
minimizes the monitored loss :func:`jmf.losses.ratings_loss` (the Frobenius
loss when ``s = 1``) exactly in its block (with ``solve="cg"``: decreases
it), so the loss never increases.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np

from .._validation import check_bool, check_choice, check_int, check_nonneg_float, check_positive_float
from ..data import Dense
from ..factors import Factors
from ..losses.base import ALL_KINDS, DATA_KINDS, _pair, zero_filled
from ..losses.ratings import ratings_loss, weight_sums
from ._blocked import SparseLayout, Tiling, packed_cg, packed_solve, solve_tiling, sparse_layout
from ._normal import dense_normal_equations, solve_spd
from .base import EmptyState, Solver, _grid_axis, cached_factory

__all__ = ["als", "ratings_als", "ALSState"]

#: Solver state of :func:`als`: the layout of sparse data (:class:`EmptyState` for dense data).
ALSState = SparseLayout

_SOLVES = ("cholesky", "cg")


def _augment(F, biases: bool):
    if not biases:
        return F
    return jnp.concatenate([F, jnp.ones((F.shape[0], 1), F.dtype)], axis=1)


def _dense_side(data: Dense, F, shift, side, pen, extra, counts, count_scaled):
    """Solutions ``(g, q)`` of every row (side 0) or column (side 1) of a :class:`Dense`."""
    G, b = dense_normal_equations(data, F, shift, side)
    if count_scaled and (zero_filled(data) or data.weights is None):
        ridge = data.shape[1 - side] * pen + extra  # every row observes all columns: one shared system
    elif count_scaled:
        ridge = counts[:, None] * pen[None, :] + extra[None, :]
    else:
        ridge = pen + extra
    return solve_spd(G, b, ridge)


def _sparse_side(data, lay: SparseLayout, X0, F, shift, side, pen, extra, count_scaled, solve, cg_steps,
                 spd=solve_spd, tiling=Tiling()):
    """Solutions ``(g, q)`` of every row (side 0) or column (side 1) of a :class:`Sparse`, bucket by bucket.

    ``X0`` (g, q) is the warm start of conjugate gradients; ``F`` (p, q) the
    fixed features of the other side (inactive columns already zero).  ``spd``
    solves the exact systems (the sharded fits pass a LAPACK-free one); ``tiling`` is the one ``lay``
    was built with.
    """
    seg_side, other_idx, counts = (lay.rows, data.cols, lay.row_weight) if side == 0 else \
        (lay.cols, data.rows, lay.col_weight)
    dtype = F.dtype
    p = F.shape[0]
    feats = jnp.concatenate([F, jnp.zeros((1, F.shape[1]), dtype)], axis=0)  # row p: padded slots gather zeros
    sh = None if shift is None else jnp.concatenate([shift, jnp.zeros((1,), dtype)])
    w_all = data.effective_weights()

    def contrib(ent, valid):
        o = jnp.where(valid, other_idx[ent], p)
        t = data.vals[ent].astype(dtype)
        if sh is not None:
            t = t - sh[o]
        if data.weights is None:
            return feats[o], None, jnp.where(valid, t, 0)
        w = jnp.where(valid, w_all[ent], 0).astype(dtype)
        return feats[o], w, w * t

    def diagonal(seg):
        s = counts[seg].astype(dtype) if count_scaled else jnp.ones(seg.shape, dtype)
        return s[:, None] * pen[None, :] + extra[None, :]

    max_count = data.shape[1 - side]
    if solve == "cg":
        sol = packed_cg(seg_side, X0, contrib, lambda v, seg: diagonal(seg) * v, cg_steps, max_count, data.nnz,
                        tiling)
    else:
        sol = packed_solve(seg_side, X0, contrib, lambda G, R, seg, x0: spd(G, R, diagonal(seg)), max_count,
                           data.nnz, tiling)
    # A row without observed weight (no entries, or only padding) has nothing to fit: zero, whatever the
    # start (with count-scaled penalties its system is all zeros, which CG would leave at the start).
    return jnp.where((counts > 0)[:, None], sol, 0)


@cached_factory
def _als(l2W, l2H, biases: bool, bias_l2, count_scaled: bool, solve: str, cg_steps: int, chunk_size: int) -> Solver:
    loss = ratings_loss((l2W, l2H), bias_l2, count_scaled=count_scaled, chunk_size=chunk_size)

    def init(f: Factors, data, key=None):
        if isinstance(data, Dense) or zero_filled(data):
            return EmptyState()
        return sparse_layout(data, solve_tiling(solve, f.W.shape[1] + biases, f.W.dtype))

    def half(f: Factors, state, data, mask, side) -> Factors:
        """``f`` with the rows of ``W`` (side 0) or the columns of ``H`` (side 1) solved, the other side fixed."""
        k = f.W.shape[1]
        dtype = f.W.dtype
        mask = jnp.ones((k,), dtype) if mask is None else mask.astype(dtype)
        X, F = (f.W, f.H.T) if side == 0 else (f.H.T, f.W)
        own_bias, other_bias = (f.row_bias, f.col_bias) if side == 0 else (f.col_bias, f.row_bias)
        lam = l2W if side == 0 else l2H
        pen = lam * jnp.ones((k,), dtype)
        extra = 1 - mask  # masked-out columns: unit diagonal, no coupling, zero solution
        F = F * mask[None, :]
        if biases:
            pen = jnp.concatenate([pen, jnp.full((1,), bias_l2, dtype)])
            extra = jnp.concatenate([extra, jnp.zeros((1,), dtype)])
            X = jnp.concatenate([X, own_bias[:, None]], axis=1)
            shift = other_bias if f.offset is None else other_bias + f.offset
        else:
            shift = None
        F = _augment(F, biases)
        if isinstance(data, Dense) or zero_filled(data):
            counts = weight_sums(data)[side] if count_scaled else None
            sol = _dense_side(data, F, shift, side, pen, extra, counts, count_scaled)
        else:
            sol = _sparse_side(data, state, X, F, shift, side, pen, extra, count_scaled, solve, cg_steps,
                               tiling=solve_tiling(solve, k + biases, dtype))
        new = sol[:, :k] * mask[None, :]
        if side == 0:
            f = f._replace(W=new)
            return f._replace(row_bias=sol[:, k]) if biases else f
        f = f._replace(H=new.T)
        return f._replace(col_bias=sol[:, k]) if biases else f

    def update_w(f: Factors, state, data, mask=None):
        return half(f, state, data, mask, 0), state

    def step(f: Factors, state, data, mask=None):
        f = half(f, state, data, mask, 0)
        return half(f, state, data, mask, 1), state

    name = "als-wr" if count_scaled else "als"
    # Sparse data with absent zeros is an unweighted matrix: the dense path with sparse products (no biases).
    kinds = DATA_KINDS if biases else ALL_KINDS
    return Solver(init=init, step=step, loss=loss, name=name, nonnegative=False, biases=biases, update_w=update_w,
                  data_kinds=kinds)


@cached_factory(searchable=("l2", "bias_l2"))
def als(l2=0.0, biases: bool = False, bias_l2=None, count_scaled: bool = False, solve: str = "cholesky",
        cg_steps: int = 3, chunk_size: int = 1 << 16, row_scaled_l2=None) -> Solver:
    r"""Alternating least squares (ridge solves), with optional biases and ALS-WR penalties; dense, weighted and sparse.

    Parameters
    ----------
    l2 : float or (float, float), default 0
        Ridge penalty on ``W`` and ``H`` in the sum units of
        :func:`jmf.losses.frobenius` (a pair gives ``(for W, for H)``):
        ``W = A H^T (H H^T + l2 I)^-1``.  Use ``l2 > 0`` for sparse data
        (rows with fewer observed entries than the rank are otherwise
        underdetermined).
    biases : bool, default False
        Fit row and column biases with an offset (the observed mean):
        ``yhat_ij = offset + b_i + c_j + w_i . h_j``.
    bias_l2 : float, optional
        Ridge penalty on the biases (default: the ``W`` value of ``l2``).
    count_scaled : bool, default False
        ALS-WR: scale each row's (column's) penalty by its number of observed
        entries (sum of weights).
    solve : {"cholesky", "cg"}, default "cholesky"
        Sparse data: ``"cholesky"`` solves every row exactly; ``"cg"`` runs
        ``cg_steps`` conjugate-gradient iterations warm-started from the
        current factors, matrix-free (``O(nnz k)`` per iteration instead of
        ``O(nnz k^2)`` for the Gram matrices): each iteration decreases the
        loss and the sweeps converge to the same fixed point, several times
        faster on CPU.  Dense data is always solved exactly.
    cg_steps : int, default 3
    chunk_size : int, default 65536
        Entries per chunk when the loss is evaluated on sparse data.
    row_scaled_l2 : bool, optional
        Deprecated spelling of ``count_scaled``.

    Returns
    -------
    Solver
        ``loss`` is :func:`jmf.losses.ratings_loss` with the same penalties
        (the Frobenius loss without ``count_scaled``), minimized exactly by
        each half-step (``update_w`` is the first), so its history never
        increases.  ``biases`` is part of the configuration: ``jmf.fit``
        adds the bias terms to the starting factors.

    Notes
    -----
    Cost per step: dense ``4 m n k + O((m + n) k^2 + k^3)``; weighted dense
    ``2 m n k^2`` (Gram blocks by one matrix product) plus ``(m + n)``
    Cholesky factorizations of ``k x k``; sparse ``2 nnz k^2`` plus the same
    factorizations (``"cholesky"``) or ``4 cg_steps nnz k`` (``"cg"``).
    Rank-masked members (:func:`jmf.fit_many` over ranks) get 1 on the Gram
    diagonal of their inactive columns, so their systems stay nonsingular
    and those columns stay exactly 0.
    """
    who = "als"
    if row_scaled_l2 is not None:
        row_scaled_l2 = check_bool(row_scaled_l2, "row_scaled_l2", who)
        warnings.warn("als(row_scaled_l2=...) is deprecated; use als(count_scaled=...)", DeprecationWarning,
                      stacklevel=3)
        return als(l2=l2, biases=biases, bias_l2=bias_l2, count_scaled=check_bool(count_scaled, "count_scaled", who)
                   or row_scaled_l2, solve=solve, cg_steps=cg_steps, chunk_size=chunk_size)
    l2W, l2H = _pair(l2, "l2", who)
    biases = check_bool(biases, "biases", who)
    bias_l2 = l2W if bias_l2 is None else check_nonneg_float(bias_l2, "bias_l2", who)
    count_scaled = check_bool(count_scaled, "count_scaled", who)

    check_choice(solve, "solve", _SOLVES, who)
    cg_steps = check_int(cg_steps, "cg_steps", who)
    chunk_size = check_int(chunk_size, "chunk_size", who)
    return _als(l2W, l2H, biases, bias_l2, count_scaled, solve, cg_steps, chunk_size)


def ratings_als(l2: float = 0.15, bias_l2=None, count_scaled: bool = True, biases: bool = True, solve: str = "cg",
                cg_steps: int = 3, chunk_size: int = 1 << 16) -> Solver:
    """:func:`als` preset for explicit ratings, ALS-WR by default: biases, count-scaled penalty, CG solves.

    ``ratings_als(l2, bias_l2, count_scaled, ...)`` is exactly
    ``als(l2, biases=True, bias_l2=bias_l2, count_scaled=count_scaled, solve="cg", ...)``
    (the same solver object); ``count_scaled=True`` is ALS-WR (Zhou et al. 2008): each row's
    penalty is ``l2`` times its number of ratings, so one ``l2`` suits users with 20 ratings and
    users with 2,000.  A plain penalty (``count_scaled=False``) of the same size overfits sparse
    ratings badly (held-out RMSE 1.31 on MovieLens latest-small at rank 32, against 0.854).

    Parameters
    ----------
    l2 : float > 0, default 0.15
        Ridge penalty on the factors, per rating when ``count_scaled`` (the
        default: the value of the 5-fold search on MovieLens latest-small's
        training part, BENCHMARKS.md; rows with fewer ratings than the rank
        make the solves singular without it).
    count_scaled : bool, default True
        ALS-WR's penalty ``l2 * n_i`` for a row with ``n_i`` ratings.
    bias_l2, biases, solve, cg_steps, chunk_size
        As in :func:`als` (different defaults: ``biases=True``, ``solve="cg"``).
    """
    who = "ratings_als"
    # l2 = 0 would make rows with fewer ratings than the rank singular (an array is a grid: every value > 0).
    for value in (np.asarray(l2).ravel() if _grid_axis(l2) else [l2]):
        check_positive_float(value, "l2", who)
    if not _grid_axis(bias_l2):
        check_nonneg_float(bias_l2, "bias_l2", who, none_ok=True)
    check_bool(count_scaled, "count_scaled", who)
    check_bool(biases, "biases", who)
    check_choice(solve, "solve", _SOLVES, who)
    check_int(cg_steps, "cg_steps", who)
    check_int(chunk_size, "chunk_size", who)
    return als(l2=l2, biases=biases, bias_l2=bias_l2, count_scaled=count_scaled, solve=solve, cg_steps=cg_steps,
               chunk_size=chunk_size)
