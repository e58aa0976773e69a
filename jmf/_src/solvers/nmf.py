r"""Nonnegative matrix factorization: multiplicative updates and HALS.

Both solvers keep ``W >= 0`` and ``H >= 0`` and update ``W`` then ``H`` in
each step, as scikit-learn's ``NMF`` does, so with the same start and
iteration count they follow the same path (see the tests).

Multiplicative updates (:func:`mu`, Lee & Seung 2001; Févotte & Idier 2011)
split the gradient of the beta-divergence into its positive and negative
parts and scale the factor by their ratio::

    W <- W * ( [(M * A * Y^(beta-2)) H^T] / [(M * Y^(beta-1)) H^T + l1 + 2 l2 W] )^gamma

with ``Y = W H``, ``M`` the weights and ``gamma = 1/(2 - beta)`` for
``beta < 1``, ``1/(beta - 1)`` for ``beta > 2`` and 1 otherwise, which makes
each update decrease the loss (for ``beta = 2`` the Frobenius loss of
:func:`jmf.losses.frobenius`: ``W <- W * A H^T / (W H H^T + l2 W + l1/2)``).

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

Penalties ``l1`` and ``l2`` (a number or a pair ``(for W, for H)``) are in
the sum units of :func:`jmf.losses.frobenius`: the objective is
``(sum w (a - yhat)^2 + l2 (|W|^2 + |H|^2) + l1 (|W|_1 + |H|_1)) / N`` (for
``mu`` with ``beta != 2`` the squared error is replaced by the summed
beta-divergence, see :func:`jmf.losses.beta_divergence`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._validation import check_choice, check_fraction, check_int, is_int
from ..data import Dense
from ..factors import Factors, predict_entries
from ..losses import frobenius
from ..losses.base import ALL_KINDS, _pair, fold_row_blocks, map_row_blocks, zero_filled
from ..losses.beta import _check_eps, beta_divergence, check_beta
from ._blocked import packed_solve, sparse_layout
from ._normal import dense_normal_equations
from .base import EmptyState, Solver, cached_factory

__all__ = ["mu", "hals", "HALSState", "products", "mu_terms", "violation_progress"]

# scikit-learn zeroes factors below float64's machine epsilon after each
# multiplicative update when beta < 1 (W) or beta <= 1 (H), for stability.
_TINY = float(np.finfo(np.float64).eps)


def _mask(mask, k, dtype):
    return jnp.ones((k,), dtype) if mask is None else mask.astype(dtype)


# -- multiplicative updates ---------------------------------------------------------


def _prod(Z, F, side):
    """``Z F`` (side 0, ``Z`` is ``(m, n)``, ``F`` is ``(n, k)``) or ``Z^T F`` (side 1)."""
    return Z @ F if side == 0 else jnp.matmul(Z.T, F)


def products(data, f: Factors, side: int):
    """``(A H^T)^T`` (side 0, ``(k, m)``) or ``W^T A`` (side 1, ``(k, n)``): the data products of an update.

    Unweighted :class:`jmf.Dense` by matrix products; sparse data whose
    absent entries are zeros (``absent="zero"``) by sparse products
    (:meth:`jmf.Sparse.dot`, ``O(nnz k)``).
    """
    if isinstance(data, Dense):
        return (data.A @ f.H.T).T if side == 0 else f.W.T @ data.A
    return data.dot(f.H.T).T if side == 0 else data.dot(f.W, transpose=True).T


def _gram_kind(data) -> bool:
    """Data every entry of which is observed with weight 1: the updates need only products and ``k x k`` Grams."""
    return (isinstance(data, Dense) and data.weights is None) or zero_filled(data)


def _all_entries_den(W, H, side, beta, eps):
    """``Y^(beta-1) H^T`` (side 0) or ``(W^T Y^(beta-1))^T`` (side 1) over every entry of ``Y = W H``, by row blocks.

    ``Y`` is clipped at ``eps`` for ``beta < 1`` (as scikit-learn does); never
    formed whole (:func:`jmf._src.losses.base.map_row_blocks`).
    """
    n = H.shape[1]

    def powered(Wb):
        Y = Wb @ H
        if beta < 1:
            Y = jnp.maximum(Y, eps)
        return Y ** (beta - 1)

    if side == 0:
        return map_row_blocks(W, lambda Wb, valid: powered(Wb) @ H.T, n)

    def block(Wb, valid):
        return Wb.T @ jnp.where(valid[:, None], powered(Wb), 0)

    return fold_row_blocks(W, block, jnp.zeros(H.shape, H.dtype), n).T


def mu_terms(data, W, H, side, beta, eps):
    """Numerator and data part of the denominator of the multiplicative update of one side.

    Side 0 updates ``W`` (rows ``(m, k)``) against ``F = H^T``; side 1 updates
    ``H^T`` (``(n, k)``) against ``F = W``.
    """
    F = H.T if side == 0 else W
    X = W if side == 0 else H.T
    if isinstance(data, Dense):
        A, M = data.A, data.weights
        if beta == 2 and M is None:
            return _prod(A, F, side), X @ (F.T @ F)
        if beta == 1 and M is None:
            Y = jnp.maximum(W @ H, eps)
            return _prod(A / Y, F, side), jnp.sum(F, axis=0)[None, :]
        Y = W @ H
        num_w, den_w = _entry_weights(A, Y, beta, eps)
        if M is not None:
            num_w, den_w = M * num_w, M * den_w
        return _prod(num_w, F, side), _prod(den_w, F, side)
    m, n = data.shape
    rows, cols = data.rows, data.cols
    own, other, g = (rows, cols, m) if side == 0 else (cols, rows, n)
    y = predict_entries(Factors(W, H), rows, cols)
    if zero_filled(data):
        # Stored entries carry the numerator (x = 0 adds nothing); the denominator runs over every entry.
        num_w, _ = _entry_weights(data.stored_vals(), y, beta, eps)
        num = jax.ops.segment_sum(num_w[:, None] * F[other], own, num_segments=g)
        if beta == 2:
            return num, X @ (F.T @ F)
        if beta == 1:
            return num, jnp.sum(F, axis=0)[None, :]
        return num, _all_entries_den(W, H, side, beta, eps)
    num_w, den_w = _entry_weights(data.vals, y, beta, eps)
    if data.weights is not None:
        num_w, den_w = data.weights * num_w, data.weights * den_w
    Fo = F[other]
    # Not flagged as sorted: the column side is not in column order.
    num = jax.ops.segment_sum(num_w[:, None] * Fo, own, num_segments=g)
    den = jax.ops.segment_sum(den_w[:, None] * Fo, own, num_segments=g)
    return num, den


def _entry_weights(A, Y, beta, eps):
    """``(A Y^(beta-2), Y^(beta-1))`` with scikit-learn's clipping of ``Y``."""
    if beta == 2:
        return A, Y
    Yn = jnp.maximum(Y, eps)
    if beta == 1:
        return A / Yn, jnp.ones_like(Y)
    Yd = Yn if beta < 1 else Y
    if beta == 0:
        inv = 1 / Yn
        return A * inv * inv, 1 / Yd
    return A * Yn ** (beta - 2), Yd ** (beta - 1)


