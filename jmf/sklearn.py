r"""scikit-learn estimators backed by jmf.

Drop-in estimators for scikit-learn pipelines, plus what scikit-learn's own
lack: **missing values** (``NaN`` entries of ``X`` are treated as missing and
left out of the loss), **batched random restarts** (``n_init`` restarts run
as one vmapped, compiled fit that keeps the best) and any JAX device.

* :class:`NMF`, :func:`non_negative_factorization`, :class:`MiniBatchNMF` --
  scikit-learn's, with the same parameters, stopping rules and fitted
  attributes; coordinate descent runs :func:`jmf.solvers.hals`,
  multiplicative updates :func:`jmf.solvers.mu`, through :func:`jmf.fit`.
* :class:`TruncatedSVD` -- scikit-learn's (randomized or ARPACK-like, dense
  or ``scipy.sparse`` input).
* :class:`MatrixFactorization` -- a transformer running any jmf solver (by
  name or a :class:`jmf.solvers.Solver`), missing values allowed.
* :class:`MatrixCompletion` -- an imputer: ``fit_transform`` returns ``X``
  with its missing entries filled in by a low-rank fit.
* :class:`RatingsRegressor` -- biased matrix factorization as a regressor:
  ``fit(X=[[user, item], ...], y=ratings)``, ``predict``; usable with
  ``GridSearchCV`` and ``cross_val_score``.

Sparse input stays sparse (``O(nnz k)`` memory): its absent entries are zeros,
as in scikit-learn, unless ``absent="missing"`` says they are unobserved.
``transform`` is the fit's solver half-step on ``W`` with ``H = components_``
fixed (:attr:`jmf.solvers.Solver.update_w`), run by the same driver.  Float64
input is computed in float64.  scikit-learn's own test files for ``NMF``,
``MiniBatchNMF``, ``non_negative_factorization`` and ``TruncatedSVD`` run
against these classes in jmf's test suite, and every estimator passes
:func:`sklearn.utils.estimator_checks.check_estimator` (see
:func:`expected_failed_checks`).

scikit-learn is an optional dependency of jmf: it is needed to import this
module only (``import jmf`` never imports it).  The implementation lives in
``jmf._src.sklearn``; this module only re-exports it.
"""

from jmf._src.sklearn.checks import expected_failed_checks, reconstruction_scorer
from jmf._src.sklearn.completion import MatrixCompletion
from jmf._src.sklearn.mf import MatrixFactorization
from jmf._src.sklearn.minibatch import MiniBatchNMF
from jmf._src.sklearn.nmf import NMF, non_negative_factorization
from jmf._src.sklearn.ratings import RatingsRegressor
from jmf._src.sklearn.svd import TruncatedSVD

__all__ = [
    "NMF",
    "MiniBatchNMF",
    "non_negative_factorization",
    "TruncatedSVD",
    "MatrixFactorization",
    "MatrixCompletion",
    "RatingsRegressor",
    "expected_failed_checks",
    "reconstruction_scorer",
]
