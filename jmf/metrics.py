"""Evaluation metrics: RMSE/MAE on held-out ratings and precision/recall/NDCG/MAP/MRR@k and AUC of rankings."""

from jmf._src.metrics import (
    auc,
    mae,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    rating_metrics,
    recall_at_k,
    rmse,
)

__all__ = ["rmse", "mae", "rating_metrics", "ranking_metrics", "precision_at_k", "recall_at_k", "ndcg_at_k",
           "map_at_k", "mrr_at_k", "auc"]
