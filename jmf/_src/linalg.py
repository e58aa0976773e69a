r"""Truncated and randomized singular value decompositions.

:func:`randomized_svd` is the range finder of Halko, Martinsson & Tropp
(2011, Algorithm 4.4): draw a Gaussian test matrix ``Omega`` of shape
``(n, k + p)``, refine it with ``q`` power iterations ``Omega <- orth(A^T
orth(A Omega))`` (re-orthonormalized every time, so the small singular values
are not lost to rounding), form ``Q = orth(A Omega)``, then take the exact SVD
of the small matrix ``B = Q^T A`` of shape ``(k + p, n)``.  It touches ``A``
only through ``A X`` and ``A^T Y``: dense data uses matrix products, sparse
data (:class:`jmf.Sparse`) gathers and ``segment_sum`` in ``O(nnz (k + p))``
per product, never an ``m x n`` array.

Signs are fixed as scikit-learn's ``svd_flip`` does: the largest-magnitude
entry of every column of ``U`` is positive, so results are reproducible.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.lax import linalg as lax_linalg

from ._validation import as_key, check_choice, check_int, check_rank
from .data import Dense, Sparse, _rebuild, as_data

__all__ = ["SVDResult", "randomized_svd", "truncated_svd", "flip_signs", "operator"]


class SVDResult(NamedTuple):
    """``A ~ U diag(s) Vt`` with ``U (m, k)``, ``s (k,)`` descending, ``Vt (k, n)``."""

    U: jax.Array
    s: jax.Array
    Vt: jax.Array


def flip_signs(U, Vt):
    """Make the largest-magnitude entry of each column of ``U`` positive (``Vt`` rows follow)."""
    idx = jnp.argmax(jnp.abs(U), axis=0)
    signs = jnp.sign(U[idx, jnp.arange(U.shape[1])])
    signs = jnp.where(signs == 0, 1, signs).astype(U.dtype)
    return U * signs[None, :], Vt * signs[:, None]


def operator(data) -> tuple[Callable, Callable]:
    """``(A_mul, At_mul)``: ``X (n, p) -> A X (m, p)`` and ``Y (m, p) -> A^T Y (n, p)``.

    Missing entries count as zero: a weighted :class:`Dense` is ``A`` with
    its weight-0 entries set to zero, a :class:`Sparse` is the matrix of its
    observed entries (weight-0 padding entries dropped).
    """
    if isinstance(data, Dense):
        A = data.A if data.weights is None else jnp.where(data.weights > 0, data.A, 0)
        return (lambda X: A @ X), (lambda Y: jnp.matmul(A.T, Y))
    return (lambda X: data.dot(X)), (lambda Y: data.dot(Y, transpose=True))


_NORMALIZERS = ("qr", "lu", "none")


def _normalized(Y, normalizer: str):
    """The power iterations' re-normalization of a block: orthonormal (QR), unit lower-triangular (LU) or none."""
    if normalizer == "qr":
        return jnp.linalg.qr(Y)[0]
    if normalizer == "lu":
        return _permuted_l(Y)
    return Y


def _permuted_l(Y):
    """``P L`` of the LU factorization ``Y = P L U`` of an ``(m, p)`` block, in ``O(m p)`` memory.

    (``jax.scipy.linalg.lu(Y, permute_l=True)`` forms the ``m x m`` permutation matrix.)
    """
    m, p = Y.shape
    r = min(m, p)
    packed, _, perm = lax_linalg.lu(Y)
    L = jnp.tril(packed[:, :r], -1) + jnp.eye(m, r, dtype=Y.dtype)
    return jnp.zeros_like(L).at[perm].set(L)  # Y[perm] = L U, so row perm[i] of P L is row i of L


