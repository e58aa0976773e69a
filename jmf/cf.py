"""Collaborative filtering: the default ratings model, predictions with unknown-id fallback, top-n recommendation."""

from jmf._src.cf import predict, recommend
from jmf._src.ratings_model import DEFAULT_RANKS, RatingsModel, fit_ratings

__all__ = ["fit_ratings", "RatingsModel", "DEFAULT_RANKS", "predict", "recommend"]