def _gamma(beta: float) -> float:
    if beta < 1:
        return 1.0 / (2.0 - beta)
    if beta > 2:
        return 1.0 / (beta - 1.0)
    return 1.0


@cached_factory(searchable=("l1", "l2"))
def mu(beta=2.0, l1=0.0, l2=0.0, eps=None, inner=1, inner_tol: float = 0.1) -> Solver:
    r"""Multiplicative updates for NMF with a beta-divergence (Lee--Seung; Févotte--Idier).

    Parameters
    ----------
    beta : float or {"frobenius", "kullback-leibler", "itakura-saito"}, default 2
        2: squared error (loss :func:`jmf.losses.frobenius`), 1: generalized
        Kullback--Leibler, 0: Itakura--Saito (losses
        :func:`jmf.losses.beta_divergence`); other real values work too.
    l1, l2 : float or (float, float), default 0
        Penalties in sum units, as in :func:`jmf.losses.frobenius` (a pair
        gives ``(for W, for H)``).
    eps : float, optional
        Safeguard (default ``finfo(float32).eps``, scikit-learn's): zero
        denominators become ``eps``, and predictions are clipped at ``eps``
        where a negative power of them is taken.
    inner : int or "auto", default 1
        Updates of each factor per half-step for ``beta=2`` on unweighted
        dense data (other cases: 1).  ``1`` is scikit-learn's ``mu`` exactly;
        more reuse ``A H^T`` and ``H H^T`` (accelerated MU, Gillis & Glineur
        2012); ``"auto"`` picks the number from the shapes as :func:`hals`
        does, stopping early as in :func:`hals`.
    inner_tol : float, default 0.1
        Early stop of the repeats: an update that changes the factor by less
        than ``inner_tol`` times the first one ends them.

    Returns
    -------
    Solver
        Nonnegative (negative data is refused).  Dense, weighted and sparse
        data: with weights ``M`` the update uses ``(M * ...) H^T``; sparse
        data sums over observed entries only (O(nnz k)).  Sparse data whose
        absent entries are zeros (``absent="zero"``): the numerators need
        ``A (.) Y^(beta-2)`` only at the stored entries and the denominators
        only ``k x k`` Grams (``beta = 2``) or the column sums of the other
        factor (``beta = 1``); other betas form ``Y^(beta-1)`` by blocks of
        rows (``O(m n k)`` time, never an ``m x n`` array), as scikit-learn does.

    Notes
    -----
    One step updates ``W`` then ``H``.  Unweighted Frobenius costs ``4 m n k``
    FLOPs per step (``A H^T``, ``W^T A`` and small Gram products); other
    betas form ``Y = W H`` twice (``8 m n k``).  Zeros are absorbing: start
    from a positive initialization (``"random"``, ``"nndsvda"``), not ``"nndsvd"``.
    Inactive (rank-masked) columns have zero numerator and stay 0.
    """
    beta = check_beta(beta, "mu")
    eps = _check_eps(eps, "mu")
    l1W, l1H = _pair(l1, "l1", "mu")
    l2W, l2H = _pair(l2, "l2", "mu")
    inner, inner_tol = _check_inner(inner, inner_tol, "mu")
    gamma = _gamma(beta)
    if beta == 2:
        loss = frobenius((l2W, l2H), (l1W, l1H))
        # Half-gradient of the squared error: penalty terms enter as l2 X + l1 / 2.
        pen = ((l2W, l1W / 2), (l2H, l1H / 2))
    else:
        loss = beta_divergence(beta, l1=(l1W, l1H), l2=(l2W, l2H), eps=eps)
        pen = ((2 * l2W, l1W), (2 * l2H, l1H))

    def init(f, data, key=None):
        return EmptyState()

    def half(data, W, H, side, mask):
        X = W if side == 0 else H.T
        num, den = mu_terms(data, W, H, side, beta, eps)
        lam2, lam1 = pen[side]
        if _nz(lam1):
            den = den + lam1
        if _nz(lam2):
            den = den + lam2 * X
        den = jnp.where(den == 0, eps, den)
        delta = num / den
        if gamma != 1:
            delta = delta**gamma
        X = X * delta * mask[None, :]
        if (side == 0 and beta < 1) or (side == 1 and beta <= 1):
            X = jnp.where(X < _TINY, 0, X)
        return X

    def frobenius_update(f: Factors, data, mask, side) -> Factors:
        # Every entry observed (unweighted dense, or sparse with absent zeros): W <- W * A H^T / (W H H^T + ...),
        # H <- H * W^T A / (W^T W H + ...), 4 m n k FLOPs dense (O(nnz k) sparse).
        def update(X, num, den, lam2, lam1):
            if _nz(lam1):
                den = den + lam1
            if _nz(lam2):
                den = den + lam2 * X
            return X * (num / jnp.where(den == 0, eps, den))

        m, n = data.shape
        k = f.W.shape[1]
        if side == 0:
            num, G = products(data, f, 0).T, f.H @ f.H.T
            W = _repeated(lambda X: update(X, num, X @ G, *pen[0]), f.W, _inner_sweeps(inner, m, n, k, mask),
                          inner_tol)
            return f._replace(W=W if mask is None else W * mask[None, :])
        num, G = products(data, f, 1), f.W.T @ f.W
        H = _repeated(lambda X: update(X, num, G @ X, *pen[1]), f.H, _inner_sweeps(inner, n, m, k, mask), inner_tol)
        return f._replace(H=H if mask is None else H * mask[:, None])

    def update_side(f: Factors, data, mask, side) -> Factors:
        if beta == 2 and _gram_kind(data):
            return frobenius_update(f, data, None if mask is None else mask.astype(f.W.dtype), side)
        X = half(data, f.W, f.H, side, _mask(mask, f.W.shape[1], f.W.dtype))
        return f._replace(W=X) if side == 0 else f._replace(H=X.T)

    def update_w(f: Factors, state, data, mask=None):
        return update_side(f, data, mask, 0), state

    def step(f: Factors, state, data, mask=None):
        f = update_side(f, data, mask, 0)
        return update_side(f, data, mask, 1), state

    return Solver(init=init, step=step, loss=loss, name=f"mu(beta={beta:g})", nonnegative=True, update_w=update_w,
                  data_kinds=ALL_KINDS)


