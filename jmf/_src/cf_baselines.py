r"""Baseline models for comparison: biases only (Surprise's BaselineOnly) and item-based k nearest neighbours.

**Baseline** (Koren 2010, section 2.1; Surprise's ``BaselineOnly`` with its
ALS option): ``r_ui ~ mu + b_u + b_i`` with ``mu`` the global mean and the
biases fitted by alternating regularized least squares::

    b_i = sum_{u in U(i)} (r_ui - mu - b_u) / (reg_item + |U(i)|)
    b_u = sum_{i in I(u)} (r_ui - mu - b_i) / (reg_user + |I(u)|)

(``n_epochs`` alternations, items first).  The result is a rank-0
:class:`jmf.Factors`, so :func:`jmf.cf.predict`, :func:`jmf.cf.recommend`
and :mod:`jmf.metrics` take it as they take any model.

**Item kNN** (Sarwar et al. 2001; Koren 2010's neighbourhood model, Surprise's
``KNNBaseline``; implicit's ``ItemItemRecommender``): item-item similarities

* ``"pearson_baseline"``: Pearson correlation of the baseline residuals
  ``d_ui = r_ui - mu - b_u - b_i`` over the users who rated both items,
  shrunk toward 0 by ``(n_ij - 1) / (n_ij - 1 + shrinkage)`` (``n_ij`` the
  number of common users; Koren 2010, eq. 10; Surprise's ``pearson_baseline``);
* ``"cosine"``: cosine of the item columns of the rating (or interaction)
  matrix, zeros for missing entries (the classic item-item cosine of
  implicit feedback);

then a rating prediction ``mu + b_u + b_i + sum_j s_ij d_uj / sum_j s_ij``
over the ``k`` items ``j`` rated by ``u`` most similar to ``i`` (positive
similarities only; the baseline alone when fewer than ``min_k``), and a
top-N score ``sum_{j in I(u)} r_uj s_ji`` over the ``k`` nearest neighbours
of each item (:meth:`ItemKNN.factors`).

Scale: the similarity matrix is dense, ``n_items x n_items`` (float32: 380 MB
for ml-latest-small's 9,724 items), computed by matrix products over a dense
``n_users x n_items`` residual matrix in blocks of items (``O(m n^2)``
work); predictions gather dense rows too.  That fits data of
ml-latest-small / MovieLens-1M scale; beyond about 20,000 items (1.6 GB)
use a factor model.  :func:`item_knn` refuses more than ``max_items``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._validation import check_choice, check_int, check_nonneg_float
from .data import Sparse
from .factors import Factors

__all__ = ["baseline_only", "item_knn", "ItemKNN"]


def _check_sparse(data, who: str) -> None:
    if not isinstance(data, Sparse) or data.batch_shape or data.absent != "missing":
        raise TypeError(f"{who}: data must be a single jmf.Sparse of observed ratings (absent='missing'), "
                        f"got {type(data).__name__}")
    if data.nnz == 0:
        raise ValueError(f"{who}: data has no entries")


@partial(jax.jit, static_argnames=("n_epochs",))
def _baseline(data: Sparse, reg_user, reg_item, n_epochs):
    m, n = data.shape
    w = data.effective_weights()
    dtype = data.vals.dtype
    mu = jnp.sum(w * data.vals) / jnp.sum(w)
    cnt_u = jax.ops.segment_sum(w, data.rows, num_segments=m, indices_are_sorted=True)
    cnt_i = jax.ops.segment_sum(w, data.cols, num_segments=n)

    def epoch(_, b):
        bu, bi = b
        bi = jax.ops.segment_sum(w * (data.vals - mu - bu[data.rows]), data.cols, num_segments=n) / (reg_item + cnt_i)
        bu = jax.ops.segment_sum(w * (data.vals - mu - bi[data.cols]), data.rows, num_segments=m,
                                 indices_are_sorted=True) / (reg_user + cnt_u)
        return bu, bi

    bu, bi = jax.lax.fori_loop(0, n_epochs, epoch, (jnp.zeros((m,), dtype), jnp.zeros((n,), dtype)))
    return Factors(jnp.zeros((m, 0), dtype), jnp.zeros((0, n), dtype), row_bias=bu, col_bias=bi, offset=mu)


def baseline_only(data: Sparse, reg_user: float = 15.0, reg_item: float = 10.0, n_epochs: int = 10) -> Factors:
    """Global mean plus user and item biases by regularized ALS (Surprise's ``BaselineOnly``).

    Parameters
    ----------
    data : Sparse
        Observed ratings (weights count as multiplicities).
    reg_user, reg_item : float >= 0, defaults 15 and 10
        Penalties of the user and item biases (Surprise's ``reg_u``, ``reg_i``).
    n_epochs : int, default 10
        Alternations (items, then users).

    Returns
    -------
    Factors
        Rank 0 (``W`` (m, 0), ``H`` (0, n)) with ``row_bias`` ``b_u``,
        ``col_bias`` ``b_i`` and ``offset`` ``mu``: use it with
        :func:`jmf.cf.predict`, :func:`jmf.metrics.rating_metrics`, :func:`jmf.cf.recommend`.
    """
    who = "baseline_only"
    _check_sparse(data, who)
    reg_user = check_nonneg_float(reg_user, "reg_user", who)
    reg_item = check_nonneg_float(reg_item, "reg_item", who)
    n_epochs = check_int(n_epochs, "n_epochs", who)
    dtype = data.vals.dtype
    return _baseline(data, jnp.asarray(reg_user, dtype), jnp.asarray(reg_item, dtype), n_epochs)


class ItemKNN(NamedTuple):
    """A fitted item-kNN model (:func:`item_knn`).

    Attributes
    ----------
    sim : Array (n, n)
        Item-item similarities, zero diagonal.
    baseline : Factors
        The rank-0 baseline (:func:`baseline_only`) the residuals are taken from.
    train : Sparse
        The training ratings (each user's neighbours are among its rated items).
    k : int
        Neighbours per prediction.
    min_k : int
        Fewer usable neighbours than this: the baseline alone.
    """

    sim: jax.Array
    baseline: Factors
    train: Sparse
    k: int
    min_k: int

    def predict(self, rows, cols, clip=None) -> np.ndarray:
        """Predicted ratings at ``(rows[p], cols[p])`` (``-1``: unknown user or item, the baseline's fallback).

        ``mu + b_u + b_i + sum_j s_ij d_uj / sum_j s_ij`` over the ``k``
        items ``j`` rated by ``u`` most similar to ``i`` with ``s_ij > 0``
        (KNNBaseline); ``clip=(low, high)`` clips to the rating scale.
        """
        rows, cols = np.asarray(rows), np.asarray(cols)
        m, n = self.train.shape
        if rows.shape != cols.shape or rows.ndim != 1:
            raise ValueError(f"rows and cols must be 1-D of the same length, got {rows.shape} and {cols.shape}")
        if rows.size and (rows.min() < -1 or rows.max() >= m or cols.min() < -1 or cols.max() >= n):
            raise ValueError(f"rows must be in [-1, {m}) and cols in [-1, {n})")
        if rows.size == 0:
            return np.zeros(0)
        B = 256
        P = max(B, 1 << (rows.size - 1).bit_length())  # a power of two: one program per size class
        rp = np.full(P, -1, np.int32)
        cp = np.full(P, -1, np.int32)
        rp[: rows.size], cp[: rows.size] = rows, cols
        out = np.asarray(_knn_predict(self.sim, self.baseline, self.train, jnp.asarray(rp), jnp.asarray(cp),
                                      self.k, self.min_k, B))[: rows.size]
        return out if clip is None else np.clip(out, clip[0], clip[1])

    def factors(self) -> Factors:
        """A :class:`jmf.Factors` whose scores are the top-N scores of item kNN.

        ``W`` (m, n) holds each user's training values (dense), ``H`` (n, n)
        the similarities with every item's row pruned to its ``k`` nearest
        neighbours (``H[j, i] = s_ji`` if ``i`` is among ``j``'s ``k``
        most similar items), so ``W[u] . H[:, i] = sum_{j in I(u)} r_uj s_ji``:
        :func:`jmf.cf.recommend` and :func:`jmf.metrics.ranking_metrics` take it
        as they take a factor model.  Memory ``O(m n + n^2)``.
        """
        return _knn_factors(self.sim, self.train, self.k)


@partial(jax.jit, static_argnames=("k",))
def _knn_factors(sim, train: Sparse, k):
    m, n = train.shape
    W = jnp.zeros((m, n), sim.dtype).at[train.rows, train.cols].add(
        (train.vals * train.effective_weights()).astype(sim.dtype))
    vals, idx = jax.lax.top_k(sim, k)
    H = jnp.zeros((n, n), sim.dtype).at[jnp.arange(n)[:, None], idx].set(vals)
    return Factors(W, H)


def _dense_residuals(baseline: Factors, train: Sparse, dtype):
    """Dense ``(D, M)``: baseline residuals and the 0/1 mask of the training entries (weight > 0)."""
    m, n = train.shape
    w = train.effective_weights()
    live = (w > 0).astype(dtype)
    d = (train.vals - baseline.offset - baseline.row_bias[train.rows] - baseline.col_bias[train.cols]).astype(dtype)
    D = jnp.zeros((m, n), dtype).at[train.rows, train.cols].add(d * live)
    M = jnp.zeros((m, n), dtype).at[train.rows, train.cols].add(live)
    return D, M


@partial(jax.jit, static_argnames=("k", "min_k", "batch_size"))
def _knn_predict(sim, baseline: Factors, train: Sparse, rows, cols, k, min_k, batch_size):
    dtype = sim.dtype
    D, M = _dense_residuals(baseline, train, dtype)
    ku, ki = rows >= 0, cols >= 0
    u, i = jnp.where(ku, rows, 0), jnp.where(ki, cols, 0)
    base = baseline.offset + jnp.where(ku, baseline.row_bias[u], 0) + jnp.where(ki, baseline.col_bias[i], 0)
    base = base.astype(dtype)

    def one(args):
        ub, ib = args
        s = jnp.where(M[ub] > 0, sim[ib], -jnp.inf)
        top, idx = jax.lax.top_k(s, k)
        use = top > 0
        wts = jnp.where(use, top, 0)
        num = jnp.sum(wts * jnp.take_along_axis(D[ub], idx, axis=1), axis=1)
        den = jnp.sum(wts, axis=1)
        ok = jnp.sum(use.astype(jnp.int32), axis=1) >= min_k
        return jnp.where(ok & (den > 0), num / jnp.where(den > 0, den, 1), 0)

    adj = jax.lax.map(one, (u.reshape(-1, batch_size), i.reshape(-1, batch_size))).reshape(-1)
    return base + jnp.where(ku & ki, adj, 0)


@partial(jax.jit, static_argnames=("kind",))
def _sim_block(X, M, Xb, Mb, shrinkage, kind):
    """Similarities of a block of items (columns ``Xb``, ``Mb`` of shape (m, c)) with all items: (c, n)."""
    if kind == "cosine":
        G = Xb.T @ X
        nb = jnp.sqrt(jnp.sum(Xb * Xb, axis=0))
        na = jnp.sqrt(jnp.sum(X * X, axis=0))
        den = nb[:, None] * na[None, :]
        return jnp.where(den > 0, G / jnp.where(den > 0, den, 1), 0)
    num = Xb.T @ X
    sq_b = (Xb * Xb).T @ M  # sum over common users of d_ub^2
    sq_a = Mb.T @ (X * X)  # ... of d_ua^2
    n_common = Mb.T @ M
    den = jnp.sqrt(sq_b * sq_a)
    rho = jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0)
    return jnp.where(n_common > 1, (n_common - 1) / (n_common - 1 + shrinkage), 0) * rho


def item_knn(train: Sparse, k: int = 40, similarity: str = "pearson_baseline", shrinkage: float = 100.0,
             min_k: int = 1, reg_user: float = 15.0, reg_item: float = 10.0, n_epochs: int = 10,
             block: int = 1024, max_items: int = 20000) -> ItemKNN:
    """Item-based k-nearest-neighbour model (Surprise's ``KNNBaseline``, implicit's item-item recommenders).

    Parameters
    ----------
    train : Sparse
        Observed ratings or interactions (m users x n items).
    k : int, default 40
        Neighbours per prediction (and per item for top-N scores); ``k <= n - 1``.
    similarity : {"pearson_baseline", "cosine"}
        See the module docstring.
    shrinkage : float >= 0, default 100
        Shrinkage of ``pearson_baseline`` (Surprise's default).
    min_k : int, default 1
        Fewer usable (positive-similarity) neighbours: predict the baseline.
    reg_user, reg_item, n_epochs
        Of the baseline (:func:`baseline_only`), whose residuals the Pearson
        similarity and the predictions use.
    block : int, default 1024
        Items per block of the similarity computation (memory ``block x n``).
    max_items : int, default 20000
        Refuse larger item sets (the dense ``n x n`` similarity matrix; see
        the module docstring).

    Returns
    -------
    ItemKNN
        ``.predict(rows, cols)`` for ratings, ``.factors()`` for top-N
        (:func:`jmf.cf.recommend`, :func:`jmf.metrics.ranking_metrics`).
    """
    who = "item_knn"
    _check_sparse(train, who)
    m, n = train.shape
    max_items = check_int(max_items, "max_items", who)
    if n > max_items:
        raise ValueError(f"{who}: {n} items need a dense {n} x {n} similarity matrix "
                         f"({n * n * 4 / 2 ** 30:.1f} GiB in float32); this model is for up to max_items={max_items} "
                         "items -- raise max_items if the memory is there, or use a factor model")
    k = check_int(k, "k", who, hi=max(n - 1, 1))
    min_k = check_int(min_k, "min_k", who, lo=0)
    check_choice(similarity, "similarity", ("pearson_baseline", "cosine"), who)
    shrinkage = check_nonneg_float(shrinkage, "shrinkage", who)
    block = check_int(block, "block", who)
    baseline = baseline_only(train, reg_user, reg_item, n_epochs)
    dtype = jnp.float32 if train.vals.dtype == jnp.float32 else train.vals.dtype
    if similarity == "cosine":
        X = jnp.zeros((m, n), dtype).at[train.rows, train.cols].add(
            (train.vals * train.effective_weights()).astype(dtype))
        M = X
    else:
        X, M = _dense_residuals(baseline, train, dtype)
    c = min(block, n)
    n_blocks = -(-n // c)
    pad = n_blocks * c - n
    Xp = jnp.pad(X, ((0, 0), (0, pad)))
    Mp = jnp.pad(M, ((0, 0), (0, pad)))
    parts = []
    for b in range(n_blocks):
        sl = slice(b * c, (b + 1) * c)
        parts.append(_sim_block(X, M, Xp[:, sl], Mp[:, sl], jnp.asarray(shrinkage, dtype), similarity))
    diag = jnp.arange(n)
    sim = jnp.concatenate(parts, axis=0)[:n].at[diag, diag].set(0)
    return ItemKNN(sim, baseline, train, int(k), int(min_k))
