r"""Beta-divergences: the losses of nonnegative matrix factorization.

For ``beta`` real, the beta-divergence between a datum ``a >= 0`` and a
prediction ``y > 0`` is (Févotte & Idier 2011)::

    d_beta(a | y) = (a^beta + (beta - 1) y^beta - beta a y^(beta - 1)) / (beta (beta - 1))

with the limits

* ``beta = 2``: ``(a - y)^2 / 2`` (half the squared error),
* ``beta = 1``: ``a log(a / y) - a + y`` (generalized Kullback--Leibler; ``0 log 0 = 0``),
* ``beta = 0``: ``a / y - log(a / y) - 1`` (Itakura--Saito; needs ``a > 0``).

:func:`beta_divergence` follows jmf's loss convention (see
:mod:`jmf.losses`): the divergence is summed over observed entries with
their weights, penalties are added in sum units, and the total is divided
by ``N``, the sum of the weights::

    L = ( sum_ij w_ij d_beta(a_ij | yhat_ij)
          + l2 (||W||^2 + ||H||^2) + l1 (|W|_1 + |H|_1) ) / N

Note that ``beta = 2`` gives *half* the data term of
:func:`jmf.losses.frobenius` (the classical convention of the NMF
literature and of scikit-learn's ``_beta_divergence``).

Safeguards (as in scikit-learn): predictions are clipped below at ``eps``
wherever a power or logarithm of ``y`` would blow up (``beta < 2``), and for
Itakura--Saito the data too (zeros of ``a`` would make it infinite).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .data import Dense
from .factors import Factors, matmul, predict_entries
from ._validation import check_float, is_real
from .losses import Loss, _pair, _penalty_grad, penalty

__all__ = ["beta_divergence", "elementwise_beta_divergence", "check_beta", "DEFAULT_EPS"]

#: Default clipping threshold, scikit-learn's ``EPSILON = np.finfo(np.float32).eps``.
DEFAULT_EPS = float(np.finfo(np.float32).eps)

_NAMES = {"frobenius": 2.0, "kullback-leibler": 1.0, "kl": 1.0, "itakura-saito": 0.0, "is": 0.0}


def check_beta(beta, owner=None) -> float:
    """``beta`` as a float; accepts the names ``"frobenius"`` (2), ``"kullback-leibler"`` (1), ``"itakura-saito"`` (0)."""
    if isinstance(beta, str):
        key = beta.lower()
        if key not in _NAMES:
            raise ValueError(f"{owner + ': ' if owner else ''}beta must be a number or one of 'frobenius', "
                             f"'kullback-leibler', 'itakura-saito', got {beta!r}")
        return _NAMES[key]
    if not is_real(beta):
        raise TypeError(f"{owner + ': ' if owner else ''}beta must be a float or a name such as "
                        f"'kullback-leibler', got {type(beta).__name__}")
    return check_float(beta, "beta", owner=owner)


def _check_eps(eps, owner=None) -> float:
    if eps is None:
        return DEFAULT_EPS
    return check_float(eps, "eps", owner=owner, lo=0.0, lo_open=True, hi=1.0, hi_open=True)


def elementwise_beta_divergence(a, y, beta: float, eps: float = DEFAULT_EPS):
    """``d_beta(a | y)`` elementwise (same shape as ``a`` and ``y``), with the safeguards above."""
    if beta == 2:
        r = a - y
        return 0.5 * r * r
    yc = jnp.maximum(y, eps)
    if beta == 1:
        pos = a > 0
        a_safe = jnp.where(pos, a, 1)
        return jnp.where(pos, a * jnp.log(a_safe / yc), 0) - a + yc
    if beta == 0:
        ac = jnp.maximum(a, eps)
        q = ac / yc
        return q - jnp.log(q) - 1
    return (a**beta + (beta - 1) * yc**beta - beta * a * yc ** (beta - 1)) / (beta * (beta - 1))


def _derivative(a, y, beta: float, eps: float):
    """``d/dy d_beta(a | y)`` (the clipping of ``y`` is treated as the identity)."""
    if beta == 2:
        return y - a
    yc = jnp.maximum(y, eps)
    if beta == 1:
        return 1 - a / yc
    if beta == 0:
        ac = jnp.maximum(a, eps)
        inv = 1 / yc
        return inv - ac * inv * inv
    return yc ** (beta - 1) - a * yc ** (beta - 2)


def _sum_divergence(f: Factors, data, beta: float, eps: float):
    if isinstance(data, Dense):
        d = elementwise_beta_divergence(data.A, f.predict(), beta, eps)
        if data.weights is not None:
            d = data.weights * d
        return jnp.sum(d)
    d = elementwise_beta_divergence(data.vals, predict_entries(f, data.rows, data.cols), beta, eps)
    if data.weights is not None:
        d = data.weights * d
    return jnp.sum(d)


def _data_grad(f: Factors, data, beta: float, eps: float) -> Factors:
    """Gradient of the weighted divergence sum (not divided by N)."""
    if isinstance(data, Dense):
        G = _derivative(data.A, f.predict(), beta, eps)
        if data.weights is not None:
            G = data.weights * G
        gW = matmul(G, f.H.T)
        gH = matmul(f.W.T, G)
        g_row = None if f.row_bias is None else jnp.sum(G, axis=1)
        g_col = None if f.col_bias is None else jnp.sum(G, axis=0)
        g_off = None if f.offset is None else jnp.sum(G)
        return Factors(gW, gH, g_row, g_col, g_off)
    m, n = data.shape
    G = _derivative(data.vals, predict_entries(f, data.rows, data.cols), beta, eps)
    if data.weights is not None:
        G = data.weights * G
    gW = jax.ops.segment_sum(G[:, None] * f.H.T[data.cols], data.rows, num_segments=m)
    gH = jax.ops.segment_sum(G[:, None] * f.W[data.rows], data.cols, num_segments=n).T
    g_row = None if f.row_bias is None else jax.ops.segment_sum(G, data.rows, num_segments=m)
    g_col = None if f.col_bias is None else jax.ops.segment_sum(G, data.cols, num_segments=n)
    g_off = None if f.offset is None else jnp.sum(G)
    return Factors(gW, gH, g_row, g_col, g_off)


def beta_divergence(beta=2.0, l1=0.0, l2=0.0, eps=None) -> Loss:
    r"""Mean beta-divergence over observed entries plus penalties.

    Parameters
    ----------
    beta : float or {"frobenius", "kullback-leibler", "itakura-saito"}, default 2
        2: half squared error, 1: generalized Kullback--Leibler, 0:
        Itakura--Saito; other real values use the general formula.
    l1, l2 : float or (float, float), default 0
        Penalties ``l1 (|W|_1 + |H|_1)`` and ``l2 (||W||^2 + ||H||^2)`` in
        sum units (a pair gives separate values for ``W`` and ``H``), as in
        :func:`jmf.losses.frobenius`.
    eps : float, optional
        Clipping threshold for predictions (and, for ``beta = 0``, data);
        default ``finfo(float32).eps`` as in scikit-learn.

    Returns
    -------
    Loss
        ``value(f, data) = (sum_ij w_ij d_beta(a_ij | yhat_ij) + penalty) / N``
        and its hand-derived gradient: with ``G = w * d'_beta(A | Yhat)``
        (``d' = yhat^(beta-1) - a yhat^(beta-2)``), ``grad_W = G H^T / N``,
        ``grad_H = W^T G / N`` plus the penalty gradients.  Dense, weighted
        and sparse data (sparse: O(nnz k) with gathers and segment sums).

    Examples
    --------
    >>> loss = jmf.losses.beta_divergence("kullback-leibler")  # doctest: +SKIP
    >>> loss.value(factors, jmf.Dense(A))                       # doctest: +SKIP
    """
    beta = check_beta(beta)
    eps = _check_eps(eps)
    _pair(l1, "l1"), _pair(l2, "l2")

    def value(f: Factors, data):
        return (_sum_divergence(f, data, beta, eps) + penalty(f, l2, l1)) / data.n_observed()

    def grad(f: Factors, data):
        inv_n = 1 / data.n_observed()
        return jax.tree_util.tree_map(
            lambda a, b: (a + b) * inv_n, _data_grad(f, data, beta, eps), _penalty_grad(f, l2, l1, 0.0)
        )

    names = {2.0: "beta-divergence(2)", 1.0: "kullback-leibler", 0.0: "itakura-saito"}
    return Loss(value, grad, names.get(beta, f"beta-divergence({beta:g})"))
