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

On sparse data whose absent entries are zeros (``absent="zero"``) the sum
runs over all ``m n`` entries without forming them (see :func:`zero_filled_sum`).

Safeguards (as in scikit-learn): predictions are clipped below at ``eps``
wherever a power or logarithm of ``y`` would blow up (``beta < 2``), and for
Itakura--Saito the data too (zeros of ``a`` would make it infinite).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import check_float, is_real
from ..factors import predict_entries
from .base import (
    ALL_KINDS,
    Loss,
    _pair,
    entry_grad,
    entry_sum,
    fold_row_blocks,
    loss_factory,
    mean_of,
    squared_error,
    zero_filled,
)

__all__ = ["beta_divergence", "elementwise_beta_divergence", "check_beta", "DEFAULT_EPS"]

#: Default clipping threshold, scikit-learn's ``EPSILON = np.finfo(np.float32).eps``.
DEFAULT_EPS = float(np.finfo(np.float32).eps)

_NAMES = {"frobenius": 2.0, "kullback-leibler": 1.0, "kl": 1.0, "itakura-saito": 0.0, "is": 0.0}


def check_beta(beta, owner=None) -> float:
    """``beta`` as a float; accepts the names ``"frobenius"`` (2), ``"kullback-leibler"`` (1) and
    ``"itakura-saito"`` (0)."""
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


def zero_filled_sum(f, data, beta: float, eps: float = DEFAULT_EPS):
    """``sum_ij d_beta(x_ij | yhat_ij)`` over all ``m n`` entries of sparse data with ``absent="zero"``.

    The stored entries by gathers; the absent ones (``x = 0``) from closed
    forms where there is one -- ``d_2(0 | y) = y^2 / 2`` (the Gram form of
    :func:`jmf.losses.squared_error`), ``d_1(0 | y) = y`` with
    ``sum_ij y_ij = (1^T W)(H 1)`` -- and otherwise ``d_beta(0 | y) =
    y^beta / beta`` summed over blocks of rows of ``W H`` (``O(m n k)`` time,
    ``O(b n)`` memory; never the whole ``m x n``).  For ``beta <= 0`` a zero
    entry has an infinite divergence: such data must store every entry (it is
    then the plain sum over stored entries).
    """
    if beta == 2:
        return 0.5 * squared_error(f, data)
    x = data.stored_vals()
    y = predict_entries(f, data.rows, data.cols)
    w = (data.effective_weights() > 0).astype(y.dtype)  # weight-0 padding entries are not stored entries
    stored = jnp.sum(w * elementwise_beta_divergence(x, y, beta, eps))
    if beta <= 0:
        return stored
    # Absent entries: the sum over all entries of d(0 | y), minus that over the stored ones.
    if beta == 1:
        return stored + jnp.sum(f.W, axis=0) @ jnp.sum(f.H, axis=1) - jnp.sum(w * y)

    def block(Wb, valid):
        Yb = jnp.maximum(Wb @ f.H, eps) ** beta
        return jnp.sum(jnp.where(valid[:, None], Yb, 0)) / beta

    all_zero = fold_row_blocks(f.W, block, jnp.zeros((), f.W.dtype), data.shape[1])
    return stored + all_zero - jnp.sum(w * jnp.maximum(y, eps) ** beta) / beta


@loss_factory
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

    rho = partial(elementwise_beta_divergence, beta=beta, eps=eps)
    drho = partial(_derivative, beta=beta, eps=eps)

    def data_term(f, d):
        return zero_filled_sum(f, d, beta, eps) if zero_filled(d) else entry_sum(f, d, rho)

    def data_grad(f, d):
        if zero_filled(d):  # by autodiff of the blocked sum (the multiplicative updates never call it)
            return jax.grad(lambda g: zero_filled_sum(g, d, beta, eps))(f)
        return entry_grad(f, d, drho)

    value, grad = mean_of(data_term, data_grad, l2, l1, 0.0)

    names = {2.0: "beta-divergence(2)", 1.0: "kullback-leibler", 0.0: "itakura-saito"}
    return Loss(value, grad, names.get(beta, f"beta-divergence({beta:g})"), data_kinds=ALL_KINDS)
