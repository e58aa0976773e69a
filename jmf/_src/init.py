"""Initial factors from an explicit PRNG key.

Every initializer has the signature ``init(key, data, width, rank=None) ->
Factors`` with ``W`` of shape ``(m, width)`` and ``H`` of shape ``(width, n)``.
``rank`` (``<= width``, may be a traced integer) is the member's actual rank:
columns beyond it are zero.  Random components are drawn so that the
first ``r`` columns do not depend on ``width`` (see :func:`_components`):
a rank-``r`` member padded to the largest rank of a
:func:`jmf.fit_many` call starts from exactly the factors of a separate
rank-``r`` fit with the same key.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from .data import Dense, _rebuild
from .factors import Factors, rank_mask
from .linalg import _exact, _randomized

__all__ = ["random", "uniform", "normal", "svd", "nndsvd", "nndsvda", "nndsvdar", "get_initializer", "INITIALIZERS"]


_GOLDEN = 0x9E3779B9


def _mix32(x):
    """A bijective avalanche hash on uint32 (Wang/Jenkins-style "lowbias32" finalizer)."""
    x = x ^ (x >> jnp.uint32(16))
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> jnp.uint32(15))
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> jnp.uint32(16))


def _seed_words(key):
    """The uint32 words of a PRNG key (typed or legacy ``uint32[2]``), folded to one word."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    words = jnp.asarray(data).astype(jnp.uint32).reshape(-1)
    seed = jnp.uint32(0x6A09E667)
    for i in range(words.shape[0]):
        seed = _mix32(seed ^ (words[i] + jnp.uint32(_GOLDEN * (i + 1) & 0xFFFFFFFF)))
    return seed


def _grid_uniform(seed, stream: int, width: int, length: int, start=0):
    """``(width, length)`` uniforms in (0, 1); entry ``(j, i)`` depends only on ``(seed, stream, j, start + i)``.

    ``start`` (may be traced) offsets the index: a device of a sharded fit draws exactly its own rows.
    """
    j = jnp.arange(width, dtype=jnp.uint32)[:, None]
    i = (jnp.asarray(start, jnp.uint32) + jnp.arange(length, dtype=jnp.uint32))[None, :]
    h = _mix32(seed ^ jnp.uint32(stream * 0x85EBCA6B & 0xFFFFFFFF))
    h = _mix32(h ^ (j * jnp.uint32(_GOLDEN)))
    h = _mix32(h + i * jnp.uint32(0xC2B2AE35))
    return ((h >> jnp.uint32(8)).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))


def _grid(seed, stream: int, width: int, length: int, kind: str, dtype, start=0):
    u = _grid_uniform(seed, 2 * stream, width, length, start)
    if kind == "uniform":
        return u.astype(dtype)
    v = _grid_uniform(seed, 2 * stream + 1, width, length, start)
    z = jnp.sqrt(-2.0 * jnp.log(u)) * jnp.cos((2 * jnp.pi) * v)  # Box-Muller
    return z.astype(dtype)


def _components(key, width: int, m: int, n: int, kind: str, dtype, stream: int = 0):
    """``(W, H)`` of shapes ``(m, width)`` and ``(width, n)`` with i.i.d. "uniform" or "normal" entries.

    Entry ``W[i, j]`` is a hash of ``(key, j, i)`` (and ``H[j, i]`` of
    another stream), a counter-based generator seeded by the key's bits.
    Nothing depends on ``width``, ``m`` or ``n``: a rank-``r`` member padded
    to the largest rank of a :func:`jmf.fit_many` call, or a matrix padded
    with unobserved rows and columns into a mixed-shape bucket, starts from
    exactly the factors of the separate fit with the same key.  (Hashing
    instead of threefry also keeps compilation cheap: the init used to be
    most of a small fit's compile time.)
    """
    seed = _seed_words(key)
    W = _grid(seed, 2 * stream, width, m, kind, dtype).T
    H = _grid(seed, 2 * stream + 1, width, n, kind, dtype)
    return W, H


