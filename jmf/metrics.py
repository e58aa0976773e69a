"""Evaluation metrics: RMSE/MAE on held-out ratings and precision/recall/NDCG@k rankings."""

from jmf._src.metrics import mae, ndcg_at_k, precision_at_k, ranking_metrics, rating_metrics, recall_at_k, rmse

__all__ = ["rmse", "mae", "rating_metrics", "ranking_metrics", "precision_at_k", "recall_at_k", "ndcg_at_k"]
