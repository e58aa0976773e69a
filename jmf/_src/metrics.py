r"""Evaluation metrics: rating error (RMSE, MAE) and top-k ranking quality (precision, recall, NDCG, MAP, MRR, AUC).

Ranking metrics follow the usual offline protocol: for each user with at
least one relevant held-out item, score every item with the model, drop the
items the user already has in the training data, keep the top ``k`` with
``lax.top_k`` and compare with the user's held-out items (relevant: all of
them, or those rated ``>= threshold``)::

    precision@k = hits / k
    recall@k    = hits / n_relevant
    NDCG@k      = sum_{r < k} rel_r / log2(r + 2)  /  sum_{r < min(k, n_relevant)} 1 / log2(r + 2)
    AP@k        = sum_{r < k} rel_r precision@(r + 1)  /  min(k, n_relevant)        (MAP@k: its mean)
    RR@k        = 1 / (rank of the first relevant item), 0 if none in the top k    (MRR@k: its mean)
    AUC         = share of (relevant, non-relevant) pairs ordered correctly, over all candidate items

averaged over users.  AUC is not cut off at ``k``: the candidates are all
items the user does not have in the training data, the relevant ones
against the others (a tie counts one half, as in the Mann-Whitney statistic
and scikit-learn's ``roc_auc_score``).
Users are processed in batches of ``batch_size``
(memory ``batch_size x n_items``), one compiled ``lax.map``.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .cf import padded_user_entries, predict
from .data import Sparse
from .data.checks import device_array
from .factors import Factors

__all__ = ["rmse", "mae", "rating_metrics", "ranking_metrics", "precision_at_k", "recall_at_k", "ndcg_at_k",
           "map_at_k", "mrr_at_k", "auc"]


def _pair(y_true, y_pred, weights=None):
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same shape, got {t.shape} and {p.shape}")
    if t.size == 0:
        raise ValueError("y_true is empty")
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    if w is not None and w.shape != t.shape:
        raise ValueError(f"weights must have the shape of y_true {t.shape}, got {w.shape}")
    return t, p, w


def rmse(y_true, y_pred, weights=None) -> float:
    """Root mean squared error ``sqrt(sum w (y - yhat)^2 / sum w)`` (computed in float64 on the host)."""
    t, p, w = _pair(y_true, y_pred, weights)
    r2 = (t - p) ** 2
    return float(np.sqrt(r2.mean() if w is None else np.sum(w * r2) / np.sum(w)))


def mae(y_true, y_pred, weights=None) -> float:
    """Mean absolute error ``sum w |y - yhat| / sum w``."""
    t, p, w = _pair(y_true, y_pred, weights)
    a = np.abs(t - p)
    return float(a.mean() if w is None else np.sum(w * a) / np.sum(w))


def rating_metrics(factors: Factors, test, clip: Optional[tuple] = None) -> dict:
    """RMSE and MAE of ``factors`` on held-out ratings.

    Parameters
    ----------
    factors : Factors
    test : Sparse or (rows, cols, vals)
        Held-out entries; in the triplet form ``-1`` indices mark unknown
        users / items, which are predicted from the biases (see :func:`jmf.cf.predict`).
    clip : (low, high), optional
        Clip predictions to the rating scale first.

    Returns
    -------
    dict with "rmse", "mae" and "n".
    """
    if isinstance(test, Sparse):
        if test.batch_shape:
            raise ValueError("test must be a single (unbatched) Sparse")
        rows, cols, vals, w = test.rows, test.cols, test.vals, test.weights
    else:
        try:
            rows, cols, vals = test
        except (TypeError, ValueError):
            raise TypeError("test must be a jmf.Sparse or a (rows, cols, vals) triple") from None
        w = None
    pred = predict(factors, rows, cols, clip=clip)
    return {"rmse": rmse(vals, pred, w), "mae": mae(vals, pred, w), "n": int(np.asarray(vals).size)}


# Relevant entries whose score rows are compared at once for the AUC (memory: this many rows of scores).
_AUC_ENTRIES = 128


@partial(jax.jit, static_argnames=("k", "batch_size"))
def _rank_eval(f: Factors, users_pad, seen_loc, seen_cols, rel_loc, rel_cols, k, batch_size):
    """Per user: hits@k, DCG@k, sum of precision at the hits (AP numerator), reciprocal rank, AUC numerator
    and the number of non-relevant candidates."""
    nb = users_pad.shape[0] // batch_size
    n_items = f.H.shape[1]
    dtype = f.W.dtype
    col_term = jnp.zeros((n_items,), dtype) if f.col_bias is None else f.col_bias
    discount = 1.0 / jnp.log2(jnp.arange(k, dtype=dtype) + 2)
    inv_rank = 1.0 / jnp.arange(1, k + 1, dtype=dtype)

    def one(args):
        u, sl, sc, rl, rc = args
        s = f.W[u] @ f.H + col_term[None, :]
        seen = jnp.zeros((batch_size, n_items), bool).at[sl, sc].set(True, mode="drop")
        s = jnp.where(seen, -jnp.inf, s)
        _, top = jax.lax.top_k(s, k)
        rel = jnp.zeros((batch_size, n_items), bool).at[rl, rc].set(True, mode="drop")
        hit = jnp.take_along_axis(rel, top, axis=1).astype(dtype)
        ap = jnp.sum(hit * jnp.cumsum(hit, axis=1) * inv_rank[None, :], axis=1)
        rr = jnp.max(hit * inv_rank[None, :], axis=1)
        # AUC: for every relevant item, the non-relevant candidates (unseen) scored below it, ties counting
        # one half.  Counted entry by entry against its user's row, not by sorting the rows: XLA:CPU's sort
        # is an order of magnitude slower than these comparisons (BENCHMARKS.md, 2026-12-01).
        neg = ~seen & ~rel
        loc = jnp.minimum(rl, batch_size - 1)
        s_rel = s[loc, rc]

        def below(entry):
            u, score = entry
            row, cand = s[u], neg[u]
            return jnp.sum(cand & (row < score), dtype=dtype) + 0.5 * jnp.sum(cand & (row == score), dtype=dtype)

        per_entry = jax.lax.map(below, (loc, s_rel), batch_size=_AUC_ENTRIES)
        auc_num = jax.ops.segment_sum(jnp.where(rl < batch_size, per_entry, 0), loc, num_segments=batch_size)
        return jnp.sum(hit, axis=1), hit @ discount, ap, rr, auc_num, jnp.sum(neg, axis=1, dtype=dtype)

    out = jax.lax.map(one, (users_pad.reshape(nb, batch_size), seen_loc, seen_cols, rel_loc, rel_cols))
    return tuple(x.reshape(-1) for x in out)


def ranking_metrics(factors: Factors, test: Sparse, k: int = 10, train: Optional[Sparse] = None,
                    threshold: Optional[float] = None, batch_size: int = 512, per_user: bool = False) -> dict:
    """Precision@k, recall@k, NDCG@k, MAP@k, MRR@k and AUC, averaged over users with a relevant held-out item.

    Parameters
    ----------
    factors : Factors
        Scores are ``W[u] . H[:, j] + col_bias[j]``.
    test : Sparse, shape (m, n)
        Held-out entries.
    k : int
        Cut-off, ``1 <= k <= n``.
    train : Sparse, optional
        Entries to exclude from each user's ranking (what the user already has).
    threshold : float, optional
        Only held-out entries with value ``>= threshold`` are relevant
        (e.g. 4.0 for "liked" on a 5-star scale); default: all.
    batch_size : int
        Users per batch.
    per_user : bool
        Also return the per-user arrays (and the user indices).

    Returns
    -------
    dict with "precision", "recall", "ndcg", "map", "mrr", "auc" (floats; see
    the module docstring), "n_users" and, if ``per_user``, "users" and
    "<metric>_per_user" arrays for each of the six metrics.  A user without
    non-relevant candidates has AUC 1.
    """
    if not isinstance(test, Sparse) or test.batch_shape:
        raise TypeError("test must be a single (unbatched) jmf.Sparse")
    m, n_items = factors.W.shape[0], factors.H.shape[1]
    if test.shape != (m, n_items):
        raise ValueError(f"test has shape {test.shape}, the factors are for {(m, n_items)}")
    if train is not None and (not isinstance(train, Sparse) or train.shape != test.shape):
        raise ValueError(f"train must be a jmf.Sparse of shape {test.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_items:
        raise ValueError(f"k must be an int in [1, n_items={n_items}], got {k!r}")
    rows = np.asarray(test.rows)
    keep = np.ones(rows.shape, bool) if threshold is None else np.asarray(test.vals) >= threshold
    if test.weights is not None:
        keep &= np.asarray(test.weights) > 0
    users = np.unique(rows[keep])
    if users.size == 0:
        raise ValueError("no user has a relevant held-out entry (check threshold)")
    B = int(min(batch_size, users.size))
    nb = -(-users.size // B)
    users_pad = np.full(nb * B, -1, np.int64)
    users_pad[: users.size] = users
    rel_loc, rel_cols, n_rel = padded_user_entries(test, users_pad, B, threshold=threshold)
    if train is not None:
        seen_loc, seen_cols, _ = padded_user_entries(train, users_pad, B)
    else:
        seen_loc, seen_cols = np.full((nb, 1), B, np.int32), np.zeros((nb, 1), np.int32)
    up = np.where(users_pad >= 0, users_pad, 0).astype(np.int32)
    res = _rank_eval(factors, device_array(up), device_array(seen_loc), device_array(seen_cols),
                     device_array(rel_loc), device_array(rel_cols), int(k), B)
    hits, dcg, ap, rr, auc_num, n_neg = (np.asarray(x, np.float64)[: users.size] for x in res)
    n_rel = n_rel[: users.size].astype(np.float64)
    disc = 1.0 / np.log2(np.arange(k) + 2)
    idcg = np.cumsum(disc)[np.minimum(n_rel, k).astype(np.int64) - 1]
    pairs = n_rel * n_neg
    per = {"precision": hits / k, "recall": hits / n_rel, "ndcg": dcg / idcg, "map": ap / np.minimum(n_rel, k),
           "mrr": rr, "auc": np.where(pairs > 0, auc_num / np.maximum(pairs, 1), 1.0)}
    out = {name: float(v.mean()) for name, v in per.items()}
    out["n_users"] = int(users.size)
    if per_user:
        out["users"] = users
        out.update({f"{name}_per_user": v for name, v in per.items()})
    return out


def precision_at_k(factors, test, k=10, train=None, threshold=None) -> float:
    """Mean precision@k (see :func:`ranking_metrics`)."""
    return ranking_metrics(factors, test, k, train, threshold)["precision"]


def recall_at_k(factors, test, k=10, train=None, threshold=None) -> float:
    """Mean recall@k (see :func:`ranking_metrics`)."""
    return ranking_metrics(factors, test, k, train, threshold)["recall"]


def ndcg_at_k(factors, test, k=10, train=None, threshold=None) -> float:
    """Mean NDCG@k (see :func:`ranking_metrics`)."""
    return ranking_metrics(factors, test, k, train, threshold)["ndcg"]


def map_at_k(factors, test, k=10, train=None, threshold=None) -> float:
    """Mean average precision@k (see :func:`ranking_metrics`)."""
    return ranking_metrics(factors, test, k, train, threshold)["map"]


def mrr_at_k(factors, test, k=10, train=None, threshold=None) -> float:
    """Mean reciprocal rank@k (see :func:`ranking_metrics`)."""
    return ranking_metrics(factors, test, k, train, threshold)["mrr"]


def auc(factors, test, train=None, threshold=None) -> float:
    """Mean per-user AUC over all candidate items (see :func:`ranking_metrics`)."""
    return ranking_metrics(factors, test, 1, train, threshold)["auc"]
