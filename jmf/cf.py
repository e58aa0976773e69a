"""Collaborative filtering: predictions with unknown-id fallback, batched top-n recommendation, similar items
and users, fold-in of new users, and baseline models for comparison."""

from jmf._src.cf import fold_in, predict, recommend, similar_items, similar_users

__all__ = ["predict", "recommend", "similar_items", "similar_users", "fold_in"]
