"""MatrixFactorization: any jmf solver as a transformer; the base that :class:`MatrixCompletion` shares."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ..factors import Factors
from ..init import INITIALIZERS
from ..registry import make_solver
from ..solvers.als import als
from ..solvers.base import Solver
from ._run import half_step, host_beta_divergence, report, run, warn_diverged, warn_status_max_iter
from ._validation import (
    absent_param,
    as_data,
    check_codes,
    check_random_state_type,
    int_param,
    key_from_random_state,
    observed_min,
    pair_param,
    precision,
    real_param,
    verbose_param,
)

__all__ = ["MatrixFactorization", "SolverFactorization", "MF_SOLVERS"]

MF_SOLVERS = ("als", "hals", "mu", "adam", "sgd", "svd")


class SolverFactorization(TransformerMixin, BaseEstimator):
    """``X ~ W H`` fitted by a jmf solver on the observed entries; ``W`` of new rows by the solver's half-step.

    Shared by :class:`MatrixFactorization` (``transform`` returns ``W``) and
    :class:`~jmf.sklearn.MatrixCompletion` (it returns ``X`` completed by ``W H``).
    Subclasses define ``__init__`` with the parameters read here and
    ``_default_absent``.
    """

    _default_absent = "zero"

    def _params(self) -> dict:
        name = type(self).__name__
        p = {}
        p["k"] = int_param(self, "n_components", 1)
        p["max_iter"] = int_param(self, "max_iter", 1)
        p["check_every"] = int_param(self, "check_every", 1)
        p["n_init"] = int_param(self, "n_init", 1)
        p["tol"] = real_param(self, "tol", none_ok=True)
        p["transform_max_iter"] = int_param(self, "transform_max_iter", 1, none_ok=True) or p["max_iter"]
        p["verbose"] = verbose_param(self)
        p["absent"] = absent_param(self)
        check_random_state_type(self)
        if not isinstance(self.nonnegative, (bool, np.bool_)):
            raise TypeError(f"{name}: nonnegative must be a bool, got {self.nonnegative!r}")
        if not (isinstance(self.init, str) and self.init in INITIALIZERS):
            raise ValueError(f"{name}: init must be one of {sorted(INITIALIZERS)}, got {self.init!r}")
        s = self.solver
        if isinstance(s, Solver):
            if s.biases:
                raise ValueError(f"{name}: solvers with biases are not supported; use RatingsRegressor")
            p["solver"] = s
            p["named"] = False
            p["nonneg"] = s.nonnegative
            return p
        if not isinstance(s, str) or s not in MF_SOLVERS:
            raise ValueError(f"{name}: solver must be one of {list(MF_SOLVERS)} or a jmf.solvers.Solver, "
                             f"got {s!r}")
        l2 = pair_param(self, "l2")
        l1 = pair_param(self, "l1")
        p["l1"], p["l2"] = l1, l2
        p["named"] = True
        # Names are built by the solver registry (the one the jmf command and experiments use).
        if s == "als":
            if l1 != (0.0, 0.0):
                raise ValueError(f"{name}: solver='als' does not support l1; use 'hals' or a gradient solver")
            hyper = {"l2": l2}
        elif s == "svd":
            if l1 != (0.0, 0.0) or l2 != (0.0, 0.0):
                raise ValueError(f"{name}: solver='svd' fits the unpenalized optimum; l1 and l2 must be 0")
            hyper = {}
        elif s == "hals":
            hyper = {"l1": l1, "l2": l2}
        elif s == "mu":
            hyper = {"beta": 2.0, "l1": l1, "l2": l2}
        else:
            lr = real_param(self, "learning_rate")
            if lr <= 0:
                raise ValueError(f"{name}: learning_rate must be > 0, got {lr}")
            hyper = {"learning_rate": lr, "l2": l2, "l1": l1,
                     "projection": "nonnegative" if self.nonnegative else None}
        p["solver"] = make_solver(s, **hyper)
        p["nonneg"] = p["solver"].nonnegative
        return p

    def _validate_X(self, X, reset, nonneg, absent):
        name = type(self).__name__
        X = validate_data(self, X, reset=reset, accept_sparse=("csr", "csc", "coo"),
                          dtype=[np.float64, np.float32], ensure_all_finite="allow-nan")
        if sp.issparse(X):
            X = X.tocsr()
            if not np.all(np.isfinite(X.data)):
                raise ValueError(f"{name}: sparse X contains NaN or inf stored values; for missing entries leave "
                                 "them out of the matrix and set absent='missing'")
            if absent == "missing" and X.nnz == 0:
                raise ValueError(f"{name}: X stores no entry; with absent='missing' no entry is observed")
        elif np.isnan(X).all():
            raise ValueError(f"{name}: X is entirely NaN; no entry is observed")
        if nonneg and observed_min(X, absent) < 0:
            raise ValueError(f"Negative values in data passed to {name} (input X) with the nonnegative solver "
                             f"{self.solver!r}")
        return X

    def _fit(self, X):
        """Fit on a validated ``X``; returns the training ``W`` (float, X's dtype)."""
        p = self._params()
        name = type(self).__name__
        m, n = X.shape
        k = p["k"]
        if k > min(m, n):
            extra = f" (n_samples = {m})" if m == 1 else (f" (n_features = {n})" if n == 1 else "")
            raise ValueError(f"{name}: n_components={k} must be <= min(n_samples, n_features) = {min(m, n)}{extra}")
        with precision(X.dtype):
            data = as_data(X, p["absent"])
            key = key_from_random_state(self.random_state)
            res = run(data, p["solver"], init=self.init, rank=k, key=key, max_iter=p["max_iter"], tol=p["tol"],
                      check_every=p["check_every"], verbose=p["verbose"], n_init=p["n_init"])
            W = np.asarray(res.factors.W).astype(X.dtype, copy=False)
            self.components_ = np.asarray(res.factors.H).astype(X.dtype, copy=False)
        warn_diverged(self, res)
        warn_status_max_iter(res, p["max_iter"], p["tol"])
        report(self, res)
        self.n_components_ = k
        self.n_iter_ = int(np.asarray(res.n_iter))
        self.loss_ = float(np.asarray(res.loss))
        self.reconstruction_err_ = float(np.sqrt(2 * host_beta_divergence(X, W, self.components_, 2.0,
                                                                          p["absent"])))
        return W

    def _transform_solver(self, p):
        """The half-step of the fit's solver (the SVD has none: its least-squares ``W`` is ALS's half-step)."""
        solver = p["solver"]
        if solver.direct is not None and solver.update_w is None:
            solver = als(l2=0.0)
        return half_step(solver)

    def _rows(self, X, p):
        """``W`` for the rows of a validated ``X`` with ``H = components_`` fixed: the half-step through the driver."""
        H = self.components_
        k = H.shape[0]
        with precision(X.dtype):
            data = as_data(X, p["absent"])
            solver = self._transform_solver(p)
            if p["solver"].name.startswith("mu("):  # multiplicative updates keep zeros: a positive start
                mean = max(float(np.asarray(data.mean())), 0.0)
                W0 = np.full((X.shape[0], k), np.sqrt(mean / k) or 1.0, X.dtype)
            else:
                W0 = np.zeros((X.shape[0], k), X.dtype)
            res = run(data, solver, init=Factors(W0, H.astype(X.dtype, copy=False)), max_iter=p["transform_max_iter"],
                      tol=p["tol"], check_every=1, verbose=0)
            W = np.asarray(res.factors.W).astype(X.dtype, copy=False)
        warn_diverged(self, res)
        return W

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        s = self.solver
        if s in ("hals", "mu") or getattr(self, "nonnegative", False) is True or (
                isinstance(s, Solver) and s.nonnegative):
            tags.input_tags.positive_only = True
        return tags


class MatrixFactorization(ClassNamePrefixFeaturesOutMixin, SolverFactorization):
    r"""Low-rank factorization ``X ~ W H`` with any jmf solver, as a transformer.

    Minimizes jmf's loss (:mod:`jmf.losses`) over the observed entries
    (``NaN`` in dense ``X`` is missing; the absent entries of a sparse ``X``
    are zeros, or missing with ``absent="missing"``)::

        ( sum_obs (x_ij - W_i H_j)^2 + l2_W |W|^2 + l2_H |H|^2 + l1_W |W|_1 + l1_H |H|_1 ) / N

    ``fit`` learns ``components_ = H``; ``transform`` solves for the rows
    ``W`` of new data with ``H`` fixed -- the solver's own ``W`` half-step
    (:attr:`jmf.solvers.Solver.update_w`) run by the driver; ``inverse_transform``
    returns ``W H`` (so ``inverse_transform(transform(X))`` fills in the
    missing entries; :class:`~jmf.sklearn.MatrixCompletion` does it in one step).

    Parameters
    ----------
    n_components : int, default=2
        Rank ``k <= min(n_samples, n_features)``.
    solver : {"als", "hals", "mu", "adam", "sgd", "svd"} or jmf.solvers.Solver, default="als"
        A name builds the solver from ``l2``, ``l1``, ``learning_rate`` and
        ``nonnegative`` (jmf's solver registry): "als" (alternating least
        squares, signed), "svd" (truncated SVD, the exact optimum; no missing
        values, no penalties), "hals" and "mu" (nonnegative), "adam" and "sgd"
        (gradient steps; projected onto ``W, H >= 0`` when ``nonnegative=True``).
        A :class:`jmf.solvers.Solver` object is used as given (``l2``, ``l1``,
        ``learning_rate`` and ``nonnegative`` are then ignored).
    l2, l1 : float or (float, float), default=0.0
        Penalties (for W, for H) in jmf's units.
    learning_rate : float, default=0.01
        Step size of "adam" and "sgd".
    nonnegative : bool, default=False
        Constrain "adam"/"sgd" to ``W, H >= 0`` ("hals"/"mu" always are).
    init : str, default="random"
        A name in :data:`jmf.init.INITIALIZERS` (e.g. "random", "normal", "svd").
    max_iter : int, default=200
    tol : float or None, default=1e-4
        jmf's stopping rule ``(loss_prev - loss) / loss_init < tol`` checked
        every ``check_every`` iterations; ``None`` runs ``max_iter`` iterations.
    check_every : int, default=10
    n_init : int, default=1
        Random restarts run as one batched fit; the lowest loss is kept.
    transform_max_iter : int or None, default=None
        Most iterations of the half-step in ``transform`` (default
        ``max_iter``; it stops by the same rule, checked every iteration).
    absent : {"zero", "missing"}, default="zero"
        What the entries a sparse ``X`` does not store are (zeros: never densified).
    random_state : int, RandomState instance or None, default=None
        Seeds the ``jax.random.key`` of the fit.
    verbose : int, default=0

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
    n_components_ : int
    n_iter_ : int
    loss_ : float
        Final loss (jmf's convention).
    reconstruction_err_ : float
        Frobenius norm of the residual on the observed training entries.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)

    Notes
    -----
    ``transform`` starts from ``W = 0`` (a positive constant for
    multiplicative updates).  ALS solves the rows exactly in one half-step
    (ridge regression per row on the observed entries); "svd" has no
    half-step, and its rows are the least-squares solution, ALS's half-step
    without penalty.  float64 input is computed in float64.  Solvers with
    row/column biases are not supported here (see
    :class:`~jmf.sklearn.RatingsRegressor`).
    """

    def __init__(
        self,
        n_components=2,
        *,
        solver="als",
        l2=0.0,
        l1=0.0,
        learning_rate=0.01,
        nonnegative=False,
        init="random",
        max_iter=200,
        tol=1e-4,
        check_every=10,
        n_init=1,
        transform_max_iter=None,
        absent="zero",
        random_state=None,
        verbose=0,
    ):
        self.n_components = n_components
        self.solver = solver
        self.l2 = l2
        self.l1 = l1
        self.learning_rate = learning_rate
        self.nonnegative = nonnegative
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.check_every = check_every
        self.n_init = n_init
        self.transform_max_iter = transform_max_iter
        self.absent = absent
        self.random_state = random_state
        self.verbose = verbose

    def fit_transform(self, X, y=None):
        """Fit on ``X`` and return the training ``W`` of shape (n_samples, n_components)."""
        p = self._params()
        X = self._validate_X(X, True, p["nonneg"], p["absent"])
        return self._fit(X)

    def fit(self, X, y=None):
        """Fit on ``X``; returns ``self``."""
        self.fit_transform(X)
        return self

    def transform(self, X):
        """Rows ``W`` of new data ``X`` with ``H = components_`` fixed (the solver's ``W`` half-step)."""
        check_is_fitted(self)
        p = self._params()
        X = self._validate_X(X, False, p["nonneg"], p["absent"])
        return self._rows(X, p)

    def inverse_transform(self, X):
        """``W H``: the reconstruction (missing entries filled in) from ``W`` of shape (n_samples, n_components)."""
        check_is_fitted(self)
        Z = check_codes(X, self.components_.shape[0])
        return Z @ self.components_

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def _expected_failed_checks(self):
        if self.solver == "mu":
            from .nmf import _MU_REASON, _TRANSFORM_CONSISTENCY_CHECKS

            return dict.fromkeys(_TRANSFORM_CONSISTENCY_CHECKS, _MU_REASON)
        return {}
