r"""Robust losses: Huber and absolute error, for data with gross outliers.

The squared error lets a few gross errors (corrupted entries, sensor
glitches, fake ratings) pull the whole low-rank fit towards them: their
gradient grows with the residual.  These losses cap that influence:

* :func:`huber`: ``rho(r) = r^2`` for ``|r| <= delta`` and ``2 delta |r| - delta^2``
  beyond (so it *is* the squared error of :func:`jmf.losses.frobenius` for
  ``delta`` larger than every residual, and penalties keep their units); its
  gradient ``-2 clip(r, -delta, delta)`` is bounded and continuous.
* :func:`l1`: ``rho(r) = |r|`` (least absolute deviations, the median's loss),
  with the subgradient ``-sign(r)`` (0 at ``r = 0``).  It is *not* smoothed:
  the value is the exact mean absolute error, and what non-smoothness costs
  is on the solver's side -- a fixed step oscillates at the scale of the
  learning rate, so use Adam (normalized steps) with a decaying learning rate
  (an Optax schedule) to converge.  ``huber`` with a small ``delta`` is the
  smooth alternative (``huber(delta) ~ 2 delta l1`` for residuals above ``delta``).

Both follow the mean convention of :mod:`jmf.losses` (weighted sum over
observed entries plus penalties, divided by ``N``), have hand-derived
gradients on dense, weighted and sparse data (O(nnz k) for sparse), and
work with any gradient solver: ``jmf.solvers.adam(1e-2, loss=jmf.losses.huber(1.0))``.
"""

from __future__ import annotations

from functools import partial

import jax.numpy as jnp

from .._validation import check_positive_float
from .base import Loss, _pair, _same_form, entry_grad, entry_sum, loss_factory, mean_of

__all__ = ["huber", "l1"]


def _huber(a, y, delta):
    r = jnp.abs(a - y)
    return jnp.where(r <= delta, r * r, delta * (2 * r - delta))


def _d_huber(a, y, delta):
    return -2 * jnp.clip(a - y, -delta, delta)


def _absolute(a, y):
    return jnp.abs(a - y)


def _d_absolute(a, y):
    return -jnp.sign(a - y)


def _penalties(l2, l1, bias_l2, owner):
    l2, l1 = _same_form(l2, _pair(l2, "l2", owner)), _same_form(l1, _pair(l1, "l1", owner))
    if bias_l2 is None:
        bias_l2 = _pair(l2, "l2")[0]
    return l2, l1, _same_form(bias_l2, _pair(bias_l2, "bias_l2", owner))


def _elementwise_loss(rho, drho, name, l2, l1, bias_l2) -> Loss:
    value, grad = mean_of(lambda f, d: entry_sum(f, d, rho), lambda f, d: entry_grad(f, d, drho), l2, l1, bias_l2)
    return Loss(value, grad, name)


@loss_factory
def huber(delta: float = 1.0, l2=0.0, l1=0.0, bias_l2=None) -> Loss:
    r"""Huber loss: squared error for residuals up to ``delta``, linear growth beyond.

    Parameters
    ----------
    delta : float > 0, default 1
        Residual size where the loss turns linear, in the units of the data
        (e.g. a few times the noise level).
    l2, l1 : float or (float, float), default 0
        Penalties on ``W`` and ``H`` as in :func:`jmf.losses.frobenius` (a
        pair gives ``(for W, for H)``).
    bias_l2 : float, optional
        Ridge penalty on the biases (default: ``l2``).

    Returns
    -------
    Loss
        ``(sum_obs w rho_delta(a - yhat) + penalty) / N`` with
        ``rho_delta(r) = r^2`` if ``|r| <= delta`` else ``2 delta |r| - delta^2``;
        gradient ``G = -2 w clip(a - yhat, -delta, delta)``, ``grad_W = G H^T / N``, ...
    """
    delta = check_positive_float(delta, "delta", "huber")
    l2, l1, bias_l2 = _penalties(l2, l1, bias_l2, "huber")
    return _elementwise_loss(partial(_huber, delta=delta), partial(_d_huber, delta=delta), f"huber({delta:g})",
                             l2, l1, bias_l2)


@loss_factory
def l1(l2=0.0, l1=0.0, bias_l2=None) -> Loss:
    r"""Absolute error (least absolute deviations): ``(sum_obs w |a - yhat| + penalty) / N``.

    Parameters
    ----------
    l2, l1 : float or (float, float), default 0
        Penalties on ``W`` and ``H`` as in :func:`jmf.losses.frobenius`.
    bias_l2 : float, optional
        Ridge penalty on the biases (default: ``l2``).

    Returns
    -------
    Loss
        The exact mean absolute error plus penalties, with the subgradient
        ``G = -w sign(a - yhat)`` (see the module docstring for what that
        asks of the solver).
    """
    l2, l1_pen, bias_l2 = _penalties(l2, l1, bias_l2, "l1")
    return _elementwise_loss(_absolute, _d_absolute, "l1", l2, l1_pen, bias_l2)
