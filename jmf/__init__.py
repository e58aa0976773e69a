"""jmf: JAX-accelerated matrix factorization.

Factorize ``A (m x n) ~ W (m x k) H (k x n)`` with pure-functional solvers,
compiled once and vmapped over restarts, ranks and matrices.

>>> import jax, jmf
>>> res = jmf.fit(jmf.Dense(A), jmf.solvers.adam(1e-2), rank=2, key=jax.random.key(0))  # doctest: +SKIP
"""

from jmf._src.compilation import configure_cache as _configure_cache
from jmf._src.sharding import configure_cpu_devices as _configure_cpu_devices

_configure_cpu_devices()  # before anything starts JAX's backends
_configure_cache()

from jmf._src.data import Dense, Sparse, as_data, stack
from jmf._src.factors import Factors
from jmf._src.fit import FitManyResult, FitResult, ProgressInfo, Status, fit, fit_many
from jmf._src.linalg import SVDResult, randomized_svd, truncated_svd
from jmf._src.consensus import Alignment, align_restarts, match_components
from jmf import sharding
from jmf import init, losses, solvers
from jmf import cf, datasets, metrics, model_selection
from jmf import experiments, io

__version__ = "0.1.0"

__all__ = [
    "Dense",
    "Sparse",
    "Factors",
    "FitResult",
    "FitManyResult",
    "ProgressInfo",
    "Status",
    "as_data",
    "stack",
    "fit",
    "fit_many",
    "Alignment",
    "align_restarts",
    "match_components",
    "sharding",
    "randomized_svd",
    "truncated_svd",
    "SVDResult",
    "init",
    "losses",
    "solvers",
    "cf",
    "datasets",
    "metrics",
    "model_selection",
    "experiments",
    "io",
]
