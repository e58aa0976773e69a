"""The shared base of :class:`~jmf.sklearn.NMF` and :class:`~jmf.sklearn.MiniBatchNMF` (scikit-learn's ``_BaseNMF``).

It holds what the two share: parameter checks, the number of components,
the initial factors (scikit-learn's rules for ``init``, custom ``W``/``H``
and ``update_H=False``), scikit-learn's regularization and its one mapping
to jmf's penalty units (:func:`jmf_penalties`), the reconstruction error,
``inverse_transform`` and the tags.  Each estimator's solver runs through
jmf's driver (:mod:`._run`).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from .._validation import is_int, is_real
from ..data.checks import device_array
from ..factors import Factors
from ._init import initialize_nmf, observed_mean
from ._run import host_beta_divergence
from ._validation import (
    absent_param,
    check_codes,
    check_random_state_type,
    int_param,
    observed_min,
    real_param,
    verbose_param,
)

__all__ = ["BaseNMF", "jmf_penalties", "BETA_NAMES", "INITS"]

BETA_NAMES = {"frobenius": 2.0, "kullback-leibler": 1.0, "itakura-saito": 0.0}
INITS = ("random", "nndsvd", "nndsvda", "nndsvdar", "custom")


def jmf_penalties(beta: float, reg) -> tuple:
    """jmf's ``(l1, l2)`` pairs (for W, for H) for scikit-learn's ``reg = (l1_reg_W, l1_reg_H, l2_reg_W, l2_reg_H)``.

    The one conversion between the two conventions.  scikit-learn minimizes
    ``D_beta + l1_reg |.|_1 + l2_reg / 2 |.|^2`` with ``D_2 = |X - WH|^2 / 2``.
    jmf's Frobenius loss (``beta = 2``) is twice that data term, so
    ``l1 = 2 l1_reg`` and ``l2 = l2_reg``; its beta-divergence loss has the same
    data term, so ``l1 = l1_reg`` and ``l2 = l2_reg / 2``.  (jmf's common factor
    ``1 / N`` does not move the minimizer.)
    """
    l1W, l1H, l2W, l2H = (float(r) for r in reg)
    if beta == 2.0:
        return (2.0 * l1W, 2.0 * l1H), (l2W, l2H)
    return (l1W, l1H), (l2W / 2.0, l2H / 2.0)


def _check_init(A, shape, whom):
    """scikit-learn's checks of a custom ``W`` or ``H``: shape, nonnegativity, not all zero."""
    A = check_array(A)
    if shape[0] != "auto" and A.shape[0] != shape[0]:
        raise ValueError(f"Array with wrong first dimension passed to {whom}. Expected {shape[0]}, "
                         f"but got {A.shape[0]}.")
    if shape[1] != "auto" and A.shape[1] != shape[1]:
        raise ValueError(f"Array with wrong second dimension passed to {whom}. Expected {shape[1]}, "
                         f"but got {A.shape[1]}.")
    if A.size and np.min(A) < 0:
        raise ValueError(f"Negative values in data passed to {whom}")
    if np.max(A) == 0:
        raise ValueError(f"Array passed to {whom} is full of zeros.")
    return A


class BaseNMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """What :class:`~jmf.sklearn.NMF` and :class:`~jmf.sklearn.MiniBatchNMF` share (see the module docstring)."""

    # -- parameters ----------------------------------------------------------------
    def _params(self) -> dict:
        """Validated common parameters (raises ValueError/TypeError naming the parameter)."""
        name = type(self).__name__
        p = {}
        bl = self.beta_loss
        if isinstance(bl, str):
            if bl not in BETA_NAMES:
                raise ValueError(f"{name}: beta_loss must be a float or one of {sorted(BETA_NAMES)}, got {bl!r}")
            p["beta"] = BETA_NAMES[bl]
        elif is_real(bl) and np.isfinite(bl):
            p["beta"] = float(bl)
        else:
            raise ValueError(f"{name}: beta_loss must be a float or one of {sorted(BETA_NAMES)}, got {bl!r}")
        p["tol"] = real_param(self, "tol")
        p["max_iter"] = int_param(self, "max_iter", 1)
        p["alpha_W"] = real_param(self, "alpha_W")
        if isinstance(self.alpha_H, str):
            if self.alpha_H != "same":
                raise ValueError(f"{name}: alpha_H must be a nonnegative float or 'same', got {self.alpha_H!r}")
            p["alpha_H"] = p["alpha_W"]
        else:
            p["alpha_H"] = real_param(self, "alpha_H")
        p["l1_ratio"] = real_param(self, "l1_ratio", 0.0, 1.0)
        if self.init is not None and (not isinstance(self.init, str) or self.init not in INITS):
            raise ValueError(f"{name}: init must be None or one of {sorted(INITS)}, got {self.init!r}")
        nc = self.n_components
        if not (nc is None or (isinstance(nc, str) and nc == "auto") or (is_int(nc) and nc >= 1)):
            raise ValueError(f"{name}: n_components must be a positive int, 'auto' or None, got {nc!r}")
        p["verbose"] = verbose_param(self)
        p["absent"] = absent_param(self)
        check_random_state_type(self)
        return p

    def _check_params(self, X):
        """scikit-learn's resolution of ``n_components`` (None: ``n_features``; "auto" waits for ``W``/``H``)."""
        self._n_components = self.n_components
        if self._n_components is None:
            self._n_components = X.shape[1]
        self._beta_loss = self._params()["beta"]

    def _compute_regularization(self, X):
        """scikit-learn's scaled penalties ``(l1_reg_W, l1_reg_H, l2_reg_W, l2_reg_H)``."""
        n_samples, n_features = X.shape
        p = self._params()
        r = p["l1_ratio"]
        return (n_features * p["alpha_W"] * r, n_samples * p["alpha_H"] * r,
                n_features * p["alpha_W"] * (1.0 - r), n_samples * p["alpha_H"] * (1.0 - r))

    # -- data ----------------------------------------------------------------------
    def _validate_X(self, X, reset: bool):
        name = type(self).__name__
        X = validate_data(self, X, reset=reset, accept_sparse=("csr", "csc", "coo"),
                          dtype=[np.float64, np.float32], ensure_all_finite="allow-nan")
        if sp.issparse(X):
            X = X.tocsr()
            if not np.all(np.isfinite(X.data)):
                raise ValueError(f"{name}: sparse X contains NaN or inf stored values; for missing entries leave "
                                 "them out of the matrix and set absent='missing'")
        elif np.isnan(X).all():
            raise ValueError(f"{name}: X is entirely NaN; no entry is observed")
        return X

    def _check_nonnegative(self, X, absent):
        if observed_min(X, absent) < 0:
            raise ValueError(f"Negative values in data passed to {type(self).__name__} (input X)")

    def _check_zeros_for_beta(self, X, absent):
        if self._beta_loss <= 0 and observed_min(X, absent) == 0:
            raise ValueError("When beta_loss <= 0 and X contains zeros, the solver may diverge. "
                             "Please add small values to X, or use a positive beta_loss.")

    @staticmethod
    def _mean(X, absent):
        return observed_mean(X, absent)

    # -- initial factors -------------------------------------------------------------
    def _resolve_init(self, k, m, n, n_init=1):
        init = self.init
        if init is not None and init != "random" and k > min(m, n):
            raise ValueError(f"init = '{init}' can only be used when n_components <= min(n_samples, n_features)")
        if init is None:
            init = "nndsvda" if k <= min(m, n) and n_init == 1 else "random"
        return init

    def _check_w_h(self, X, data, W, H, update_H, start_w, n_init=1):
        """The starting factors, as ``Factors`` -- or an initializer name of :mod:`jmf.init` for ``n_init > 1``.

        Returns ``(init, k)``.  ``start_w(k)`` is the starting ``W`` when
        ``update_H=False`` (zeros for coordinate descent, ``sqrt(mean(X) / k)``
        for multiplicative updates, as in scikit-learn).  Other starts are
        scikit-learn's own draws for ``random_state`` (:mod:`._init`); the
        batched restarts of ``n_init > 1`` draw theirs from JAX keys.
        """
        name = type(self).__name__
        m, n = X.shape
        dt = data.dtype
        if self.init == "custom" and update_H:
            if W is None or H is None:
                raise ValueError(f"{name}: init='custom' needs both W and H (fit(X, W=..., H=...)); got "
                                 f"W={'None' if W is None else 'an array'}, H={'None' if H is None else 'an array'}")
            H = _check_init(H, (self._n_components, n), f"{name} (input H)")
            W = _check_init(W, (m, self._n_components), f"{name} (input W)")
            if self._n_components == "auto":
                self._n_components = H.shape[0]
            if H.dtype != X.dtype or W.dtype != X.dtype:
                raise TypeError(f"H and W should have the same dtype as X. Got H.dtype = {H.dtype} and "
                                f"W.dtype = {W.dtype}.")
            return Factors(device_array(W, dt), device_array(H, dt)), self._n_components
        if not update_H:
            if W is not None:
                warnings.warn("When update_H=False, the provided initial W is not used.", RuntimeWarning,
                              stacklevel=3)
            if H is None:
                raise ValueError(f"{name}: update_H=False needs H (the fixed components), got H=None")
            H = _check_init(H, (self._n_components, n), f"{name} (input H)")
            if self._n_components == "auto":
                self._n_components = H.shape[0]
            if H.dtype != X.dtype:
                raise TypeError(f"H should have the same dtype as X. Got H.dtype = {H.dtype}.")
            return Factors(device_array(start_w(self._n_components), dt), device_array(H, dt)), self._n_components
        if W is not None or H is not None:
            warnings.warn("When init!='custom', provided W or H are ignored. Set  init='custom' to use them as "
                          "initialization.", RuntimeWarning, stacklevel=3)
        if self._n_components == "auto":
            self._n_components = n
        k = self._n_components
        init = self._resolve_init(k, m, n, n_init)
        if n_init > 1:
            if k > min(m, n):
                raise ValueError(f"{name}: n_init > 1 needs n_components <= min(n_samples, n_features)")
            return init, k
        W0, H0 = initialize_nmf(X, k, init, self.random_state, self._params()["absent"])
        return Factors(device_array(W0, dt), device_array(H0, dt)), k

    # -- results -------------------------------------------------------------------
    def _reconstruction_err(self, X, W, H, beta, absent):
        return float(np.sqrt(2.0 * max(host_beta_divergence(X, W, H, beta, absent), 0.0)))

    def fit(self, X, y=None, **params):
        """Learn the model from ``X`` (``params``: ``W``, ``H`` for ``init="custom"``).  Returns ``self``."""
        self.fit_transform(X, **params)
        return self

    def inverse_transform(self, X):
        """``X @ components_``: back to data space from ``W`` of shape (n_samples, n_components)."""
        check_is_fitted(self)
        W = check_codes(X, self.components_.shape[0])
        return W @ self.components_

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def start_w_for(solver_name: str, X, absent, dtype):
    """scikit-learn's starting ``W`` of ``transform``: zeros (coordinate descent) or ``sqrt(mean(X) / k)``."""
    mean = max(BaseNMF._mean(X, absent), 0.0)

    def start(k):
        if solver_name == "cd":
            return np.zeros((X.shape[0], k), dtype)
        return np.full((X.shape[0], k), np.sqrt(mean / k), dtype)

    return start
