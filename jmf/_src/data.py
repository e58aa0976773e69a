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
"""

from __future__ import annotations

import warnings
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._validation import is_int

__all__ = ["Dense", "Sparse", "as_data", "stack", "pad_entries", "ABSENT"]

_DUPLICATE_POLICIES = ("error", "sum", "mean", "last")

#: What the entries a :class:`Sparse` does not store are: "missing" (left out of every loss) or "zero".
ABSENT = ("missing", "zero")


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


_HALF = (np.dtype(np.float16), np.dtype(jnp.bfloat16))


def _check_not_half(dtype, name: str) -> None:
    # float16 was accepted and then crashed inside jaxlib after compiling, and bfloat16 was refused
    # as "not numeric"; neither has the range for squared errors or the precision for the solves.
    if np.dtype(dtype) in _HALF:
        raise TypeError(f"{name} has dtype {np.dtype(dtype)}: float16/bfloat16 are not supported: "
                        "use float32 or float64")


def _float_dtype(dtype) -> np.dtype:
    """Floating dtype used to store values of ``dtype`` (ints/bools become the default float)."""
    dtype = np.dtype(dtype)
    _check_not_half(dtype, "data")
    if dtype.kind == "f":
        if dtype == np.float64 and not jax.config.jax_enable_x64:
            return np.dtype(np.float32)
        return dtype
    if dtype.kind in "iub":
        return np.dtype(jnp.zeros((), dtype=float).dtype)
    raise TypeError(f"unsupported dtype {dtype}")


_warned_x64 = False


def _check_fits(arr: np.ndarray, target, name: str, why: str) -> None:
    """Refuse finite values that a cast to ``target`` would turn into inf (reported as "contains inf" later)."""
    target = np.dtype(target)
    if arr.dtype.kind != "f" or target.kind != "f" or np.finfo(arr.dtype).max <= np.finfo(target).max:
        return
    big = np.finfo(target).max
    finite = np.isfinite(arr)
    if arr.size and np.any(np.abs(np.where(finite, arr, 0)) > big):
        top = float(np.max(np.abs(arr[finite])))
        raise ValueError(f"{name} has values up to {top:.3g}, beyond {target}'s range ({big:.3g}); {why}")


def _check_cast(arr: np.ndarray, target, name: str) -> None:
    """Before storing float64 values as float32 (JAX's x64 mode off): refuse what does not fit, say it once."""
    global _warned_x64
    if arr.dtype != np.float64 or np.dtype(target) != np.float32:
        return
    _check_fits(arr, target, name, "float64 input is stored as float32 because JAX's x64 mode is off: enable "
                "float64 with jax.config.update(\"jax_enable_x64\", True), or rescale the data")
    if not _warned_x64:
        _warned_x64 = True
        warnings.warn(f"{name} is float64 but JAX's x64 mode is off, so jmf computes in float32 (about 7 "
                      "significant digits); to keep float64 call jax.config.update(\"jax_enable_x64\", True) "
                      "at startup (this warning is shown once)", UserWarning, stacklevel=4)


def check_scale(values: np.ndarray, dtype, name: str = "data") -> None:
    """Refuse observed values whose squares overflow or underflow ``dtype`` (before any compute).

    Fits of data scaled by about 1e20 reported DIVERGED at iteration 0 (the squared residuals are
    inf in float32) and data scaled by 1e-20 reported CONVERGED with garbage (they are subnormal
    or 0).  The thresholds keep a margin of 1e3 on the value (1e6 on its square) for residuals,
    penalties and sums.  Exact zeros are ignored; ``values`` holds the observed entries.
    """
    if values.size == 0:
        return
    top = float(np.max(np.abs(values)))
    if top == 0 or not np.isfinite(top):
        return
    fi = np.finfo(dtype)
    hi, lo = float(np.sqrt(fi.max)) / 1e3, float(np.sqrt(fi.tiny)) * 1e3
    if lo <= top <= hi:
        return
    x64 = ("" if np.dtype(dtype) == np.float64 else
           ", or enable float64 with jax.config.update(\"jax_enable_x64\", True)")
    if top > hi:
        what = f"too large for {np.dtype(dtype)}: squared errors overflow (largest {np.dtype(dtype)} {fi.max:.3g})"
    else:
        what = (f"too small for {np.dtype(dtype)}: squared errors underflow to subnormal numbers (smallest "
                f"normal {fi.tiny:.3g}) and a fit would stop on noise")
    raise ValueError(f"{name}: the largest observed |value| is {top:.3g}, {what}; rescale the data "
                     f"(e.g. divide it by {top:.3g}){x64}")


def _as_float_array(x, name: str, *, dtype=None):
    """Convert ``x`` to a jax float array, rejecting non-numeric and complex input."""
    if _is_tracer(x):
        return x if dtype is None else x.astype(dtype)
    if hasattr(x, "toarray") and not isinstance(x, (np.ndarray, jax.Array)):
        raise TypeError(f"{name} is a scipy sparse matrix; use jmf.Sparse.from_scipy({name}) instead of jmf.Dense")
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name} could not be converted to an array: {exc}") from None
    if dtype is None:
        _check_not_half(arr.dtype, name)
    if arr.dtype == object or arr.dtype.kind not in "fiub":
        if arr.dtype.kind == "c":
            raise TypeError(f"{name} has complex dtype {arr.dtype}; jmf factorizes real matrices")
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    target = _float_dtype(arr.dtype) if dtype is None else np.dtype(dtype)
    if dtype is None:
        _check_cast(arr, target, name)
    return jnp.asarray(arr, dtype=target)


