r"""Explicit ratings: biased matrix factorization, by blocked ALS or by gradient on a chunked loss.

Model and objective (mean convention of :mod:`jmf.losses`)::

    yhat_ij = mu + b_i + c_j + w_i . h_j
    L = ( sum_obs w_ij (a_ij - yhat_ij)^2
          + l2 sum_i s_i |w_i|^2 + l2 sum_j s_j |h_j|^2
          + bias_l2 (sum_i s_i b_i^2 + sum_j s_j c_j^2) ) / N

with ``s = 1`` (plain ridge) or, with ``count_scaled=True``, ``s_i`` the
(weighted) number of ratings of row ``i`` -- the ALS-WR weighting of Zhou et
al. (2008), which regularizes heavy users and popular items more.  The
offset ``mu`` is the global mean of the observed ratings (set by
:func:`jmf.fit` with ``biases=True``) and is not updated.

:func:`ratings_als` alternates exact ridge solves for ``[w_i, b_i]`` and
``[h_j, c_j]``; :func:`ratings_loss` is the same objective as a
:class:`jmf.losses.Loss` whose value and gradient stream over fixed-size
chunks of entries, so memory stays O(nnz + (m + n) k) even at 20M ratings
(the core Frobenius loss materializes ``(nnz, k)`` gathers); use it with
:func:`jmf.solvers.gradient` for full-batch or minibatch Adam.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from .._validation import check_bool, check_choice, check_int, check_nonneg_float
from ..data import Sparse
from ..factors import Factors
from ..losses.ratings import ratings_loss, weight_sums
from ._blocked import Side, bucketed_cg, bucketed_rows, bucketed_solve, cg_solve, cholesky_solve, side_layout
from .base import Solver, cached_factory

__all__ = ["ratings_als", "ratings_gradient", "RatingsLayout", "RatingsGradientState"]


def _half_step(X, xb, Y, yb, offset, data, side, other_idx, weight_sums, l2, bias_l2,
               count_scaled, mask, solve, cg_steps, max_count):
    """Solve for one side ``[X_i, xb_i]`` given the other side's ``Y`` (n_other, k) and biases ``yb``."""
    S, k = X.shape
    use_bias = xb is not None
    K = k + 1 if use_bias else k
    dtype = X.dtype
    w_all = data.effective_weights()
    base = jnp.zeros((), dtype) if offset is None else offset
    feats = Y if not use_bias else jnp.concatenate([Y, jnp.ones((Y.shape[0], 1), dtype)], axis=1)
    m_ext = None
    if mask is not None:
        m_ext = mask if not use_bias else jnp.concatenate([mask, jnp.ones((1,), dtype)])
        feats = feats * m_ext[None, :]
    diag = jnp.full((K,), l2, dtype)
    if use_bias:
        diag = diag.at[k].set(bias_l2)
    eye = jnp.eye(K, dtype=dtype)

    # a zero row at the end: padded slots gather zeros, so unweighted data need no Gram weights
    feats = jnp.concatenate([feats, jnp.zeros((1, K), dtype)], axis=0)
    n_other = Y.shape[0]

    def contrib(ent, valid):
        o = jnp.where(valid, other_idx[ent], n_other)
        t = data.vals[ent].astype(dtype) - base  # target: a - mu - (other side's bias)
        if yb is not None:
            t = t - jnp.concatenate([yb, jnp.zeros((1,), dtype)])[o]
        if data.weights is None:
            return feats[o], None, jnp.where(valid, t, 0)
        w = jnp.where(valid, w_all[ent], 0).astype(dtype)
        return feats[o], w, w * t

    def system(G, R, seg, x0):
        s = weight_sums[seg].astype(dtype) if count_scaled else jnp.ones(seg.shape, dtype)
        d = s[:, None] * diag[None, :]
        if m_ext is not None:
            # inactive columns: zero coupling, unit diagonal, zero rhs -> exactly zero, no 0/0
            G = G * (m_ext[:, None] * m_ext[None, :])[None]
            R = R * m_ext[None]
            d = d * m_ext[None] + (1 - m_ext)[None]
            x0 = x0 * m_ext[None]
        d = jnp.where(d > 0, d, 1)  # empty segments under count scaling: x = 0
        A = G + d[:, :, None] * eye[None]
        if solve == "cholesky":
            return cholesky_solve(A, R)
        return cg_solve(A, R, x0, cg_steps)

    X0 = X if not use_bias else jnp.concatenate([X, xb[:, None]], axis=1)
    if solve == "cg":
        def base_apply(p, seg):
            s = weight_sums[seg].astype(dtype) if count_scaled else jnp.ones(seg.shape, dtype)
            d = s[:, None] * diag[None, :]
            if m_ext is not None:
                d = d * m_ext[None] + (1 - m_ext)[None]
            return jnp.where(d > 0, d, 1) * p

        sol = bucketed_cg(side, X0, contrib, base_apply, cg_steps, max_count, data.nnz)
    else:
        sol = bucketed_solve(side, X0, contrib, system, max_count, data.nnz)
    Xn = sol[:, :k]
    if mask is not None:
        Xn = Xn * mask[None, :]
    return Xn, (sol[:, k] if use_bias else None)


class RatingsLayout(NamedTuple):
    """Solver state of :func:`ratings_als`: the static layout of the data (computed once in ``init``)."""

    rows: Side
    cols: Side
    row_weight: jax.Array  # (m,) sum of weights per row (ALS-WR)
    col_weight: jax.Array


