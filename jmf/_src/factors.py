"""The factorization model as a pytree.

The model predicts entry ``(i, j)`` as::

    yhat_ij = offset + row_bias_i + col_bias_j + sum_k W_ik H_kj

where the bias terms are present only when the corresponding leaf is not
``None`` (plain matrix factorization has ``W`` and ``H`` only).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Factors", "predict_entries", "rank_mask", "apply_rank_mask", "matmul"]

# Products with at most SMALL_MATMUL multiply-adds are written as a sum of
# outer products (unrolled over the inner dimension): XLA fuses them with the
# surrounding elementwise work into a few loop kernels, whereas a dot call
# costs far more than the arithmetic for tiny matrices.  Measured on the seed
# problem (4x2, rank 2, 5000 Adam steps): 2.3 ms with dot, 0.43 ms fused.
SMALL_MATMUL = 2048
_MAX_UNROLL = 16


def matmul(X, Y):
    """``X @ Y`` for ``(..., p, q) @ (..., q, r)``, fused elementwise when tiny."""
    p, q = X.shape[-2:]
    r = Y.shape[-1]
    if p * q * r > SMALL_MATMUL:
        return jnp.matmul(X, Y)
    if q <= _MAX_UNROLL:
        out = X[..., :, 0, None] * Y[..., None, 0, :]
        for j in range(1, q):
            out = out + X[..., :, j, None] * Y[..., None, j, :]
        return out
    return jnp.sum(X[..., :, :, None] * Y[..., None, :, :], axis=-2)


class Factors(NamedTuple):
    """Factors of ``A ~ W H`` (plus optional biases).

    Attributes
    ----------
    W : Array, shape (m, k)
        Row factors.
    H : Array, shape (k, n)
        Column factors.
    row_bias : Array, shape (m,), optional
    col_bias : Array, shape (n,), optional
    offset : Array, shape (), optional
        Global offset (e.g. the mean rating).

    Leading batch axes are allowed on every leaf (as returned by
    :func:`jmf.fit_many`); :meth:`predict` broadcasts over them for the dense
    reconstruction.
    """

    W: jax.Array
    H: jax.Array
    row_bias: Optional[jax.Array] = None
    col_bias: Optional[jax.Array] = None
    offset: Optional[jax.Array] = None

    @property
    def rank(self) -> int:
        """Number of columns of ``W`` (padded width for rank-masked members)."""
        return self.W.shape[-1]

    @property
    def has_biases(self) -> bool:
        return self.row_bias is not None or self.col_bias is not None or self.offset is not None

    def predict(self, rows=None, cols=None) -> jax.Array:
        """Reconstruction.

        Parameters
        ----------
        rows, cols : int arrays of shape (p,), optional
            Entries to predict.  When omitted, return the dense ``(m, n)``
            reconstruction ``offset + row_bias[:, None] + col_bias[None, :] + W @ H``.

        Returns
        -------
        Array of shape (m, n) (or (..., m, n) for batched factors) or (p,).
        Factors with NumPy leaves are evaluated with NumPy on the host, in
        their own precision (e.g. float64 metrics of float32 fits); others
        with JAX (traceable).
        """
        if rows is None and cols is None:
            xp = _namespace(self)
            out = self.W @ self.H if xp is np else matmul(self.W, self.H)
            if self.row_bias is not None:
                out = out + self.row_bias[..., :, None]
            if self.col_bias is not None:
                out = out + self.col_bias[..., None, :]
            if self.offset is not None:
                out = out + xp.asarray(self.offset)[..., None, None]
            return out
        if rows is None or cols is None:
            raise ValueError("give both rows and cols, or neither for the dense reconstruction")
        xp = _namespace(self)
        return predict_entries(self, xp.asarray(rows), xp.asarray(cols))


def _namespace(f: Factors):
    """NumPy for factors held as NumPy arrays, else ``jax.numpy``."""
    return np if isinstance(f.W, np.ndarray) else jnp


def predict_entries(f: Factors, rows, cols, known_rows=None, known_cols=None) -> jax.Array:
    """``yhat`` at the entries ``(rows[p], cols[p])`` with gathers: O(p k), never an (m, n) array.

    The one prediction of jmf (losses, solvers, metrics, :func:`jmf.cf.predict`).
    ``known_rows`` / ``known_cols`` (boolean, shape (p,)) drop every term that
    involves an unknown row / column (the indices there must still be valid,
    e.g. 0): an unknown user is predicted as ``offset + col_bias``.
    """
    xp = _namespace(f)
    if xp is np:
        out = _host_dots(f.W, f.H, rows, cols)
    else:
        out = jnp.einsum("pk,kp->p", f.W[rows], f.H[:, cols])
    dtype = out.dtype
    if known_rows is not None or known_cols is not None:
        kr = xp.ones(out.shape, bool) if known_rows is None else known_rows
        kc = xp.ones(out.shape, bool) if known_cols is None else known_cols
        out = out * (kr & kc).astype(dtype)
    if f.row_bias is not None:
        out = out + (f.row_bias[rows] if known_rows is None else f.row_bias[rows] * known_rows.astype(dtype))
    if f.col_bias is not None:
        out = out + (f.col_bias[cols] if known_cols is None else f.col_bias[cols] * known_cols.astype(dtype))
    if f.offset is not None:
        out = out + f.offset
    return out


def _host_dots(W, H, rows, cols, block_bytes: int = 1 << 20):
    """``sum_k W[rows, k] H[k, cols]`` in NumPy, in blocks of entries whose gathered rows fit in cache.

    NumPy's einsum runs ``"pk,kp->p"`` as a strided, unvectorized loop, and
    gathering all ``(p, k)`` rows at once writes (and page-faults) two
    arrays of the size of the data times the width of posterior-mean
    factors; blocks of contiguous ``H^T`` rows avoid both.
    """
    Ht = np.ascontiguousarray(H.T)
    rows, cols = np.asarray(rows), np.asarray(cols)
    p = rows.shape[0]
    out = np.empty((p,), np.result_type(W.dtype, H.dtype))
    step = max(1, block_bytes // max(1, W.shape[1] * W.itemsize))
    for start in range(0, p, step):
        r, c = rows[start:start + step], cols[start:start + step]
        np.einsum("pk,pk->p", W[r], Ht[c], out=out[start:start + step])
    return out


def rank_mask(rank, width: int, dtype=jnp.float32) -> jax.Array:
    """0/1 vector of length ``width`` with ones in the first ``rank`` places (rank may be traced)."""
    return (jnp.arange(width, dtype=jnp.int32) < jnp.asarray(rank, jnp.int32)).astype(dtype)


def apply_rank_mask(f: Factors, mask) -> Factors:
    """Zero the columns of ``W`` and rows of ``H`` beyond a member's rank."""
    if mask is None:
        return f
    return f._replace(W=f.W * mask[None, :], H=f.H * mask[:, None])
