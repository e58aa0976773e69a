r"""Nonnegative matrix factorization by HALS (hierarchical alternating least squares).

HALS (:func:`hals`; Cichocki & Phan 2009, scikit-learn's ``solver='cd'``)
minimizes the Frobenius loss exactly in one column of ``W`` at a time,
keeping the others fixed::

    W[:, t] <- max(0, W[:, t] - (W G[:, t] - B[:, t]) / G[t, t])

with ``G = H H^T + l2 I`` and ``B = A H^T - l1/2`` computed once per half
step (``2 m n k + n k^2`` FLOPs), so the loop over the ``k`` columns costs
only ``m k^2``.  With weights or sparse data each row has its own Gram block
``G_i = sum_j w_ij h_j h_j^T`` (dense weights: all at once, see
:mod:`jmf._src.solvers._normal`; sparse data: bucket by bucket in the sparse
engine, :mod:`jmf._src.solvers._blocked`) and the same coordinate updates
run on all rows of a block at once.

What it shares with multiplicative updates (the data products, accelerated
repeats, the penalties' units) is in :mod:`jmf._src.solvers.nmf`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._validation import check_choice
from ..data import Dense
from ..factors import Factors
from ..losses import frobenius
from ..losses.base import ALL_KINDS, _pair, zero_filled
from ._blocked import Tiling, gram_tiling, packed_solve, sparse_layout
from ._normal import dense_normal_equations
from .base import EmptyState, Solver, cached_factory
from .nmf import _check_inner, _gram_kind, _inner_sweeps, _mask, _nz, _repeated, products

__all__ = ["hals", "HALSState", "violation_progress"]


class HALSState(NamedTuple):
    """State of :func:`hals`.

    Attributes
    ----------
    layout : EmptyState or SparseLayout
        The bucketed layout of sparse data with missing entries (built once in ``init``).
    violation : scalar
        scikit-learn's projected-gradient violation of the last step (of its
        ``W`` update alone for :attr:`Solver.update_w`): the sum over the
        coordinates of ``|g|`` (``min(g, 0)`` where the coordinate is 0), each
        ``g`` the gradient of the half loss in that coordinate just before its
        update.  NaN on sparse data with missing entries (not tracked there).
    violation_init : scalar
        The violation of the first step (NaN before it).
    key : PRNG key or None
        Source of the coordinate orders with ``shuffle=True``.
    """

    layout: Any
    violation: Any
    violation_init: Any
    key: Any = None


def violation_progress(f: Factors, state: HALSState, data):
    """scikit-learn's coordinate-descent stopping measure: ``violation / violation_init`` (0 when the first is 0)."""
    v0 = state.violation_init
    return jnp.where(v0 > 0, state.violation / jnp.where(v0 > 0, v0, 1), 0).astype(v0.dtype)


def _sparse_sweep(data, lay, X, F, side, sweep, tiling=Tiling()):
    """``sweep(G_i, b_i, x_i)`` on every row's normal equations, formed chunk by chunk by the sparse engine.

    ``tiling`` is the one ``lay`` was built with.
    """
    seg_side, other_idx = (lay.rows, data.cols) if side == 0 else (lay.cols, data.rows)
    p = F.shape[0]
    dtype = F.dtype
    feats = jnp.concatenate([F, jnp.zeros((1, F.shape[1]), dtype)], axis=0)
    w_all = data.effective_weights()

    def contrib(ent, valid):
        o = jnp.where(valid, other_idx[ent], p)
        a = data.vals[ent].astype(dtype)
        if data.weights is None:
            return feats[o], None, jnp.where(valid, a, 0)
        w = jnp.where(valid, w_all[ent], 0).astype(dtype)
        return feats[o], w, w * a

    # Rows without entries get 0: see packed_solve.
    return packed_solve(seg_side, X, contrib, lambda G, R, seg, x0: sweep(G, R, x0), data.shape[1 - side], data.nnz,
                        tiling)


def _coordinate(order, i):
    return i if order is None else order[i]


def _projected(x, grad):
    """scikit-learn's projected gradient of one coordinate: ``min(g, 0)`` at the bound 0, else ``g``."""
    return jnp.where(x == 0, jnp.minimum(grad, 0), grad)