def _randomized(data, rank: int, key, n_oversamples: int, n_power_iter: int, normalizer: str = "qr",
                transpose: bool = False) -> SVDResult:
    """The range finder; ``transpose`` runs it on ``A^T`` (then ``A V_k = U_k S_k`` holds exactly, the
    Rayleigh--Ritz property on the right side; scikit-learn transposes when ``m < n``)."""
    m, n = data.shape
    p = min(rank + n_oversamples, m, n)
    A_mul, At_mul = operator(data)
    if transpose:
        A_mul, At_mul, m, n = At_mul, A_mul, n, m
    Q = jax.random.normal(key, (n, p), data.dtype)
    for _ in range(n_power_iter):
        Q = _normalized(At_mul(_normalized(A_mul(Q), normalizer)), normalizer)
    Q = jnp.linalg.qr(A_mul(Q))[0]
    B = At_mul(Q).T  # (p, n) = Q^T A
    Ub, s, Vt = jnp.linalg.svd(B, full_matrices=False)
    U = (Q @ Ub)[:, :rank]
    Vt = Vt[:rank]
    if transpose:
        U, Vt = Vt.T, U.T
    U, Vt = flip_signs(U, Vt)
    return SVDResult(U, s[:rank], Vt)


def _exact(data, rank: int) -> SVDResult:
    if not isinstance(data, Dense):
        raise ValueError("the exact SVD needs dense data; use method='randomized' for jmf.Sparse")
    A = data.A if data.weights is None else jnp.where(data.weights > 0, data.A, 0)
    U, s, Vt = jnp.linalg.svd(A, full_matrices=False)
    U, Vt = flip_signs(U[:, :rank], Vt[:rank])
    return SVDResult(U, s[:rank], Vt)


def randomized_svd(A, rank: int, *, key, n_oversamples: int = 10, n_power_iter: int = 4,
                   normalizer: str = "qr") -> SVDResult:
    """Leading ``rank`` singular triplets by a randomized range finder.

    Parameters
    ----------
    A : array (m, n), jmf.Dense, jmf.Sparse or scipy.sparse matrix
        The matrix.  Missing entries (weight 0, or not stored in a
        :class:`jmf.Sparse`) count as zero.
    rank : int
        Number of triplets, ``1 <= rank <= min(m, n)``.
    key : jax.random.key
        Key for the Gaussian test matrix.
    n_oversamples : int, default 10
        Extra columns ``p`` of the test matrix (the sketch has ``rank + p`` columns).
    n_power_iter : int, default 4
        Power iterations ``q``; the error bound improves like
        ``(sigma_{k+1} / sigma_k)^(2q + 1)``.
    normalizer : {"qr", "lu", "none"}, default "qr"
        Re-normalization of the block after each product of the power
        iterations (scikit-learn's ``power_iteration_normalizer``): QR keeps
        it orthonormal (the most accurate), LU is cheaper, "none" loses the
        small singular values to rounding after a few iterations.

    Returns
    -------
    SVDResult
        ``U (m, rank)``, ``s (rank,)`` descending, ``Vt (rank, n)``, signs
        fixed so the largest entry of each column of ``U`` is positive.

    Notes
    -----
    Cost ``O((2 q + 2) m n (rank + p))`` for dense data and
    ``O((2 q + 2) nnz (rank + p))`` for sparse data, plus QR factorizations
    of ``(m, rank + p)`` and ``(n, rank + p)`` blocks.  Works under ``jit``
    (``rank`` and the counts are static).
    """
    data = _as_matrix(A)
    rank = check_rank(rank, data.shape)
    n_oversamples = check_int(n_oversamples, "n_oversamples", lo=0)
    n_power_iter = check_int(n_power_iter, "n_power_iter", lo=0)
    check_choice(normalizer, "normalizer", _NORMALIZERS)
    key = as_key(key)
    return _randomized(data, rank, key, int(n_oversamples), int(n_power_iter), normalizer)


def truncated_svd(A, rank: int) -> SVDResult:
    """Leading ``rank`` singular triplets from the exact (LAPACK) SVD of a dense matrix.

    ``U diag(s) Vt`` is the best rank-``rank`` approximation in Frobenius
    norm (Eckart--Young).  Missing entries of a weighted :class:`jmf.Dense`
    count as zero.  Signs as in :func:`randomized_svd`.
    """
    data = _as_matrix(A)
    rank = check_rank(rank, data.shape)
    return _exact(data, rank)


def _as_matrix(A):
    if isinstance(A, (Dense, Sparse)):
        data = A
    elif isinstance(A, jax.core.Tracer):
        if A.ndim != 2:
            raise ValueError(f"A must be 2-D, got shape {tuple(A.shape)}")
        data = _rebuild(Dense, (A, None))
    else:
        data = as_data(A, name="A")
    if data.batch_shape:
        raise ValueError(f"A must be a single matrix, got a batch of shape {data.batch_shape}")
    return data
