r"""The biased matrix-factorization objective of ratings models, streamed over chunks of entries.

Model and objective (mean convention of :mod:`jmf.losses`)::

    yhat_ij = mu + b_i + c_j + w_i . h_j
    L = ( sum_obs w_ij (a_ij - yhat_ij)^2
          + l2_W sum_i s_i |w_i|^2 + l2_H sum_j s_j |h_j|^2
          + bias_l2 (sum_i s_i b_i^2 + sum_j s_j c_j^2) ) / N

with ``s = 1`` (plain ridge: the penalties of :func:`jmf.losses.frobenius`)
or, with ``count_scaled=True``, ``s_i`` the sum of the weights of row ``i``
(its number of ratings) -- the ALS-WR weighting of Zhou et al. (2008), which
regularizes heavy users and popular items more.  This is the objective that
:func:`jmf.solvers.als` minimizes exactly at every half-step.

On sparse data whose absent entries are zeros (``absent="zero"``, models
without biases) every entry is observed and the Gram form of
:func:`jmf.losses.squared_error` is used (``s_i = n``, ``s_j = m``).  On
other :class:`jmf.Sparse` data the value and the gradient stream over
fixed-size chunks of entries, so memory stays ``O(nnz + (m + n) k)`` even at
20M ratings (:func:`jmf.losses.frobenius` gathers ``(nnz, k)`` arrays at
once); dense data uses the matrix products of the Frobenius loss.
"""

from __future__ import annotations

import warnings
from typing import Optional

import jax
import jax.numpy as jnp

from .._validation import check_bool, check_int, check_nonneg_float
from ..data import Dense, Sparse
from ..factors import Factors
from .base import ALL_KINDS, Loss, _pair, loss_factory, squared_error, zero_filled
from .frobenius import _data_grad as _frobenius_data_grad

__all__ = ["ratings_loss", "row_scaled_frobenius", "chunked_entry_sum", "weight_sums"]


