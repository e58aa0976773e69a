"""scikit-learn's NMF starting points, drawn exactly as scikit-learn draws them.

With the same ``random_state``, :class:`~jmf.sklearn.NMF` and
:class:`~jmf.sklearn.MiniBatchNMF` start from the same ``W`` and ``H`` as
scikit-learn's (the same numpy draws, the same randomized SVD --
:func:`sklearn.utils.extmath.randomized_svd`, which keeps sparse input
sparse), so the fits follow the same path to rounding.  The start is computed
once on the host (a few products of ``X`` with ``k + 10`` columns), outside
any compiled program.  For data with missing entries the SVD sees them filled
with the observed mean (dense) or as zeros (sparse, ``absent="missing"``),
and the means are over the observed entries.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.utils import check_random_state
from sklearn.utils.extmath import randomized_svd

__all__ = ["initialize_nmf", "observed_mean"]


def observed_mean(X, absent: str = "zero") -> float:
    """Mean of the observed entries (all ``m n`` of a sparse ``X`` whose absent entries are zeros)."""
    if sp.issparse(X):
        return float(X.sum()) / (X.shape[0] * X.shape[1] if absent == "zero" else max(X.nnz, 1))
    return float(np.nanmean(X))


def initialize_nmf(X, n_components: int, init: str, random_state, absent: str = "zero", eps: float = 1e-6):
    """scikit-learn's ``_initialize_nmf`` (``init`` in "random", "nndsvd", "nndsvda", "nndsvdar"): ``(W, H)``."""
    m, n = X.shape
    k = n_components
    mean = observed_mean(X, absent)
    if init == "random":
        avg = np.sqrt(mean / k)
        rng = check_random_state(random_state)
        H = avg * rng.standard_normal(size=(k, n)).astype(X.dtype, copy=False)
        W = avg * rng.standard_normal(size=(m, k)).astype(X.dtype, copy=False)
        return np.abs(W), np.abs(H)
    M = X
    if not sp.issparse(X) and np.isnan(X).any():
        M = np.where(np.isnan(X), mean, X)
    U, S, V = randomized_svd(M, k, random_state=random_state)
    W, H = np.zeros_like(U), np.zeros_like(V)
    # The leading singular triplet is nonnegative (Perron): used as it is.
    W[:, 0] = np.sqrt(S[0]) * np.abs(U[:, 0])
    H[0, :] = np.sqrt(S[0]) * np.abs(V[0, :])
    for j in range(1, k):
        x, y = U[:, j], V[j, :]
        x_p, y_p = np.maximum(x, 0), np.maximum(y, 0)
        x_n, y_n = np.abs(np.minimum(x, 0)), np.abs(np.minimum(y, 0))
        x_p_nrm, y_p_nrm = np.linalg.norm(x_p), np.linalg.norm(y_p)
        x_n_nrm, y_n_nrm = np.linalg.norm(x_n), np.linalg.norm(y_n)
        m_p, m_n = x_p_nrm * y_p_nrm, x_n_nrm * y_n_nrm
        if m_p > m_n:
            u, v, sigma = x_p / x_p_nrm, y_p / y_p_nrm, m_p
        else:
            u, v, sigma = x_n / x_n_nrm, y_n / y_n_nrm, m_n
        lbd = np.sqrt(S[j] * sigma)
        W[:, j] = lbd * u
        H[j, :] = lbd * v
    W[W < eps] = 0
    H[H < eps] = 0
    if init == "nndsvda":
        W[W == 0] = mean
        H[H == 0] = mean
    elif init == "nndsvdar":
        rng = check_random_state(random_state)
        W[W == 0] = abs(mean * rng.standard_normal(size=len(W[W == 0])) / 100)
        H[H == 0] = abs(mean * rng.standard_normal(size=len(H[H == 0])) / 100)
    return W, H
