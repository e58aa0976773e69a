r"""Nonnegative matrix factorization by multiplicative updates.

Multiplicative updates (:func:`mu`, Lee & Seung 2001; Févotte & Idier 2011)
split the gradient of the beta-divergence into its positive and negative
parts and scale the factor by their ratio::

    W <- W * ( [(M * A * Y^(beta-2)) H^T] / [(M * Y^(beta-1)) H^T + l1 + 2 l2 W] )^gamma

with ``Y = W H``, ``M`` the weights and ``gamma = 1/(2 - beta)`` for
``beta < 1``, ``1/(beta - 1)`` for ``beta > 2`` and 1 otherwise, which makes
each update decrease the loss (for ``beta = 2`` the Frobenius loss of
:func:`jmf.losses.frobenius`: ``W <- W * A H^T / (W H H^T + l2 W + l1/2)``).

What it shares with HALS (the data products, accelerated repeats, the
penalties' units) is in :mod:`jmf._src.solvers.nmf`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..data import Dense
from ..factors import Factors, predict_entries
from ..losses import frobenius
from ..losses.base import ALL_KINDS, _pair, fold_row_blocks, map_row_blocks, zero_filled
from ..losses.beta import _check_eps, beta_divergence, check_beta
from .base import EmptyState, Solver, cached_factory
from .nmf import _check_inner, _gram_kind, _inner_sweeps, _mask, _nz, _repeated, products

__all__ = ["mu", "mu_terms"]

# scikit-learn zeroes factors below float64's machine epsilon after each
# multiplicative update when beta < 1 (W) or beta <= 1 (H), for stability.
_TINY = float(np.finfo(np.float64).eps)


def _prod(Z, F, side):
    """``Z F`` (side 0, ``Z`` is ``(m, n)``, ``F`` is ``(n, k)``) or ``Z^T F`` (side 1)."""
    return Z @ F if side == 0 else jnp.matmul(Z.T, F)


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

