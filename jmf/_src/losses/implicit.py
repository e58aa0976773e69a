r"""The implicit-feedback objective of Hu, Koren & Volinsky (2008), over all ``m x n`` entries.

An observed value ``r_ij > 0`` means preference ``p_ij = 1`` with confidence
``c_ij = 1 + alpha r_ij``; an unobserved entry means ``p_ij = 0`` with
confidence ``w0`` (``unobserved_weight``, 1 in the paper).  In the mean
convention of :mod:`jmf.losses` with ``N = m n``::

    L = ( sum_{obs} c_ij (1 - s_ij)^2 + w0 sum_{unobs} s_ij^2
          + l2 sum_i d_i^nu |x_i|^2 + l2 sum_j e_j^nu |y_j|^2 ) / (m n)

with ``X = W``, ``Y = H^T``, ``s_ij = x_i . y_j``.  The penalty is
frequency-scaled as in Rendle et al. (2021, "Revisiting the performance of
iALS on item recommendation benchmarks"): ``d_i = n_i + w0 n`` with ``n_i``
the number (sum of weights) of row ``i``'s entries, ``e_j = n_j + w0 m``;
``nu = 0`` (the default) is the plain ridge ``l2 (|X|^2 + |Y|^2)``.

Nothing ``m x n`` is formed: the sum over all entries splits into
``w0 <X^T X, Y^T Y>`` (a ``k x k`` product) plus a correction over the
observed entries, ``sum_obs c (1 - s)^2 - w0 s^2``, streamed over chunks:
``O(nnz k + (m + n) k^2)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._validation import _is_tracer, check_int, check_nonneg_float
from ..data import Sparse
from ..factors import Factors
from .base import Loss, loss_factory
from .ratings import chunked_entry_sum

__all__ = ["implicit_loss", "penalty_scales"]


def _obs_terms(f: Factors, data: Sparse, idx, live, alpha):
    r, c = data.rows[idx], data.cols[idx]
    w = data.effective_weights()[idx] * live.astype(data.vals.dtype)
    Wr, Hc = f.W[r], f.H.T[c]
    s = jnp.sum(Wr * Hc, axis=1)
    conf = 1 + alpha * data.vals[idx]
    return r, c, w, Wr, Hc, s, conf


def penalty_scales(data: Sparse, unobserved_weight, nu, dtype):
    """``(d^nu, e^nu)``: the frequency scales of the rows' and columns' penalties (see the module docstring)."""
    m, n = data.shape
    w = data.effective_weights().astype(dtype)
    rows = jax.ops.segment_sum(w, data.rows, num_segments=m, indices_are_sorted=True)
    cols = jax.ops.segment_sum(w, data.cols, num_segments=n)
    return (rows + unobserved_weight * n) ** nu, (cols + unobserved_weight * m) ** nu


@loss_factory
def implicit_loss(alpha: float = 1.0, l2: float = 0.0, chunk_size: int = 1 << 16, unobserved_weight: float = 1.0,
                  nu: float = 0.0) -> Loss:
    """The implicit-feedback objective (see the module docstring) as a :class:`jmf.losses.Loss`.

    Parameters
    ----------
    alpha : float >= 0
        Confidence slope: an observed value ``r`` has confidence ``1 + alpha r``.
    l2 : float >= 0
        Penalty weight.
    chunk_size : int
        Observed entries per chunk.
    unobserved_weight : float >= 0, default 1
        ``w0``: the weight of every unobserved entry (Hu et al.: 1).
    nu : float >= 0, default 0
        Exponent of the frequency-scaled penalty (Rendle et al. 2021);
        0 is the plain ridge.

    Notes
    -----
    ``value`` and ``grad`` cost ``O(nnz k + (m + n) k^2)`` and stream over
    chunks of observed entries; weight-0 entries are ignored.
    """
    alpha = check_nonneg_float(alpha, "alpha", "implicit_loss")
    l2 = check_nonneg_float(l2, "l2", "implicit_loss")
    chunk_size = check_int(chunk_size, "chunk_size", "implicit_loss")
    w0 = check_nonneg_float(unobserved_weight, "unobserved_weight", "implicit_loss")
    nu = check_nonneg_float(nu, "nu", "implicit_loss")
    plain = not _is_tracer(nu) and float(nu) == 0

    def scales(data, dtype):
        if plain:
            return 1.0, 1.0
        d, e = penalty_scales(data, w0, nu, dtype)
        return d[:, None], e[None, :]

    def value(f: Factors, data):
        f = jax.tree_util.tree_map(jnp.asarray, f)
        if not isinstance(data, Sparse):
            raise TypeError("implicit_loss works on jmf.Sparse data")
        m, n = data.shape
        dtype = f.W.dtype

        def fn(acc, idx, live):
            *_, w, _, _, s, conf = _obs_terms(f, data, idx, live, alpha)
            return acc + jnp.sum(w.astype(dtype) * (conf * (1 - s) ** 2 - w0 * s * s))

        obs = chunked_entry_sum(data.nnz, chunk_size, fn, jnp.zeros((), dtype))
        full = w0 * jnp.sum((f.W.T @ f.W) * (f.H @ f.H.T))
        d, e = scales(data, dtype)
        pen = l2 * (jnp.sum(d * f.W * f.W) + jnp.sum(e * f.H * f.H))
        return (full + obs + pen) / jnp.asarray(m * n, dtype)

    def grad(f: Factors, data):
        f = jax.tree_util.tree_map(jnp.asarray, f)
        m, n = data.shape
        dtype = f.W.dtype

        def fn(acc, idx, live):
            gW, gHt = acc
            r, c, w, Wr, Hc, s, conf = _obs_terms(f, data, idx, live, alpha)
            coef = (w * (conf - (conf - w0) * s)).astype(dtype)
            return gW.at[r].add(coef[:, None] * Hc), gHt.at[c].add(coef[:, None] * Wr)

        gW, gHt = chunked_entry_sum(data.nnz, chunk_size, fn, (jnp.zeros_like(f.W), jnp.zeros_like(f.H.T)))
        inv = 1 / jnp.asarray(m * n, dtype)
        d, e = scales(data, dtype)
        gW = 2 * (w0 * f.W @ (f.H @ f.H.T) - gW + l2 * d * f.W) * inv
        gH = 2 * (w0 * (f.W.T @ f.W) @ f.H - gHt.T + l2 * e * f.H) * inv
        return Factors(gW, gH, *(None if x is None else jnp.zeros_like(x) for x in f[2:]))

    return Loss(value, grad, "implicit", data_kinds=("sparse",))
