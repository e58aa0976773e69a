"""Figures (matplotlib, PNG + SVG).

Experiment tables, fit results' loss curves, component grids, image reconstructions.
"""

from jmf._src.plotting import (
                               accuracy_vs_time,
                               error_vs_rank,
                               loss_curves,
                               overview,
                               plot_components,
                               plot_loss,
                               plot_reconstructions,
                               save,
                               solver_colors,
                               timing,
)

__all__ = ["plot_loss", "plot_components", "plot_reconstructions", "loss_curves", "error_vs_rank",
           "accuracy_vs_time", "timing", "overview", "save", "solver_colors"]
