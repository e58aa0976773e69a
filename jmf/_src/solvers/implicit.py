r"""Implicit feedback: confidence-weighted ALS over all entries (Hu, Koren & Volinsky 2008; Rendle et al. 2021).

Every entry of the ``m x n`` matrix is a (weak) observation.  An observed
value ``r_ij > 0`` (a count, a rating, a click) means preference ``p_ij = 1``
with confidence ``c_ij = 1 + alpha r_ij``; an unobserved entry means
``p_ij = 0`` with weight ``w0`` (``unobserved_weight``; 1 in Hu et al.).
The objective, in the mean convention of :mod:`jmf.losses` with ``N = m n``
(all entries count)::

    L = ( sum_{obs} c_ij (1 - s_ij)^2 + w0 sum_{unobs} s_ij^2
          + l2 sum_u d_u^nu |x_u|^2 + l2 sum_i e_i^nu |y_i|^2 ) / (m n)

with ``X = W`` (users), ``Y = H^T`` (items), ``s_ij = x_i . y_j``, and the
frequency-scaled penalty of Rendle, Krichene, Zhang & Koren (2021,
"Revisiting the performance of iALS on item recommendation benchmarks"):
``d_u = n_u + w0 n`` (``n_u`` the user's number of entries, ``n`` the number
of items), ``e_i = n_i + w0 m``; ``nu = 0`` is the plain ridge of Hu et al.
Their objective ``sum_obs (1 - s)^2 + a0 sum_all s^2`` is this one with
``alpha = 0`` and ``w0 = a0 / (1 + a0)`` up to a scaling of all scores (the
same rankings).  Nothing ``m x n`` is formed:

* the loss splits into ``w0 sum_all s_ij^2 = w0 <X^T X, Y^T Y>`` (a ``k x k``
  product) plus a correction over the observed entries,
  ``sum_obs c (1 - s)^2 - w0 s^2``: ``O(nnz k + (m + n) k^2)``;
* an ALS half-step solves, for every user,
  ``(w0 Y^T Y + sum_{j in I(u)} (c_uj - w0) y_j y_j^T + l2 d_u^nu I) x_u = sum_{j in I(u)} c_uj y_j``
  -- the Gram trick: the shared ``Y^T Y`` is computed once, each user adds
  only its observed items, ``O(nnz k^2 + (m + n) k^3)`` per sweep (or
  ``k^2`` per CG step instead of ``k^3``).

``l2``, ``alpha``, ``unobserved_weight`` and ``nu`` are searchable: given
arrays, :func:`jmf.fit_many` fits the whole grid in one compiled call.
"""

from __future__ import annotations

import jax.numpy as jnp

from .._validation import _is_tracer, check_choice, check_int, check_nonneg_float, check_positive_float
from ..data import Sparse
from ..factors import Factors
from ..losses.implicit import implicit_loss
from ._blocked import Side, SparseLayout, packed_cg, packed_solve, solve_tiling, sparse_layout
from ._normal import solve_spd
from .base import Solver, cached_factory

__all__ = ["implicit_als", "ImplicitLayout"]

#: Solver state of :func:`implicit_als`: the layout of the data (computed once in ``init``).
ImplicitLayout = SparseLayout


def _half_step(X, Y, data: Sparse, side: Side, other_idx, alpha, l2, w0, scale, mask, solve, cg_steps, max_count):
    """New ``X`` (S, k) given the other side ``Y`` (n_other, k); ``scale`` (S,) multiplies each row's penalty."""
    S, k = X.shape
    dtype = X.dtype
    mask = jnp.ones((k,), dtype) if mask is None else mask.astype(dtype)
    Ym = Y * mask[None, :]
    base = w0 * (Ym.T @ Ym) + jnp.diag(1 - mask)
    w_all = data.effective_weights()
    ridge = jnp.concatenate([l2 * scale.astype(dtype), jnp.zeros((1,), dtype)])  # slot S: unused segments

    def contrib(ent, valid):
        w = jnp.where(valid, w_all[ent], 0).astype(dtype)
        c = 1 + alpha * data.vals[ent].astype(dtype)
        return Ym[other_idx[ent]], w * (c - w0), w * c

    def diagonal(seg):
        return ridge[seg][:, None] * mask[None, :]

    # The features are masked, so the inactive columns of G and R are zero: base's unit diagonal there
    # keeps the systems nonsingular and their solution zero.
    if solve == "cg":
        Xn = packed_cg(side, X, contrib, lambda p, seg: p @ base + diagonal(seg) * p, cg_steps, max_count, data.nnz,
                       solve_tiling(solve, X.shape[1], X.dtype))
    else:
        Xn = packed_solve(side, X, contrib, lambda G, R, seg, x0: solve_spd(G + base[None], R, diagonal(seg)),
                          max_count, data.nnz, solve_tiling(solve, X.shape[1], X.dtype))
    return Xn * mask[None, :]