def _mean_abs(data):
    if isinstance(data, Dense):
        a = jnp.abs(data.A)
        if data.weights is None:
            return jnp.mean(a)
        return jnp.sum(a * data.weights) / jnp.sum(data.weights)
    a = jnp.abs(data.vals)
    if data.absent == "zero":  # absent entries are zeros: the mean over all m n entries
        return jnp.sum(jnp.abs(data.stored_vals())) / (data.shape[0] * data.shape[1])
    if data.weights is None:
        return jnp.mean(a)
    return jnp.sum(a * data.weights) / jnp.sum(data.weights)


def _finish(W, H, width, rank):
    if rank is None:
        return Factors(W, H)
    mask = rank_mask(rank, width, W.dtype)
    return Factors(W * mask[None, :], H * mask[:, None])


def random(key, data, width: int, rank=None) -> Factors:
    """scikit-learn's ``init='random'``: ``|N(0, 1)| * sqrt(mean|A| / rank)`` (nonnegative)."""
    m, n = data.shape
    k = jnp.asarray(width if rank is None else rank).astype(data.dtype)
    scale = jnp.sqrt(_mean_abs(data) / k).astype(data.dtype)
    W, H = _components(key, width, m, n, "normal", data.dtype)
    W, H = scale * jnp.abs(W), scale * jnp.abs(H)
    return _finish(W, H, width, rank)


def uniform(key, data, width: int, rank=None) -> Factors:
    """Entries uniform on ``[0, 1)`` (the seed example's ``torch.rand``)."""
    m, n = data.shape
    W, H = _components(key, width, m, n, "uniform", data.dtype)
    return _finish(W, H, width, rank)


