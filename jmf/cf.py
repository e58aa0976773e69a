"""Collaborative filtering: predictions with unknown-id fallback and batched top-n recommendation."""

from jmf._src.cf import predict, recommend

__all__ = ["predict", "recommend"]