def _nz(x) -> bool:
    return not (isinstance(x, (int, float)) and x == 0)


# -- HALS / coordinate descent ------------------------------------------------------


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


def _sparse_sweep(data, lay, X, F, side, sweep):
    """``sweep(G_i, b_i, x_i)`` on every row's normal equations, formed bucket by bucket by the sparse engine."""
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
    return packed_solve(seg_side, X, contrib, lambda G, R, seg, x0: sweep(G, R, x0), data.shape[1 - side], data.nnz)


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


def _repeated(sweep, X, max_sweeps, rel_tol: float, first=None):
    """Up to ``max_sweeps`` applications of ``sweep`` to ``X`` with the products held fixed (accelerated NMF).

    Stops early once a sweep changes ``X`` by less than ``rel_tol`` times the
    change of the first sweep (Gillis & Glineur, Neural Computation 2012).
    Each sweep (a HALS coordinate sweep, or a multiplicative update) does not
    increase the loss on its own, so neither do the repeats.  ``max_sweeps``
    may be traced (it depends on the effective rank of a rank-masked member).
    ``first``: the result of the first sweep, when the caller has it already.
    """
    X1 = sweep(X) if first is None else first
    if isinstance(max_sweeps, int) and max_sweeps <= 1:
        return X1
    d0 = jnp.sum((X1 - X) ** 2)

    def cond(c):
        i, _, d = c
        return (i < max_sweeps) & (d > rel_tol * rel_tol * d0)

    def body(c):
        i, Xc, _ = c
        Xn = sweep(Xc)
        return i + 1, Xn, jnp.sum((Xn - Xc) ** 2)

    return lax.while_loop(cond, body, (jnp.ones((), jnp.int32), X1, d0))[1]


