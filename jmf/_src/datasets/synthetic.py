"""Synthetic ratings with a known low-rank truth and power-law activity (the built-in default data)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validation import numpy_rng
from ..data import Sparse
from ..factors import Factors
from .ratings import Ratings

__all__ = ["synthetic_ratings", "SyntheticRatings"]


class SyntheticRatings(NamedTuple):
    """Result of :func:`synthetic_ratings`.

    Attributes
    ----------
    data : Sparse, shape (n_users, n_items)
        Observed ratings (on the ``scale``, rounded to ``step``).
    truth : Factors
        The model that generated them: ``offset + row_bias + col_bias + W H``
        before noise, rounding and clipping (float64 numpy leaves).
    users, items : ndarray
        ``arange(m)``, ``arange(n)`` (so it can be used as a :class:`Ratings`).
    """

    data: Sparse
    truth: Factors
    users: np.ndarray
    items: np.ndarray

    def as_ratings(self) -> Ratings:
        return Ratings(self.data, self.users, self.items)


def synthetic_ratings(key=0, n_users: int = 2000, n_items: int = 1000, n_ratings: int = 100_000, rank: int = 10,
                      noise: float = 0.5, user_exponent: float = 0.8, item_exponent: float = 1.0,
                      factor_scale: float = 0.7, bias_scale: tuple = (0.4, 0.5), mean: float = 3.5,
                      scale: tuple = (1.0, 5.0), step: "float | None" = 0.5, dtype=np.float32) -> SyntheticRatings:
    """Ratings from a known biased low-rank model with power-law user and item activity.

    The truth is ``mean + b_u + c_i + w_u . h_i`` with ``w_u, h_i ~ N(0,
    factor_scale^2 / sqrt(rank) I)`` (so ``w_u . h_i`` has std ``factor_scale``), ``b_u ~ N(0,
    bias_scale[0]^2)``, ``c_i ~ N(0, bias_scale[1]^2)``.  Observed entries are
    drawn without repetition with probability proportional to
    ``p_u q_i``, where the activities follow Zipf laws ``p ~ rank^-user_exponent``
    and ``q ~ rank^-item_exponent`` (in a random order of users and items),
    plus one entry per user and per item so that no row or column is empty.
    A rating is the truth plus ``N(0, noise^2)`` noise, rounded to ``step``
    (``None``: continuous) and clipped to ``scale``.

    Parameters
    ----------
    key : jax.random.key or int
        All randomness derives from it (a numpy Generator seeded by its bits,
        which is much faster for the host-side sampling at 20M ratings).
    n_users, n_items, n_ratings, rank : int
        ``n_ratings`` must be at least ``max(n_users, n_items)`` and at most
        half of ``n_users * n_items``.

    Returns
    -------
    SyntheticRatings
        ``data`` (Sparse), ``truth`` (Factors, float64 numpy), ``users``, ``items``.
    """
    for name, v in (("n_users", n_users), ("n_items", n_items), ("n_ratings", n_ratings), ("rank", rank)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    m, n = int(n_users), int(n_items)
    if n_ratings < max(m, n):
        raise ValueError(f"n_ratings={n_ratings} must be at least max(n_users, n_items) = {max(m, n)} "
                         "(every user and item gets one rating)")
    if n_ratings > m * n // 2:
        raise ValueError(f"n_ratings={n_ratings} is more than half of n_users * n_items = {m * n}")
    if not (noise >= 0):
        raise ValueError(f"noise must be >= 0, got {noise}")
    lo, hi = float(scale[0]), float(scale[1])
    if not lo < hi:
        raise ValueError(f"scale must be (low, high) with low < high, got {scale}")
    rng = numpy_rng(key)

    p = rng.permutation(np.arange(1, m + 1, dtype=np.float64) ** -float(user_exponent))
    q = rng.permutation(np.arange(1, n + 1, dtype=np.float64) ** -float(item_exponent))
    p /= p.sum()
    q /= q.sum()
    # one entry per user and per item, then fill up with power-law draws, without repeats
    base = np.concatenate([
        np.arange(m, dtype=np.int64) * n + _draw(rng, q, m),
        _draw(rng, p, n) * n + np.arange(n, dtype=np.int64),
    ])
    linear = np.unique(base)
    # Each round draws enough for the remaining need at the last round's yield of new cells: heavy
    # users x heavy items collide more and more as the matrix fills, and a fixed 1.3x oversampling
    # took hundreds of rounds (each a sort of all ratings) at ML-20M scale.
    new_per_draw = None
    while linear.size < n_ratings:
        need = n_ratings - linear.size
        if new_per_draw is None:
            size = int(need * 1.3) + 16
        else:
            size = int(min(need / max(new_per_draw, 1e-3) * 1.2, 4 * n_ratings)) + 16
        extra = _draw(rng, p, size) * n + _draw(rng, q, size)
        extra = np.setdiff1d(np.unique(extra), linear, assume_unique=True)
        new_per_draw = extra.size / size
        if extra.size > need:
            extra = rng.choice(extra, need, replace=False)
        linear = np.union1d(linear, extra)
    rows, cols = np.divmod(linear, n)

    W = rng.standard_normal((m, rank)) * (factor_scale / rank ** 0.25)
    H = rng.standard_normal((rank, n)) * (factor_scale / rank ** 0.25)
    bu = rng.standard_normal(m) * float(bias_scale[0])
    bi = rng.standard_normal(n) * float(bias_scale[1])
    truth = Factors(W, H, bu, bi, np.float64(mean))
    vals = np.empty(rows.size, np.float64)
    chunk = 1 << 20
    for s in range(0, rows.size, chunk):
        r, c = rows[s:s + chunk], cols[s:s + chunk]
        vals[s:s + chunk] = mean + bu[r] + bi[c] + np.einsum("pk,kp->p", W[r], H[:, c])
    vals += noise * rng.standard_normal(vals.size)
    if step:
        vals = np.round((vals - lo) / step) * step + lo
    np.clip(vals, lo, hi, out=vals)
    data = Sparse(rows, cols, vals.astype(dtype), (m, n))
    return SyntheticRatings(data, truth, np.arange(m), np.arange(n))


def _draw(rng, prob, size):
    """``size`` indices drawn with probabilities ``prob`` (inverse CDF)."""
    cdf = np.cumsum(prob)
    cdf[-1] = 1.0
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), prob.size - 1).astype(np.int64)
