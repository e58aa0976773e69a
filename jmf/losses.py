"""Losses (mean over observed entries; see the module docstring of jmf._src.losses.base)."""

from jmf._src.losses import (
    Loss,
    beta_divergence,
    custom,
    elementwise_beta_divergence,
    frobenius,
    huber,
    implicit_loss,
    l1,
    n_observed,
    penalty,
    ratings_loss,
    squared_error,
)

__all__ = ["Loss", "frobenius", "custom", "penalty", "squared_error", "n_observed", "beta_divergence",
           "elementwise_beta_divergence", "huber", "l1", "ratings_loss", "implicit_loss"]