def _check_finite(arr, name: str, what: str = "NaN or inf") -> None:
    if _is_tracer(arr):
        return
    a = np.asarray(arr)
    if not np.all(np.isfinite(a)):
        n_nan = int(np.isnan(a).sum())
        n_inf = int(np.isinf(a).sum())
        raise ValueError(f"{name} contains {n_nan} NaN and {n_inf} inf values; {what} is not allowed here")


def _check_weights(weights, name: str = "weights") -> None:
    if _is_tracer(weights):
        return
    w = np.asarray(weights)
    _check_finite(w, name)
    if np.any(w < 0):
        raise ValueError(f"{name} must be nonnegative; found {int((w < 0).sum())} negative values")
    if w.size and not np.any(w > 0):
        raise ValueError(f"{name} are all zero: no entry is observed")


class Dense:
    """A dense matrix with optional entry weights.

    Parameters
    ----------
    A : array_like, shape (m, n) or (B, m, n)
        The matrix, or a stack of ``B`` same-shape matrices (one pytree with a
        leading batch axis, for :func:`jmf.fit_many`).  Integer and boolean
        input is converted to the default float dtype; float dtypes are kept
        (float64 only when ``jax_enable_x64`` is on).
    weights : array_like, same shape as ``A``, optional
        Nonnegative entry weights.  0 marks a missing entry, a 0/1 mask gives
        the masked (observed-entries-only) loss, real values give weighted
        least squares.  ``None`` means every entry is observed with weight 1.

    Raises
    ------
    ValueError
        If ``A`` is not 2-D (or 3-D for a batch), is empty, contains NaN or
        inf (use :meth:`from_nan` for NaN-as-missing), or ``weights`` has the
        wrong shape, negative or non-finite values, or is all zero.
    TypeError
        If ``A`` is not numeric.

    Notes
    -----
    The loss on a :class:`Dense` is ``sum_ij w_ij (A_ij - (WH)_ij)^2 / sum_ij w_ij``
    (the weighted mean squared error; see :mod:`jmf.losses`).
    """

    __slots__ = ("A", "weights")

    def __init__(self, A, weights=None):
        A = _as_float_array(A, "A")
        if A.ndim not in (2, 3):
            raise ValueError(
                f"A must be 2-D (m, n) or a 3-D stack (B, m, n) of matrices, got shape {tuple(A.shape)}"
            )
        if any(s == 0 for s in A.shape):
            raise ValueError(f"A is empty: shape {tuple(A.shape)}")
        if weights is not None:
            weights = _as_float_array(weights, "weights", dtype=A.dtype)
            if weights.shape != A.shape:
                raise ValueError(f"weights must have the shape of A {tuple(A.shape)}, got {tuple(weights.shape)}")
            _check_weights(weights)
            if not _is_tracer(A) and not _is_tracer(weights):
                a = np.asarray(A)
                bad = ~np.isfinite(a) & (np.asarray(weights) > 0)
                if bad.any():
                    raise ValueError(
                        f"A contains {int(bad.sum())} NaN/inf values at observed entries (weight > 0); "
                        "use jmf.Dense.from_nan(A) to treat NaN as missing"
                    )
                if not np.all(np.isfinite(a)):
                    A = jnp.where(jnp.asarray(weights) > 0, A, 0)
        else:
            _check_finite(A, "A", "NaN or inf (use jmf.Dense.from_nan(A) to treat NaN as missing)")
        if not _is_tracer(A) and not _is_tracer(weights):
            a = np.asarray(A)
            check_scale(a if weights is None else a[np.asarray(weights) > 0], A.dtype, "A")
        self.A = A
        self.weights = weights

    # -- alternative constructors -------------------------------------------------
    @classmethod
    def from_nan(cls, A) -> "Dense":
        """Treat NaN entries of ``A`` as missing: weight 0 there, 1 elsewhere.

        ``inf`` is still an error.  If ``A`` has no NaN the result has no weights.
        """
        arr = np.asarray(A)
        if arr.dtype.kind not in "fiub":
            return cls(A)  # raises the dtype error
        if np.any(np.isinf(arr)):
            raise ValueError(f"A contains {int(np.isinf(arr).sum())} inf values; only NaN may mark missing entries")
        missing = np.isnan(arr)
        if not missing.any():
            return cls(arr)
        if missing.all():
            raise ValueError("A is entirely NaN: no entry is observed")
        return cls(np.where(missing, 0, arr), weights=(~missing).astype(np.float32))

    # -- properties ---------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(m, n)``, the shape of one matrix (without batch axes)."""
        return tuple(self.A.shape[-2:])

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.A.shape[:-2])

    @property
    def dtype(self):
        return self.A.dtype

    @property
    def is_weighted(self) -> bool:
        return self.weights is not None

    def n_observed(self):
        """Sum of weights (``m * n`` when unweighted), per matrix."""
        if self.weights is None:
            return jnp.asarray(self.shape[0] * self.shape[1], dtype=self.dtype)
        return jnp.sum(self.weights, axis=(-2, -1))

    def mean(self):
        """Weighted mean of the observed entries, per matrix."""
        if self.weights is None:
            return jnp.mean(self.A, axis=(-2, -1))
        return jnp.sum(self.A * self.weights, axis=(-2, -1)) / jnp.sum(self.weights, axis=(-2, -1))

    def min(self):
        """Smallest observed value (Python float; host-side, for validation)."""
        a = np.asarray(self.A)
        if self.weights is not None:
            a = a[np.asarray(self.weights) > 0]
        return float(a.min())

    def __getitem__(self, i) -> "Dense":
        """Select members of a batched Dense along its leading axis."""
        if not self.batch_shape:
            raise IndexError("indexing a single (unbatched) Dense; it has no batch axis")
        return _rebuild(Dense, (self.A[i], None if self.weights is None else self.weights[i]))

    def __repr__(self) -> str:
        b = f"batch={self.batch_shape}, " if self.batch_shape else ""
        return f"Dense({b}shape={self.shape}, dtype={self.dtype}, weighted={self.is_weighted})"


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
        self.rows = jnp.asarray(r, dtype=jnp.int32)
        self.cols = jnp.asarray(c, dtype=jnp.int32)
        self.vals = jnp.asarray(v, dtype=fdt)
        self.weights = None if w is None else jnp.asarray(w, dtype=fdt)
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
        return _rebuild(Sparse, (self.rows[..., index], self.cols[..., index], self.vals[..., index], w), self.shape,
                        self.absent)

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
        return _rebuild(Sparse, (self.rows[i], self.cols[i], self.vals[i], w), self.shape, self.absent)

    def __repr__(self) -> str:
        b = f"batch={self.batch_shape}, " if self.batch_shape else ""
        z = ", absent='zero'" if self.zero_filled else ""
        return (f"Sparse({b}shape={self.shape}, nnz={self.nnz}, dtype={self.dtype}, weighted={self.is_weighted}"
                f"{z})")


