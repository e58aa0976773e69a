"""Losses: pure, jit-able functions of ``(factors, data)`` (mean over observed entries; see :mod:`.base`).

``base`` (the :class:`Loss` type, penalties, elementwise data terms) <- ``frobenius``,
``beta`` (beta-divergences), ``robust`` (Huber, absolute error) <- ``ratings`` (the biased,
count-scaled objective of ALS and ratings models, streamed over entry chunks) <- ``implicit``
(implicit feedback).
"""

from .base import DATA_KINDS, Loss, custom, entry_grad, entry_sum, n_observed, penalty, squared_error
from .beta import DEFAULT_EPS, beta_divergence, check_beta, elementwise_beta_divergence
from .frobenius import frobenius
from .implicit import implicit_loss
from .ratings import chunked_entry_sum, ratings_loss, row_scaled_frobenius, weight_sums
from .robust import huber, l1

__all__ = ["Loss", "DATA_KINDS", "custom", "penalty", "squared_error", "n_observed", "entry_sum", "entry_grad",
           "frobenius", "beta_divergence", "elementwise_beta_divergence", "check_beta", "DEFAULT_EPS",
           "huber", "l1", "ratings_loss", "row_scaled_frobenius", "chunked_entry_sum", "weight_sums",
           "implicit_loss"]
