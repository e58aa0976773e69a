"""jmf: JAX-accelerated matrix factorization.

Factorize ``A (m x n) ~ W (m x k) H (k x n)`` with pure-functional solvers,
compiled once and vmapped over restarts, ranks and matrices.

>>> import jax, numpy as np, jmf
>>> A = np.array([[5, 3], [3, 2], [2, 1], [1, 1]], dtype=np.float32)
>>> res = jmf.fit(jmf.Dense(A), jmf.solvers.als(), rank=1, key=jax.random.key(0), progress=False)
>>> res.status_name, res.factors.W.shape, res.factors.H.shape
('CONVERGED', (4, 1), (1, 2))
"""

from jmf._src.compilation import configure_cache as _configure_cache
from jmf._src.sharding import configure_cpu_devices as _configure_cpu_devices

_configure_cpu_devices()  # before anything starts JAX's backends
_configure_cache()

from jmf import cf, compress, datasets, experiments, init, io, losses, metrics, model_selection, sharding, solvers  # noqa: E402
from jmf._src.consensus import Alignment, align_restarts, match_components  # noqa: E402
from jmf._src.data import Dense, Sparse, as_data, stack  # noqa: E402
from jmf._src.factors import Factors  # noqa: E402
from jmf._src.fit import FitManyResult, FitResult, ProgressInfo, Status, fit, fit_many  # noqa: E402
from jmf._src.linalg import SVDResult, randomized_svd, truncated_svd  # noqa: E402
from jmf._version import __version__  # noqa: E402, F401

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
    "compress",
]