def _layout(data: Sparse) -> RatingsLayout:
    m, n = data.shape
    order = jnp.argsort(data.cols, stable=True).astype(jnp.int32)
    rows = side_layout(data.rows, m, None, n)
    cols = side_layout(data.cols[order], n, order, m)
    rw, cw = weight_sums(data)
    return RatingsLayout(rows, cols, rw, cw)


@cached_factory
def ratings_als(l2: float = 0.1, bias_l2: Optional[float] = None, count_scaled: bool = False, biases: bool = True,
                solve: str = "cg", cg_steps: int = 3, chunk_size: int = 1 << 16) -> Solver:
    """Alternating least squares for explicit ratings with biases (sparse data, O(nnz + (m + n) k) memory).

    One step updates ``[W, row_bias]`` (every row's ridge regression on its
    observed entries) and then ``[H, col_bias]``, each minimizing
    :func:`ratings_loss` given the other side; cost ``O(nnz k^2)`` for the
    Gram matrices (batched matrix products over buckets of rows with similar
    numbers of ratings, see :mod:`jmf._src.solvers._blocked`) plus the solves.

    Parameters
    ----------
    l2, bias_l2, count_scaled
        As in :func:`ratings_loss` (``count_scaled=True`` is ALS-WR).
    biases : bool, default True
        Fit row/column biases (the offset is the global mean, set by ``fit``).
    solve : {"cg", "cholesky"}, default "cg"
        ``"cg"``: ``cg_steps`` matrix-free conjugate-gradient iterations
        warm-started from the current factors (``O(nnz k)`` per step, no
        Gram matrices; each one decreases the objective; the
        iteration converges to the ALS fixed point over sweeps and is much
        faster than batched Cholesky on CPU).  ``"cholesky"``: exact solves.
    cg_steps : int, default 3
    chunk_size : int
        Entries per chunk in the loss evaluation.

    Returns
    -------
    Solver
        For :class:`jmf.Sparse` data; supports rank masks (:func:`jmf.fit_many`).
    """
    who = "ratings_als"
    l2 = check_nonneg_float(l2, "l2", who)
    bias_l2 = l2 if bias_l2 is None else check_nonneg_float(bias_l2, "bias_l2", who)
    if l2 == 0:
        raise ValueError(f"{who}: l2 must be > 0 for ALS (rows with fewer ratings than the rank make the solves "
                         "singular)")
    count_scaled = check_bool(count_scaled, "count_scaled", who)
    biases = check_bool(biases, "biases", who)
    check_choice(solve, "solve", ("cg", "cholesky"), who)
    cg_steps = check_int(cg_steps, "cg_steps", who)
    chunk_size = check_int(chunk_size, "chunk_size", who)
    loss = ratings_loss(l2, bias_l2, count_scaled, chunk_size)

    def init(f: Factors, data, key=None):
        return _layout(data)

    def step(f: Factors, lay: RatingsLayout, data: Sparse, mask=None):
        m, n = data.shape
        rb = f.row_bias if biases else None
        cb = f.col_bias if biases else None
        W, rb = _half_step(f.W, rb, f.H.T, cb, f.offset, data, lay.rows, data.cols, lay.row_weight, l2, bias_l2,
                           count_scaled, mask, solve, cg_steps, n)
        Ht, cb = _half_step(f.H.T, cb, W, rb, f.offset, data, lay.cols, data.rows, lay.col_weight, l2, bias_l2,
                            count_scaled, mask, solve, cg_steps, m)
        f = f._replace(W=W, H=Ht.T)
        if biases:
            f = f._replace(row_bias=rb, col_bias=cb)
        return f, lay

    return Solver(init=init, step=step, loss=loss, name="ratings-als" + ("-wr" if count_scaled else ""),
                  biases=biases, data_kinds=("sparse",))


class RatingsGradientState(NamedTuple):
    opt_state: object
    layout: RatingsLayout


def _bucketed_grad(f: Factors, lay: RatingsLayout, data: Sparse, l2, bias_l2, count_scaled):
    """Gradient of :func:`ratings_loss` with two bucketed passes (rows, then columns) and no wide scatters.

    Each pass gathers a segment's entries into a padded slab, computes the
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

        def block_fn(ent, valid, seg, cnt, x0):
            o = jnp.where(valid, other_idx[ent], n_other)
            Yg = Yx[o]
            pred = jnp.einsum("vlk,vk->vl", Yg, X[seg]) + xb[seg][:, None] + ybx[o] + mu
            w = jnp.where(valid, w_all[ent].astype(dtype), 0)
            r = w * (data.vals[ent].astype(dtype) - pred)
            return jnp.concatenate([jnp.einsum("vl,vlk->vk", r, Yg), jnp.sum(r, axis=1, keepdims=True)], axis=1)

        S = X.shape[0]
        return bucketed_rows(side, jnp.zeros((S, k + 1), dtype), block_fn, max_count, data.nnz)

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
    bucketed passes over the entries (see :func:`_bucketed_grad`) using the
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
        return RatingsGradientState(optimizer.init(f), _layout(data))

    def step(f: Factors, state: RatingsGradientState, data: Sparse, mask=None):
        import optax

        g = _bucketed_grad(f, state.layout, data, l2, bias_l2, count_scaled)
        if mask is not None:
            g = g._replace(W=g.W * mask, H=g.H * mask[:, None])
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 step counts with floats
            updates, opt_state = optimizer.update(g, state.opt_state, f)
        return optax.apply_updates(f, updates), RatingsGradientState(opt_state, state.layout)

    return Solver(init=init, step=step, loss=loss, name=name, biases=biases, data_kinds=("sparse",))
