"""Collaborative filtering: the default ratings model, predictions with unknown-id fallback, top-n recommendation,
similar items and users, fold-in of new users, and baseline models (biases only, item kNN) for comparison."""

from jmf._src.cf import fold_in, predict, recommend, similar_items, similar_users
from jmf._src.cf_baselines import ItemKNN, baseline_only, item_knn
from jmf._src.ratings_model import DEFAULT_RANKS, RatingsModel, fit_ratings

__all__ = ["fit_ratings", "RatingsModel", "DEFAULT_RANKS", "predict", "recommend", "similar_items", "similar_users",
           "fold_in", "baseline_only", "item_knn", "ItemKNN"]
