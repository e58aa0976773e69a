"""Seeded splits of observed entries (random holdout, per-user leave-k-out, k-fold) and batched grid search."""

from jmf._src.model_selection import (
    SearchResult,
    fold_stack,
    grid_search,
    kfold,
    leave_k_out,
    subset,
    train_test_split,
)

__all__ = ["train_test_split", "leave_k_out", "kfold", "subset", "fold_stack", "grid_search", "SearchResult"]