def _cd_shared(X, G, B, order=None):
    """One cyclic coordinate sweep over the rows of ``X`` (``(k, p)``); returns ``(X, violation)``.

    Columnwise, for ``min 1/2 x^T G x - b^T x, x >= 0``.

    ``G`` (``(k, k)``) is shared by all ``p`` columns of ``X``; ``B`` is ``(k, p)``.
    A component with ``G[t, t] = 0`` (dead or rank-masked) is left as is.
    ``order`` (``(k,)``, optional) is the order of the coordinates (default ``0..k-1``).
    """
    k = X.shape[0]

    def body(i, c):
        X, v = c
        t = _coordinate(order, i)
        Gt = lax.dynamic_index_in_dim(G, t, 0, keepdims=False)
        x = lax.dynamic_index_in_dim(X, t, 0, keepdims=False)
        grad = Gt @ X - lax.dynamic_index_in_dim(B, t, 0, keepdims=False)
        h = lax.dynamic_index_in_dim(Gt, t, 0, keepdims=False)
        v = v + jnp.sum(jnp.abs(_projected(x, grad)))
        new = jnp.where(h > 0, jnp.maximum(x - grad / jnp.where(h > 0, h, 1), 0), x)
        return lax.dynamic_update_index_in_dim(X, new, t, 0), v

    # rolled: X is updated in place (5x faster than unrolled at k = 20)
    return lax.fori_loop(0, k, body, (X, jnp.zeros((), X.dtype)))


def _cd_blocks(X, G, B, order=None):
    """The sweep of :func:`_cd_shared` with one Gram block per row: ``X, B (g, k)``, ``G (g, k, k)``.

    Returns ``(X, violation)``.
    """
    k = X.shape[1]

    def body(i, c):
        X, v = c
        t = _coordinate(order, i)
        Gt = lax.dynamic_index_in_dim(G, t, 1, keepdims=False)  # (g, k)
        x = lax.dynamic_index_in_dim(X, t, 1, keepdims=False)
        grad = jnp.sum(Gt * X, axis=1) - lax.dynamic_index_in_dim(B, t, 1, keepdims=False)
        h = lax.dynamic_index_in_dim(Gt, t, 1, keepdims=False)
        v = v + jnp.sum(jnp.abs(_projected(x, grad)))
        new = jnp.where(h > 0, jnp.maximum(x - grad / jnp.where(h > 0, h, 1), 0), x)
        return lax.dynamic_update_index_in_dim(X, new[:, None], t, 1), v

    return lax.fori_loop(0, k, body, (X, jnp.zeros((), X.dtype)))


_STOPS = ("loss", "violation")


