r"""The implicit-feedback objective of Hu, Koren & Volinsky (2008), over all ``m x n`` entries.

An observed value ``r_ij > 0`` means preference ``p_ij = 1`` with confidence
``c_ij = 1 + alpha r_ij``; an unobserved entry means ``p_ij = 0`` with
confidence 1.  In the mean convention of :mod:`jmf.losses` with ``N = m n``::

    L = ( sum_{all ij} c_ij (p_ij - x_i . y_j)^2 + l2 (|X|^2 + |Y|^2) ) / (m n)

with ``X = W`` and ``Y = H^T``.  Nothing ``m x n`` is formed: the sum over
all entries splits into ``<X^T X, Y^T Y>`` (a ``k x k`` product) plus a
correction over the observed entries, ``sum_obs c (1 - s)^2 - s^2``, streamed
over chunks: ``O(nnz k + (m + n) k^2)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._validation import check_int, check_nonneg_float
from ..data import Sparse
from ..factors import Factors
from .base import Loss
from .ratings import chunked_entry_sum

__all__ = ["implicit_loss"]


def _obs_terms(f: Factors, data: Sparse, idx, live, alpha):
    r, c = data.rows[idx], data.cols[idx]
    w = data.effective_weights()[idx] * live.astype(data.vals.dtype)
    Wr, Hc = f.W[r], f.H.T[c]
    s = jnp.sum(Wr * Hc, axis=1)
    conf = 1 + alpha * data.vals[idx]
    return r, c, w, Wr, Hc, s, conf


def implicit_loss(alpha: float = 1.0, l2: float = 0.0, chunk_size: int = 1 << 16) -> Loss:
    """The Hu-Koren-Volinsky objective (see the module docstring) as a :class:`jmf.losses.Loss`.

    ``value`` and ``grad`` cost ``O(nnz k + (m + n) k^2)`` and stream over
    chunks of observed entries; weight-0 entries are ignored.
    """
    alpha = check_nonneg_float(alpha, "alpha", "implicit_loss")
    l2 = check_nonneg_float(l2, "l2", "implicit_loss")
    chunk_size = check_int(chunk_size, "chunk_size", "implicit_loss")

    def value(f: Factors, data):
        f = jax.tree_util.tree_map(jnp.asarray, f)
        if not isinstance(data, Sparse):
            raise TypeError("implicit_loss works on jmf.Sparse data")
        m, n = data.shape
        dtype = f.W.dtype

        def fn(acc, idx, live):
            *_, w, _, _, s, conf = _obs_terms(f, data, idx, live, alpha)
            return acc + jnp.sum(w.astype(dtype) * (conf * (1 - s) ** 2 - s * s))

        obs = chunked_entry_sum(data.nnz, chunk_size, fn, jnp.zeros((), dtype))
        full = jnp.sum((f.W.T @ f.W) * (f.H @ f.H.T))
        pen = l2 * (jnp.sum(f.W * f.W) + jnp.sum(f.H * f.H))
        return (full + obs + pen) / jnp.asarray(m * n, dtype)

    def grad(f: Factors, data):
        f = jax.tree_util.tree_map(jnp.asarray, f)
        m, n = data.shape
        dtype = f.W.dtype

        def fn(acc, idx, live):
            gW, gHt = acc
            r, c, w, Wr, Hc, s, conf = _obs_terms(f, data, idx, live, alpha)
            coef = (w * (conf - (conf - 1) * s)).astype(dtype)
            return gW.at[r].add(coef[:, None] * Hc), gHt.at[c].add(coef[:, None] * Wr)

        gW, gHt = chunked_entry_sum(data.nnz, chunk_size, fn, (jnp.zeros_like(f.W), jnp.zeros_like(f.H.T)))
        inv = 1 / jnp.asarray(m * n, dtype)
        gW = 2 * (f.W @ (f.H @ f.H.T) - gW + l2 * f.W) * inv
        gH = 2 * ((f.W.T @ f.W) @ f.H - gHt.T + l2 * f.H) * inv
        return Factors(gW, gH, *(None if x is None else jnp.zeros_like(x) for x in f[2:]))

    return Loss(value, grad, "implicit", data_kinds=("sparse",))