def _scales(lay: SparseLayout, shape, w0, nu, dtype):
    """Frequency scales ``(d^nu, e^nu)`` of the row and column penalties (ones when ``nu`` is 0)."""
    m, n = shape
    if not _is_tracer(nu) and float(nu) == 0:
        return jnp.ones((m,), dtype), jnp.ones((n,), dtype)
    return ((lay.row_weight.astype(dtype) + w0 * n) ** nu, (lay.col_weight.astype(dtype) + w0 * m) ** nu)


@cached_factory(searchable=("l2", "alpha", "unobserved_weight", "nu"))
def implicit_als(l2: float = 1.0, alpha: float = 2.0, solve: str = "cg", cg_steps: int = 3,
                 chunk_size: int = 1 << 16, unobserved_weight: float = 1.0, nu: float = 0.0) -> Solver:
    """Confidence-weighted ALS for implicit feedback (Hu, Koren & Volinsky 2008; iALS of Rendle et al. 2021).

    Parameters
    ----------
    l2 : float
        Ridge penalty ``l2 (|W|^2 + |H|^2)`` (sum units, as ``lambda`` in the
        paper), scaled per row and column by ``nu``.
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
    unobserved_weight : float >= 0, default 1
        ``w0``, the weight of every unobserved entry (pulling its score to 0)
        relative to an observed entry's confidence; Rendle et al. tune it
        (their ``alpha_0``), typically well below 1.
    nu : float >= 0, default 0
        Frequency-scaled regularization (Rendle et al. 2021): user ``u``'s
        penalty is ``l2 (n_u + w0 n_items)^nu`` and item ``i``'s
        ``l2 (n_i + w0 n_users)^nu``, ``n_u``, ``n_i`` their numbers of
        entries.  ``nu = 1`` is the paper's choice; ``nu = 0`` the plain ridge.

    Returns
    -------
    Solver
        For :class:`jmf.Sparse` data whose values are nonnegative
        confidences (counts, ratings, 1s).  Use with :func:`jmf.fit`;
        evaluate with :func:`jmf.metrics.ranking_metrics`.  The loss
        recorded by ``fit`` is :func:`implicit_loss` (module docstring),
        which every half-step decreases (Cholesky: minimizes in its block).
        No biases.  ``l2``, ``alpha``, ``unobserved_weight`` and ``nu``
        accept 1-D arrays: a grid for :func:`jmf.fit_many`.
    """
    who = "implicit_als"
    l2 = check_positive_float(l2, "l2", who)
    alpha = check_nonneg_float(alpha, "alpha", who)
    w0 = check_nonneg_float(unobserved_weight, "unobserved_weight", who)
    nu = check_nonneg_float(nu, "nu", who)
    check_choice(solve, "solve", ("cg", "cholesky"), who)
    cg_steps = check_int(cg_steps, "cg_steps", who)
    chunk_size = check_int(chunk_size, "chunk_size", who)
    loss = implicit_loss(alpha, l2, chunk_size, unobserved_weight=w0, nu=nu)

    def init(f: Factors, data, key=None):
        return sparse_layout(data, solve_tiling(solve, f.W.shape[1], f.W.dtype))

    def update_w(f: Factors, lay: SparseLayout, data: Sparse, mask=None):
        d, _ = _scales(lay, data.shape, w0, nu, f.W.dtype)
        W = _half_step(f.W, f.H.T, data, lay.rows, data.cols, alpha, l2, w0, d, mask, solve, cg_steps,
                       data.shape[1])
        return f._replace(W=W), lay

    def step(f: Factors, lay: SparseLayout, data: Sparse, mask=None):
        f, lay = update_w(f, lay, data, mask)
        _, e = _scales(lay, data.shape, w0, nu, f.W.dtype)
        Ht = _half_step(f.H.T, f.W, data, lay.cols, data.rows, alpha, l2, w0, e, mask, solve, cg_steps,
                        data.shape[0])
        return f._replace(H=Ht.T), lay

    return Solver(init=init, step=step, loss=loss, name="implicit-als", biases=False, data_kinds=("sparse",),
                  update_w=update_w)