@cached_factory(searchable=("l1", "l2"))
def hals(l1=0.0, l2=0.0, inner=1, inner_tol: float = 0.1, stop: str = "loss", shuffle: bool = False) -> Solver:
    r"""Fast HALS / cyclic coordinate descent for NMF (scikit-learn's ``solver='cd'``).

    Parameters
    ----------
    l1, l2 : float or (float, float), default 0
        Penalties in the sum units of :func:`jmf.losses.frobenius` (a pair
        gives ``(for W, for H)``); the solver decreases exactly that loss.
    inner : int or "auto", default 1
        Coordinate sweeps per half-step on unweighted dense data.  ``1`` is
        scikit-learn's ``cd`` iteration exactly.  More sweeps reuse the
        products ``A H^T`` and ``H H^T`` (which cost ``n / k`` times a sweep)
        -- *accelerated HALS* (Gillis & Glineur 2012); ``"auto"`` picks
        ``min(1 + rho / 2, 32)`` sweeps from the shapes (``rho``: the
        products' FLOPs over a sweep's, plus a fixed per-sweep overhead).
        On large matrices it reaches a given error several times faster
        (BENCHMARKS.md); on small ones it falls back to one sweep.
    inner_tol : float, default 0.1
        Early stop of the repeats: a sweep that changes the factor by less
        than ``inner_tol`` times the first sweep ends them.
    stop : {"loss", "violation"}, default "loss"
        What ``tol`` of :func:`jmf.fit` applies to.  "loss": the driver's
        rule, the relative decrease of the loss.  "violation":
        scikit-learn's rule for ``cd``, ``violation / violation_init <= tol``
        with the projected-gradient violation of each step (see
        :class:`HALSState`; the solver's ``progress``).
        scikit-learn tests it at every iteration: fit with ``check_every=1``
        for the same stopping iteration.  Not available on sparse data with
        missing entries.
    shuffle : bool, default False
        Visit the coordinates in a fresh random order at every half-step
        (scikit-learn's ``shuffle=True``), drawn from the fit's key.

    Returns
    -------
    Solver
        Nonnegative (negative data is refused).  Dense, weighted and sparse
        data, and sparse data whose absent entries are zeros
        (``absent="zero"``: the same shared-Gram sweeps as dense data, with
        ``A H^T`` and ``W^T A`` as sparse products, ``O(nnz k)``).

    Notes
    -----
    One step updates all columns of ``W`` (in order ``0..k-1``), then all
    rows of ``H``.  Each coordinate update is the exact minimizer of the
    loss in that coordinate, so the loss never increases.  Unweighted dense
    cost: ``4 m n k + 2 (m + n) k^2`` FLOPs per step; weighted dense adds the
    Gram blocks (``2 m n k^2``); sparse ``O(nnz k^2)``.
    """
    l1W, l1H = _pair(l1, "l1", "hals")
    l2W, l2H = _pair(l2, "l2", "hals")
    inner, inner_tol = _check_inner(inner, inner_tol, "hals")
    check_choice(stop, "stop", _STOPS, "hals")
    if not isinstance(shuffle, (bool, np.bool_)):
        raise TypeError(f"hals: shuffle must be a bool, got {shuffle!r}")
    shuffle = bool(shuffle)
    loss = frobenius((l2W, l2H), (l1W, l1H))

    def init(f: Factors, data, key=None):
        dense = isinstance(data, Dense) or zero_filled(data)
        layout = EmptyState() if dense else sparse_layout(data, gram_tiling(f.W.shape[1]))
        nan = jnp.full((), jnp.nan, f.W.dtype)
        if shuffle and key is None:
            key = jax.random.key(0)
        return HALSState(layout, nan, nan, key if shuffle else None)

    def gram_side(f: Factors, data, mask, side, order):
        # Every entry observed (unweighted dense, or sparse with absent zeros): shared Grams, coordinate sweeps
        # on rows of W^T (k, m) and of H (k, n), the layouts in which a coordinate is a contiguous row.
        k = f.W.shape[1]
        m, n = data.shape
        eye = jnp.eye(k, dtype=f.W.dtype)
        lam2, lam1 = (l2W, l1W) if side == 0 else (l2H, l1H)
        B = products(data, f, side)
        if side == 0:
            G, X, sweeps = f.H @ f.H.T, f.W.T, _inner_sweeps(inner, m, n, k, mask)
        else:
            G, X, sweeps = f.W.T @ f.W, f.H, _inner_sweeps(inner, n, m, k, mask)
        if _nz(lam2):
            G = G + lam2 * eye
        if _nz(lam1):
            B = B - lam1 / 2
        X1, v = _cd_shared(X, G, B, order)
        X = _repeated(lambda X: _cd_shared(X, G, B, order)[0], X, sweeps, inner_tol, first=X1)
        if mask is not None:
            X = X * mask[:, None]
        return (f._replace(W=X.T) if side == 0 else f._replace(H=X)), v

    def half(f: Factors, state, data, mask, side, order):
        """New ``W`` (side 0) or ``H`` (side 1), the other factor fixed, and the sweep's violation."""
        if _gram_kind(data):
            return gram_side(f, data, None if mask is None else mask.astype(f.W.dtype), side, order)
        k = f.W.shape[1]
        mask = _mask(mask, k, f.W.dtype)
        eye = jnp.eye(k, dtype=f.W.dtype)
        lam2, lam1 = (l2W, l1W) if side == 0 else (l2H, l1H)
        X, F = (f.W, f.H.T) if side == 0 else (f.H.T, f.W)
        F = F * mask[None, :]

        def normal(G, B):
            if _nz(lam2):
                G = G + lam2 * jnp.broadcast_to(eye, G.shape)  # G may be a batch of blocks (sparse buckets)
            if _nz(lam1):
                B = B - lam1 / 2
            return G, B

        if isinstance(data, Dense):
            X, v = _cd_blocks(X, *normal(*dense_normal_equations(data, F, None, side)), order)
        else:  # the sparse engine solves chunk by chunk: the violation is not tracked there
            X = _sparse_sweep(data, state.layout, X, F, side, lambda G, B, X: _cd_blocks(X, *normal(G, B), order)[0],
                              gram_tiling(F.shape[1]))
            v = jnp.full((), jnp.nan, X.dtype)
        X = X * mask[None, :]
        return (f._replace(W=X) if side == 0 else f._replace(H=X.T)), v

    def orders(state, k, n):
        """``n`` coordinate orders (None without shuffle) and the state's next key."""
        if not shuffle:
            return [None] * n, state.key
        key, *subs = jax.random.split(state.key, n + 1)
        return [jax.random.permutation(s, k) for s in subs], key

    def record(state, v, key):
        init_v = jnp.where(jnp.isnan(state.violation_init), v, state.violation_init)
        return state._replace(violation=v, violation_init=init_v, key=key)

    def update_w(f: Factors, state, data, mask=None):
        (o,), key = orders(state, f.W.shape[1], 1)
        f, v = half(f, state, data, mask, 0, o)
        return f, record(state, v, key)

    def step(f: Factors, state, data, mask=None):
        (oW, oH), key = orders(state, f.W.shape[1], 2)
        f, vW = half(f, state, data, mask, 0, oW)
        f, vH = half(f, state, data, mask, 1, oH)
        return f, record(state, vW + vH, key)

    kinds = ALL_KINDS if stop == "loss" else ("dense", "weighted", "sparse-zero")
    name = "hals" if stop == "loss" else "hals(stop=violation)"
    return Solver(init=init, step=step, loss=loss, name=name, nonnegative=True, update_w=update_w, data_kinds=kinds,
                  progress=violation_progress if stop == "violation" else None)
