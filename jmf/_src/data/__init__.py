"""Observed data as pytrees.

Two containers cover every input:

* :class:`Dense` -- a dense matrix ``A`` of shape ``(m, n)`` (or a stack of
  same-shape matrices ``(B, m, n)``) with optional entry weights.  A weight of
  0 marks a missing entry; real weights give weighted least squares.
* :class:`Sparse` -- stored entries only, in coordinate (COO) form:
  ``rows, cols, vals, weights`` of length ``nnz`` (or ``(B, nnz)`` for a
  batch) and a static ``shape = (m, n)``.  By default the entries not stored
  are *missing*, not zero (``absent="missing"``: the loss sums over the
  stored entries only); with ``absent="zero"`` they are zeros, as in a
  ``scipy.sparse`` matrix (every one of the ``m n`` entries is observed; see
  :meth:`Sparse.dot`).  Nothing in jmf ever densifies a :class:`Sparse`.

Both are registered pytrees: the arrays are leaves, ``shape`` is static
metadata, so they pass through ``jit``, ``vmap`` and sharding unchanged.
Construction validates its input (with numpy, before any compute) and raises
``ValueError``/``TypeError`` naming the argument; rebuilding inside
transformations (``tree_unflatten``) skips validation.

The containers live in :mod:`.dense` and :mod:`.sparse`, the host-side checks of
their input in :mod:`.checks`, and coercion and batching in :mod:`.construct`;
the rest of jmf imports them from here.
"""

from .construct import _rebuild, as_data, pad_entries, stack  # noqa: F401  (_rebuild: used across jmf._src)
from .dense import Dense
from .sparse import ABSENT, Sparse

__all__ = ["Dense", "Sparse", "as_data", "stack", "pad_entries", "ABSENT"]
