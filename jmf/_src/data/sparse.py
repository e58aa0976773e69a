"""The sparse container: :class:`Sparse`, the stored entries of a matrix in coordinate (COO) form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .checks import (
    _as_index_array,
    _check_cast,
    _check_finite,
    _check_not_half,
    _check_shape,
    _check_weights,
    _float_dtype,
    _is_tracer,
    check_scale,
    device_array,
)

_DUPLICATE_POLICIES = ("error", "sum", "mean", "last")

#: What the entries a :class:`Sparse` does not store are: "missing" (left out of every loss) or "zero".
ABSENT = ("missing", "zero")


class Sparse:
    """Stored entries of an ``(m, n)`` matrix in coordinate form; the others are missing (default) or zero.

    Entries are stored sorted row-major (by ``row``, then ``col``) -- an
    invariant the sparse solvers rely on (padding goes to the last row) --
    and indices are int32.  A batch of ``B`` sparse matrices with a common ``nnz`` (see
    :func:`jmf.stack`) has leaves of shape ``(B, nnz)``.

    Parameters
    ----------
    rows, cols : array_like of int, shape (nnz,)
        Row and column index of each observed entry, ``0 <= rows < m`` and
        ``0 <= cols < n``.
    vals : array_like of float, shape (nnz,)
        Observed values (finite).
    shape : tuple (m, n)
        Shape of the full matrix (static metadata, not a leaf).
    weights : array_like, shape (nnz,), optional
        Nonnegative weight per entry (``None``: all 1).  Weight-0 entries are
        padding: they never influence a fit (used to stack sparse batches).
    duplicates : {"error", "sum", "mean", "last"}, default "error"
        Policy for repeated ``(row, col)`` coordinates.  The default refuses
        them, since a silently summed rating is usually a data bug; "sum"
        follows scipy's COO convention, "mean" averages, "last" keeps the
        final occurrence.
    absent : {"missing", "zero"}, default "missing"
        What the entries not stored are.  "missing": unobserved, left out of
        every loss (ratings, matrix completion; ``N = nnz``).  "zero": zeros
        of the matrix, as in ``scipy.sparse`` and scikit-learn -- every entry
        is observed (``N = m n``), and the solvers that accept this kind
        (``"sparse-zero"`` in their ``data_kinds``: ALS, HALS, multiplicative
        updates, the SVD, gradient solvers on the Frobenius loss) work from
        sparse products ``X F``, ``X^T F`` and ``k x k`` Gram matrices, in
        ``O(nnz k)`` memory, never an ``m x n`` array.  ``weights`` are not
        allowed with "zero" (every entry weighs 1).

    Notes
    -----
    ``absent`` is static metadata (like ``shape``), part of the compilation key.
    """

    __slots__ = ("rows", "cols", "vals", "weights", "shape", "absent")

    def __init__(self, rows, cols, vals, shape, weights=None, duplicates: str = "error", absent: str = "missing"):
        if duplicates not in _DUPLICATE_POLICIES:
            raise ValueError(f"duplicates must be one of {_DUPLICATE_POLICIES}, got {duplicates!r}")
        if not isinstance(absent, str) or absent not in ABSENT:
            raise ValueError(f"absent must be one of {ABSENT}, got {absent!r}")
        if absent == "zero" and weights is not None:
            raise ValueError("weights are not allowed with absent='zero': every entry of the matrix is observed "
                             "with weight 1 (use absent='missing' for weighted observed entries)")
        shape = _check_shape(shape)
        self.absent = absent
        if any(_is_tracer(x) for x in (rows, cols, vals, weights)):
            # Built inside a transformation: trust the caller, no host-side checks.
            self.rows, self.cols, self.vals, self.weights, self.shape = rows, cols, vals, weights, shape
            return
        r = _as_index_array(rows, "rows")
        c = _as_index_array(cols, "cols")
        v = np.asarray(vals)
        _check_not_half(v.dtype, "vals")
        if v.dtype == object or v.dtype.kind not in "fiub":
            if v.dtype.kind == "c":
                raise TypeError(f"vals has complex dtype {v.dtype}; jmf factorizes real matrices")
            raise TypeError(f"vals must be numeric, got dtype {v.dtype}")
        for name, arr in (("rows", r), ("cols", c), ("vals", v)):
            if arr.ndim != 1:
                raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
        if not (len(r) == len(c) == len(v)):
            raise ValueError(f"rows, cols and vals must have the same length, got {len(r)}, {len(c)}, {len(v)}")
        if len(v) == 0:
            raise ValueError("no observed entries: rows, cols and vals are empty")
        w = None
        if weights is not None:
            w = np.asarray(weights)
            if w.dtype.kind not in "fiub":
                raise TypeError(f"weights must be numeric, got dtype {w.dtype}")
            if w.shape != v.shape:
                raise ValueError(f"weights must have shape {v.shape} like vals, got {w.shape}")
            _check_weights(w)
        _check_finite(v, "vals")
        m, n = shape
        for name, arr, bound in (("rows", r, m), ("cols", c, n)):
            if arr.min() < 0:
                raise ValueError(f"{name} contains negative indices (min {int(arr.min())})")
            if arr.max() >= bound:
                axis = "m" if name == "rows" else "n"
                raise ValueError(f"{name} index {int(arr.max())} is out of range for shape {shape} ({axis} = {bound})")
        r, c, v, w = _canonicalize(r, c, v, w, n, duplicates)
        fdt = _float_dtype(v.dtype)
        _check_cast(v, fdt, "vals")
        check_scale(v if w is None else v[w > 0], fdt, "vals")
        self.rows = device_array(r, np.int32)
        self.cols = device_array(c, np.int32)
        self.vals = device_array(v, fdt)
        self.weights = None if w is None else device_array(w, fdt)
        self.shape = shape

    # -- alternative constructors -------------------------------------------------
    @classmethod
    def from_triplets(cls, rows, cols, vals, shape=None, weights=None, duplicates: str = "error",
                      absent: str = "missing") -> "Sparse":
        """Build from index/value triplets; ``shape`` defaults to ``(max(rows)+1, max(cols)+1)``."""
        if shape is None:
            r = _as_index_array(rows, "rows")
            c = _as_index_array(cols, "cols")
            if r.size == 0:
                raise ValueError("no observed entries: rows, cols and vals are empty")
            shape = (int(r.max()) + 1, int(c.max()) + 1)
        return cls(rows, cols, vals, shape, weights=weights, duplicates=duplicates, absent=absent)

    @classmethod
    def from_scipy(cls, matrix, weights=None, absent: str = "missing") -> "Sparse":
        """Build from any ``scipy.sparse`` matrix or array.

        Every *stored* entry is observed (explicit zeros included); entries not
        stored are missing, or zeros with ``absent="zero"`` (scipy's own
        meaning).  Duplicate stored coordinates are summed, as scipy does.  A
        matrix without stored entries is allowed with ``absent="zero"`` (the
        zero matrix: one explicit zero is stored).
        """
        import scipy.sparse as sp

        if not sp.issparse(matrix):
            raise TypeError(f"matrix must be a scipy.sparse matrix, got {type(matrix).__name__}")
        coo = matrix.tocoo()
        row, col, data = coo.row, coo.col, coo.data
        if absent == "zero" and data.size == 0:
            row, col, data = np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, data.dtype)
        return cls(row, col, data, coo.shape, weights=weights, duplicates="sum", absent=absent)

    @classmethod
    def from_dense(cls, A, mask=None) -> "Sparse":
        """Observed entries of a dense array: where ``mask`` is true, or where ``A`` is not NaN."""
        a = np.asarray(A)
        if a.ndim != 2:
            raise ValueError(f"A must be 2-D, got shape {a.shape}")
        if a.dtype.kind not in "fiub":
            raise TypeError(f"A must be numeric, got dtype {a.dtype}")
        if mask is None:
            observed = ~np.isnan(a) if a.dtype.kind == "f" else np.ones(a.shape, bool)
        else:
            observed = np.asarray(mask)
            if observed.shape != a.shape:
                raise ValueError(f"mask must have the shape of A {a.shape}, got {observed.shape}")
            observed = observed.astype(bool)
        r, c = np.nonzero(observed)
        return cls(r, c, a[r, c], a.shape)

    @classmethod
    def from_pandas(cls, df, row=None, col=None, value=None, shape=None, duplicates: str = "error") -> "Sparse":
        """Build from a DataFrame with one row per observed entry.

        ``row``, ``col`` and ``value`` name the columns (default: the first
        three columns, in order).  Ids must already be integers in ``[0, m)``
        and ``[0, n)``; for raw ids (user names, sparse movie ids) use
        :func:`jmf.datasets.index_ratings`, which re-indexes them and keeps the
        mapping back.
        """
        columns = list(df.columns)
        if row is None or col is None or value is None:
            if len(columns) < 3:
                raise ValueError(f"df needs at least 3 columns (row, col, value), got {columns}")
            row = columns[0] if row is None else row
            col = columns[1] if col is None else col
            value = columns[2] if value is None else value
        for name, key in (("row", row), ("col", col), ("value", value)):
            if key not in df.columns:
                raise ValueError(f"{name} column {key!r} is not in the DataFrame (columns: {columns})")
        return cls.from_triplets(
            df[row].to_numpy(), df[col].to_numpy(), df[value].to_numpy(), shape=shape, duplicates=duplicates
        )

    # -- properties ---------------------------------------------------------------
    @property
    def nnz(self) -> int:
        return int(self.vals.shape[-1])

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.vals.shape[:-1])

    @property
    def dtype(self):
        return self.vals.dtype

    @property
    def is_weighted(self) -> bool:
        return self.weights is not None

    @property
    def zero_filled(self) -> bool:
        """Absent entries are zeros (``absent="zero"``): every entry of the matrix is observed."""
        return self.absent == "zero"

    def effective_weights(self):
        """Per-entry weights, ones where none were given."""
        return jnp.ones_like(self.vals) if self.weights is None else self.weights

    def stored_vals(self):
        """The stored values, with weight-0 (padding) entries as 0: the entries of the matrix ``X`` of :meth:`dot`."""
        return self.vals if self.weights is None else jnp.where(self.weights > 0, self.vals, 0)

    def n_observed(self):
        """Sum of weights (``nnz`` when unweighted; ``m n`` with ``absent="zero"``), per matrix."""
        if self.zero_filled:
            return jnp.full(self.batch_shape, self.shape[0] * self.shape[1], dtype=self.dtype)
        if self.weights is None:
            return jnp.asarray(self.vals.shape[-1], dtype=self.dtype)
        return jnp.sum(self.weights, axis=-1)

    def mean(self):
        """Weighted mean of the observed values (of all ``m n`` entries with ``absent="zero"``), per matrix."""
        if self.zero_filled:
            return jnp.sum(self.stored_vals(), axis=-1) / (self.shape[0] * self.shape[1])
        if self.weights is None:
            return jnp.mean(self.vals, axis=-1)
        return jnp.sum(self.vals * self.weights, axis=-1) / jnp.sum(self.weights, axis=-1)

    def min(self):
        v = np.asarray(self.vals)
        if self.weights is not None:
            v = v[np.asarray(self.weights) > 0]
        lo = float(v.min()) if v.size else 0.0
        if self.zero_filled and v.size < self.shape[0] * self.shape[1]:
            lo = min(lo, 0.0)  # an absent entry is a zero
        return lo

    def dot(self, F, transpose: bool = False):
        """``X F`` (``F``: ``(n, p)``, result ``(m, p)``) or, with ``transpose``, ``X^T F`` (``F``: ``(m, p)``).

        ``X`` is the matrix of the stored entries (absent and weight-0
        entries count as 0), whatever ``absent`` says: gathers and
        ``segment_sum``, ``O(nnz p)`` time and memory, never ``m x n``.  The
        products of ``absent="zero"`` data: with them and ``k x k`` Gram
        matrices, ``|X - W H|^2 = |X|^2 - 2 <X H^T, W> + <W^T W, H H^T>``.
        """
        m, n = self.shape
        v = self.stored_vals().astype(F.dtype)
        if not transpose:
            return jax.ops.segment_sum(v[:, None] * F[self.cols], self.rows, num_segments=m)
        return jax.ops.segment_sum(v[:, None] * F[self.rows], self.cols, num_segments=n)

    def sq_norm(self):
        """``|X|_F^2``, the sum of the squared stored values (weight-0 entries excluded)."""
        v = self.stored_vals()
        return jnp.sum(v * v, axis=-1)

    def take(self, index) -> "Sparse":
        """Subset of entries ``index`` (an int array; works under jit), same shape."""
        w = None if self.weights is None else self.weights[..., index]
        return _sparse_from_leaves((self.rows[..., index], self.cols[..., index], self.vals[..., index], w),
                                   self.shape, self.absent)

    def to_scipy(self):
        """The observed entries as a ``scipy.sparse.csr_matrix`` (unbatched only)."""
        import scipy.sparse as sp

        if self.batch_shape:
            raise ValueError("to_scipy works on a single matrix; index the batch first")
        vals = np.asarray(self.vals)
        if self.weights is not None:
            keep = np.asarray(self.weights) > 0
            return sp.csr_matrix((vals[keep], (np.asarray(self.rows)[keep], np.asarray(self.cols)[keep])), self.shape)
        return sp.csr_matrix((vals, (np.asarray(self.rows), np.asarray(self.cols))), shape=self.shape)

    def __getitem__(self, i) -> "Sparse":
        if not self.batch_shape:
            raise IndexError("indexing a single (unbatched) Sparse; it has no batch axis (use take for entries)")
        w = None if self.weights is None else self.weights[i]
        return _sparse_from_leaves((self.rows[i], self.cols[i], self.vals[i], w), self.shape, self.absent)

    def __repr__(self) -> str:
        b = f"batch={self.batch_shape}, " if self.batch_shape else ""
        z = ", absent='zero'" if self.zero_filled else ""
        return (f"Sparse({b}shape={self.shape}, nnz={self.nnz}, dtype={self.dtype}, weighted={self.is_weighted}"
                f"{z})")


def _canonicalize(r, c, v, w, n, duplicates):
    """Sort entries row-major and apply the duplicate policy."""
    linear = r * n + c
    order = np.argsort(linear, kind="stable")
    linear, r, c, v = linear[order], r[order], c[order], v[order]
    w = None if w is None else w[order]
    dup = linear[1:] == linear[:-1]
    if not dup.any():
        return r, c, v, w
    if duplicates == "error":
        i = int(np.flatnonzero(dup)[0])
        raise ValueError(
            f"duplicate coordinates: ({int(r[i])}, {int(c[i])}) appears more than once "
            f"({int(dup.sum())} duplicates in all); pass duplicates='sum', 'mean' or 'last' to combine them"
        )
    starts = np.flatnonzero(np.r_[True, ~dup])
    if duplicates == "last":
        ends = np.r_[starts[1:], len(linear)] - 1
        pick = ends
        return r[pick], c[pick], v[pick], None if w is None else w[pick]
    vs = np.add.reduceat(v.astype(np.float64), starts)
    if duplicates == "mean":
        counts = np.diff(np.r_[starts, len(linear)])
        vs = vs / counts
    ws = None if w is None else np.add.reduceat(w.astype(np.float64), starts)
    if duplicates == "mean" and ws is not None:
        ws = ws / np.diff(np.r_[starts, len(linear)])
    return r[starts], c[starts], vs.astype(_float_dtype(v.dtype)), ws


def _sparse_from_leaves(leaves, shape, absent: str = "missing") -> Sparse:
    """A :class:`Sparse` from its leaves without validation (as tree_unflatten does)."""
    obj = object.__new__(Sparse)
    obj.rows, obj.cols, obj.vals, obj.weights = leaves
    obj.shape = shape
    obj.absent = absent
    return obj


jax.tree_util.register_pytree_node(
    Sparse,
    lambda s: ((s.rows, s.cols, s.vals, s.weights), (s.shape, s.absent)),
    lambda aux, leaves: _sparse_from_leaves(leaves, *aux),
)
