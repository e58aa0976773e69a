"""RatingsRegressor: biased matrix factorization of ratings as a scikit-learn regressor."""

from __future__ import annotations

import functools
import warnings

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, validate_data

from .._validation import is_int as _is_int
from ..data import Sparse, _rebuild
from ..data.checks import device_array
from ..fit import fit
from ..losses.frobenius import frobenius
from ..ratings_model import DEFAULT_BURN_IN, DEFAULT_SWEEPS, fit_ratings
from ..run.loop import Status
from ..solvers.als import als
from ..solvers.gradient import adam
from ._validation import (
    check_random_state_type,
    choice_param,
    int_param,
    key_from_random_state,
    real_param,
    verbose_param,
)

__all__ = ["RatingsRegressor"]


def _bucket(m: int) -> int:
    """Size to pad ``m`` to, so that similar sizes share compiled code.

    16 for ``m <= 16``, the next power of two up to 4096, then the next
    multiple of ``2^(bits - 3)`` (8 sizes per octave, at most 12.5% padding).
    """
    if m <= 16:
        return 16
    if m <= 4096:
        return 1 << (m - 1).bit_length()
    step = 1 << ((m - 1).bit_length() - 3)
    return -(-m // step) * step


def _warn_status(est, result, tol):
    status = int(np.asarray(result.status))
    if status == Status.DIVERGED:
        warnings.warn(
            f"{type(est).__name__}: the fit diverged (non-finite loss) after {int(result.n_iter)} iterations; "
            "the last finite factors are kept. Lower the learning rate or add regularization.",
            RuntimeWarning,
            stacklevel=3,
        )
    elif status == Status.MAX_ITER and tol:
        warnings.warn(
            f"Maximum number of iterations {est.max_iter} reached. Increase it to improve convergence.",
            ConvergenceWarning,
            stacklevel=3,
        )


def _report(est, result):
    if est.verbose:
        print(
            f"[{type(est).__name__}] {int(np.asarray(result.n_iter))} iterations, "
            f"loss {float(np.asarray(result.loss)):.6g}, "
            f"status {result.status_name}"
        )


class RatingsRegressor(RegressorMixin, BaseEstimator):
    r"""Biased matrix factorization for ratings, as a scikit-learn regressor.

    Each row of ``X`` is one observed rating: a user id in column
    ``user_col`` and an item id in column ``item_col`` (any values: ints,
    strings, floats; other columns are ignored), with the rating in ``y``.
    The model predicts

    .. math::  \hat y_{ui} = \mu + b_u + c_i + W_u \cdot H_i

    By default (``solver="auto"``) it is jmf's default ratings model,
    :func:`jmf.cf.fit_ratings`: Bayesian PMF with biases, its rank (or an
    ensemble of ranks) chosen on a validation holdout of the training
    ratings at fit time -- nothing to tune, and the best held-out error of
    the models measured (BENCHMARKS.md).  With ``solver="als"`` or
    ``"adam"`` it minimizes jmf's loss on the observed ratings,
    ``(sum (y - yhat)^2 + l2 (|W|^2 + |H|^2) + bias_l2 (|b|^2 + |c|^2)) / N``.
    Users or items not seen in ``fit`` fall back to the biases: an unknown
    user has ``b_u = 0`` and ``W_u = 0`` (and likewise for items), so an
    unknown user gets ``mu + c_i`` and an unknown pair gets ``mu``.

    Parameters
    ----------
    n_components : int or "auto", default="auto"
        Rank (capped at ``min(n_users, n_items)`` of the training data);
        "auto" (``solver="auto"`` only) chooses it on a validation holdout.
        The "als" and "adam" solvers take 10 for "auto".
    l2 : float, default=1.0
        Ridge penalty on the factors (jmf's units: per-rating sum, see above);
        "als" and "adam" only (the default model samples its precisions).
    bias_l2 : float or None, default=None
        Ridge penalty on the biases (default ``l2``).
    solver : {"auto", "als", "adam"}, default="auto"
        "auto": the default ratings model (Bayesian PMF, :func:`jmf.cf.fit_ratings`);
        "als": alternating least squares on the biased model; "adam": full-batch Adam.
    learning_rate : float, default=0.05
        Step size of "adam".
    max_iter : int or None, default=None
        Iterations ("als", "adam": 50 when None) or Gibbs sweeps ("auto": 60 when None).
    tol : float or None, default=1e-4
        Stopping tolerance of "als" and "adam" (the sampler runs ``max_iter`` sweeps).
    check_every : int, default=5
    user_col, item_col : int or str, default=0, 1
        Columns of ``X`` holding the ids (names when ``X`` is a DataFrame).
    clip : bool, default=False
        Clip predictions to the range of the training ratings ("auto" always does).
    random_state : int, RandomState instance or None, default=None
        Seeds the ``jax.random.key`` of the fit.
    verbose : int, default=0

    Attributes
    ----------
    users_, items_ : ndarray
        Sorted distinct ids seen in ``fit``.
    user_factors_ : ndarray of shape (n_users, width)
    item_factors_ : ndarray of shape (n_items, width)
        ``width = n_components_`` for "als" and "adam"; for "auto" the
        posterior mean keeps every sample side by side (``width`` = samples x rank).
    user_bias_ : ndarray of shape (n_users,)
    item_bias_ : ndarray of shape (n_items,)
    global_mean_ : float
        The offset ``mu``.
    n_components_ : int
        The rank used (chosen for "auto"; for an ensemble, the sum of its ranks).
    choice_ : str
        What "auto" chose ("rank 5", "ensemble", ...); the solver's name otherwise.
    n_iter_ : int
    loss_ : float
        The final loss ("als", "adam"); NaN for "auto".
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)

    Notes
    -----
    **Compilation.** The ratings are padded to bucketed sizes before the fit
    (users, items and ratings each rounded up to a power of two up to 4096,
    then to 8 sizes per octave): padding entries have weight 0 and padding
    users/items have no ratings, so the objective is unchanged, and the
    folds of a cross-validation or grid search reuse one compiled fit.  The
    random start is drawn for the padded sizes.

    Repeated (user, item) pairs in ``fit`` are averaged.  ``score`` is R^2
    (scikit-learn's regressor default).  All of scikit-learn's
    ``check_estimator`` checks apply and pass; the checks feed continuous
    features, which this estimator reads as ids (every row a new user and
    item), so only the biases can fit them and the estimator declares
    ``poor_score``.
    """

    def __init__(
        self,
        n_components="auto",
        *,
        l2=1.0,
        bias_l2=None,
        solver="auto",
        learning_rate=0.05,
        max_iter=None,
        tol=1e-4,
        check_every=5,
        user_col=0,
        item_col=1,
        clip=False,
        random_state=None,
        verbose=0,
    ):
        self.n_components = n_components
        self.l2 = l2
        self.bias_l2 = bias_l2
        self.solver = solver
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.tol = tol
        self.check_every = check_every
        self.user_col = user_col
        self.item_col = item_col
        self.clip = clip
        self.random_state = random_state
        self.verbose = verbose

    def _params(self):
        p = {}
        s = choice_param(self, "solver", {"auto", "als", "adam"})
        p["k"] = "auto" if s == "auto" and self.n_components == "auto" else (
            10 if self.n_components == "auto" else int_param(self, "n_components", 1))
        p["l2"] = real_param(self, "l2")
        p["bias_l2"] = real_param(self, "bias_l2", none_ok=True)
        if p["bias_l2"] is None:
            p["bias_l2"] = p["l2"]
        default_iter = DEFAULT_SWEEPS if s == "auto" else 50
        p["max_iter"] = default_iter if self.max_iter is None else int_param(self, "max_iter", 1)
        p["check_every"] = int_param(self, "check_every", 1)
        p["tol"] = real_param(self, "tol", none_ok=True)
        p["verbose"] = verbose_param(self)
        check_random_state_type(self)
        if not isinstance(self.clip, (bool, np.bool_)):
            raise TypeError(f"RatingsRegressor: clip must be a bool, got {self.clip!r}")
        p["name"] = s
        if s == "auto":
            if p["max_iter"] < 2:
                raise ValueError(f"RatingsRegressor: solver='auto' needs max_iter >= 2 Gibbs sweeps, "
                                 f"got {p['max_iter']}")
            p["solver"] = None
        elif s == "als":
            if p["l2"] == 0:
                raise ValueError("RatingsRegressor: solver='als' needs l2 > 0 (users or items with fewer ratings "
                                 "than n_components make the ridge solves singular)")
            p["solver"] = als(l2=p["l2"], bias_l2=p["bias_l2"], biases=True)
        else:
            lr = real_param(self, "learning_rate")
            if lr <= 0:
                raise ValueError(f"RatingsRegressor: learning_rate must be > 0, got {lr}")
            loss = _biased_frobenius(p["l2"], p["bias_l2"])
            p["solver"] = adam(lr, loss=loss, biases=True)
        return p

    def _columns(self, n_features):
        cols = []
        for name in ("user_col", "item_col"):
            c = getattr(self, name)
            if isinstance(c, str):
                names = getattr(self, "feature_names_in_", None)
                if names is None or c not in list(names):
                    raise ValueError(f"RatingsRegressor: {name}={c!r} is not a column name of X "
                                     f"(columns: {None if names is None else list(names)})")
                c = int(list(names).index(c))
            elif not _is_int(c):
                raise TypeError(f"RatingsRegressor: {name} must be a column index or name, got {c!r}")
            if not -n_features <= c < n_features:
                raise ValueError(f"RatingsRegressor: {name}={c} is out of range for X with {n_features} columns")
            cols.append(int(c) % n_features)
        if cols[0] == cols[1]:
            raise ValueError("RatingsRegressor: user_col and item_col must be different columns")
        return cols

    def _ids(self, X):
        if X.ndim != 2 or X.shape[1] < 2:
            n = X.shape[1] if X.ndim == 2 else 0
            raise ValueError(f"RatingsRegressor needs X with at least 2 columns (user, item); got X with "
                             f"{n} feature(s) (n_features = {n})")
        u, i = self._columns(X.shape[1])
        return X[:, u], X[:, i]

    def fit(self, X, y):
        """Fit on ratings ``y`` of the (user, item) pairs in ``X``; returns ``self``."""
        p = self._params()
        X, y = validate_data(self, X, y, dtype=None, y_numeric=True, ensure_min_features=1)
        y = np.asarray(y, dtype=np.float64 if y.dtype != np.float32 else np.float32)
        users, items = self._ids(X)
        try:
            self.users_, u_idx = np.unique(users, return_inverse=True)
            self.items_, i_idx = np.unique(items, return_inverse=True)
        except TypeError as exc:
            raise TypeError(f"RatingsRegressor: user and item ids must be mutually comparable; each id argument "
                            f"must be a string or a number ({exc})") from None
        m, n = len(self.users_), len(self.items_)
        data = _padded_ratings(u_idx.ravel(), i_idx.ravel(), y, m, n)
        key = key_from_random_state(self.random_state)
        if p["solver"] is None:  # the default ratings model
            sweeps = p["max_iter"]
            model = fit_ratings(data, "auto" if p["k"] == "auto" else min(p["k"], m, n), key=key, max_iter=sweeps,
                                burn_in=min(DEFAULT_BURN_IN, sweeps // 4), progress=bool(p["verbose"]))
            self._store(model.factors, m, n)
            self.n_components_ = int(model.rank)
            self.choice_ = model.params["choice"]
            self.n_iter_ = sweeps
            self.loss_ = float("nan")
            self._y_range = model.clip
            self._clip_predictions = True  # the default model predicts on the rating scale
            return self
        k = min(p["k"], m, n)
        res = fit(data, p["solver"], k, key=key, init="normal", max_iter=p["max_iter"], tol=p["tol"],
                  check_every=p["check_every"], biases=True, progress=bool(p["verbose"]))
        _warn_status(self, res, p["tol"])
        _report(self, res)
        self._store(res.factors, m, n)
        self.n_components_ = int(k)
        self.choice_ = p["name"]
        self.n_iter_ = int(np.asarray(res.n_iter))
        self.loss_ = float(np.asarray(res.loss))
        self._y_range = (float(np.min(y)), float(np.max(y)))
        self._clip_predictions = bool(self.clip)
        return self

    def _store(self, f, m, n):
        self.user_factors_ = np.asarray(f.W, dtype=np.float64)[:m]
        self.item_factors_ = np.asarray(f.H, dtype=np.float64).T[:n].copy()
        self.user_bias_ = np.asarray(f.row_bias, dtype=np.float64)[:m]
        self.item_bias_ = np.asarray(f.col_bias, dtype=np.float64)[:n]
        self.global_mean_ = float(np.asarray(f.offset))

    def _lookup(self, known, ids):
        pos = np.searchsorted(known, ids)
        pos = np.clip(pos, 0, len(known) - 1)
        found = known[pos] == ids
        return np.where(found, pos, -1)

    def predict(self, X):
        """Predicted ratings of the (user, item) pairs in ``X``, shape (n_samples,)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=None)
        users, items = self._ids(X)
        try:
            u = self._lookup(self.users_, users)
            i = self._lookup(self.items_, items)
        except TypeError as exc:
            raise TypeError(f"RatingsRegressor: ids in X are not comparable with the ids seen in fit: {exc}") from None
        ku, ki = u >= 0, i >= 0
        uu, ii = np.where(ku, u, 0), np.where(ki, i, 0)
        yhat = np.full(len(u), self.global_mean_)
        yhat += np.where(ku, self.user_bias_[uu], 0.0)
        yhat += np.where(ki, self.item_bias_[ii], 0.0)
        both = ku & ki
        yhat += np.where(both, np.einsum("pk,pk->p", self.user_factors_[uu], self.item_factors_[ii]), 0.0)
        if self._clip_predictions:
            yhat = np.clip(yhat, *self._y_range)
        return yhat

    def _expected_failed_checks(self):
        if _sklearn_version() < (1, 8):
            return {"check_positive_only_tag_during_fit": (
                "scikit-learn < 1.8 crashes inside this check for estimators whose X holds ids (it feeds "
                "integer X and fails in its own code before checking anything); fixed in scikit-learn 1.8")}
        return {}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.regressor_tags.poor_score = True
        tags.input_tags.string = True  # ids may be strings
        tags.input_tags.categorical = True
        return tags


def _sklearn_version() -> tuple:
    import sklearn

    return tuple(int(p) for p in sklearn.__version__.split(".")[:2] if p.isdigit())


def _padded_ratings(u, i, y, m, n):
    """The ratings as a :class:`jmf.Sparse` padded to bucketed sizes (see :func:`_bucket`).

    Users and items are padded to ``_bucket(m)`` and ``_bucket(n)`` (the
    extra ones have no ratings), entries to ``_bucket(nnz)`` with weight-0
    entries at the last coordinate (so the row-major order is kept).  Neither
    changes the objective: weight-0 entries never enter a loss, and a user or
    item without ratings only meets its own penalty, which keeps its factors
    at zero.  Folds of a cross-validation then share one compiled fit.
    """
    base = Sparse.from_triplets(u, i, y, shape=(m, n), duplicates="mean")
    nnz = base.nnz
    m_pad, n_pad, nnz_pad = _bucket(m), _bucket(n), _bucket(nnz)
    pad = nnz_pad - nnz
    dt = np.dtype(base.dtype)
    # Built with numpy and transferred with device_put (eager jnp ops, jnp.asarray too, compile per shape).
    rows = np.concatenate([np.asarray(base.rows), np.full(pad, m_pad - 1, np.int32)])
    cols = np.concatenate([np.asarray(base.cols), np.full(pad, n_pad - 1, np.int32)])
    vals = np.concatenate([np.asarray(base.vals), np.zeros(pad, dt)])
    weights = np.concatenate([np.ones(nnz, dt), np.zeros(pad, dt)])
    leaves = tuple(device_array(a) for a in (rows, cols, vals, weights))
    return _rebuild(Sparse, leaves, (m_pad, n_pad))


@functools.lru_cache(maxsize=256)
def _biased_frobenius(l2, bias_l2):
    return frobenius(l2=l2, bias_l2=bias_l2)
