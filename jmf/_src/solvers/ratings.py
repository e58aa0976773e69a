r"""Explicit ratings by first-order methods: a full-batch gradient of the biased model in two packed passes.

The objective is :func:`jmf.losses.ratings_loss` (biases, optional
count-scaled penalties); the alternating solver of the same model is
:func:`jmf.solvers.als` (and its preset :func:`jmf.solvers.ratings_als`).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax.numpy as jnp

from .._validation import check_bool, check_int, check_nonneg_float
from ..data import Sparse
from ..factors import Factors
from ..losses.ratings import ratings_loss
from ._blocked import SparseLayout, packed_rows, per_segment, sparse_layout
from .base import Solver
from .gradient import gradient_update

__all__ = ["ratings_gradient", "RatingsLayout", "RatingsGradientState"]


#: Former name of the sparse layout in the state of ratings solvers.
RatingsLayout = SparseLayout


class RatingsGradientState(NamedTuple):
    opt_state: object
    layout: RatingsLayout


def _packed_grad(f: Factors, lay: RatingsLayout, data: Sparse, l2, bias_l2, count_scaled):
    """Gradient of :func:`ratings_loss` with two packed passes (rows, then columns) and no wide scatters.

    Each pass gathers a chunk of segments' entries into a padded slab, computes the
    residuals ``w (a - yhat)`` there and reduces them against the other
    side's factors with a batched product; only ``(S, k + 2)`` rows are
    written.  Memory ``O(nnz + (m + n) k)``.
    """
    m, n = data.shape
    k = f.W.shape[1]
    dtype = f.W.dtype
    w_all = data.effective_weights()
    mu = jnp.zeros((), dtype) if f.offset is None else f.offset
    rb = jnp.zeros((m,), dtype) if f.row_bias is None else f.row_bias
    cb = jnp.zeros((n,), dtype) if f.col_bias is None else f.col_bias
    Ht = f.H.T

    def side_grad(side, X, xb, Y, yb, other_idx, n_other, max_count):
        Yx = jnp.concatenate([Y, jnp.zeros((1, k), dtype)], axis=0)
        ybx = jnp.concatenate([yb, jnp.zeros((1,), dtype)])

        S = X.shape[0]
        Xx = jnp.concatenate([X, jnp.zeros((1, k), dtype)], axis=0)  # row S: unused slots
        xbx = jnp.concatenate([xb, jnp.zeros((1,), dtype)])

        def chunk_fn(ent, valid, tile_local, seg, x0):
            o = jnp.where(valid, other_idx[ent], n_other)
            Yg = Yx[o]
            s = jnp.minimum(seg, S)[jnp.minimum(tile_local, seg.shape[0] - 1)]  # each tile's segment
            pred = jnp.einsum("ctk,ck->ct", Yg, Xx[s]) + xbx[s][:, None] + ybx[o] + mu
            w = jnp.where(valid, w_all[ent].astype(dtype), 0)
            r = w * (data.vals[ent].astype(dtype) - pred)
            per_tile = jnp.concatenate([jnp.einsum("ct,ctk->ck", r, Yg), jnp.sum(r, axis=1, keepdims=True)], axis=1)
            return per_segment(per_tile, tile_local, seg.shape[0])

        return packed_rows(side, jnp.zeros((S, k + 1), dtype), chunk_fn, data.nnz, max_count)

    gr = side_grad(lay.rows, f.W, rb, Ht, cb, data.cols, n, n)
    gc = side_grad(lay.cols, Ht, cb, f.W, rb, data.rows, m, m)
    if count_scaled:
        sr, sc = lay.row_weight.astype(dtype), lay.col_weight.astype(dtype)
    else:
        sr, sc = jnp.ones((m,), dtype), jnp.ones((n,), dtype)
    inv_n = (1 / data.n_observed()).astype(dtype)
    gW = (2 * l2 * sr[:, None] * f.W - 2 * gr[:, :k]) * inv_n
    gHt = (2 * l2 * sc[:, None] * Ht - 2 * gc[:, :k]) * inv_n
    g_rb = None if f.row_bias is None else (2 * bias_l2 * sr * f.row_bias - 2 * gr[:, k]) * inv_n
    g_cb = None if f.col_bias is None else (2 * bias_l2 * sc * f.col_bias - 2 * gc[:, k]) * inv_n
    g_off = None if f.offset is None else -2 * jnp.sum(gr[:, k]) * inv_n
    return Factors(gW, gHt.T, g_rb, g_cb, g_off)


def ratings_gradient(optimizer, l2: float = 0.1, bias_l2: Optional[float] = None, count_scaled: bool = False,
                     biases: bool = True, chunk_size: int = 1 << 16, name: str = "ratings-gradient") -> Solver:
    """Full-batch first-order solver for biased MF on sparse ratings, with any Optax transformation.

    Same objective as :func:`ratings_loss`; the gradient comes from two
    packed passes over the entries (see :func:`_packed_grad`) using the
    layout built once in ``init``, instead of ``(nnz, k)`` gathers and
    scatter-adds: memory ``O(nnz + (m + n) k)`` and batched products, which
    is what makes an epoch at 20M ratings cheap.  For minibatch epochs use
    ``jmf.solvers.gradient(opt, loss=ratings_loss(...), batch_size=...)``.

    Parameters
    ----------
    optimizer : optax.GradientTransformation
    l2, bias_l2, count_scaled, chunk_size
        As in :func:`ratings_loss`.
    biases : bool
        Fit row/column biases and the offset.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"ratings_gradient: name must be a non-empty string, got {name!r}")
    who = name
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"{who}: optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")
    l2 = check_nonneg_float(l2, "l2", who)
    bias_l2 = l2 if bias_l2 is None else check_nonneg_float(bias_l2, "bias_l2", who)
    count_scaled = check_bool(count_scaled, "count_scaled", who)
    biases = check_bool(biases, "biases", who)
    chunk_size = check_int(chunk_size, "chunk_size", who)
    loss = ratings_loss(l2, bias_l2, count_scaled, chunk_size)

    def init(f: Factors, data, key=None):
        return RatingsGradientState(optimizer.init(f), sparse_layout(data))

    def update(f: Factors, state: RatingsGradientState, data: Sparse, mask, w_only):
        g = _packed_grad(f, state.layout, data, l2, bias_l2, count_scaled)
        f, opt_state = gradient_update(optimizer, None, f, g, state.opt_state, mask, w_only)
        return f, RatingsGradientState(opt_state, state.layout)

    def step(f: Factors, state: RatingsGradientState, data: Sparse, mask=None):
        return update(f, state, data, mask, False)

    def update_w(f: Factors, state: RatingsGradientState, data: Sparse, mask=None):
        return update(f, state, data, mask, True)

    return Solver(init=init, step=step, loss=loss, name=name, biases=biases, data_kinds=("sparse",), update_w=update_w)