def _check_inner(inner, inner_tol, owner: str):
    """``inner`` (a positive int or "auto") and ``inner_tol`` (in [0, 1)), normalized."""
    if isinstance(inner, str) or not is_int(inner):
        if inner != "auto":
            raise ValueError(f"{owner}: inner must be a positive int or 'auto', got {inner!r}")
    else:
        inner = check_int(inner, "inner", owner)
    return inner, check_fraction(inner_tol, "inner_tol", owner)


# The "auto" rule's cost model.  A sweep also pays a fixed cost (a handful of small kernels in
# a while loop, ~50 us on the 2-core CPU of BENCHMARKS.md) worth about 2.5 MFLOP of products;
# without it, unbalanced shapes (digits' H: 64 x 1797) got ~100 sweeps that cost more than they
# saved.  The cap bounds the work of one half-step whatever the shapes.
_SWEEP_OVERHEAD_FLOPS = 2.5e6
_MAX_SWEEPS = 32


def _inner_sweeps(inner, p: int, q: int, k, mask=None):
    """Sweeps per half-step: ``1 + alpha rho`` with ``rho`` the cost of the products over one sweep's.

    Updating ``X`` (``p x k``) against data of width ``q`` costs ``2 p q k +
    2 q k^2`` FLOPs for ``A F`` and ``F^T F`` and ``2 p k^2`` (plus a fixed
    overhead) per sweep; ``alpha = 0.5`` as in Gillis & Glineur, at most
    ``_MAX_SWEEPS``.  ``k`` is the member's own rank (the mask's count under
    ``fit_many``), so a padded member runs exactly the sweeps of a separate
    fit at its rank.
    """
    if inner != "auto":
        return int(inner)
    k_eff = jnp.maximum(jnp.asarray(k if mask is None else jnp.sum(mask), jnp.float32), 1)
    products = 2 * jnp.float32(q) * k_eff * (jnp.float32(p) + k_eff)
    sweep = 2 * jnp.float32(p) * k_eff * k_eff + _SWEEP_OVERHEAD_FLOPS
    return jnp.minimum(jnp.floor(1 + 0.5 * products / sweep), _MAX_SWEEPS).astype(jnp.int32)


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
        layout = sparse_layout(data) if not (isinstance(data, Dense) or zero_filled(data)) else EmptyState()
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
        else:  # the sparse engine solves bucket by bucket: the violation is not tracked there
            X = _sparse_sweep(data, state.layout, X, F, side, lambda G, B, X: _cd_blocks(X, *normal(G, B), order)[0])
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
