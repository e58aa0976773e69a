"""Solver factories: each returns a :class:`jmf.solvers.Solver` (pure ``init``/``step``)."""

from jmf._src.losses.ratings import row_scaled_frobenius
from jmf._src.solvers.als import ALSState, als, ratings_als
from jmf._src.solvers.base import EmptyState, Solver
from jmf._src.solvers.bpmf import BPMFState, bpmf, posterior_mean
from jmf._src.solvers.bpr import BPRState, bpr
from jmf._src.solvers.gradient import GradientState, adam, gradient, nonnegative, sgd
from jmf._src.solvers.hals import HALSState, hals
from jmf._src.solvers.implicit import ImplicitLayout, implicit_als
from jmf._src.solvers.mu import mu
from jmf._src.solvers.ratings import RatingsGradientState, RatingsLayout, ratings_gradient
from jmf._src.solvers.svd import SVDState, svd
from jmf._src.solvers.svdpp import SVDppParams, SVDppState, implicit_factors, svdpp

__all__ = ["Solver", "EmptyState", "GradientState", "gradient", "sgd", "adam", "nonnegative", "als", "ALSState",
           "row_scaled_frobenius", "mu", "hals", "HALSState", "svd", "SVDState",
           "ratings_als", "RatingsLayout", "ratings_gradient", "RatingsGradientState", "implicit_als", "ImplicitLayout",
           "bpmf", "BPMFState", "posterior_mean", "bpr", "BPRState", "svdpp", "SVDppState", "SVDppParams",
           "implicit_factors"]
