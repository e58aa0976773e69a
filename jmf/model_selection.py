"""Seeded splits of observed entries: random holdout, per-user leave-k-out, k-fold."""

from jmf._src.model_selection import kfold, leave_k_out, subset, train_test_split

__all__ = ["train_test_split", "leave_k_out", "kfold", "subset"]