def normal(key, data, width: int, rank=None, scale=None) -> Factors:
    """Signed Gaussian entries, std ``scale`` (default ``sqrt(mean|A| / rank)``); for signed data and ratings."""
    m, n = data.shape
    k = jnp.asarray(width if rank is None else rank).astype(data.dtype)
    if scale is None:
        scale = jnp.sqrt(_mean_abs(data) / k)
    scale = jnp.asarray(scale).astype(data.dtype)
    W, H = _components(key, width, m, n, "normal", data.dtype)
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
    & Tropp 2011; see :func:`jmf.randomized_svd`).  Signs are fixed so each
    column of ``U`` has a positive largest-magnitude entry.
    """
    if isinstance(data, Dense):
        filled = _rebuild(Dense, (_dense_filled(data), None))
        return tuple(_exact(filled, width))
    return tuple(_randomized(data, width, key, n_oversamples, n_power_iter))


def svd(key, data, width: int, rank=None) -> Factors:
    """Truncated SVD: ``W = U_k sqrt(S_k)``, ``H = sqrt(S_k) V_k^T`` (signed; the optimum for dense unweighted data)."""
    m, n = data.shape
    if width > min(m, n):
        raise ValueError(f"svd init needs rank <= min(m, n) = {min(m, n)}, got {width}")
    U, s, Vt = top_singular_triplets(key, data, width)
    root = jnp.sqrt(s)
    return _finish(U * root[None, :], root[:, None] * Vt, width, rank)


def _nndsvd_components(key, data, width: int, eps: float):
    """Nonnegative factors from the leading singular triplets (Boutsidis & Gallopoulos 2008).

    For component ``j`` with singular triplet ``(u, s, v)``, split ``u`` and
    ``v`` into positive and negative parts, keep the pair ``(u+, v+)`` or
    ``(u-, v-)`` whose norm product ``sigma`` is larger, and use
    ``sqrt(s sigma) u / |u|`` and ``sqrt(s sigma) v / |v|`` as column ``j`` of
    ``W`` and row ``j`` of ``H``.  The first component (the Perron vector of
    a nonnegative matrix) uses ``sqrt(s) |u|`` and ``sqrt(s) |v|``.  Entries
    below ``eps`` are set to 0, as scikit-learn does.
    """
    m, n = data.shape
    if width > min(m, n):
        raise ValueError(f"nndsvd init needs rank <= min(m, n) = {min(m, n)}, got {width}")
    U, s, Vt = top_singular_triplets(key, data, width)
    s = jnp.maximum(s, 0)

    def parts(x, axis):
        pos, neg = jnp.maximum(x, 0), jnp.maximum(-x, 0)
        return pos, neg, jnp.linalg.norm(pos, axis=axis), jnp.linalg.norm(neg, axis=axis)

    xp, xn, xpn, xnn = parts(U, 0)
    yp, yn, ypn, ynn = parts(Vt, 1)
    mp, mn = xpn * ypn, xnn * ynn
    use_pos = mp > mn

    def unit(x, nrm):
        return x / jnp.where(nrm > 0, nrm, 1)

    u = jnp.where(use_pos[None, :], unit(xp, xpn[None, :]), unit(xn, xnn[None, :]))
    v = jnp.where(use_pos[:, None], unit(yp, ypn[:, None]), unit(yn, ynn[:, None]))
    lam = jnp.sqrt(s * jnp.where(use_pos, mp, mn))
    W, H = lam[None, :] * u, lam[:, None] * v
    root = jnp.sqrt(s[0])
    W = W.at[:, 0].set(root * jnp.abs(U[:, 0]))
    H = H.at[0].set(root * jnp.abs(Vt[0]))
    W = jnp.where(W < eps, 0, W)
    H = jnp.where(H < eps, 0, H)
    return W, H


def _observed_mean(data):
    return data.mean().astype(data.dtype)


def nndsvd(key, data, width: int, rank=None, eps: float = 1e-6) -> Factors:
    """NNDSVD (Boutsidis & Gallopoulos 2008): nonnegative SVD-based start, zeros kept.

    Deterministic for dense data (the SVD is exact; missing entries are
    filled with the observed mean), so ``key`` matters only for sparse data
    (randomized SVD).  Best for sparse factors with coordinate descent
    (:func:`jmf.solvers.hals`); multiplicative updates can never move the
    zeros, prefer :func:`nndsvda` for them.  scikit-learn's ``init='nndsvd'``.
    """
    W, H = _nndsvd_components(key, data, width, eps)
    return _finish(W, H, width, rank)


def nndsvda(key, data, width: int, rank=None, eps: float = 1e-6) -> Factors:
    """NNDSVD with its zeros replaced by the observed mean of the data (scikit-learn's ``'nndsvda'``).

    The usual start for multiplicative updates (:func:`jmf.solvers.mu`).
    """
    W, H = _nndsvd_components(key, data, width, eps)
    avg = _observed_mean(data)
    W, H = jnp.where(W == 0, avg, W), jnp.where(H == 0, avg, H)
    return _finish(W, H, width, rank)


def nndsvdar(key, data, width: int, rank=None, eps: float = 1e-6) -> Factors:
    """NNDSVD with its zeros replaced by small random values ``|N(0, 1)| mean / 100`` (scikit-learn's ``'nndsvdar'``).

    The random draws come from ``key`` (component-wise, so the first ``r``
    components do not depend on ``width``).
    """
    m, n = data.shape
    W, H = _nndsvd_components(key, data, width, eps)
    avg = _observed_mean(data)
    RW, RH = _components(key, width, m, n, "normal", data.dtype, stream=7)
    W = jnp.where(W == 0, jnp.abs(avg * RW) / 100, W)
    H = jnp.where(H == 0, jnp.abs(avg * RH) / 100, H)
    return _finish(W, H, width, rank)


INITIALIZERS: dict[str, Callable] = {
    "random": random,
    "uniform": uniform,
    "normal": normal,
    "svd": svd,
    "nndsvd": nndsvd,
    "nndsvda": nndsvda,
    "nndsvdar": nndsvdar,
}


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
    return f._replace(row_bias=jnp.zeros((m,), dtype), col_bias=jnp.zeros((n,), dtype),
                      offset=data.mean().astype(dtype))
