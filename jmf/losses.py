"""Losses (mean over observed entries; see the module docstring of jmf._src.losses)."""

from jmf._src.losses import Loss, custom, frobenius, n_observed, penalty, squared_error
from jmf._src.solvers.implicit import implicit_loss
from jmf._src.solvers.ratings import ratings_loss
from jmf._src.divergences import beta_divergence, elementwise_beta_divergence

__all__ = ["Loss", "frobenius", "custom", "penalty", "squared_error", "n_observed", "beta_divergence", "elementwise_beta_divergence",
           "ratings_loss", "implicit_loss"]
