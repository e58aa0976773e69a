"""TruncatedSVD: scikit-learn's, on jmf's SVDs (dense or sparse, never densified)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.extmath import svd_flip
from sklearn.utils.sparsefuncs import mean_variance_axis
from sklearn.utils.validation import check_is_fitted, validate_data

from ..linalg import _exact, _randomized, operator
from ._validation import (
    as_data,
    check_codes,
    check_random_state_type,
    choice_param,
    int_param,
    key_from_random_state,
    precision,
    real_param,
)

__all__ = ["TruncatedSVD"]

_NORMALIZER = {"QR": "qr", "LU": "lu", "none": "none"}
#: Largest number of block iterations of the "arpack" algorithm on sparse data.
ARPACK_MAX_ITER = 1000


@functools.partial(jax.jit, static_argnames=("rank", "n_oversamples", "n_iter", "normalizer", "transpose"))
def _randomized_svd(data, key, rank, n_oversamples, n_iter, normalizer, transpose):
    return _randomized(data, rank, key, n_oversamples, n_iter, normalizer, transpose)


@jax.jit
def _exact_svd(data):
    return _exact(data, min(data.shape))


@functools.partial(jax.jit, static_argnames=("rank", "block"))
def _subspace_svd(data, key, tol, rank, block):
    """Leading ``rank`` singular triplets by block subspace iteration with Rayleigh--Ritz, to a tolerance.

    The block ``V`` (``n x block``) is iterated as ``V <- right singular vectors
    of (orth(A V))^T A``; the iteration stops once every residual
    ``|A v_i - s_i u_i|`` (``i < rank``) is at most ``tol`` (at least a few
    machine epsilons) times ``s_1``, or after :data:`ARPACK_MAX_ITER` blocks.
    Touches ``A`` only through products (``O(nnz block)`` for sparse data).
    """
    m, n = data.shape
    A_mul, At_mul = operator(data)
    dt = data.dtype
    floor = 64 * jnp.finfo(dt).eps
    thresh = jnp.maximum(tol, floor)

    def ritz(V):
        Y = A_mul(V)
        Q = jnp.linalg.qr(Y)[0]
        Ub, s, Vt = jnp.linalg.svd(At_mul(Q).T, full_matrices=False)
        return Q @ Ub, s, Vt

    def cond(c):
        it, _, _, _, done = c
        return (it < ARPACK_MAX_ITER) & ~done

    def body(c):
        it, U, s, Vt, _ = c
        Y = A_mul(Vt[:rank].T)  # A v_i: the residuals of the current triplets, and the next block's start
        res = jnp.linalg.norm(Y - U[:, :rank] * s[None, :rank], axis=0)
        done = jnp.max(res) <= thresh * s[0]
        U2, s2, Vt2 = ritz(Vt.T)
        keep = lambda a, b: jnp.where(done, a, b)  # noqa: E731
        return it + 1, keep(U, U2), keep(s, s2), keep(Vt, Vt2), done

    V0 = jax.random.normal(key, (n, block), dt)
    U, s, Vt = ritz(jnp.linalg.qr(V0)[0])
    _, U, s, Vt, _ = jax.lax.while_loop(cond, body, (jnp.ones((), jnp.int32), U, s, Vt, jnp.zeros((), bool)))
    return U[:, :rank], s[:rank], Vt[:rank]


class TruncatedSVD(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Truncated SVD (LSA), a drop-in for :class:`sklearn.decomposition.TruncatedSVD`, computed with JAX.

    ``X ~ U_k S_k V_k^T``; ``transform(X) = X V_k``.  Dense arrays and
    ``scipy.sparse`` matrices (never densified: sparse products by gathers
    and ``segment_sum``, ``O(nnz k)``); the data are not centered.

    Parameters
    ----------
    n_components : int, default=2
    algorithm : {"randomized", "arpack", "exact"}, default="randomized"
        "randomized": Halko et al.'s range finder (:func:`jmf.randomized_svd`)
        with ``n_iter`` power iterations normalized by
        ``power_iteration_normalizer``, as scikit-learn's.  "arpack": the
        leading triplets to the tolerance ``tol`` (``n_components <
        min(X.shape)``, as scipy's ``svds``): the exact LAPACK SVD of dense
        input, block subspace iteration with Rayleigh--Ritz on sparse input
        (in place of ARPACK's restarted Lanczos).  "exact" (jmf): the LAPACK
        SVD, dense input only.
    n_iter : int, default=5
        Power iterations of "randomized".
    n_oversamples : int, default=10
        Extra random directions of "randomized".
    power_iteration_normalizer : {"auto", "QR", "LU", "none"}, default="auto"
        As scikit-learn's ("auto": "none" for ``n_iter <= 2``, else "LU").
    random_state : int, RandomState instance or None, default=None
        Seeds the ``jax.random.key`` of the random test matrix (an int ``s``
        gives ``jax.random.key(s)``; ``None`` or a ``RandomState`` draw the
        seed from numpy).
    tol : float, default=0.0
        Tolerance of "arpack" (0: machine precision).

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        ``V_k^T``, signs fixed as scikit-learn does (``svd_flip`` on ``V``).
    explained_variance_ : ndarray of shape (n_components,)
        Variance of each column of the training ``fit_transform`` output.
    explained_variance_ratio_ : ndarray of shape (n_components,)
    singular_values_ : ndarray of shape (n_components,)
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)

    Notes
    -----
    ``fit_transform`` returns ``X V_k`` (so it equals ``fit(X).transform(X)``)
    except for "arpack" with ``tol=0`` and "exact", which return ``U_k S_k``,
    the same to rounding, as scikit-learn does.  float64 input is computed
    in float64.  Missing values are not supported (a truncated SVD of a
    partially observed matrix is a different problem: see
    :class:`~jmf.sklearn.MatrixFactorization`).
    """

    def __init__(self, n_components=2, *, algorithm="randomized", n_iter=5, n_oversamples=10,
                 power_iteration_normalizer="auto", random_state=None, tol=0.0):
        self.n_components = n_components
        self.algorithm = algorithm
        self.n_iter = n_iter
        self.n_oversamples = n_oversamples
        self.power_iteration_normalizer = power_iteration_normalizer
        self.random_state = random_state
        self.tol = tol

    def fit(self, X, y=None):
        """Fit the model on ``X``; returns ``self``."""
        self.fit_transform(X)
        return self

    def fit_transform(self, X, y=None):
        """Fit the model on ``X`` and return the reduced ``X`` of shape (n_samples, n_components)."""
        k = int_param(self, "n_components", 1)
        check_random_state_type(self)
        algorithm = choice_param(self, "algorithm", {"randomized", "arpack", "exact"})
        n_iter = int_param(self, "n_iter", 0)
        n_over = int_param(self, "n_oversamples", 1)
        normalizer = choice_param(self, "power_iteration_normalizer", {"auto", "QR", "LU", "none"})
        tol = real_param(self, "tol")
        X = validate_data(self, X, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32],
                          ensure_min_features=2)
        m, n = X.shape
        name = type(self).__name__
        if algorithm == "randomized" and k > min(m, n):
            raise ValueError(f"{name}: n_components={k} must be <= min(n_samples, n_features) = {min(m, n)}"
                             f" (n_components({k}) must be <= n_features({n}))")
        if algorithm == "arpack" and k >= min(m, n):
            raise ValueError(f"{name}: algorithm='arpack' needs n_components < min(n_samples, n_features) = "
                             f"{min(m, n)}, got {k}")
        if algorithm == "exact":
            if sp.issparse(X):
                raise TypeError(f"{name}: algorithm='exact' needs dense input; use 'arpack' or 'randomized'")
            if k > min(m, n):
                raise ValueError(f"{name}: n_components={k} must be <= min(n_samples, n_features) = {min(m, n)}")
        key = key_from_random_state(self.random_state)
        with precision(X.dtype):
            data = as_data(X)
            if algorithm == "randomized":
                if normalizer == "auto":
                    normalizer = "none" if n_iter <= 2 else "LU"
                # scikit-learn's transpose="auto": the range finder on the smaller side (X V_k = U_k S_k exactly)
                U, s, Vt = _randomized_svd(data, key, k, n_over, n_iter, _NORMALIZER[normalizer], m < n)
            elif sp.issparse(X) and algorithm == "arpack":
                block = min(max(2 * k, k + 10), min(m, n))
                U, s, Vt = _subspace_svd(data, key, jnp.asarray(tol, data.dtype), k, block)
            else:
                U, s, Vt = _exact_svd(data)
            U = np.array(np.asarray(U)[:, :k], dtype=X.dtype)  # writable copies (svd_flip works in place)
            s = np.array(np.asarray(s)[:k], dtype=X.dtype)
            Vt = np.array(np.asarray(Vt)[:k], dtype=X.dtype)
        U, Vt = svd_flip(U, Vt, u_based_decision=False)
        self.components_ = Vt
        if algorithm == "randomized" or (algorithm == "arpack" and tol > 0):
            Z = np.asarray(X @ Vt.T)
        else:
            Z = U * s
        self.explained_variance_ = np.var(Z, axis=0)
        if sp.issparse(X):
            _, full_var = mean_variance_axis(X, axis=0)
            full_var = full_var.sum()
        else:
            full_var = np.var(X, axis=0).sum()
        self.explained_variance_ratio_ = self.explained_variance_ / full_var
        self.singular_values_ = s
        return Z.astype(X.dtype, copy=False)

    def transform(self, X):
        """``X V_k`` of shape (n_samples, n_components)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32])
        return np.asarray(X @ self.components_.T).astype(X.dtype, copy=False)

    def inverse_transform(self, X):
        """``Z V_k^T``: back to data space."""
        check_is_fitted(self)
        Z = check_codes(X, self.components_.shape[0])
        return Z @ self.components_

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
