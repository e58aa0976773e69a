"""Mixed shapes in :func:`jmf.fit_many`: a list of matrices padded into a few common shapes (buckets).

Padding rows and columns are unobserved (weight 0), so a padded member fits
exactly its own matrix; the fit trims them from its factors.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from .data import Dense, Sparse, _rebuild, pad_entries
from .data.checks import device_array
from .data.construct import host_entries


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


def _pad_dense(d: Dense, shape, weighted: bool, dtype) -> tuple:
    """``(A, weights or None)`` of ``d`` padded to ``shape`` on the host (NumPy)."""
    m, n = d.shape
    M, N = shape
    A = np.pad(np.asarray(d.A, dtype), ((0, M - m), (0, N - n)))
    if not weighted:
        return A, None
    w = np.ones(d.shape, dtype) if d.weights is None else np.asarray(d.weights, dtype)
    return A, np.pad(w, ((0, M - m), (0, N - n)))


def _stack_bucket(items: list, shape) -> "Dense | Sparse":
    """One batch of a common padded ``shape``: padding rows and columns are unobserved (weight 0).

    Built on the host, like :func:`jmf.stack`: eager JAX padding compiled programs per member shape.
    """
    dtype = jnp.result_type(*[x.dtype for x in items])
    if isinstance(items[0], Dense):
        weighted = any(x.weights is not None or x.shape != tuple(shape) for x in items)
        padded = [_pad_dense(x, shape, weighted, dtype) for x in items]
        A = device_array(np.stack([a for a, _ in padded]))
        W = device_array(np.stack([w for _, w in padded])) if weighted else None
        return _rebuild(Dense, (A, W))
    nnz = max(x.nnz for x in items)
    cols = [pad_entries(*host_entries(x, dtype), nnz, shape[0] - 1) for x in items]
    leaves = tuple(device_array(np.stack(c)) for c in zip(*cols))
    return _rebuild(Sparse, leaves, tuple(shape))

