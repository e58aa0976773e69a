"""Building containers outside their constructors: coercion (:func:`as_data`), leaves without validation
(``_rebuild``) and batches (:func:`stack`, :func:`pad_entries`)."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from .checks import device_array
from .dense import Dense, _dense_from_leaves
from .sparse import Sparse, _sparse_from_leaves


def _rebuild(cls, leaves, shape=None, absent: str = "missing"):
    """Build a container from leaves without validation (as tree_unflatten does)."""
    if cls is Dense:
        return _dense_from_leaves(leaves)
    return _sparse_from_leaves(leaves, shape, absent)


def pad_entries(rows, cols, vals, weights, nnz: int, last_row: int = 0) -> tuple:
    """Entry arrays padded at the end to length ``nnz`` with weight-0 entries at ``(last_row, 0)``.

    The one way jmf pads sparse entries (stacked batches, mixed-shape buckets,
    minibatches): a weight-0 entry contributes nothing to any loss, solve or
    count.  Padding at the last row (``m - 1``) keeps the entries in row
    order, which the sparse solvers rely on.  ``weights`` must be given (e.g.
    ``effective_weights()``): the padding needs them.
    """
    pad = nnz - rows.shape[-1]
    # NumPy arrays are padded on the host (an eager jnp.pad compiles a program per length); others in JAX.
    xp = np if all(isinstance(x, np.ndarray) for x in (rows, cols, vals, weights)) else jnp
    return (xp.pad(rows, (0, pad), constant_values=last_row),) + tuple(
        xp.pad(x, (0, pad)) for x in (cols, vals, weights))


def host_entries(x: Sparse, dtype) -> tuple:
    """``(rows, cols, vals, weights)`` of one matrix as NumPy, values and weights (ones if none) in ``dtype``."""
    vals = np.asarray(x.vals, dtype)
    weights = np.ones(vals.shape, dtype) if x.weights is None else np.asarray(x.weights, dtype)
    return np.asarray(x.rows), np.asarray(x.cols), vals, weights


def as_data(x, *, name: str = "data") -> "Dense | Sparse":
    """Coerce user input to :class:`Dense` or :class:`Sparse`.

    Accepts a :class:`Dense`/:class:`Sparse` (returned as is), a
    ``scipy.sparse`` matrix (:meth:`Sparse.from_scipy`) or any array-like
    (:class:`Dense`; NaN entries are an error -- wrap with
    :meth:`Dense.from_nan` to treat them as missing).
    """
    if isinstance(x, (Dense, Sparse)):
        return x
    if hasattr(x, "tocoo") and hasattr(x, "nnz"):
        return Sparse.from_scipy(x)
    if x is None:
        raise TypeError(f"{name} is None; expected an array, jmf.Dense or jmf.Sparse")
    return Dense(x)


def stack(items: Sequence["Dense | Sparse"]) -> "Dense | Sparse":
    """Stack same-shape matrices into one batched container (leading axis ``B``).

    Dense members need identical shapes; their weights are combined (members
    without weights get all-ones weights if any member is weighted).  Sparse
    members need the same ``shape``; they are padded to the largest ``nnz``
    with weight-0 entries in the last row (so entries stay in row order),
    which no loss or solver sees.
    """
    items = [as_data(x, name=f"items[{i}]") for i, x in enumerate(items)]
    if not items:
        raise ValueError("items is empty")
    kinds = {type(x) for x in items}
    if len(kinds) != 1:
        raise TypeError("cannot stack Dense and Sparse together")
    shapes = {x.shape for x in items}
    if len(shapes) != 1:
        raise ValueError(f"all matrices must have the same shape to stack, got {sorted(shapes)}; "
                         "use jmf.fit_many on a list for mixed shapes")
    if any(x.batch_shape for x in items):
        raise ValueError("items must be single (unbatched) matrices")
    dtype = jnp.result_type(*[x.dtype for x in items])
    # Stacked on the host: eager jnp.stack / pad / astype compiled a few programs per shape.
    if isinstance(items[0], Dense):
        A = device_array(np.stack([np.asarray(x.A, dtype) for x in items]))
        if any(x.weights is not None for x in items):
            W = device_array(np.stack([np.ones(x.shape, dtype) if x.weights is None else np.asarray(x.weights, dtype)
                                       for x in items]))
        else:
            W = None
        return _rebuild(Dense, (A, W))
    absent = {x.absent for x in items}
    if len(absent) != 1:
        raise ValueError("cannot stack sparse matrices whose absent entries mean different things "
                         f"(absent={sorted(absent)})")
    nnz = max(x.nnz for x in items)
    last_row = items[0].shape[0] - 1
    padded = [pad_entries(*host_entries(x, dtype), nnz, last_row) for x in items]
    leaves = tuple(device_array(np.stack(col)) for col in zip(*padded))
    any_weighted = any(x.weights is not None for x in items) or any(x.nnz != nnz for x in items)
    if not any_weighted:
        leaves = leaves[:3] + (None,)
    return _rebuild(Sparse, leaves, items[0].shape, absent.pop())
