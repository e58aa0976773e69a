"""Figures for experiment results: loss curves, error against rank, accuracy against time (matplotlib, PNG + SVG)."""

from jmf._src.plotting import accuracy_vs_time, error_vs_rank, loss_curves, overview, save, solver_colors, timing

__all__ = ["loss_curves", "error_vs_rank", "accuracy_vs_time", "timing", "overview", "save", "solver_colors"]
