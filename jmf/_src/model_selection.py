"""Seeded splits of observed entries: random holdout, per-user leave-k-out, k-fold.

Every split returns :class:`jmf.Sparse` pieces of the *same shape* as the
input (so factors fitted on the training part index the test part directly),
with entries kept in the canonical row-major order.  All randomness comes
from a ``jax.random`` key (or an int seed); splits run on the host with
numpy index arithmetic, O(nnz).
"""

from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from ._validation import as_key
from .data import Sparse, _rebuild

__all__ = ["train_test_split", "leave_k_out", "kfold", "subset", "holdout_mask"]


def _check(data):
    if not isinstance(data, Sparse):
        raise TypeError(f"data must be a jmf.Sparse (observed entries), got {type(data).__name__}")
    if data.batch_shape:
        raise ValueError("data must be a single (unbatched) Sparse")


def subset(data: Sparse, index) -> Sparse:
    """Entries ``index`` (a boolean mask or integer positions) of ``data``, in row-major order, same shape."""
    index = np.asarray(index)
    if index.dtype == bool:
        if index.shape != (data.nnz,):
            raise ValueError(f"a boolean index must have shape ({data.nnz},), got {index.shape}")
        index = np.flatnonzero(index)
    index = np.sort(index.astype(np.int64))
    if index.size == 0:
        raise ValueError("the subset is empty")
    idx = jnp.asarray(index, dtype=jnp.int32)
    w = None if data.weights is None else data.weights[idx]
    return _rebuild(Sparse, (data.rows[idx], data.cols[idx], data.vals[idx], w), data.shape)


def holdout_mask(n_entries: int, fraction: float, rng: np.random.Generator, weights=None) -> np.ndarray:
    """A boolean mask of ``round(fraction * n_observed)`` entries drawn without replacement.

    Entries with weight 0 (``weights``, optional) are never drawn.  ``rng``
    is a NumPy generator (see :func:`jmf._src._validation.numpy_rng` to
    derive one from a key); the experiment runner uses this to hide and
    hold out entries of its datasets.
    """
    observed = np.flatnonzero(np.asarray(weights) > 0) if weights is not None else np.arange(n_entries)
    n_test = int(round(fraction * len(observed)))
    mask = np.zeros(n_entries, bool)
    mask[rng.choice(observed, size=n_test, replace=False)] = True
    return mask


def train_test_split(data: Sparse, test_size: float = 0.2, key=0):
    """Random split of the observed entries.

    Parameters
    ----------
    data : Sparse
    test_size : float in (0, 1) or int
        Fraction (or number) of entries held out.
    key : jax.random.key or int

    Returns
    -------
    (train, test) : Sparse, Sparse
        Disjoint, together all entries, both of shape ``data.shape``.
    """
    _check(data)
    nnz = data.nnz
    if isinstance(test_size, float):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size must be in (0, 1) as a fraction, got {test_size}")
        n_test = int(round(test_size * nnz))
    elif isinstance(test_size, (int, np.integer)) and not isinstance(test_size, bool):
        n_test = int(test_size)
    else:
        raise TypeError(f"test_size must be a float fraction or an int count, got {test_size!r}")
    if not 1 <= n_test < nnz:
        raise ValueError(f"test_size gives {n_test} test entries out of {nnz}; need between 1 and nnz - 1")
    perm = np.asarray(jax.random.permutation(as_key(key), nnz))
    return subset(data, perm[n_test:]), subset(data, perm[:n_test])


def leave_k_out(data: Sparse, k: int = 1, key=0, min_train: int = 1):
    """Hold out ``k`` random entries of every user (row) that has at least ``k + min_train``.

    Users with fewer entries keep them all in the training part.

    Returns
    -------
    (train, test) : Sparse, Sparse
    """
    _check(data)
    for name, v, lo in (("k", k, 1), ("min_train", min_train, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    rows = np.asarray(data.rows).astype(np.int64)
    u = np.asarray(jax.random.uniform(as_key(key), (data.nnz,)))
    order = np.lexsort((u, rows))  # by row, random within row
    m = data.shape[0]
    counts = np.bincount(rows, minlength=m)
    starts = np.cumsum(counts) - counts
    pos = np.empty(data.nnz, np.int64)
    pos[order] = np.arange(data.nnz) - starts[rows[order]]
    test = (pos < k) & (counts[rows] >= k + min_train)
    if not test.any():
        raise ValueError(f"no user has at least k + min_train = {k + min_train} entries")
    if test.all():
        raise ValueError("every entry would be held out")
    return subset(data, ~test), subset(data, test)


def kfold(data: Sparse, n_splits: int = 5, key=0) -> Iterator:
    """``n_splits`` (train, test) pairs; each entry is in exactly one test fold (random, seeded).

    Yields
    ------
    (train, test) : Sparse, Sparse
    """
    _check(data)
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or not 2 <= n_splits <= data.nnz:
        raise ValueError(f"n_splits must be an int in [2, nnz={data.nnz}], got {n_splits!r}")
    perm = np.asarray(jax.random.permutation(as_key(key), data.nnz))
    folds = np.array_split(perm, n_splits)

    def gen():
        for f in folds:
            mask = np.zeros(data.nnz, bool)
            mask[f] = True
            yield subset(data, ~mask), subset(data, mask)

    return gen()
