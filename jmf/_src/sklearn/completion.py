"""MatrixCompletion: fill the missing entries of a matrix with a low-rank fit (an imputer)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.base import OneToOneFeatureMixin
from sklearn.utils.validation import check_is_fitted

from .mf import SolverFactorization

__all__ = ["MatrixCompletion"]


class MatrixCompletion(OneToOneFeatureMixin, SolverFactorization):
    r"""Fill in the missing entries of ``X`` with a low-rank model ``W H``, like scikit-learn's imputers.

    ``fit`` learns ``H`` (``components_``) from the observed entries only --
    ``NaN`` in dense ``X``, and the entries a sparse ``X`` does not store
    (``absent="missing"``, the default here) -- with any jmf solver, as
    :class:`~jmf.sklearn.MatrixFactorization` does.  ``transform(X)`` solves
    for the rows ``W`` of ``X`` from their observed entries with ``H`` fixed
    (the solver's ``W`` half-step through jmf's driver) and returns ``X``
    with every missing entry replaced by ``(W H)_ij``; observed entries are
    kept.  ``fit_transform(X)`` returns the completed training matrix from
    the fit's own ``W`` (no second solve).  The output is a dense array of
    the shape of ``X`` (``IterativeImputer``/``KNNImputer``-like: usable in a
    :class:`~sklearn.pipeline.Pipeline` before any estimator that needs
    complete data).

    Parameters
    ----------
    n_components : int, default=5
        Rank of the model (at most ``min(n_samples, n_features)``).
    solver : {"als", "hals", "mu", "adam", "sgd"} or jmf.solvers.Solver, default="als"
        As in :class:`~jmf.sklearn.MatrixFactorization` ("hals"/"mu" for
        nonnegative data).
    l2 : float or (float, float), default=0.1
        Ridge penalty (jmf's sum units, for W and H): rows with few observed
        entries need it.
    l1, learning_rate, nonnegative, init, max_iter, tol, check_every, n_init, transform_max_iter, random_state, verbose
        As in :class:`~jmf.sklearn.MatrixFactorization`.
    absent : {"missing", "zero"}, default="missing"
        What the entries a sparse ``X`` does not store are: missing (to be
        filled in), or zeros (then nothing of a sparse ``X`` is missing, and
        ``transform`` returns it densified).

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
    n_components_, n_iter_, loss_, reconstruction_err_, n_features_in_, feature_names_in_
        As in :class:`~jmf.sklearn.MatrixFactorization` (the error is over the
        observed training entries).

    Examples
    --------
    >>> import numpy as np
    >>> from jmf.sklearn import MatrixCompletion
    >>> X = np.outer([1.0, 2, 3, 4], [1.0, 0.5, 2]); X[1, 2] = np.nan
    >>> MatrixCompletion(1, l2=1e-6, random_state=0).fit_transform(X)[1, 2]  # doctest: +SKIP
    4.0
    """

    _default_absent = "missing"

    def __init__(
        self,
        n_components=5,
        *,
        solver="als",
        l2=0.1,
        l1=0.0,
        learning_rate=0.01,
        nonnegative=False,
        init="random",
        max_iter=200,
        tol=1e-4,
        check_every=10,
        n_init=1,
        transform_max_iter=None,
        absent="missing",
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

    def _complete(self, X, W, absent):
        """``X`` densified with its missing entries replaced by ``(W H)_ij``."""
        R = W @ self.components_
        if sp.issparse(X):
            if absent == "zero":
                return X.toarray()
            out = R.astype(X.dtype, copy=True)
            coo = X.tocoo()
            out[coo.row, coo.col] = coo.data
            return out
        return np.where(np.isnan(X), R, X).astype(X.dtype, copy=False)

    def fit_transform(self, X, y=None):
        """Fit on ``X`` and return it completed: observed entries kept, missing ones ``(W H)_ij`` of the fit."""
        p = self._params()
        X = self._validate_X(X, True, p["nonneg"], p["absent"])
        W = self._fit(X)
        return self._complete(X, W, p["absent"])

    def fit(self, X, y=None):
        """Fit on the observed entries of ``X``; returns ``self``."""
        self.fit_transform(X)
        return self

    def transform(self, X):
        """``X`` with its missing entries filled: ``W`` of its rows by the half-step on their observed entries."""
        check_is_fitted(self)
        p = self._params()
        X = self._validate_X(X, False, p["nonneg"], p["absent"])
        return self._complete(X, self._rows(X, p), p["absent"])
