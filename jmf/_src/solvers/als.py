r"""Alternating least squares.

Each step solves two ridge regressions exactly: ``W`` given ``H``, then ``H``
given the new ``W``.  On an unweighted dense matrix::

    W = A H^T (H H^T + l2 I)^-1,        H = (W^T W + l2 I)^-1 W^T A

(two ``(k x k)`` Cholesky solves after ``4 m n k`` FLOPs of matrix products).
With weights (a dense mask) or sparse observed entries every row of ``W``
solves its own normal equations ``(sum_j w_ij h_j h_j^T + l2 I) w_i =
sum_j w_ij a_ij h_j``; see :mod:`jmf._src.solvers._normal` for how the Gram
blocks are formed (a Khatri--Rao matrix product for dense weights, tiled
small products accumulated with sorted segment sums for sparse data: memory
``O(nnz + (m + n) k^2)``, never ``m x n``).

Biases (``yhat = offset + b_i + c_j + w_i . h_j``) are fitted in the same
solves by augmenting the factors with a constant column: the row-side
unknown is ``[w_i, b_i]`` against ``[h_j, 1]`` and target ``a_ij - offset - c_j``
(ridge ``bias_l2`` on the bias).  The offset stays at the observed mean.

Every step is a block-coordinate minimization of exactly the monitored loss
``frobenius(l2=l2, bias_l2=bias_l2)`` (mean convention), so the loss never
increases and a fixed point is a stationary point of it.  With
``row_scaled_l2=True`` (ALS-WR, Zhou et al. 2008) row ``i``'s penalty is
``l2 n_i`` with ``n_i`` the sum of its weights (its number of ratings), and
the monitored loss carries the same scaled penalties.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from .._validation import check_bool, check_nonneg_float
from ..data import Dense
from ..factors import Factors
from ..losses import frobenius
from ..losses.ratings import ratings_loss, weight_sums
from ..losses.base import _pair
from .base import Solver, cached_factory
from ._normal import dense_normal_equations, solve_spd, sparse_layouts, sparse_normal_equations

__all__ = ["als", "ALSState"]


class ALSState(NamedTuple):
    """Tile layouts of sparse data (by row, by column), built once in ``init``; ``None`` for dense data."""

    layouts: Optional[tuple] = None


def _augment(F, fit_biases: bool):
    if not fit_biases:
        return F
    return jnp.concatenate([F, jnp.ones((F.shape[0], 1), F.dtype)], axis=1)


def _shift(offset, bias):
    if bias is None:
        return None
    return bias + offset if offset is not None else bias


@cached_factory
def als(l2=0.0, biases: bool = False, bias_l2=None, row_scaled_l2: bool = False) -> Solver:
    r"""Alternating least squares (exact ridge solves), dense, weighted and sparse.

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
        ``yhat_ij = offset + b_i + c_j + w_i . h_j``.  Biases are also fitted
        whenever the starting factors carry them (``fit(..., biases=True)``).
    bias_l2 : float, optional
        Ridge penalty on the biases (default: the ``W`` value of ``l2``).
    row_scaled_l2 : bool, default False
        ALS-WR: scale each row's (column's) penalty by its number of observed
        entries (sum of weights).  The monitored loss is then
        :func:`row_scaled_frobenius` instead of :func:`jmf.losses.frobenius`.

    Returns
    -------
    Solver
        ``loss`` is the objective each step minimizes exactly (in the mean
        convention), so its history never increases.

    Notes
    -----
    Cost per step: dense ``4 m n k + O((m + n) k^2 + k^3)``; weighted dense
    ``2 m n k^2`` (Gram blocks by one matrix product) plus ``(m + n)``
    Cholesky factorizations of ``k x k``; sparse ``2 nnz k^2`` plus the same
    factorizations.  Rank-masked members (:func:`jmf.fit_many` over ranks)
    get 1 on the Gram diagonal of their inactive columns, so their systems
    stay nonsingular and those columns stay exactly 0.
    """
    l2W, l2H = _pair(l2, "l2", "als")
    bias_l2 = l2W if bias_l2 is None else check_nonneg_float(bias_l2, "bias_l2", "als")
    biases = check_bool(biases, "biases", "als")
    row_scaled_l2 = check_bool(row_scaled_l2, "row_scaled_l2", "als")
    loss = ratings_loss((l2W, l2H), bias_l2, count_scaled=True) if row_scaled_l2 else frobenius((l2W, l2H), bias_l2=bias_l2)

    def init(f: Factors, data, key=None) -> ALSState:
        if isinstance(data, Dense):
            return ALSState(None)
        q = f.W.shape[1] + (1 if f.row_bias is not None else 0)
        return ALSState(sparse_layouts(data, q))

    def solve_side(data, state, F, shift, side, lam, bias_lam, mask, fit_biases, counts):
        """New factor rows for one side: ``(g, k)`` and the bias ``(g,)`` (or None)."""
        k = mask.shape[0]
        dtype = F.dtype
        pen = lam * jnp.ones((k,), dtype)
        extra = 1 - mask  # masked-out columns: identity block, zero solution
        if fit_biases:
            pen = jnp.concatenate([pen, jnp.full((1,), bias_lam, dtype)])
            extra = jnp.concatenate([extra, jnp.zeros((1,), dtype)])
        if isinstance(data, Dense):
            G, b = dense_normal_equations(data, F, shift, side)
        else:
            G, b = sparse_normal_equations(state.layouts[side], F, shift, data.shape[side])
        if row_scaled_l2 and isinstance(data, Dense) and data.weights is None:
            ridge = data.shape[1 - side] * pen + extra  # every row observes all columns: one shared system
        elif row_scaled_l2:
            ridge = counts[:, None] * pen[None, :] + extra[None, :]
        else:
            ridge = pen + extra
        X = solve_spd(G, b, ridge)
        return X[:, :k] * mask, (X[:, k] if fit_biases else None)

    def step(f: Factors, state: ALSState, data, mask=None):
        k = f.W.shape[1]
        dtype = f.W.dtype
        fit_biases = f.row_bias is not None or f.col_bias is not None
        if fit_biases and (f.row_bias is None or f.col_bias is None):
            raise ValueError("als fits both row and column biases; the factors have only one of them")
        mask = jnp.ones((k,), dtype) if mask is None else mask.astype(dtype)
        if row_scaled_l2:
            if isinstance(data, Dense):
                cr, cc = weight_sums(data)
            else:
                cr, cc = state.layouts[0].count, state.layouts[1].count
        else:
            cr = cc = None
        W, rb = solve_side(data, state, _augment(f.H.T, fit_biases), _shift(f.offset, f.col_bias) if fit_biases else None,
                           0, l2W, bias_l2, mask, fit_biases, cr)
        Ht, cb = solve_side(data, state, _augment(W, fit_biases), _shift(f.offset, rb) if fit_biases else None,
                            1, l2H, bias_l2, mask, fit_biases, cc)
        new = f._replace(W=W, H=Ht.T)
        if fit_biases:
            new = new._replace(row_bias=rb, col_bias=cb)
        return new, state

    name = "als-wr" if row_scaled_l2 else "als"
    return Solver(init=init, step=step, loss=loss, name=name, nonnegative=False, biases=biases)