def chunked_entry_sum(nnz: int, chunk_size: int, fn, init):
    """Fold ``fn(carry, idx, live)`` over chunks of entry positions, without padding copies.

    ``idx`` (C,) are entry positions; ``live`` (C,) is False for positions
    already visited (the last chunk is shifted back to end at ``nnz``).
    """
    C = min(chunk_size, nnz)
    n_chunks = -(-nnz // C)
    lane = jnp.arange(C, dtype=jnp.int32)

    def body(carry, c):
        nominal = c * C
        start = jnp.minimum(nominal, nnz - C)
        idx = start + lane
        return fn(carry, idx, idx >= nominal), None

    carry, _ = jax.lax.scan(body, init, jnp.arange(n_chunks, dtype=jnp.int32))
    return carry


def weight_sums(data):
    """Sum of the weights of every row ``(m,)`` and column ``(n,)``: the counts ``s`` of count scaling."""
    m, n = data.shape
    if zero_filled(data) or (isinstance(data, Dense) and data.weights is None):  # every entry observed
        return jnp.full((m,), n, data.dtype), jnp.full((n,), m, data.dtype)
    if isinstance(data, Dense):
        return jnp.sum(data.weights, axis=1), jnp.sum(data.weights, axis=0)
    w = data.effective_weights()
    # Not flagged as sorted: losses also see shuffled minibatches.
    return jax.ops.segment_sum(w, data.rows, num_segments=m), jax.ops.segment_sum(w, data.cols, num_segments=n)


def _scales(f: Factors, data, count_scaled: bool):
    """``(s_rows, s_cols)`` of the penalties (``None``: unscaled)."""
    if not count_scaled:
        return None, None
    sr, sc = weight_sums(data)
    return sr.astype(f.W.dtype), sc.astype(f.W.dtype)


def _scaled_sum(x2, s):
    return jnp.sum(x2) if s is None else jnp.sum(s * x2)


def _penalty(f: Factors, l2W, l2H, bias_l2, sr, sc):
    out = l2W * _scaled_sum(jnp.sum(f.W * f.W, axis=1), sr) + l2H * _scaled_sum(jnp.sum(f.H * f.H, axis=0), sc)
    if f.row_bias is not None:
        out = out + bias_l2 * _scaled_sum(f.row_bias * f.row_bias, sr)
    if f.col_bias is not None:
        out = out + bias_l2 * _scaled_sum(f.col_bias * f.col_bias, sc)
    return out


def _penalty_grad(f: Factors, l2W, l2H, bias_l2, sr, sc) -> Factors:
    gW, gH = 2 * l2W * f.W, 2 * l2H * f.H
    gb = None if f.row_bias is None else 2 * bias_l2 * f.row_bias
    gc = None if f.col_bias is None else 2 * bias_l2 * f.col_bias
    if sr is not None:
        gW, gH = sr[:, None] * gW, sc[None, :] * gH
        gb = None if gb is None else sr * gb
        gc = None if gc is None else sc * gc
    go = None if f.offset is None else jnp.zeros_like(f.offset)
    return Factors(gW, gH, gb, gc, go)


def _entry_terms(f: Factors, data: Sparse, idx, live):
    r, c = data.rows[idx], data.cols[idx]
    w = data.effective_weights()[idx] * live.astype(data.vals.dtype)
    Wr = f.W[r]
    Hc = f.H.T[c]
    pred = jnp.sum(Wr * Hc, axis=1)
    if f.row_bias is not None:
        pred = pred + f.row_bias[r]
    if f.col_bias is not None:
        pred = pred + f.col_bias[c]
    if f.offset is not None:
        pred = pred + f.offset
    res = data.vals[idx] - pred
    return r, c, w, Wr, Hc, res


def _chunked_squared_error(f: Factors, data: Sparse, chunk_size: int):
    def fn(acc, idx, live):
        *_, w, _, _, res = _entry_terms(f, data, idx, live)
        return acc + jnp.sum(w * res * res)

    return chunked_entry_sum(data.nnz, chunk_size, fn, jnp.zeros((), data.vals.dtype))


def _chunked_data_grad(f: Factors, data: Sparse, chunk_size: int) -> Factors:
    """Gradient of the squared error (sum units), accumulated chunk by chunk with scatter-adds."""
    def fn(acc, idx, live):
        gW, gHt, gb, gc, go = acc
        r, c, w, Wr, Hc, res = _entry_terms(f, data, idx, live)
        wr = (w * res).astype(f.W.dtype)
        # Not flagged as sorted: minibatches and stacked batches are not in row order.
        gW = gW.at[r].add(wr[:, None] * Hc)
        gHt = gHt.at[c].add(wr[:, None] * Wr)
        if gb is not None:
            gb = gb.at[r].add(wr)
        if gc is not None:
            gc = gc.at[c].add(wr)
        if go is not None:
            go = go + jnp.sum(wr)
        return gW, gHt, gb, gc, go

    def zeros(x):
        return None if x is None else jnp.zeros_like(x)

    init = (jnp.zeros_like(f.W), jnp.zeros_like(f.H.T), zeros(f.row_bias), zeros(f.col_bias), zeros(f.offset))
    gW, gHt, gb, gc, go = chunked_entry_sum(data.nnz, chunk_size, fn, init)
    return Factors(-2 * gW, -2 * gHt.T, *(None if g is None else -2 * g for g in (gb, gc, go)))


@loss_factory
def ratings_loss(l2=0.0, bias_l2: Optional[float] = None, count_scaled: bool = False,
                 chunk_size: int = 1 << 16) -> Loss:
    """Regularized squared error of a biased MF model (see the module docstring).

    Parameters
    ----------
    l2 : float or (float, float), default 0
        Ridge penalty on the factors (a pair gives ``(for W, for H)``).
    bias_l2 : float, optional
        Ridge penalty on the biases (default: the ``W`` value of ``l2``); the offset is free.
    count_scaled : bool, default False
        ALS-WR: scale each row's / column's penalty by its number of ratings
        (sum of weights).
    chunk_size : int, default 65536
        Entries per chunk on sparse data: working memory ``O(chunk_size k)``.

    Returns
    -------
    Loss
        ``value`` and a hand-derived ``grad`` for dense, weighted dense and
        sparse data.  Without ``count_scaled`` the value is that of
        :func:`jmf.losses.frobenius` with the same penalties.
    """
    who = "ratings_loss"
    l2W, l2H = _pair(l2, "l2", who)
    bias_l2 = l2W if bias_l2 is None else check_nonneg_float(bias_l2, "bias_l2", who)
    count_scaled = check_bool(count_scaled, "count_scaled", who)
    chunk_size = check_int(chunk_size, "chunk_size", who)

    def value(f: Factors, data):
        f = jax.tree_util.tree_map(jnp.asarray, f)
        sr, sc = _scales(f, data, count_scaled)
        if isinstance(data, Dense) or zero_filled(data):
            se = squared_error(f, data)
        else:
            se = _chunked_squared_error(f, data, chunk_size)
        return (se + _penalty(f, l2W, l2H, bias_l2, sr, sc)) / data.n_observed()

    def grad(f: Factors, data):
        f = jax.tree_util.tree_map(jnp.asarray, f)
        sr, sc = _scales(f, data, count_scaled)
        if isinstance(data, Dense) or zero_filled(data):
            g = _frobenius_data_grad(f, data)
        else:
            g = _chunked_data_grad(f, data, chunk_size)
        inv_n = (1 / data.n_observed()).astype(f.W.dtype)
        return jax.tree_util.tree_map(lambda a, b: (a + b) * inv_n, g, _penalty_grad(f, l2W, l2H, bias_l2, sr, sc))

    return Loss(value, grad, "ratings" + ("-wr" if count_scaled else ""),
                ("ratings", (l2W, l2H), bias_l2, count_scaled), data_kinds=ALL_KINDS)


def row_scaled_frobenius(l2=0.0, bias_l2=None) -> Loss:
    """Deprecated: ``ratings_loss(l2, bias_l2, count_scaled=True)`` (the same objective)."""
    warnings.warn("row_scaled_frobenius is deprecated; use jmf.losses.ratings_loss(l2, bias_l2, count_scaled=True)",
                  DeprecationWarning, stacklevel=2)
    return ratings_loss(l2, bias_l2, count_scaled=True)
