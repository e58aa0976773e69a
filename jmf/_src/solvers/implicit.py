r"""Implicit feedback: confidence-weighted ALS over all entries (Hu, Koren & Volinsky 2008).

Every entry of the ``m x n`` matrix is a (weak) observation.  An observed
value ``r_ij > 0`` (a count, a rating, a click) means preference ``p_ij = 1``
with confidence ``c_ij = 1 + alpha r_ij``; an unobserved entry means
``p_ij = 0`` with confidence 1.  The objective, in the mean convention of
:mod:`jmf.losses` with ``N = m n`` (all entries count)::

    L = ( sum_{all ij} c_ij (p_ij - x_i . y_j)^2 + l2 (|X|^2 + |Y|^2) ) / (m n)

with ``X = W`` (users) and ``Y = H^T`` (items).  Nothing ``m x n`` is formed:

* the loss splits into ``sum_all s_ij^2 = <X^T X, Y^T Y>`` (a ``k x k``
  product) plus a correction over the observed entries,
  ``sum_obs c (1 - s)^2 - s^2``: ``O(nnz k + (m + n) k^2)``;
* an ALS half-step solves, for every user,
  ``(Y^T Y + sum_{j in I(u)} (c_uj - 1) y_j y_j^T + l2 I) x_u = sum_{j in I(u)} c_uj y_j``
  -- the Gram trick: the shared ``Y^T Y`` is computed once, each user adds
  only its observed items, ``O(nnz k^2 + (m + n) k^3)`` per sweep (or
  ``k^2`` per CG step instead of ``k^3``).
"""

from __future__ import annotations

import jax.numpy as jnp

from .._validation import check_choice, check_int, check_nonneg_float, check_positive_float
from ..data import Sparse
from ..factors import Factors
from ..losses.implicit import implicit_loss
from ._blocked import Side, SparseLayout, packed_cg, packed_solve, sparse_layout
from ._normal import solve_spd
from .base import Solver, cached_factory

__all__ = ["implicit_als", "ImplicitLayout"]

#: Solver state of :func:`implicit_als`: the layout of the data (computed once in ``init``).
ImplicitLayout = SparseLayout


def _half_step(X, Y, data: Sparse, side: Side, other_idx, alpha, l2, mask, solve, cg_steps, max_count):
    """New ``X`` (S, k) given the other side ``Y`` (n_other, k)."""
    k = X.shape[1]
    dtype = X.dtype
    Ym = Y if mask is None else Y * mask[None, :]
    YtY = Ym.T @ Ym
    w_all = data.effective_weights()
    d = jnp.full((k,), l2, dtype) if mask is None else l2 * mask + (1 - mask)
    base = YtY + jnp.diag(d)

    def contrib(ent, valid):
        w = jnp.where(valid, w_all[ent], 0).astype(dtype)
        r = alpha * data.vals[ent].astype(dtype)
        return Ym[other_idx[ent]], w * r, w * (1 + r)

    # The features are masked, so the inactive columns of G and R are zero: base's unit diagonal there
    # keeps the systems nonsingular and their solution zero.
    if solve == "cg":
        Xn = packed_cg(side, X, contrib, lambda p, seg: p @ base, cg_steps, max_count, data.nnz)
    else:
        Xn = packed_solve(side, X, contrib, lambda G, R, seg, x0: solve_spd(G + base[None], R), max_count,
                            data.nnz)
    return Xn if mask is None else Xn * mask[None, :]


@cached_factory(searchable=("l2", "alpha"))
def implicit_als(l2: float = 1.0, alpha: float = 2.0, solve: str = "cg", cg_steps: int = 3,
                 chunk_size: int = 1 << 16) -> Solver:
    """Confidence-weighted ALS for implicit feedback (Hu, Koren & Volinsky 2008).

    Parameters
    ----------
    l2 : float
        Ridge penalty ``l2 (|W|^2 + |H|^2)`` (sum units, as ``lambda`` in the paper).
    alpha : float
        Confidence slope: an observed value ``r`` has confidence ``1 + alpha r``.
    solve : {"cg", "cholesky"}
        ``"cg"``: ``cg_steps`` conjugate-gradient iterations per row,
        warm-started and matrix-free (Takacs et al. 2011: ``O(nnz k)`` per
        step, no Gram matrices; each step decreases the objective);
        ``"cholesky"``: exact solves.
    cg_steps : int, default 3
    chunk_size : int
        Entries per chunk in the loss evaluation.

    Returns
    -------
    Solver
        For :class:`jmf.Sparse` data whose values are nonnegative
        confidences (counts, ratings, 1s).  Use with :func:`jmf.fit`;
        evaluate with :func:`jmf.metrics.ranking_metrics`.  The loss
        recorded by ``fit`` is :func:`implicit_loss`.  No biases.
    """
    who = "implicit_als"
    l2 = check_positive_float(l2, "l2", who)
    alpha = check_nonneg_float(alpha, "alpha", who)
    check_choice(solve, "solve", ("cg", "cholesky"), who)
    cg_steps = check_int(cg_steps, "cg_steps", who)
    chunk_size = check_int(chunk_size, "chunk_size", who)
    loss = implicit_loss(alpha, l2, chunk_size)

    def init(f: Factors, data, key=None):
        return sparse_layout(data)

    def update_w(f: Factors, lay: SparseLayout, data: Sparse, mask=None):
        W = _half_step(f.W, f.H.T, data, lay.rows, data.cols, alpha, l2, mask, solve, cg_steps, data.shape[1])
        return f._replace(W=W), lay

    def step(f: Factors, lay: SparseLayout, data: Sparse, mask=None):
        f, lay = update_w(f, lay, data, mask)
        Ht = _half_step(f.H.T, f.W, data, lay.cols, data.rows, alpha, l2, mask, solve, cg_steps, data.shape[0])
        return f._replace(H=Ht.T), lay

    return Solver(init=init, step=step, loss=loss, name="implicit-als", biases=False, data_kinds=("sparse",),
                  update_w=update_w)
