"""Solver factories: each returns a :class:`jmf.solvers.Solver` (pure ``init``/``step``)."""

from jmf._src.solvers.base import Solver
from jmf._src.solvers.gradient import GradientState, adam, gradient, nonnegative, sgd

__all__ = ["Solver", "GradientState", "gradient", "sgd", "adam", "nonnegative"]
