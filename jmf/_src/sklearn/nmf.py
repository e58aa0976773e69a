"""NMF and ``non_negative_factorization``: scikit-learn's, run by jmf's solvers and driver."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.utils.validation import check_array, check_is_fitted

from ..solvers.base import derived
from ..solvers.hals import hals
from ..solvers.mu import mu
from ._base import BaseNMF, jmf_penalties, start_w_for
from ._run import error_loss, half_step, iterations, report, run, stop_each_step, warn_diverged, warn_max_iter
from ._validation import as_data, bool_param, choice_param, int_param, key_from_random_state, precision

__all__ = ["NMF", "non_negative_factorization"]


def mu_with_error_loss(beta: float, l1, l2):
    """:func:`jmf.solvers.mu` monitored by scikit-learn's error of the multiplicative updates."""
    return _with_error_loss(mu(beta=beta, l1=l1, l2=l2), beta)


@derived
def _with_error_loss(solver, beta: float):
    # A wrapper of mu's product (not a copy of it that keeps mu's factory), so that its penalties are traced
    # values of the programs and every member rebuilds mu with this loss (jmf._src.solvers.base.traced_point).
    return solver._replace(loss=error_loss(beta), factory=None)


class NMF(BaseNMF):
    r"""Non-negative matrix factorization, a drop-in for :class:`sklearn.decomposition.NMF`.

    Find nonnegative ``W`` (n_samples, n_components) and ``H`` (n_components,
    n_features) with ``X ~ W H`` minimizing scikit-learn's objective

    .. math::

        D_\beta(X | WH) + \alpha_W \rho\, n_f |W|_1 + \alpha_H \rho\, n_s |H|_1
        + \tfrac12 \alpha_W (1-\rho)\, n_f \|W\|_F^2 + \tfrac12 \alpha_H (1-\rho)\, n_s \|H\|_F^2

    (``D_2 = ||X - WH||_F^2 / 2``, ``rho = l1_ratio``, ``n_f = n_features``,
    ``n_s = n_samples``), over the **observed** entries: ``NaN`` in a dense
    ``X`` marks a missing entry, left out of the loss (in ``fit`` and in
    ``transform``).  The penalties are mapped once to jmf's units
    (:func:`jmf._src.sklearn._base.jmf_penalties`): ``solver="cd"`` runs
    :func:`jmf.solvers.hals` and ``solver="mu"`` :func:`jmf.solvers.mu` with
    them, through :func:`jmf.fit`.

    Parameters
    ----------
    n_components : int, "auto" or None, default="auto"
        Rank ``k``.  "auto": ``H.shape[0]`` of a custom init, else
        ``n_features``; None: ``n_features``.  May exceed ``min(n_samples,
        n_features)`` (then the start is random).
    init : {"random", "nndsvd", "nndsvda", "nndsvdar", "custom"} or None, default=None
        As in scikit-learn (None: "nndsvda" when ``n_components <= min(n_samples,
        n_features)``, else "random"; "random" also for ``n_init > 1``).
        With ``n_init=1`` the start is scikit-learn's own: the same numpy
        draws from ``random_state`` and the same randomized SVD (which keeps
        sparse input sparse), so the fits start from the same point.  The
        batched restarts of ``n_init > 1`` draw theirs from JAX keys
        (:mod:`jmf.init`).
    solver : {"cd", "mu"}, default="cd"
        "cd": coordinate descent (HALS), scikit-learn's update order (``shuffle``
        too); "mu": multiplicative updates (Févotte & Idier's exponents for
        every ``beta_loss``).
    beta_loss : float or {"frobenius", "kullback-leibler", "itakura-saito"}, default="frobenius"
        Values other than "frobenius" need ``solver="mu"``; ``beta_loss <= 0``
        needs ``X > 0`` on the observed entries.
    tol : float, default=1e-4
        Stopping tolerance, with scikit-learn's meaning for each solver: "cd"
        stops at the first iteration where the projected-gradient violation
        falls to ``tol`` times that of the first iteration; "mu" every 10
        iterations, when the error ``sqrt(2 D_beta)`` decreased by less than
        ``tol`` times its initial value.  ``tol=0`` runs ``max_iter``
        iterations (coordinate descent stops earlier only at an exact optimum).
        Exception: "cd" on sparse ``X`` with ``absent="missing"`` (no
        scikit-learn counterpart) stops when the loss decreased by less than
        ``tol`` times its initial value (jmf's rule: its row-by-row sparse
        solver does not track the violation).
    max_iter : int, default=200
    random_state : int, RandomState instance or None, default=None
        Seeds the ``jax.random.key`` of random starts, restarts and ``shuffle``:
        an int ``s`` gives ``jax.random.key(s)``; None or a ``RandomState``
        draw the seed from numpy.
    alpha_W : float, default=0.0
    alpha_H : float or "same", default="same"
    l1_ratio : float, default=0.0
        Regularization, with scikit-learn's meaning (see the objective).
    verbose : int, default=0
        A progress bar (when stderr is a terminal) and a summary line.
    shuffle : bool, default=False
        Coordinate descent visits the coordinates in a random order.
    n_init : int, default=1
        jmf: restarts run as **one** batched fit (:func:`jmf.fit_many`),
        keeping the lowest final loss.  Useful with random starts; not with
        "custom".
    absent : {"zero", "missing"}, default="zero"
        jmf: what the entries a sparse ``X`` does not store are.  "zero"
        (scikit-learn's meaning): zeros of the matrix; the fit never densifies
        ``X`` (products with ``X`` and ``k x k`` Grams, ``O(nnz k)`` memory).
        "missing": unobserved, left out of the loss like ``NaN`` in dense input.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
    n_components_ : int
    reconstruction_err_ : float
        ``sqrt(2 D_beta(X | W H))`` over the observed entries of the
        training data (the Frobenius norm of the residual for "frobenius").
    n_iter_ : int
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)

    Notes
    -----
    **transform** is the solver's ``W`` half-step with ``H = components_``
    fixed (:attr:`jmf.solvers.Solver.update_w`) run by the same driver from
    scikit-learn's start (zeros for "cd", ``sqrt(mean(X) / k)`` for "mu"),
    with the same stopping rule.  Unlike scikit-learn's ``NMF.transform`` it
    accepts ``NaN`` (missing) entries.

    **Precision.** float64 input is computed in float64 (JAX's x64 mode is
    switched on for the call), float32 in float32, as scikit-learn does.

    **Estimator checks.** With ``solver="mu"``, ``check_transformer_general``
    and ``check_transformer_data_not_an_array`` are expected to fail (see
    :func:`jmf.sklearn.expected_failed_checks`), as for scikit-learn's own
    ``mu``: multiplicative updates stop far from the exact minimizer.

    Examples
    --------
    >>> import numpy as np
    >>> from jmf.sklearn import NMF
    >>> X = np.array([[1, 1], [2, 1], [3, 1.2], [4, 1], [5, 0.8], [6, np.nan]])
    >>> W = NMF(n_components=2, init="random", random_state=0).fit_transform(X)  # doctest: +SKIP
    """

    def __init__(
        self,
        n_components="auto",
        *,
        init=None,
        solver="cd",
        beta_loss="frobenius",
        tol=1e-4,
        max_iter=200,
        random_state=None,
        alpha_W=0.0,
        alpha_H="same",
        l1_ratio=0.0,
        verbose=0,
        shuffle=False,
        n_init=1,
        absent="zero",
    ):
        self.n_components = n_components
        self.init = init
        self.solver = solver
        self.beta_loss = beta_loss
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.verbose = verbose
        self.shuffle = shuffle
        self.n_init = n_init
        self.absent = absent

    def _params(self) -> dict:
        p = super()._params()
        p["solver"] = choice_param(self, "solver", {"cd", "mu"})
        if p["solver"] == "cd" and p["beta"] != 2.0:
            raise ValueError(f"Invalid beta_loss parameter: solver {self.solver!r} does not handle "
                             f"beta_loss = {self.beta_loss!r}")
        p["shuffle"] = bool_param(self, "shuffle")
        p["n_init"] = int_param(self, "n_init", 1)
        if self.init == "custom" and p["n_init"] != 1:
            raise ValueError("NMF: n_init > 1 needs a random initialization; init='custom' starts a single fit")
        return p

    def _solver(self, p, l1, l2, sparse_missing: bool, update_H: bool):
        """The jmf solver, its check interval and its ``tol``: scikit-learn's stopping rule for each.

        Coordinate descent tests the violation rule after every iteration
        inside the solver (:func:`stop_each_step`), so the driver evaluates
        the loss only every 10 iterations.  On sparse data with missing
        absent entries (jmf's ``absent="missing"``, which scikit-learn does
        not have) it runs on jmf's row-by-row sparse engine, which does not
        track the violation: it stops on jmf's rule, the relative decrease of
        the loss, checked every iteration.  ``update_H=False``: the ``W``
        half-step of the same solver.
        """
        if p["solver"] == "cd":
            solver = hals(l1=l1, l2=l2, stop="loss" if sparse_missing else "violation", shuffle=p["shuffle"])
            solver = solver if update_H else half_step(solver)
            if sparse_missing:
                return solver, 1, p["tol"]
            return stop_each_step(solver, p["tol"]), 10, p["tol"]
        solver = mu_with_error_loss(p["beta"], l1, l2)
        solver = solver if update_H else half_step(solver)
        return solver, 10, (p["tol"] or None)  # scikit-learn's mu checks only when tol > 0

    def fit_transform(self, X, y=None, W=None, H=None):
        """Learn the model from ``X`` and return ``W``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Nonnegative data; ``NaN`` entries are missing.
        y : Ignored
        W : array-like of shape (n_samples, n_components), optional
            Initial ``W`` when ``init="custom"``.
        H : array-like of shape (n_components, n_features), optional
            Initial ``H`` when ``init="custom"``.

        Returns
        -------
        W : ndarray of shape (n_samples, n_components)
        """
        self._params()
        X = self._validate_X(X, reset=True)
        W, H, n_iter = self._fit_transform(X, W=W, H=H)
        self.reconstruction_err_ = self._reconstruction_err(X, W, H, self._beta_loss, self.absent)
        self.n_components_ = H.shape[0]
        self.components_ = H
        self.n_iter_ = n_iter
        return W

    def _fit_transform(self, X, y=None, W=None, H=None, update_H=True):
        """scikit-learn's ``NMF._fit_transform``: ``(W, H, n_iter)`` of a validated ``X``."""
        p = self._params()
        absent = p["absent"]
        self._check_nonnegative(X, absent)
        self._check_params(X)
        self._check_zeros_for_beta(X, absent)
        if p["solver"] == "mu" and self.init == "nndsvd" and update_H:
            import warnings

            warnings.warn("The multiplicative update ('mu') solver cannot update zeros present in the "
                          "initialization, and so leads to poorer results when used jointly with init='nndsvd'. "
                          "You may try init='nndsvda' or init='nndsvdar' instead.", UserWarning, stacklevel=3)
        with precision(X.dtype):
            data = as_data(X, absent)
            start = start_w_for(p["solver"], X, absent, X.dtype)
            init, k = self._check_w_h(X, data, W, H, update_H, start, p["n_init"] if update_H else 1)
            # A key only for what jmf draws itself (after the start, as scikit-learn draws from random_state).
            key = key_from_random_state(self.random_state) if (p["shuffle"] or isinstance(init, str)) else None
            l1, l2 = jmf_penalties(p["beta"], self._compute_regularization(X))
            solver, check_every, tol = self._solver(p, l1, l2, sp.issparse(X) and absent == "missing", update_H)
            res = run(data, solver, init=init, rank=None if not isinstance(init, str) else k, key=key,
                      max_iter=p["max_iter"], tol=tol, check_every=check_every, verbose=p["verbose"],
                      n_init=p["n_init"] if update_H else 1)
            W_out = np.asarray(res.factors.W).astype(X.dtype, copy=False)
            H_out = np.asarray(res.factors.H).astype(X.dtype, copy=False)
        n_iter = iterations(res)
        warn_diverged(self, res)
        warn_max_iter(p["max_iter"], n_iter, p["tol"])
        report(self, res, "fit" if update_H else "transform")
        return W_out, H_out, n_iter

    def transform(self, X):
        """``W`` for new rows ``X`` with ``H = components_`` fixed (NaN entries are missing).

        Returns
        -------
        W : ndarray of shape (n_samples, n_components)
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        W, _, _ = self._fit_transform(X, H=self.components_, update_H=False)
        return W

    def _expected_failed_checks(self):
        if self.solver == "mu":
            return dict.fromkeys(_TRANSFORM_CONSISTENCY_CHECKS, _MU_REASON)
        return {}


_TRANSFORM_CONSISTENCY_CHECKS = ("check_transformer_general", "check_transformer_data_not_an_array")
_MU_REASON = (
    "multiplicative updates stop (tol, every 10 iterations) far from the exact minimizer, so the W returned by "
    "fit_transform and the W that transform computes for the final H differ by more than the check's atol=1e-2; "
    "scikit-learn's own NMF(solver='mu') behaves the same. solver='cd' passes."
)


def non_negative_factorization(X, W=None, H=None, n_components="auto", *, init=None, update_H=True, solver="cd",
                               beta_loss="frobenius", tol=1e-4, max_iter=200, alpha_W=0.0, alpha_H="same",
                               l1_ratio=0.0, random_state=None, verbose=0, shuffle=False, absent="zero"):
    """scikit-learn's ``non_negative_factorization``: ``(W, H, n_iter)``, the function form of :class:`NMF`.

    With ``update_H=False`` it solves for ``W`` alone against the given ``H``
    (what :meth:`NMF.transform` does).  Parameters as in :class:`NMF`
    (``absent`` is jmf's, for sparse ``X``).

    Returns
    -------
    W : ndarray of shape (n_samples, n_components)
    H : ndarray of shape (n_components, n_features)
    n_iter : int
    """
    est = NMF(n_components=n_components, init=init, solver=solver, beta_loss=beta_loss, tol=tol, max_iter=max_iter,
              random_state=random_state, alpha_W=alpha_W, alpha_H=alpha_H, l1_ratio=l1_ratio, verbose=verbose,
              shuffle=shuffle, absent=absent)
    est._params()
    if not isinstance(update_H, (bool, np.bool_)):
        raise TypeError(f"non_negative_factorization: update_H must be a bool, got {update_H!r}")
    X = check_array(X, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32], ensure_all_finite="allow-nan")
    return est._fit_transform(X, W=W, H=H, update_H=bool(update_H))
