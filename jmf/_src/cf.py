"""Collaborative filtering helpers: predictions that tolerate unknown users/items, and top-n recommendation.

Indices ``-1`` stand for users or items that were not in the training data
(see :meth:`jmf.datasets.Ratings.encode`).  Their predictions fall back to
what the model knows: an unknown user gets ``offset + col_bias[j]``, an
unknown item ``offset + row_bias[i]``, both unknown the offset alone (and 0
when the model has no biases).
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .data import Sparse
from .factors import Factors, predict_entries

__all__ = ["predict", "recommend", "padded_user_entries"]


def predict(factors: Factors, rows, cols, clip: Optional[tuple] = None) -> jax.Array:
    """Predicted ratings at ``(rows[p], cols[p])``; ``-1`` marks an unknown user or item.

    Parameters
    ----------
    factors : Factors
        ``W (m, k)``, ``H (k, n)`` and optional biases / offset.
    rows, cols : int arrays, shape (p,)
        Indices in ``[-1, m)`` and ``[-1, n)``.
    clip : (low, high), optional
        Clip the predictions to the rating scale.

    Returns
    -------
    Array, shape (p,)
        ``offset + row_bias[i] + col_bias[j] + W[i] . H[:, j]`` with every
        term involving an unknown index dropped.  O(p k), no m x n array.
    """
    rows = jnp.asarray(rows)
    cols = jnp.asarray(cols)
    if rows.shape != cols.shape or rows.ndim != 1:
        raise ValueError(f"rows and cols must be 1-D of the same length, got {rows.shape} and {cols.shape}")
    return _predict(factors, rows.astype(jnp.int32), cols.astype(jnp.int32), clip)


@partial(jax.jit, static_argnames=("clip",))
def _predict(f: Factors, rows, cols, clip):
    ku, ki = rows >= 0, cols >= 0
    out = predict_entries(f, jnp.where(ku, rows, 0), jnp.where(ki, cols, 0), known_rows=ku, known_cols=ki)
    if clip is not None:
        out = jnp.clip(out, clip[0], clip[1])
    return out


def padded_user_entries(data: Sparse, users: np.ndarray, batch_size: int, threshold=None):
    """Entries of the given users, grouped into batches of ``batch_size`` users (host-side layout).

    Returns ``(loc, cols, n_rel)``: ``loc`` and ``cols`` of shape
    ``(n_batches, L)`` hold, for each entry of a batch, the position of its
    user in the batch (``batch_size`` marks padding) and its column; ``L`` is
    the largest number of entries in a batch.  With ``threshold`` only
    entries with value ``>= threshold`` are kept.  ``users`` may contain
    ``-1`` (no entries).
    """
    if data.batch_shape:
        raise ValueError("a single (unbatched) Sparse is needed")
    m = data.shape[0]
    rows = np.asarray(data.rows)
    keep = np.ones(rows.shape, bool)
    if data.weights is not None:
        keep &= np.asarray(data.weights) > 0
    if threshold is not None:
        keep &= np.asarray(data.vals) >= threshold
    rows_k = rows[keep]
    cols_k = np.asarray(data.cols)[keep]
    indptr = np.searchsorted(rows_k, np.arange(m + 1))  # rows are sorted (Sparse invariant)
    users = np.asarray(users, dtype=np.int64)
    known = users >= 0
    u = np.where(known, users, 0)
    start = indptr[u]
    count = np.where(known, indptr[u + 1] - indptr[u], 0)
    U = users.size
    n_batches = max(1, -(-U // batch_size))
    pos = np.arange(U)
    batch_of = pos // batch_size
    per_batch = np.bincount(batch_of, weights=count, minlength=n_batches).astype(np.int64)
    L = max(1, int(per_batch.max()))
    total = int(count.sum())
    # entry e belongs to requested user owner[e]; its index in data is start[owner] + offset within the user
    owner = np.repeat(pos, count)
    first = np.cumsum(count) - count
    within = np.arange(total) - np.repeat(first, count)
    src = start[owner] + within
    batch_first = np.cumsum(per_batch) - per_batch
    slot = np.arange(total) - batch_first[batch_of[owner]]
    loc = np.full((n_batches, L), batch_size, np.int32)
    cc = np.zeros((n_batches, L), np.int32)
    loc[batch_of[owner], slot] = (owner % batch_size).astype(np.int32)
    cc[batch_of[owner], slot] = cols_k[src]
    return loc, cc, count


@partial(jax.jit, static_argnames=("n", "batch_size", "use_row_bias"))
def _topn(f: Factors, users_pad, seen_loc, seen_cols, n, batch_size, use_row_bias=False):
    """Top-n columns for every batch of users; seen entries are excluded (-inf)."""
    nb = users_pad.shape[0] // batch_size
    n_items = f.H.shape[1]
    col_term = jnp.zeros((n_items,), f.W.dtype) if f.col_bias is None else f.col_bias

    def one(args):
        u, loc, cols = args
        known = (u >= 0)[:, None]
        Wu = f.W[jnp.where(u >= 0, u, 0)] * known.astype(f.W.dtype)
        s = Wu @ f.H + col_term[None, :]
        if use_row_bias and f.row_bias is not None:
            s = s + f.row_bias[jnp.where(u >= 0, u, 0)][:, None]
        seen = jnp.zeros((batch_size, n_items), bool).at[loc, cols].set(True, mode="drop")
        s = jnp.where(seen, -jnp.inf, s)
        return jax.lax.top_k(s, n)

    scores, items = jax.lax.map(one, (users_pad.reshape(nb, batch_size), seen_loc, seen_cols))
    return items.reshape(nb * batch_size, n), scores.reshape(nb * batch_size, n)


def recommend(factors: Factors, users, n: int = 10, exclude_seen: bool = True, seen: Optional[Sparse] = None,
              batch_size: int = 1024):
    """Top-``n`` items for each user, batched over users.

    Parameters
    ----------
    factors : Factors
        A fitted model.
    users : int array, shape (U,)
        Row indices; ``-1`` (unknown user) ranks items by ``col_bias`` alone.
    n : int
        Items per user (at most the number of items).
    exclude_seen : bool, default True
        Leave out the items each user has in ``seen`` (typically the training data).
    seen : Sparse, optional
        Required when ``exclude_seen`` is true.
    batch_size : int
        Users scored at a time (memory ``batch_size x n_items``).

    Returns
    -------
    items : int32 Array, shape (U, n)
        Best first.  When a user has fewer than ``n`` unseen items the tail
        holds seen items with score ``-inf``.
    scores : Array, shape (U, n)
        ``W[u] . H[:, j] + col_bias[j]`` (the user's bias does not change the order).
    """
    users = np.asarray(users)
    if users.ndim != 1 or users.dtype.kind not in "iu":
        raise ValueError(f"users must be a 1-D integer array, got shape {users.shape} and dtype {users.dtype}")
    m, n_items = factors.W.shape[0], factors.H.shape[1]
    if users.size and (users.min() < -1 or users.max() >= m):
        raise ValueError(f"users must be in [-1, {m}), got values in [{users.min()}, {users.max()}]")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= n_items:
        raise ValueError(f"n must be an int in [1, n_items={n_items}], got {n!r}")
    if exclude_seen:
        if seen is None:
            raise ValueError("exclude_seen=True needs seen= (the training Sparse); pass exclude_seen=False otherwise")
        if not isinstance(seen, Sparse) or seen.shape != (m, n_items):
            raise ValueError(f"seen must be a jmf.Sparse of shape {(m, n_items)}")
    B = int(min(batch_size, max(1, users.size)))
    nb = max(1, -(-users.size // B))
    users_pad = np.full(nb * B, -1, np.int32)
    users_pad[: users.size] = users
    if exclude_seen:
        loc, cols, _ = padded_user_entries(seen, users_pad, B)
    else:
        loc, cols = np.full((nb, 1), B, np.int32), np.zeros((nb, 1), np.int32)
    items, scores = _topn(factors, jnp.asarray(users_pad), jnp.asarray(loc), jnp.asarray(cols), int(n), B)
    return items[: users.size], scores[: users.size]
