"""The dense container: :class:`Dense`, a matrix (or a stack of same-shape matrices) with optional entry weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .checks import _as_float_array, _check_finite, _check_weights, _is_tracer, check_scale


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
        return _dense_from_leaves((self.A[i], None if self.weights is None else self.weights[i]))

    def __repr__(self) -> str:
        b = f"batch={self.batch_shape}, " if self.batch_shape else ""
        return f"Dense({b}shape={self.shape}, dtype={self.dtype}, weighted={self.is_weighted})"


def _dense_from_leaves(leaves) -> Dense:
    """A :class:`Dense` from its leaves without validation (as tree_unflatten does)."""
    obj = object.__new__(Dense)
    obj.A, obj.weights = leaves
    return obj


jax.tree_util.register_pytree_node(
    Dense,
    lambda d: ((d.A, d.weights), None),
    lambda _, leaves: _dense_from_leaves(leaves),
)
