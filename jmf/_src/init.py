"""Initial factors from an explicit PRNG key.

Every initializer has the signature ``init(key, data, width, rank=None) ->
Factors`` with ``W`` of shape ``(m, width)`` and ``H`` of shape ``(width, n)``.
``rank`` (``<= width``, may be a traced integer) is the member's actual rank:
columns beyond it are zero.  Random components are drawn so that the
first ``r`` columns do not depend on ``width`` (see :func:`_components`): a rank-``r`` member padded to the largest rank of a
:func:`jmf.fit_many` call starts from exactly the factors of a separate
rank-``r`` fit with the same key.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from .data import Dense, Sparse
from .factors import Factors, rank_mask

__all__ = ["random", "uniform", "normal", "svd", "get_initializer", "INITIALIZERS"]


def _components(key, width: int, m: int, n: int, draw: Callable, dtype):
    """``(W, H)`` of shapes ``(m, width)`` and ``(width, n)`` from one draw of shape ``(width, m + n)``.

    Row ``j`` of the draw is component ``j`` (column ``j`` of ``W`` and row
    ``j`` of ``H``).  With JAX's partitionable threefry (the default) element
    ``(j, i)`` of a draw depends only on its flat index, so the first ``r``
    rows are the same for every ``width >= r``; otherwise each component gets
    its own ``fold_in(key, j)``.
    """
    if jax.config.jax_threefry_partitionable:
        draws = draw(key, (width, m + n), dtype)
    else:  # pragma: no cover - legacy PRNG configuration
        draws = jax.vmap(lambda j: draw(jax.random.fold_in(key, j), (m + n,), dtype))(jnp.arange(width))
    return draws[:, :m].T, draws[:, m:]


def _mean_abs(data):
    if isinstance(data, Dense):
        a = jnp.abs(data.A)
        if data.weights is None:
            return jnp.mean(a)
        return jnp.sum(a * data.weights) / jnp.sum(data.weights)
    a = jnp.abs(data.vals)
    if data.weights is None:
        return jnp.mean(a)
    return jnp.sum(a * data.weights) / jnp.sum(data.weights)


def _finish(W, H, width, rank):
    if rank is None:
        return Factors(W, H)
    mask = rank_mask(rank, width, W.dtype)
    return Factors(W * mask, H * mask[:, None])


def random(key, data, width: int, rank=None) -> Factors:
    """scikit-learn's ``init='random'``: ``|N(0, 1)| * sqrt(mean|A| / rank)`` (nonnegative)."""
    m, n = data.shape
    k = jnp.asarray(width if rank is None else rank).astype(data.dtype)
    scale = jnp.sqrt(_mean_abs(data) / k).astype(data.dtype)
    W, H = _components(key, width, m, n, jax.random.normal, data.dtype)
    W, H = scale * jnp.abs(W), scale * jnp.abs(H)
    return _finish(W, H, width, rank)


def uniform(key, data, width: int, rank=None) -> Factors:
    """Entries uniform on ``[0, 1)`` (the seed example's ``torch.rand``)."""
    m, n = data.shape
    W, H = _components(key, width, m, n, jax.random.uniform, data.dtype)
    return _finish(W, H, width, rank)


def normal(key, data, width: int, rank=None, scale=None) -> Factors:
    """Signed Gaussian entries, std ``scale`` (default ``sqrt(mean|A| / rank)``); for signed data and ratings."""
    m, n = data.shape
    k = jnp.asarray(width if rank is None else rank).astype(data.dtype)
    if scale is None:
        scale = jnp.sqrt(_mean_abs(data) / k)
    scale = jnp.asarray(scale).astype(data.dtype)
    W, H = _components(key, width, m, n, jax.random.normal, data.dtype)
    W, H = scale * W, scale * H
    return _finish(W, H, width, rank)


def _dense_filled(data: Dense):
    if data.weights is None:
        return data.A
    return jnp.where(data.weights > 0, data.A, data.mean())


def top_singular_triplets(key, data, width: int, n_oversamples: int = 10, n_power_iter: int = 4):
    """Leading ``width`` singular triplets ``(U, s, Vt)`` of the data matrix.

    Dense data (missing entries filled with the observed mean) uses an exact
    SVD; sparse data a randomized range finder with ``n_power_iter`` power
    iterations built from O(nnz * width) sparse products (Halko, Martinsson
    & Tropp 2011).  Signs are fixed so each column of ``U`` has a positive
    largest-magnitude entry.
    """
    if isinstance(data, Dense):
        U, s, Vt = jnp.linalg.svd(_dense_filled(data), full_matrices=False)
        U, s, Vt = U[:, :width], s[:width], Vt[:width]
    else:
        m, n = data.shape
        p = min(width + n_oversamples, m, n)
        vals = data.vals if data.weights is None else data.vals * (data.weights > 0)

        def A_mul(X):  # (n, p) -> (m, p)
            return jax.ops.segment_sum(vals[:, None] * X[data.cols], data.rows, num_segments=m)

        def At_mul(Y):  # (m, p) -> (n, p)
            return jax.ops.segment_sum(vals[:, None] * Y[data.rows], data.cols, num_segments=n)

        Q = jnp.linalg.qr(A_mul(jax.random.normal(key, (n, p), data.dtype)))[0]
        for _ in range(n_power_iter):
            Q = jnp.linalg.qr(A_mul(jnp.linalg.qr(At_mul(Q))[0]))[0]
        B = At_mul(Q).T  # (p, n) = Q^T A
        Ub, s, Vt = jnp.linalg.svd(B, full_matrices=False)
        U = (Q @ Ub)[:, :width]
        s, Vt = s[:width], Vt[:width]
    idx = jnp.argmax(jnp.abs(U), axis=0)
    signs = jnp.sign(U[idx, jnp.arange(U.shape[1])])
    signs = jnp.where(signs == 0, 1, signs).astype(U.dtype)
    return U * signs, s, Vt * signs[:, None]


def svd(key, data, width: int, rank=None) -> Factors:
    """Truncated SVD: ``W = U_k sqrt(S_k)``, ``H = sqrt(S_k) V_k^T`` (signed; the optimum for dense unweighted data)."""
    m, n = data.shape
    if width > min(m, n):
        raise ValueError(f"svd init needs rank <= min(m, n) = {min(m, n)}, got {width}")
    U, s, Vt = top_singular_triplets(key, data, width)
    root = jnp.sqrt(s)
    return _finish(U * root, root[:, None] * Vt, width, rank)


INITIALIZERS: dict[str, Callable] = {"random": random, "uniform": uniform, "normal": normal, "svd": svd}


def get_initializer(name_or_fn) -> Callable:
    """Resolve an initializer name (see ``INITIALIZERS``) or pass a callable through."""
    if callable(name_or_fn):
        return name_or_fn
    if isinstance(name_or_fn, str) and name_or_fn in INITIALIZERS:
        return INITIALIZERS[name_or_fn]
    raise ValueError(f"init must be one of {sorted(INITIALIZERS)}, a callable or a jmf.Factors, got {name_or_fn!r}")


def add_biases(f: Factors, data) -> Factors:
    """Zero row/column biases and the observed mean as offset."""
    m, n = data.shape
    dtype = f.W.dtype
    return f._replace(row_bias=jnp.zeros((m,), dtype), col_bias=jnp.zeros((n,), dtype), offset=data.mean().astype(dtype))
