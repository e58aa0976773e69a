"""Mixed shapes in :func:`jmf.fit_many`: a list of matrices padded into a few common shapes (buckets).

Padding rows and columns are unobserved (weight 0), so a padded member fits
exactly its own matrix; the fit trims them from its factors.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp

from .data import Dense, Sparse, _rebuild, pad_entries


def _bucket_shapes(shapes: Sequence[tuple[int, int]], max_buckets: int) -> list[tuple[int, int]]:
    """Padded shape for each input shape, using at most ``max_buckets`` distinct shapes when possible.

    Exact shapes when there are few; otherwise each dimension is rounded up
    on a geometric grid whose ratio grows (1.125, 1.25, 1.5, 2, ...) until
    the number of buckets fits.
    """
    if len(set(shapes)) <= max_buckets:
        return list(shapes)
    for ratio in (1.125, 1.25, 1.5, 2.0, 4.0, 16.0):
        def up(x):
            return int(math.ceil(ratio ** math.ceil(math.log(x, ratio) - 1e-9))) if x > 1 else 1

        padded = [(up(m), up(n)) for m, n in shapes]
        if len(set(padded)) <= max_buckets:
            return padded
    big = (max(m for m, _ in shapes), max(n for _, n in shapes))
    return [big] * len(shapes)


def _pad_dense(d: Dense, shape, weighted: bool) -> tuple:
    m, n = d.shape
    M, N = shape
    A = jnp.pad(d.A, ((0, M - m), (0, N - n)))
    if not weighted:
        return A, None
    w = jnp.ones(d.shape, d.dtype) if d.weights is None else d.weights
    return A, jnp.pad(w, ((0, M - m), (0, N - n)))


def _stack_bucket(items: list, shape) -> "Dense | Sparse":
    """One batch of a common padded ``shape``: padding rows and columns are unobserved (weight 0)."""
    dtype = jnp.result_type(*[x.dtype for x in items])
    if isinstance(items[0], Dense):
        weighted = any(x.weights is not None or x.shape != tuple(shape) for x in items)
        padded = [_pad_dense(x, shape, weighted) for x in items]
        A = jnp.stack([a.astype(dtype) for a, _ in padded])
        W = jnp.stack([w.astype(dtype) for _, w in padded]) if weighted else None
        return _rebuild(Dense, (A, W))
    nnz = max(x.nnz for x in items)
    cols = [pad_entries(x.rows, x.cols, x.vals.astype(dtype), x.effective_weights().astype(dtype), nnz, shape[0] - 1)
            for x in items]
    leaves = tuple(jnp.stack(c) for c in zip(*cols))
    return _rebuild(Sparse, leaves, tuple(shape))

