r"""SVD++ (Koren 2008, "Factorization meets the neighborhood"): biased MF plus implicit feedback from who rated what.

Model, with ``N(u)`` the items user ``u`` rated in the training data (entries of positive weight)::

    yhat_ui = mu + b_u + c_i + h_i . (p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j)

and objective (the mean convention of :func:`jmf.losses.ratings_loss`: sum units inside, divided by ``N``,
the sum of the weights)::

    L = ( sum_obs w_ui (r_ui - yhat_ui)^2 + l2 (|P|^2 + |H|^2) + implicit_l2 |Y|^2
          + bias_l2 (|b|^2 + |c|^2) ) / N

Without the ``Y`` term this is exactly the objective of :func:`jmf.solvers.ratings_gradient` (``W = P``).

Representation.  The prediction is that of a biased MF with the *effective* user factors
``W = P + N Y``, where ``N`` (m, n) holds ``|N(u)|^-1/2`` on the observed entries of row ``u``.  The
solver's :class:`jmf.Factors` carry ``W`` (so prediction, evaluation, ``recommend`` and
:func:`jmf.cf.predict` work unchanged), and its state :class:`SVDppState` holds ``P`` and ``Y``.  The
objective involves ``P`` and ``Y``, so the solver declares it as ``Solver.objective`` (what
:func:`jmf.fit` records); ``Solver.loss`` is the biased-MF objective of the effective factors, for
callers that have no state.

Gradient.  With ``G = dL/dW`` (the biased-MF data gradient at ``W``, two packed passes as in
:func:`jmf.solvers.ratings_gradient`)::

    dL/dP = G + 2 l2 P / N,        dL/dY = N^T G + 2 implicit_l2 Y / N

so a step costs the two passes of ``ratings_gradient`` plus two sums over the same packed layout:
``N^T G`` (per item, over its raters) and ``N Y`` (per user, over the rated items, to form the new
``W``).  Memory stays ``O(nnz + (m + n) k)``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from .._validation import check_bool, check_int, check_nonneg_float
from ..data import Sparse
from ..factors import Factors
from ..losses.base import Loss
from ..losses.ratings import ratings_loss
from ._blocked import Side, SparseLayout, packed_rows, per_segment, sparse_layout
from .base import Solver, cached_factory
from .gradient import _reject_value_transforms, optax_update
from .ratings import _packed_grad

__all__ = ["svdpp", "SVDppState", "SVDppParams", "implicit_factors"]


class SVDppParams(NamedTuple):
    """The parameters the optimizer moves (its state has this structure).

    ``P`` (m, k) explicit user factors, ``H`` (k, n) item factors, ``Y`` (n, k) implicit item
    factors, and the biases and offset of the factors (``None`` without biases).
    """

    P: jax.Array
    H: jax.Array
    Y: jax.Array
    row_bias: Optional[jax.Array]
    col_bias: Optional[jax.Array]
    offset: Optional[jax.Array]


class SVDppState(NamedTuple):
    """State of :func:`svdpp`.

    Attributes
    ----------
    P : (m, k)
        Explicit user factors (the factors' ``W`` is ``P + N Y``).
    Y : (n, k)
        Implicit item factors.
    norm : (m,)
        ``|N(u)|^-1/2`` of every row (0 for rows without entries).
    opt_state
        The Optax state of :class:`SVDppParams`.
    layout : SparseLayout
        The packed layout of the data, built once in ``init``.
    """

    P: jax.Array
    Y: jax.Array
    norm: jax.Array
    opt_state: object
    layout: SparseLayout


def _neighbour_sum(side: Side, X, other_idx, keep, nnz: int, max_count: int):
    """``sum`` of the rows ``X[other_idx[e]]`` over each segment's kept entries ``e``: (S, k), packed.

    On the row side with ``X = Y`` it is ``sum_{j in N(u)} y_j``; on the column side with
    ``X = norm * G`` it is ``N^T G``.  Each chunk gathers its tiles' rows into a slab and sums
    them into the chunk's segments: no ``(nnz, k)`` array, no wide scatter.
    """
    k = X.shape[1]
    S = side.counts.shape[0]
    n_other = X.shape[0]
    Xx = jnp.concatenate([X, jnp.zeros((1, k), X.dtype)], axis=0)  # row n_other: padded or dropped slots

    def chunk_fn(ent, valid, tile_local, seg, x0):
        o = jnp.where(valid & keep[ent], other_idx[ent], n_other)
        return per_segment(jnp.sum(Xx[o], axis=1), tile_local, seg.shape[0])

    return packed_rows(side, jnp.zeros((S, k), X.dtype), chunk_fn, nnz, max_count)


def _kept(data: Sparse):
    """Entries that belong to ``N(u)``: positive weight (padding of stacked batches has weight 0)."""
    return data.effective_weights() > 0


def implicit_factors(state: SVDppState, data: Sparse):
    """``N Y`` (m, k): each user's normalized sum of the implicit factors of the items it rated.

    ``data`` must be the data the state was built on (its layout).
    """
    m, n = data.shape
    s = _neighbour_sum(state.layout.rows, state.Y, data.cols, _kept(data), data.nnz, n)
    return state.norm[:, None].astype(s.dtype) * s


@cached_factory(searchable=("l2", "bias_l2", "implicit_l2"))
def svdpp(optimizer, l2: float = 10.0, bias_l2: Optional[float] = None, implicit_l2: Optional[float] = 40.0,
          biases: bool = True, chunk_size: int = 1 << 16, name: str = "svdpp", elementwise: bool = False) -> Solver:
    """Full-batch SVD++ (Koren 2008) on sparse ratings with any Optax transformation.

    See the module docstring for the model, the objective and the representation: the factors
    carry the effective user factors ``W = P + N Y``, the state (:class:`SVDppState`) ``P`` and
    ``Y``; every step moves all of ``P``, ``H``, ``Y`` and the biases along the full gradient.

    Parameters
    ----------
    optimizer : optax.GradientTransformation
        Applied to :class:`SVDppParams` (elementwise transforms such as ``optax.adam`` treat every
        parameter alike; use ``optax.multi_transform`` on the fields to treat them differently).
    l2 : float, default 10
        Ridge penalty on ``P`` and ``H`` (sum units, as in :func:`jmf.losses.ratings_loss`: the
        penalty is divided by the number of ratings like the squared error, so good values grow
        with the ratings per user and item).
    bias_l2 : float, optional
        Ridge penalty on the biases (default ``l2``); the offset is free.
    implicit_l2 : float or None, default 40
        Ridge penalty on ``Y`` (``None``: ``l2``).  ``l2``, ``bias_l2`` and
        ``implicit_l2`` accept 1-D arrays: a grid that :func:`jmf.fit_many`
        (and :func:`jmf.model_selection.grid_search`) fits in one compiled call.
    biases : bool, default True
        Fit row/column biases and the offset.
    chunk_size : int, default 65536
        Entries per chunk when the objective is evaluated.
    name : str
    elementwise : bool, default False
        Declares that ``optimizer`` treats every parameter entry on its own
        (``optax.adam``, ``optax.sgd``; not global-norm clipping): a fit
        sharded over devices (``jmf.fit(..., mesh=...)``) needs it, since each
        device updates its own rows.

    Returns
    -------
    Solver
        On :class:`jmf.Sparse` ratings with missing absent entries.  ``init`` starts ``P`` at the
        given ``W`` and ``Y`` at zero (so the first prediction is the start's, and nothing random
        is drawn: ``key`` is unused).  ``objective`` is the SVD++ objective at the factors and
        state.  ``update_w`` is one step on ``P`` and the row biases only (``H``, ``Y``, the column
        biases and the offset fixed), ``W`` recomputed from ``P`` and ``Y``: iterated, it fits new
        users against a trained model -- build their state with ``init`` on their entries and
        replace its ``Y`` by the trained one (``state._replace(Y=trained.Y)``).

    Notes
    -----
    The defaults (with ``optax.adam(0.01)``, 300 steps, rank 40) were chosen on a validation split
    of the training part of MovieLens latest-small (``benchmarks/svdpp.py``, which documents the
    grid); they are a starting point for data of that size, not a rule.  There, the implicit term
    lowered the held-out RMSE of the same model without it by 0.007 at 1.8x the time per step, and
    the default ratings model (:func:`jmf.cf.fit_ratings`) stayed ahead (BENCHMARKS.md).

    Rank-masked members (:func:`jmf.fit_many` over ranks) keep the inactive columns of ``P``,
    ``Y`` (hence ``W``) and rows of ``H`` exactly zero.  With ``elementwise=True``,
    ``jmf.fit(..., mesh=jmf.sharding.model_mesh())`` fits one matrix sharded over devices
    (``P``, ``Y`` in the result's state, split like the rows of ``W`` and ``H``).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"svdpp: name must be a non-empty string, got {name!r}")
    who = name
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"{who}: optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")
    _reject_value_transforms(optimizer, who)
    l2 = check_nonneg_float(l2, "l2", who)
    bias_l2 = l2 if bias_l2 is None else check_nonneg_float(bias_l2, "bias_l2", who)
    implicit_l2 = l2 if implicit_l2 is None else check_nonneg_float(implicit_l2, "implicit_l2", who)
    biases = check_bool(biases, "biases", who)
    chunk_size = check_int(chunk_size, "chunk_size", who)
    check_bool(elementwise, "elementwise", who)
    # The data term and the bias penalty are those of the biased model at the effective factors;
    # the factor penalties are on P and Y, which only the state holds.
    data_term = ratings_loss(0.0, bias_l2, False, chunk_size)
    effective = ratings_loss(l2, bias_l2, False, chunk_size)

    def penalty(P, H, Y):
        return l2 * (jnp.sum(P * P) + jnp.sum(H * H)) + implicit_l2 * jnp.sum(Y * Y)

    def objective(f: Factors, state: SVDppState, data: Sparse):
        inv_n = (1 / data.n_observed()).astype(f.W.dtype)
        return data_term.value(f, data) + penalty(state.P, f.H, state.Y) * inv_n

    def init(f: Factors, data: Sparse, key=None):
        m, n = data.shape
        dtype = f.W.dtype
        counts = jax.ops.segment_sum(_kept(data).astype(dtype), data.rows, num_segments=m)
        norm = jnp.where(counts > 0, jax.lax.rsqrt(jnp.maximum(counts, 1)), 0).astype(dtype)
        P, Y = f.W, jnp.zeros((n, f.W.shape[1]), dtype)
        params = SVDppParams(P, f.H, Y, f.row_bias, f.col_bias, f.offset)
        with jax.numpy_dtype_promotion("standard"):
            opt_state = optimizer.init(params)
        return SVDppState(P, Y, norm, opt_state, sparse_layout(data))

    def effective_w(P, state: SVDppState, Y, data: Sparse):
        return P + implicit_factors(state._replace(Y=Y), data)

    def update(f: Factors, state: SVDppState, data: Sparse, mask, w_only: bool):
        m, n = data.shape
        lay = state.layout
        inv_n = (1 / data.n_observed()).astype(f.W.dtype)
        # dL/dW at the effective factors, data term and bias penalty only (the factor penalties
        # are on P and Y, added below); f.W is P + N Y (init and every step keep it so).
        g = _packed_grad(f, lay, data, 0.0, bias_l2, False)
        gP = g.W + 2 * l2 * inv_n * state.P
        gH = g.H + 2 * l2 * inv_n * f.H
        if w_only:
            zero = lambda x: None if x is None else jnp.zeros_like(x)  # noqa: E731
            grads = SVDppParams(gP, zero(f.H), jnp.zeros_like(state.Y), g.row_bias, zero(f.col_bias),
                                zero(f.offset))
        else:
            gY = _neighbour_sum(lay.cols, state.norm[:, None] * g.W, data.rows, _kept(data), data.nnz, m)
            gY = gY + 2 * implicit_l2 * inv_n * state.Y
            grads = SVDppParams(gP, gH, gY, g.row_bias, g.col_bias, g.offset)
        if mask is not None:
            grads = grads._replace(P=grads.P * mask[None, :], H=grads.H * mask[:, None], Y=grads.Y * mask[None, :])
        params = SVDppParams(state.P, f.H, state.Y, f.row_bias, f.col_bias, f.offset)
        updates, opt_state = optax_update(optimizer, grads, state.opt_state, params)
        new = optax.apply_updates(params, updates)
        if w_only:  # exactly fixed, whatever the optimizer's momentum holds for them
            new = new._replace(H=params.H, Y=params.Y, col_bias=params.col_bias, offset=params.offset)
        if mask is not None:
            new = new._replace(P=new.P * mask[None, :], H=new.H * mask[:, None], Y=new.Y * mask[None, :])
        W = effective_w(new.P, state, new.Y, data)
        f = Factors(W, new.H, new.row_bias, new.col_bias, new.offset)
        return f, SVDppState(new.P, new.Y, state.norm, opt_state, lay)

    def step(f: Factors, state: SVDppState, data: Sparse, mask=None):
        return update(f, state, data, mask, False)

    def update_w(f: Factors, state: SVDppState, data: Sparse, mask=None):
        # The caller may bring a state whose Y is not reflected in f.W yet (fold-in of new users
        # with the trained Y): recompute W from P and Y first.
        f = f._replace(W=effective_w(state.P, state, state.Y, data))
        return update(f, state, data, mask, True)

    loss = Loss(effective.value, effective.grad, "svdpp-effective", (), data_kinds=("sparse",))
    return Solver(init=init, step=step, loss=loss, name=name, biases=biases, data_kinds=("sparse",),
                  update_w=update_w, objective=objective)