# -- helpers --------------------------------------------------------------------------


def _check_shape(shape) -> tuple[int, int]:
    try:
        m, n = shape
    except Exception:
        raise ValueError(f"shape must be a pair (m, n) of positive ints, got {shape!r}") from None
    if not (is_int(m) and is_int(n)):
        # int() would truncate (3.7, 3.2) to (3, 3) and silently drop the entries beyond it.
        raise TypeError(f"shape must be a pair (m, n) of ints, got {shape!r}")
    m, n = int(m), int(n)
    if m <= 0 or n <= 0:
        raise ValueError(f"shape must be positive, got {(m, n)}")
    if m >= 2**31 or n >= 2**31:
        raise ValueError(f"shape {(m, n)} exceeds the int32 index range")
    return (m, n)


def _as_index_array(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if arr.size and not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or inf")
        if arr.size and np.any(arr != np.round(arr)):
            raise TypeError(f"{name} must be integers, got non-integral floats")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


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


def _rebuild(cls, leaves, shape=None, absent: str = "missing"):
    """Build a container from leaves without validation (as tree_unflatten does)."""
    obj = object.__new__(cls)
    if cls is Dense:
        obj.A, obj.weights = leaves
    else:
        obj.rows, obj.cols, obj.vals, obj.weights = leaves
        obj.shape = shape
        obj.absent = absent
    return obj


jax.tree_util.register_pytree_node(
    Dense,
    lambda d: ((d.A, d.weights), None),
    lambda _, leaves: _rebuild(Dense, leaves),
)
jax.tree_util.register_pytree_node(
    Sparse,
    lambda s: ((s.rows, s.cols, s.vals, s.weights), (s.shape, s.absent)),
    lambda aux, leaves: _rebuild(Sparse, leaves, *aux),
)

def pad_entries(rows, cols, vals, weights, nnz: int, last_row: int = 0) -> tuple:
    """Entry arrays padded at the end to length ``nnz`` with weight-0 entries at ``(last_row, 0)``.

    The one way jmf pads sparse entries (stacked batches, mixed-shape buckets,
    minibatches): a weight-0 entry contributes nothing to any loss, solve or
    count.  Padding at the last row (``m - 1``) keeps the entries in row
    order, which the sparse solvers rely on.  ``weights`` must be given (e.g.
    ``effective_weights()``): the padding needs them.
    """
    pad = nnz - rows.shape[-1]
    return (jnp.pad(rows, (0, pad), constant_values=last_row),) + tuple(
        jnp.pad(x, (0, pad)) for x in (cols, vals, weights))


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
    if isinstance(items[0], Dense):
        A = jnp.stack([x.A.astype(dtype) for x in items])
        if any(x.weights is not None for x in items):
            W = jnp.stack([jnp.ones(x.shape, dtype) if x.weights is None else x.weights.astype(dtype) for x in items])
        else:
            W = None
        return _rebuild(Dense, (A, W))
    absent = {x.absent for x in items}
    if len(absent) != 1:
        raise ValueError("cannot stack sparse matrices whose absent entries mean different things "
                         f"(absent={sorted(absent)})")
    nnz = max(x.nnz for x in items)
    last_row = items[0].shape[0] - 1
    padded = [pad_entries(x.rows, x.cols, x.vals.astype(dtype), x.effective_weights().astype(dtype), nnz, last_row)
              for x in items]
    leaves = tuple(jnp.stack(col) for col in zip(*padded))
    any_weighted = any(x.weights is not None for x in items) or any(x.nnz != nnz for x in items)
    if not any_weighted:
        leaves = leaves[:3] + (None,)
    return _rebuild(Sparse, leaves, items[0].shape, absent.pop())
