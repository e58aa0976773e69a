r"""scikit-learn estimators backed by jmf.

Drop-in estimators for scikit-learn pipelines, plus what scikit-learn's own
lack: **missing values** (``NaN`` entries of ``X`` are treated as missing and
left out of the loss), **batched random restarts** (``n_init`` restarts run
as one vmapped, compiled fit that keeps the best) and any JAX device.

* :class:`NMF` -- :class:`sklearn.decomposition.NMF` with the same
  parameters and fitted attributes; ``solver="cd"`` runs
  :func:`jmf.solvers.hals`, ``solver="mu"`` :func:`jmf.solvers.mu`.
* :class:`TruncatedSVD` -- :class:`sklearn.decomposition.TruncatedSVD`
  (randomized range finder or exact SVD, dense or ``scipy.sparse`` input).
* :class:`MatrixFactorization` -- a transformer running any jmf solver (by
  name or a :class:`jmf.solvers.Solver`), missing values allowed.
* :class:`RatingsRegressor` -- biased matrix factorization as a regressor:
  ``fit(X=[[user, item], ...], y=ratings)``, ``predict``; usable with
  ``GridSearchCV`` and ``cross_val_score``.

All of them pass :func:`sklearn.utils.estimator_checks.check_estimator`
(see :func:`expected_failed_checks` for the few checks that cannot apply),
work in :class:`~sklearn.pipeline.Pipeline` and
:class:`~sklearn.model_selection.GridSearchCV`, and transformers support
``set_output(transform="pandas")``.

scikit-learn is an optional dependency of jmf: it is needed to import this
module only (``import jmf`` never imports it).

Compilation
-----------
jmf compiles one fit per solver object, data shape and fit setting
(``max_iter``, ``tol``, ``check_every``, ``n_components``, dtype).  Refitting
with the same settings on data of the same shape (e.g. the folds of a
``GridSearchCV`` of equal size) reuses the compiled code; a new setting or
shape compiles again (one to a few seconds on a CPU).  To share compiled
code, ``transform`` and :class:`TruncatedSVD` pad their inputs with zeros
and :class:`RatingsRegressor` pads the ratings with weight-0 entries to
bucketed sizes -- in each case provably without changing the result.
Dense fits (NMF, MatrixFactorization) are not padded: they match
``jmf.fit`` on the same data exactly.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

try:
    from sklearn.base import (
        BaseEstimator,
        ClassNamePrefixFeaturesOutMixin,
        RegressorMixin,
        TransformerMixin,
    )
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without sklearn
    raise ImportError(
        "jmf.sklearn needs scikit-learn (>= 1.6); install it with `pip install scikit-learn`"
    ) from exc

import jax
import jax.numpy as jnp
import scipy.sparse as sp

import jmf
from jmf._src._validation import check_choice, check_float, check_int
from jmf._src._validation import is_int as _is_int
from jmf._src._validation import is_real as _is_real
from jmf._src.registry import make_solver

__all__ = [
    "NMF",
    "TruncatedSVD",
    "MatrixFactorization",
    "RatingsRegressor",
    "expected_failed_checks",
    "reconstruction_scorer",
]

_BETA_NAMES = {"frobenius": 2.0, "kullback-leibler": 1.0, "itakura-saito": 0.0}


# -- parameter validation (at fit, never in __init__) ---------------------------------


# The checks themselves live in jmf._src._validation; these read the estimator's attribute and
# name the estimator in the message.


def _check_int(est, name, lo, hi=None, none_ok=False):
    return check_int(getattr(est, name), name, type(est).__name__, lo=lo, hi=hi, none_ok=none_ok)


def _check_real(est, name, lo=0.0, hi=None, none_ok=False, value=None):
    v = getattr(est, name) if value is None else value
    return check_float(v, name, owner=type(est).__name__, lo=lo, hi=hi, none_ok=none_ok)


def _check_choice(est, name, choices):
    v = getattr(est, name)
    if not isinstance(v, str):
        raise ValueError(f"{type(est).__name__}: {name} must be one of {sorted(choices)}, got {v!r}")
    return check_choice(v, name, sorted(choices), type(est).__name__)


def _check_verbose(est):
    v = est.verbose
    if isinstance(v, bool):
        return int(v)
    return _check_int(est, "verbose", 0)


def _key_from_random_state(random_state):
    """A ``jax.random.key`` from scikit-learn's ``random_state``.

    An int seeds the key directly (``random_state=0`` gives ``jax.random.key(0)``,
    so results equal ``jmf.fit(..., key=0)``); ``None`` or a
    ``numpy.random.RandomState`` draw a seed from that generator (``None``:
    numpy's global one), as scikit-learn does.
    """
    if _is_int(random_state):
        if not 0 <= random_state < 2**32:
            raise ValueError(f"random_state must be in [0, 2**32), got {random_state}")
        return jax.random.key(int(random_state))
    if random_state is None or isinstance(random_state, np.random.RandomState):
        seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
        return jax.random.key(int(seed))
    raise TypeError("random_state must be None, an int or a numpy.random.RandomState, "
                    f"got {type(random_state).__name__}")


def _check_random_state_type(est):
    rs = est.random_state
    if not (rs is None or _is_int(rs) or isinstance(rs, np.random.RandomState)):
        raise TypeError(f"{type(est).__name__}: random_state must be None, an int or a numpy.random.RandomState, "
                        f"got {rs!r}")


# -- data helpers ------------------------------------------------------------------------


def _compute_dtype(dtype):
    """The float dtype jmf computes in for input ``dtype`` (float32 unless x64 is enabled)."""
    return jax.dtypes.canonicalize_dtype(np.dtype(dtype))


def _as_dense_data(X):
    """``jmf.Dense`` with NaN entries as missing (weight 0)."""
    return jmf.Dense.from_nan(X) if np.isnan(X).any() else jmf.Dense(X)


def _densify(X):
    if sp.issparse(X):
        # NMF/MatrixFactorization model every entry: stored zeros and unstored
        # entries are both observed zeros, as in scikit-learn.
        return X.toarray()
    return X


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


def _mask(X):
    """``(X with NaN -> 0, weights or None)`` as numpy arrays."""
    nan = np.isnan(X)
    if not nan.any():
        return X, None
    return np.where(nan, 0, X).astype(X.dtype), (~nan).astype(X.dtype)


# -- solving for the rows of W with H fixed (transform) ----------------------------------


def _row_system(X, w, H):
    """Normal equations per row: ``B = (w*X) H^T`` and ``G = H diag(w_i) H^T``.

    ``G`` is one ``(k, k)`` matrix when every entry is observed, else ``(m, k, k)``.
    """
    if w is None:
        return X @ H.T, H @ H.T
    B = (w * X) @ H.T
    G = jnp.einsum("mn,kn,ln->mkl", w, H, H)
    return B, G


def _row_loop(step, W0, n_iter, tol):
    """Run ``W <- step(W)`` up to ``n_iter`` times, freezing each row once its own update is small.

    A row stops when ``max_c |W_new - W| <= tol * max_c |W_new|`` (or when it
    is all zero); its trajectory never depends on the other rows, so the
    result of a row does not depend on the batch it is in.  ``tol = 0`` runs
    exactly ``n_iter`` updates on every row that still changes.
    """

    def cond(c):
        it, _, active = c
        return (it < n_iter) & jnp.any(active)

    def body(c):
        it, W, active = c
        new = step(W)
        change = jnp.max(jnp.abs(new - W), axis=1)
        scale = jnp.max(jnp.abs(new), axis=1)
        W = jnp.where(active[:, None], new, W)
        active = active & (change > tol * scale) & (scale > 0)
        return it + 1, W, active

    active = jnp.ones((W0.shape[0],), dtype=bool)
    return jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), W0, active))[1]


@functools.partial(jax.jit, static_argnames=("nonnegative",))
def _cd_rows(X, w, H, W0, l1, l2, n_iter, tol, nonnegative):
    r"""Coordinate descent (HALS) on ``W`` with ``H`` fixed.

    Minimizes, independently for every row ``i``,
    ``sum_j w_ij (x_ij - W_i H_j)^2 + l2 |W_i|^2 + l1 |W_i|_1`` (jmf's
    penalty units), optionally with ``W >= 0``, by sweeps of exact
    coordinate minimization (soft thresholding), at most ``n_iter`` per row
    (see :func:`_row_loop`).  Coordinates whose curvature ``G_cc + l2`` is
    zero (an all-zero component, or a fully missing row with ``l2 = 0``) are
    set to 0.
    """
    B, G = _row_system(X, w, H)
    k = H.shape[0]
    shared = G.ndim == 2

    def column(c, W):
        if shared:
            gw = W @ G[:, c]
            gcc = G[c, c]
        else:
            gw = jnp.einsum("mk,mk->m", G[:, :, c], W)
            gcc = G[:, c, c]
        num = B[:, c] - gw + gcc * W[:, c]
        if nonnegative:
            num = jnp.maximum(num - 0.5 * l1, 0)
        else:
            num = jnp.sign(num) * jnp.maximum(jnp.abs(num) - 0.5 * l1, 0)
        den = gcc + l2
        ok = den > 0
        return W.at[:, c].set(jnp.where(ok, num / jnp.where(ok, den, 1), 0))

    return _row_loop(lambda W: jax.lax.fori_loop(0, k, column, W), W0, n_iter, tol)


@jax.jit
def _ridge_rows(X, w, H, l2):
    """Exact ``argmin_W sum w (X - W H)^2 + l2 |W|^2`` (min-norm solution where singular)."""
    B, G = _row_system(X, w, H)
    eye = jnp.eye(H.shape[0], dtype=H.dtype)
    if G.ndim == 2:
        return B @ jnp.linalg.pinv(G + l2 * eye, hermitian=True)
    P = jnp.linalg.pinv(G + l2 * eye, hermitian=True)
    return jnp.einsum("mkl,ml->mk", P, B)


@functools.partial(jax.jit, static_argnames=("beta",))
def _mu_rows(X, w, H, W0, l1, l2, n_iter, tol, beta):
    r"""Multiplicative updates on ``W`` with ``H`` fixed (Fevotte & Idier 2011).

    Minimizes ``D_beta(X | W H) + l1 |W|_1 + l2 / 2 |W|^2`` over ``W >= 0``
    on the observed entries, in scikit-learn's units (``D_2 = |X - WH|^2 / 2``),
    with the exponent ``gamma(beta)`` that makes every update decrease the
    objective; at most ``n_iter`` updates per row (see :func:`_row_loop`).
    """
    eps = float(np.finfo(X.dtype).eps)
    if beta < 1:
        gamma = 1.0 / (2.0 - beta)
    elif beta > 2:
        gamma = 1.0 / (beta - 1.0)
    else:
        gamma = 1.0
    Xw = X if w is None else w * X
    ones = jnp.ones_like(X) if w is None else w
    Ht = H.T

    def update(W):
        V = W @ H
        if beta == 2:
            num = Xw @ Ht
            den = (V if w is None else w * V) @ Ht
        else:
            V = jnp.maximum(V, eps)
            if beta == 1:
                num = (Xw / V) @ Ht
                den = ones @ Ht
            else:
                num = (Xw * V ** (beta - 2.0)) @ Ht
                den = (ones * V ** (beta - 1.0)) @ Ht
        den = den + l1 + l2 * W
        den = jnp.where(den > 0, den, eps)
        ratio = num / den
        if gamma != 1.0:
            ratio = ratio**gamma
        W = W * ratio
        if beta < 1:  # as scikit-learn and jmf.solvers.mu: flush tiny values for stability
            W = jnp.where(W < float(np.finfo(np.float64).eps), 0, W)
        return W

    return _row_loop(update, W0, n_iter, tol)


def _solve_rows(X, H, *, method, l1=0.0, l2=0.0, n_iter=200, tol=0.0, beta=2.0, nonnegative=True):
    """Rows of ``W`` for new data ``X`` (NaN = missing) given ``H``; numpy in, numpy out.

    ``method`` is "cd" (coordinate descent, jmf penalty units), "ridge"
    (closed form, jmf units) or "mu" (multiplicative updates, scikit-learn's
    units).  To share compiled code between calls, the problem is padded with
    zeros to bucketed sizes (:func:`_bucket`): extra rows of ``X`` (solved and
    dropped), extra columns of ``X`` and ``H`` (they add nothing to ``X H^T``
    or ``H H^T``) and extra zero rows of ``H`` (components with zero
    curvature, whose coefficients stay 0).  None of it changes the result.
    """
    m, n = X.shape
    k = H.shape[0]
    dt = _compute_dtype(X.dtype)
    Xz, w = _mask(X)
    m_pad, n_pad, k_pad = _bucket(m), _bucket(n), _bucket(k)
    Xp = np.zeros((m_pad, n_pad), Xz.dtype)
    Xp[:m, :n] = Xz
    Hp = np.zeros((k_pad, n_pad), Xz.dtype)
    Hp[:k, :n] = H
    wp = None
    if w is not None:
        wp = np.zeros((m_pad, n_pad), Xz.dtype)
        wp[:m, :n] = w
        wp = jnp.asarray(wp, dtype=dt)
    Xp, Hj = jnp.asarray(Xp, dtype=dt), jnp.asarray(Hp, dtype=dt)
    l1j = jnp.asarray(l1, dtype=dt)
    l2j = jnp.asarray(l2, dtype=dt)
    iters = jnp.asarray(n_iter, dtype=jnp.int32)
    tolj = jnp.asarray(tol or 0.0, dtype=dt)
    if method == "ridge":
        W = _ridge_rows(Xp, wp, Hj, l2j)
    elif method == "cd":
        W = _cd_rows(Xp, wp, Hj, jnp.zeros((m_pad, k_pad), dt), l1j, l2j, iters, tolj, bool(nonnegative))
    elif method == "mu":
        obs = Xz[w > 0] if w is not None else Xz
        avg = np.sqrt(max(float(obs.mean()), 0.0) / k) if obs.size else 1.0
        W0 = jnp.full((m_pad, k_pad), avg if avg > 0 else 1.0, dt)
        W = _mu_rows(Xp, wp, Hj, W0, l1j, l2j, iters, tolj, float(beta))
    else:  # pragma: no cover - internal
        raise ValueError(method)
    return np.asarray(W)[:m, :k].astype(X.dtype, copy=False)


# -- beta divergence on observed entries (reconstruction_err_) -------------------------


def _beta_divergence(X, W, H, beta):
    """scikit-learn's ``_beta_divergence`` (``D_2 = |X - WH|^2 / 2``) over the non-NaN entries, in float64."""
    X = np.asarray(X, np.float64)
    V = np.asarray(W, np.float64) @ np.asarray(H, np.float64)
    obs = ~np.isnan(X)
    x, v = X[obs], V[obs]
    eps = np.finfo(np.float32).eps
    if beta == 2:
        return 0.5 * float(np.sum((x - v) ** 2))
    if beta == 1:
        nz = x > eps
        v_nz = np.maximum(v[nz], eps)
        return float(np.sum(x[nz] * np.log(x[nz] / v_nz)) - np.sum(x) + np.sum(v))
    v = np.maximum(v, eps)
    if beta == 0:
        div = x / v
        return float(np.sum(div) - x.size - np.sum(np.log(div)))
    return float(np.sum(x**beta + (beta - 1) * v**beta - beta * x * v ** (beta - 1)) / (beta * (beta - 1)))


# -- scoring -------------------------------------------------------------------------


def reconstruction_scorer(estimator, X, y=None):
    """Negative mean squared reconstruction error of held-out rows (greater is better).

    ``-nanmean((X - inverse_transform(transform(X)))^2)`` over the observed
    (non-NaN) entries.  Works with any fitted transformer that has
    ``inverse_transform`` (jmf's and scikit-learn's ``NMF``,
    ``TruncatedSVD``, ``PCA``...), so it can be passed as ``scoring=`` to
    ``GridSearchCV`` or ``cross_val_score`` to pick ``n_components``.
    """
    Xd = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    Z = estimator.transform(X)
    R = np.asarray(estimator.inverse_transform(Z), dtype=np.float64)
    return -float(np.nanmean((Xd - R) ** 2))


# -- shared fit plumbing -------------------------------------------------------------


def _warn_status(est, result, tol):
    status = int(np.asarray(result.status))
    if status == jmf.Status.DIVERGED:
        warnings.warn(
            f"{type(est).__name__}: the fit diverged (non-finite loss) after {int(result.n_iter)} iterations; "
            "the last finite factors are kept. Lower the learning rate or add regularization.",
            RuntimeWarning,
            stacklevel=3,
        )
    elif status == jmf.Status.MAX_ITER and tol:
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


def _run_fit(data, solver, rank, *, key, init, n_init, max_iter, tol, check_every, verbose):
    """``jmf.fit`` (one start) or ``jmf.fit_many(keys=...).best()`` (``n_init`` batched restarts)."""
    if n_init == 1 or isinstance(init, jmf.Factors):
        return jmf.fit(data, solver, rank, key=key, init=init, max_iter=max_iter, tol=tol,
                       check_every=check_every, progress=bool(verbose))
    keys = jax.random.split(key, n_init)
    many = jmf.fit_many(data, solver, rank, keys=keys, init=init, max_iter=max_iter, tol=tol,
                        check_every=check_every, progress=bool(verbose))
    return many.best().result


@functools.lru_cache(maxsize=256)
@functools.lru_cache(maxsize=64)
def _frozen_h(solver):
    """``solver`` with ``H`` (and column biases) held fixed: only its ``W`` updates take effect.

    Correct for solvers whose step computes the new ``W`` from the current
    ``H`` (gradient solvers update both from the same point; alternating
    solvers update ``W`` first).
    """

    def step(f, state, data, mask):
        new, state = solver.step(f, state, data, mask)
        return new._replace(H=f.H, col_bias=f.col_bias), state

    return solver._replace(step=step, name=f"{solver.name}[H fixed]")


def _pair_param(est, name):
    """A penalty given as a number or a (for W, for H) pair; returned as a pair of floats."""
    v = getattr(est, name)
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{type(est).__name__}: {name} must be a number or a pair (for W, for H), got {v!r}")
        return tuple(_check_real(est, name, value=x) for x in v)
    x = _check_real(est, name)
    return (x, x)


# =====================================================================================
# NMF
# =====================================================================================


class NMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    r"""Non-negative matrix factorization, a drop-in for :class:`sklearn.decomposition.NMF`.

    Find nonnegative ``W`` (n_samples, n_components) and ``H`` (n_components,
    n_features) with ``X ~ W H`` minimizing scikit-learn's objective

    .. math::

        D_\beta(X | WH) + \alpha_W \rho\, n_f |W|_1 + \alpha_H \rho\, n_s |H|_1
        + \tfrac12 \alpha_W (1-\rho)\, n_f \|W\|_F^2 + \tfrac12 \alpha_H (1-\rho)\, n_s \|H\|_F^2

    (``D_2 = ||X - WH||_F^2 / 2``, ``rho = l1_ratio``, ``n_f = n_features``,
    ``n_s = n_samples``), summed over the **observed** entries: ``NaN`` in
    ``X`` marks a missing entry, left out of the loss (in ``fit`` and in
    ``transform``).  In jmf's loss convention (:mod:`jmf.losses`) this is the
    solver with ``l1 = (2 alpha_W rho n_f, 2 alpha_H rho n_s)`` and
    ``l2 = (alpha_W (1 - rho) n_f, alpha_H (1 - rho) n_s)``.

    Parameters
    ----------
    n_components : int, "auto" or None, default="auto"
        Rank ``k``.  "auto" takes ``H.shape[0]`` with ``init="custom"``;
        ``None`` and "auto" otherwise use ``min(n_samples, n_features)``
        (scikit-learn uses ``n_features``; jmf fits ranks up to
        ``min(n_samples, n_features)``, and larger values are an error).
    init : {"random", "nndsvd", "nndsvda", "nndsvdar", "custom"} or None, default=None
        As in scikit-learn (``None``: "nndsvda", or "random" when ``n_init > 1``).  "custom" uses the ``W`` and
        ``H`` passed to ``fit``/``fit_transform``.  Random draws come from a
        ``jax.random.key`` derived from ``random_state``, so they differ from
        scikit-learn's numpy draws.
    solver : {"cd", "mu"}, default="cd"
        "cd" is coordinate descent, i.e. HALS (:func:`jmf.solvers.hals`), with
        the same per-column update order as scikit-learn's ``cd`` with
        ``shuffle=False``; "mu" is multiplicative updates (:func:`jmf.solvers.mu`).
    beta_loss : float or {"frobenius", "kullback-leibler", "itakura-saito"}, default="frobenius"
        Divergence (``2``, ``1``, ``0``); values other than "frobenius" need
        ``solver="mu"``, and ``beta_loss <= 0`` needs ``X > 0`` on observed entries.
    tol : float, default=1e-4
        Stopping tolerance, see Notes; 0 runs exactly ``max_iter`` iterations.
    max_iter : int, default=200
        Maximum number of iterations (for ``transform``: of sweeps per row).
    random_state : int, RandomState instance or None, default=None
        Seeds the ``jax.random.key`` used by random initializations and
        restarts: an int ``s`` gives ``jax.random.key(s)``; ``None`` or a
        ``RandomState`` draw the seed from numpy.
    alpha_W : float, default=0.0
    alpha_H : float or "same", default="same"
    l1_ratio : float, default=0.0
        Regularization, with scikit-learn's meaning (see the objective).
    verbose : int, default=0
        Show a progress bar (when stderr is a terminal) and a summary line.
    n_init : int, default=1
        Number of restarts, run as **one** batched fit
        (:func:`jmf.fit_many` over ``n_init`` keys) keeping the lowest final
        loss.  Only useful with random initializations ("random",
        "nndsvdar"); not allowed with "custom".
    check_every : int, default=10
        Iterations between evaluations of the loss (and of ``tol``).

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        ``H``.
    n_components_ : int
    reconstruction_err_ : float
        ``sqrt(2 D_beta(X | W H))`` over the observed entries (the Frobenius
        norm of the residual for ``beta_loss="frobenius"``), as in scikit-learn.
    n_iter_ : int
        Iterations run (of the best restart).
    loss_ : float
        Final value of the solver's loss in jmf's convention (the mean over
        observed entries).
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Defined when ``X`` has string column names (a DataFrame).

    Notes
    -----
    **Stopping rule.** jmf stops every solver when
    ``(loss_prev - loss) / loss_init < tol``, with the loss evaluated every
    ``check_every`` iterations.  scikit-learn's ``mu`` uses the same rule on the
    square root of the loss, checked every 10 iterations; its ``cd`` instead
    stops when the projected-gradient violation falls below ``tol`` times its
    initial value, checked every iteration.  The same ``tol`` therefore
    stops at different iterations; with ``tol=0`` both run ``max_iter``
    iterations and agree closely given the same initialization.  On
    ``load_digits`` the loss-based rule stops much earlier than scikit-learn's
    ``cd`` rule (about 20 against 170 iterations at ``tol=1e-4``, with a
    higher error); pass a smaller ``tol`` (1e-5 to 1e-6) for a fit as tight
    as scikit-learn's.

    **Initialization.** "nndsvd*" use the exact SVD of dense data, where
    scikit-learn uses a randomized SVD; when singular values are close (for
    digits, ranks of 20 and more) the two starts differ, and the fits end
    in different local minima of similar quality.

    **transform** solves for ``W`` with ``H = components_`` fixed, each row
    independently: coordinate descent from zero for the Frobenius loss
    (whatever the solver: it is the same convex problem), multiplicative
    updates from ``sqrt(mean(X) / k)`` otherwise; at most ``max_iter``
    sweeps, and a row stops once its largest update is below ``tol`` times
    its largest entry.  The stopping test is per row (no global test), so a
    row's result does not depend on the other rows in the batch.

    **Sparse input** is densified (zeros are observed values, as in
    scikit-learn); for large sparse data with missing entries use
    :func:`jmf.fit` on a :class:`jmf.Sparse` directly.

    **Estimator checks.** With ``solver="cd"`` all of scikit-learn's
    ``check_estimator`` checks apply and pass.  With ``solver="mu"``,
    ``check_transformer_general`` and ``check_transformer_data_not_an_array``
    cannot apply: they require ``fit_transform(X)`` and ``fit(X).transform(X)``
    to agree to 1e-2, but multiplicative updates converge too slowly for the
    ``W`` of the fit to be the exact minimizer for the final ``H`` that
    ``transform`` computes.  :func:`expected_failed_checks` returns them.

    **scikit-learn difference.** scikit-learn 1.9's ``transform`` with
    ``solver="mu"``, ``beta_loss="kullback-leibler"`` and an L1 penalty adds
    the L1 term to its cached ``H.sum(axis=1)`` in place at every iteration,
    so its penalty grows with the iteration count; jmf applies the objective
    as documented (``fit`` agrees with scikit-learn in every case).

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
        n_init=1,
        check_every=10,
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
        self.n_init = n_init
        self.check_every = check_every

    # -- parameters ----------------------------------------------------------------
    def _params(self):
        """Validated parameters (raises ValueError/TypeError naming the parameter)."""
        p = {}
        p["solver"] = _check_choice(self, "solver", {"cd", "mu"})
        bl = self.beta_loss
        if isinstance(bl, str):
            if bl not in _BETA_NAMES:
                raise ValueError(f"NMF: beta_loss must be a float or one of {sorted(_BETA_NAMES)}, got {bl!r}")
            beta = _BETA_NAMES[bl]
        elif _is_real(bl) and np.isfinite(bl):
            beta = float(bl)
        else:
            raise ValueError(f"NMF: beta_loss must be a float or one of {sorted(_BETA_NAMES)}, got {bl!r}")
        if p["solver"] == "cd" and beta != 2.0:
            raise ValueError(f"NMF: solver='cd' handles beta_loss='frobenius' only, got beta_loss={bl!r}; "
                             "use solver='mu'")
        p["beta"] = beta
        p["tol"] = _check_real(self, "tol")
        p["max_iter"] = _check_int(self, "max_iter", 1)
        p["check_every"] = _check_int(self, "check_every", 1)
        p["n_init"] = _check_int(self, "n_init", 1)
        p["alpha_W"] = _check_real(self, "alpha_W")
        if isinstance(self.alpha_H, str):
            if self.alpha_H != "same":
                raise ValueError(f"NMF: alpha_H must be a nonnegative float or 'same', got {self.alpha_H!r}")
            p["alpha_H"] = p["alpha_W"]
        else:
            p["alpha_H"] = _check_real(self, "alpha_H")
        p["l1_ratio"] = _check_real(self, "l1_ratio", 0.0, 1.0)
        init = self.init
        valid_init = {"random", "nndsvd", "nndsvda", "nndsvdar", "custom"}
        if init is not None and (not isinstance(init, str) or init not in valid_init):
            raise ValueError(f"NMF: init must be None or one of {sorted(valid_init)}, got {init!r}")
        if init is None:  # scikit-learn's default; restarts need a random start
            init = "nndsvda" if p["n_init"] == 1 else "random"
        p["init"] = init
        if p["init"] == "custom" and p["n_init"] != 1:
            raise ValueError("NMF: n_init > 1 needs a random initialization; init='custom' starts a single fit")
        nc = self.n_components
        if not (nc is None or (isinstance(nc, str) and nc == "auto") or (_is_int(nc) and nc >= 1)):
            raise ValueError(f"NMF: n_components must be a positive int, 'auto' or None, got {nc!r}")
        p["verbose"] = _check_verbose(self)
        _check_random_state_type(self)
        return p

    def _penalties(self, p, n_samples, n_features):
        """scikit-learn's scaled penalties ``(l1_reg_W, l1_reg_H, l2_reg_W, l2_reg_H)``."""
        r = p["l1_ratio"]
        return (p["alpha_W"] * r * n_features, p["alpha_H"] * r * n_samples,
                p["alpha_W"] * (1.0 - r) * n_features, p["alpha_H"] * (1.0 - r) * n_samples)

    @staticmethod
    def _jmf_penalties(beta, reg):
        """``(l1, l2)`` pairs (for W, for H) in jmf's units for scikit-learn's ``reg``.

        scikit-learn minimizes ``D_beta + l1_reg |.|_1 + l2_reg / 2 |.|^2`` with
        ``D_2 = |X - WH|^2 / 2``.  jmf's Frobenius loss (``beta = 2``) is twice
        that data term, so ``l1 = 2 l1_reg``, ``l2 = l2_reg``; its
        beta-divergence loss (``beta != 2``) has the same data term, so
        ``l1 = l1_reg``, ``l2 = l2_reg / 2``.  (The common factor ``1 / N`` does
        not move the minimizer.)
        """
        l1W, l1H, l2W, l2H = reg
        if beta == 2.0:
            return (2.0 * l1W, 2.0 * l1H), (l2W, l2H)
        return (l1W, l1H), (l2W / 2.0, l2H / 2.0)

    def _solver(self, p, l1, l2):
        if p["solver"] == "cd":
            return jmf.solvers.hals(l1=l1, l2=l2)
        return jmf.solvers.mu(beta=p["beta"], l1=l1, l2=l2)

    # -- fitting -------------------------------------------------------------------
    def _validate_X(self, X, reset):
        X = validate_data(self, X, reset=reset, accept_sparse=("csr", "csc", "coo"),
                          dtype=[np.float64, np.float32], ensure_all_finite="allow-nan")
        X = _densify(X)
        if np.isnan(X).all():
            raise ValueError("NMF: X is entirely NaN; no entry is observed")
        lo = np.nanmin(X)
        if lo < 0:
            raise ValueError(f"Negative values in data passed to NMF (input X): min {lo:.4g}; "
                             "NMF needs X >= 0 (NaN marks missing entries)")
        return X

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
        p = self._params()
        X = self._validate_X(X, reset=True)
        m, n = X.shape
        init = p["init"]
        if init == "custom":
            if W is None or H is None:
                raise ValueError("NMF: init='custom' needs both W and H passed to fit/fit_transform")
            W = np.asarray(W)
            H = np.asarray(H)
            if W.ndim != 2 or H.ndim != 2:
                raise ValueError(f"NMF: custom init W and H must be 2-D, got shapes {W.shape} and {H.shape}")
            k = H.shape[0]
            if self.n_components not in (None, "auto"):
                k = self.n_components
            for name, arr, shape in (("W", W, (m, k)), ("H", H, (k, n))):
                if arr.shape != shape:
                    raise ValueError(f"NMF: custom init {name} has shape {arr.shape}, expected {shape}")
                if not np.all(np.isfinite(arr)) or np.any(arr < 0):
                    raise ValueError(f"NMF: custom init {name} must be finite and nonnegative")
            if np.max(W) == 0 or np.max(H) == 0:
                raise ValueError("NMF: custom init W and H must not be all zero")
        else:
            if W is not None or H is not None:
                warnings.warn("When init!='custom', provided W or H are ignored. Set init='custom' to use them "
                              "as initialization.", RuntimeWarning, stacklevel=2)
            k = self.n_components
            if k is None or k == "auto":
                k = min(m, n)
        if k > min(m, n):
            extra = f" (n_samples = {m})" if m == 1 else ""
            raise ValueError(f"NMF: n_components={k} must be <= min(n_samples, n_features) = {min(m, n)}{extra}")
        if p["beta"] <= 0 and np.nanmin(X) <= 0:
            raise ValueError("When beta_loss <= 0 and X contains zeros, the solver may diverge. "
                             "Please add small values to X, or use a positive beta_loss.")
        if p["n_init"] > 1 and init in ("nndsvd", "nndsvda"):
            warnings.warn(f"NMF: init={init!r} is deterministic, so the {p['n_init']} restarts are identical; "
                          "use init='random' or 'nndsvdar' for n_init > 1", UserWarning, stacklevel=2)
        dt = _compute_dtype(X.dtype)
        data = _as_dense_data(X)
        l1, l2 = self._jmf_penalties(p["beta"], self._penalties(p, m, n))
        solver = self._solver(p, l1, l2)
        key = _key_from_random_state(self.random_state)
        if init == "custom":
            init_arg = jmf.Factors(jnp.asarray(W, dt), jnp.asarray(H, dt))
        else:
            init_arg = init
        tol = p["tol"] or None  # scikit-learn: tol=0 disables the stopping test
        res = _run_fit(data, solver, k, key=key, init=init_arg, n_init=p["n_init"], max_iter=p["max_iter"],
                       tol=tol, check_every=p["check_every"], verbose=p["verbose"])
        _warn_status(self, res, tol)
        _report(self, res)
        W_out = np.asarray(res.factors.W).astype(X.dtype, copy=False)
        self.components_ = np.asarray(res.factors.H).astype(X.dtype, copy=False)
        self.n_components_ = int(k)
        self.n_iter_ = int(np.asarray(res.n_iter))
        self.loss_ = float(np.asarray(res.loss))
        divergence = _beta_divergence(X, W_out, self.components_, p["beta"])
        self.reconstruction_err_ = float(np.sqrt(2.0 * max(divergence, 0.0)))
        return W_out

    def fit(self, X, y=None, **params):
        """Learn the model from ``X`` (``params``: ``W``, ``H`` for ``init="custom"``).  Returns ``self``."""
        self.fit_transform(X, **params)
        return self

    def transform(self, X):
        """``W`` for new rows ``X`` with ``H = components_`` fixed (NaN entries are missing).

        Returns
        -------
        W : ndarray of shape (n_samples, n_components)
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        p = self._params()
        m, n = X.shape
        reg = self._penalties(p, m, n)
        if p["beta"] == 2.0:
            (l1W, _), (l2W, _) = self._jmf_penalties(2.0, reg)
            return _solve_rows(X, self.components_, method="cd", l1=l1W, l2=l2W, n_iter=p["max_iter"],
                               tol=p["tol"], nonnegative=True)
        return _solve_rows(X, self.components_, method="mu", l1=reg[0], l2=reg[2], n_iter=p["max_iter"],
                           tol=p["tol"], beta=p["beta"])

    def inverse_transform(self, X):
        """``X ~ W H``: data space from ``W`` of shape (n_samples, n_components)."""
        check_is_fitted(self)
        W = _check_codes(X, self.n_components_)
        return W @ self.components_

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def _expected_failed_checks(self):
        if self.solver == "mu":
            return dict.fromkeys(_TRANSFORM_CONSISTENCY_CHECKS, _MU_REASON)
        return {}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


_TRANSFORM_CONSISTENCY_CHECKS = ("check_transformer_general", "check_transformer_data_not_an_array")
_MU_REASON = (
    "multiplicative updates converge slowly, so the W returned by fit_transform is not the exact "
    "minimizer for the final H that transform computes (coordinate descent to convergence); the "
    "check's atol=1e-2 agreement needs thousands of iterations. solver='cd' passes."
)


def _check_codes(Z, k):
    """Validate the input of ``inverse_transform``: a 2-D float array with ``k`` columns."""
    from sklearn.utils.validation import check_array

    Z = check_array(Z, dtype=[np.float64, np.float32], accept_sparse=("csr", "csc"))
    if sp.issparse(Z):
        Z = Z.toarray()
    if Z.shape[1] != k:
        raise ValueError(f"X has {Z.shape[1]} features, but the model has n_components = {k}")
    return Z


# =====================================================================================
# TruncatedSVD
# =====================================================================================


@functools.partial(jax.jit, static_argnames=("rank",))
def _randomized_svd(data, Omega, n_iter, rank):
    """Halko et al. 2011, algorithm 4.4 with QR-normalized power iterations, on jmf's operator of ``data``.

    Same algorithm as :func:`jmf.randomized_svd`, with the test matrix
    ``Omega`` drawn by the caller (numpy, as scikit-learn does) and the
    number of power iterations traced (one compiled function for any ``n_iter``).
    """
    from jmf._src.linalg import operator

    A_mul, At_mul = operator(data)
    Q = jnp.linalg.qr(A_mul(Omega))[0]
    Q = jax.lax.fori_loop(0, n_iter, lambda _, Q: jnp.linalg.qr(A_mul(jnp.linalg.qr(At_mul(Q))[0]))[0], Q)
    B = At_mul(Q).T  # (p, n) = Q^T A
    Ub, s, Vt = jnp.linalg.svd(B, full_matrices=False)
    return (Q @ Ub)[:, :rank], s[:rank], Vt[:rank]


def _normal(key, shape, dtype):
    """``jax.random.normal(key, shape, dtype)``, compiled once per bucket of sizes.

    With JAX's partitionable threefry (the default) a draw's entries depend
    only on their flat index, so the first ``prod(shape)`` entries of a longer
    draw are exactly this draw.
    """
    size = int(np.prod(shape))
    if not jax.config.jax_threefry_partitionable:  # pragma: no cover - legacy PRNG configuration
        return jax.random.normal(key, shape, dtype)
    draw = np.asarray(_normal_flat(key, _bucket(size), np.dtype(dtype)))  # sliced on the host: no compile
    return jnp.asarray(draw[:size].reshape(shape))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _normal_flat(key, size, dtype):
    return jax.random.normal(key, (size,), dtype)


def _padded_svd_data(X, dt):
    """``X`` as jmf data padded with zero rows and columns (and entries) to bucketed sizes.

    Zero rows and columns change neither the singular values nor the
    nonzero parts of ``U`` and ``V``; the padding is dropped afterwards.
    Sparse input never densifies.
    """
    from jmf._src.data import _rebuild

    m, n = X.shape
    m_pad, n_pad = _bucket(m), _bucket(n)
    if not sp.issparse(X):
        Xp = np.zeros((m_pad, n_pad), dt)
        Xp[:m, :n] = X
        return jmf.Dense(Xp)
    coo = X.tocoo()
    nnz = coo.nnz
    pad = _bucket(max(nnz, 1)) - nnz
    rows = np.concatenate([coo.row.astype(np.int32), np.full(pad, m_pad - 1, np.int32)])
    cols = np.concatenate([coo.col.astype(np.int32), np.full(pad, n_pad - 1, np.int32)])
    vals = np.concatenate([coo.data.astype(dt), np.zeros(pad, dt)])
    order = np.lexsort((cols, rows))  # jmf.Sparse stores entries row-major
    leaves = (jnp.asarray(rows[order]), jnp.asarray(cols[order]), jnp.asarray(vals[order]), None)
    return _rebuild(jmf.Sparse, leaves, (m_pad, n_pad))


@jax.jit
def _exact_svd(A):
    return jnp.linalg.svd(A, full_matrices=False)


def _svd_flip_v(U, Vt):
    """scikit-learn's ``svd_flip(u_based_decision=False)``: largest-|.| entry of each row of ``Vt`` positive."""
    idx = np.argmax(np.abs(Vt), axis=1)
    signs = np.sign(Vt[np.arange(Vt.shape[0]), idx])
    signs[signs == 0] = 1
    return U * signs, Vt * signs[:, None]


class TruncatedSVD(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Truncated SVD (LSA), a drop-in for :class:`sklearn.decomposition.TruncatedSVD`, computed with JAX.

    ``X ~ U_k S_k V_k^T``; ``transform(X) = X V_k``.  Works on dense arrays
    and ``scipy.sparse`` matrices without densifying (sparse products by
    ``segment_sum``); the data are not centered.

    Parameters
    ----------
    n_components : int, default=2
        ``1 <= n_components <= min(n_samples, n_features)``.
    algorithm : {"randomized", "exact"}, default="randomized"
        "randomized": Halko et al.'s range finder with ``n_iter`` QR-normalized
        power iterations (scikit-learn's default algorithm);
        "exact": a full thin SVD (dense input only; ``jnp.linalg.svd``).
        scikit-learn's "arpack" does not apply (use "exact").
    n_iter : int, default=5
        Power iterations of the randomized algorithm.
    n_oversamples : int, default=10
        Extra random directions of the randomized algorithm.
    random_state : int, RandomState instance or None, default=None
        Seeds the ``jax.random.key`` of the Gaussian test matrix (an int ``s``
        gives ``jax.random.key(s)``; ``None`` or a ``RandomState`` draw the seed
        from numpy).

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        ``V_k^T``, sign-fixed as scikit-learn does (largest-magnitude entry
        of each row positive).
    explained_variance_ : ndarray of shape (n_components,)
        Variance of each column of the training ``transform``.
    explained_variance_ratio_ : ndarray of shape (n_components,)
        ``explained_variance_`` over the total variance of ``X``.
    singular_values_ : ndarray of shape (n_components,)
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)

    Notes
    -----
    scikit-learn's ``power_iteration_normalizer`` and ``tol`` (ARPACK) do not
    apply: power iterations are always QR-normalized.  Missing values are not
    supported here (a truncated SVD of a partially observed matrix is a
    different problem: use :class:`MatrixFactorization`).  All of
    scikit-learn's ``check_estimator`` checks apply and pass.
    """

    def __init__(self, n_components=2, *, algorithm="randomized", n_iter=5, n_oversamples=10, random_state=None):
        self.n_components = n_components
        self.algorithm = algorithm
        self.n_iter = n_iter
        self.n_oversamples = n_oversamples
        self.random_state = random_state

    def fit(self, X, y=None):
        """Fit the model on ``X``; returns ``self``."""
        self.fit_transform(X)
        return self

    def fit_transform(self, X, y=None):
        """Fit the model on ``X`` and return ``X V_k`` of shape (n_samples, n_components)."""
        k = _check_int(self, "n_components", 1)
        _check_random_state_type(self)
        algorithm = _check_choice(self, "algorithm", {"randomized", "exact"})
        n_iter = _check_int(self, "n_iter", 0)
        n_over = _check_int(self, "n_oversamples", 1)
        X = validate_data(self, X, accept_sparse=("csr", "csc", "coo"), dtype=[np.float64, np.float32],
                          ensure_min_features=2)
        m, n = X.shape
        if k > min(m, n):
            extra = f" (n_samples = {m})" if m == 1 else ""
            raise ValueError(f"TruncatedSVD: n_components={k} must be <= min(n_samples, n_features) = "
                             f"{min(m, n)}{extra}")
        dt = _compute_dtype(X.dtype)
        if algorithm == "exact":
            if sp.issparse(X):
                raise TypeError("TruncatedSVD: algorithm='exact' needs dense input; use algorithm='randomized' "
                                "for sparse X")
            U, s, Vt = _exact_svd(jnp.asarray(X, dt))
        else:
            data = _padded_svd_data(X, dt)
            p = min(k + n_over, *data.shape)  # of the padded sizes: extra directions only help
            Omega = np.zeros((data.shape[1], p), dt)  # zero rows for the padding columns
            Omega[:n] = np.asarray(_normal(_key_from_random_state(self.random_state), (n, p), dt))
            U, s, Vt = _randomized_svd(data, jnp.asarray(Omega), jnp.asarray(n_iter, jnp.int32), rank=k)
        # Sliced on the host (slicing device arrays eagerly compiles per shape).
        U = np.asarray(U)[:m, :k].astype(X.dtype, copy=False)
        s = np.asarray(s)[:k].astype(X.dtype, copy=False)
        Vt = np.asarray(Vt)[:k, :n].astype(X.dtype, copy=False)
        U, Vt = _svd_flip_v(U, Vt)
        self.components_ = Vt
        if algorithm == "randomized":
            Z = np.asarray(X @ Vt.T)
        else:
            Z = U * s
        self.explained_variance_ = np.var(Z, axis=0)
        if sp.issparse(X):
            Xc = X.tocsr()
            mean = np.asarray(Xc.mean(axis=0)).ravel()
            sq = np.asarray(Xc.multiply(Xc).mean(axis=0)).ravel()
            full_var = float(np.sum(sq - mean**2))
        else:
            full_var = float(np.var(X, axis=0).sum())
        self.explained_variance_ratio_ = self.explained_variance_ / full_var if full_var > 0 else np.zeros_like(s)
        self.singular_values_ = s
        return Z.astype(X.dtype, copy=False)

    def transform(self, X):
        """``X V_k`` of shape (n_samples, n_components)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, accept_sparse=("csr", "csc", "coo"), dtype=[np.float64, np.float32])
        return np.asarray(X @ self.components_.T).astype(X.dtype, copy=False)

    def inverse_transform(self, X):
        """``Z V_k^T``: back to data space."""
        check_is_fitted(self)
        Z = _check_codes(X, self.components_.shape[0])
        return Z @ self.components_

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


# =====================================================================================
# MatrixFactorization (any jmf solver)
# =====================================================================================

_MF_SOLVERS = ("als", "hals", "mu", "adam", "sgd", "svd")


class MatrixFactorization(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    r"""Low-rank factorization ``X ~ W H`` with any jmf solver, as a transformer.

    Minimizes jmf's loss (:mod:`jmf.losses`) over the observed entries
    (``NaN`` = missing)::

        ( sum_obs (x_ij - W_i H_j)^2 + l2_W |W|^2 + l2_H |H|^2 + l1_W |W|_1 + l1_H |H|_1 ) / N

    ``fit`` learns ``components_ = H``; ``transform`` solves for the rows
    ``W`` of new data with ``H`` fixed; ``inverse_transform`` returns ``W H``
    (so ``inverse_transform(transform(X))`` fills in the missing entries).

    Parameters
    ----------
    n_components : int, default=2
        Rank ``k <= min(n_samples, n_features)``.
    solver : {"als", "hals", "mu", "adam", "sgd", "svd"} or jmf.solvers.Solver, default="als"
        A name builds the solver from ``l2``, ``l1``, ``learning_rate`` and
        ``nonnegative``: "als" (alternating least squares, signed), "svd"
        (truncated SVD, the exact optimum; no missing values, no penalties),
        "hals" and "mu" (nonnegative), "adam" and "sgd" (gradient steps;
        projected onto ``W, H >= 0`` when ``nonnegative=True``).  A
        :class:`jmf.solvers.Solver` object is used as given (``l2``, ``l1``,
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
        Maximum sweeps of the row solver in ``transform`` (default
        ``max_iter``); a row stops earlier once its largest update is below
        ``tol`` times its largest entry.
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
    ``transform`` with a named solver solves the row problems exactly or to
    high accuracy, independently of the solver used to fit: in closed form
    (ridge regression per row) for signed models without ``l1``, by
    coordinate descent otherwise (up to ``transform_max_iter`` sweeps, with
    a per-row stopping test).  With a
    :class:`~jmf.solvers.Solver` object it runs that solver for
    ``transform_max_iter`` iterations with ``H`` held fixed (which assumes the
    solver computes its ``W`` update from the current ``H``, as gradient
    solvers and ALS/HALS/MU do) -- then a row's result can depend on the
    other rows through the solver's loss scaling (``N``).

    Solvers with row/column biases are not supported here (see
    :class:`RatingsRegressor`).  All of scikit-learn's ``check_estimator``
    checks apply and pass, except the two fit_transform/transform
    consistency checks with ``solver="mu"`` (see :class:`NMF`; listed by
    :func:`expected_failed_checks`).
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
        self.random_state = random_state
        self.verbose = verbose

    def _params(self):
        p = {}
        p["k"] = _check_int(self, "n_components", 1)
        p["max_iter"] = _check_int(self, "max_iter", 1)
        p["check_every"] = _check_int(self, "check_every", 1)
        p["n_init"] = _check_int(self, "n_init", 1)
        p["tol"] = _check_real(self, "tol", none_ok=True)
        p["transform_max_iter"] = _check_int(self, "transform_max_iter", 1, none_ok=True) or p["max_iter"]
        p["verbose"] = _check_verbose(self)
        _check_random_state_type(self)
        if not isinstance(self.nonnegative, (bool, np.bool_)):
            raise TypeError(f"MatrixFactorization: nonnegative must be a bool, got {self.nonnegative!r}")
        if not (isinstance(self.init, str) and self.init in jmf.init.INITIALIZERS):
            raise ValueError(f"MatrixFactorization: init must be one of {sorted(jmf.init.INITIALIZERS)}, "
                             f"got {self.init!r}")
        s = self.solver
        if isinstance(s, jmf.solvers.Solver):
            if s.biases:
                raise ValueError("MatrixFactorization: solvers with biases are not supported; use RatingsRegressor")
            p["solver"] = s
            p["named"] = False
            return p
        if not isinstance(s, str) or s not in _MF_SOLVERS:
            raise ValueError(f"MatrixFactorization: solver must be one of {list(_MF_SOLVERS)} or a "
                             f"jmf.solvers.Solver, got {s!r}")
        l2 = _pair_param(self, "l2")
        l1 = _pair_param(self, "l1")
        p["l1"], p["l2"] = l1, l2
        p["named"] = True
        # Names are built by the solver registry (the one the jmf command and experiments use).
        if s == "als":
            if l1 != (0.0, 0.0):
                raise ValueError("MatrixFactorization: solver='als' does not support l1; "
                                 "use 'hals' or a gradient solver")
            hyper = {"l2": l2}
        elif s == "svd":
            if l1 != (0.0, 0.0) or l2 != (0.0, 0.0):
                raise ValueError("MatrixFactorization: solver='svd' fits the unpenalized optimum; l1 and l2 must be 0")
            hyper = {}
        elif s == "hals":
            hyper = {"l1": l1, "l2": l2}
        elif s == "mu":
            hyper = {"beta": 2.0, "l1": l1, "l2": l2}
        else:
            lr = _check_real(self, "learning_rate")
            if lr <= 0:
                raise ValueError(f"MatrixFactorization: learning_rate must be > 0, got {lr}")
            hyper = {"learning_rate": lr, "l2": l2, "l1": l1, "projection": "nonnegative" if self.nonnegative else None}
        p["solver"] = make_solver(s, **hyper)
        p["nonneg"] = p["solver"].nonnegative
        return p

    def _validate_X(self, X, reset, nonneg):
        X = validate_data(self, X, reset=reset, accept_sparse=("csr", "csc", "coo"),
                          dtype=[np.float64, np.float32], ensure_all_finite="allow-nan")
        X = _densify(X)
        if np.isnan(X).all():
            raise ValueError("MatrixFactorization: X is entirely NaN; no entry is observed")
        if nonneg and np.nanmin(X) < 0:
            raise ValueError(f"Negative values in data passed to MatrixFactorization (input X) with the "
                             f"nonnegative solver {self.solver!r}: min {np.nanmin(X):.4g}")
        return X

    def fit_transform(self, X, y=None):
        """Fit on ``X`` (NaN = missing) and return the training ``W`` of shape (n_samples, n_components)."""
        p = self._params()
        X = self._validate_X(X, True, p["solver"].nonnegative)
        m, n = X.shape
        k = p["k"]
        if k > min(m, n):
            extra = f" (n_samples = {m})" if m == 1 else (f" (n_features = {n})" if n == 1 else "")
            raise ValueError(f"MatrixFactorization: n_components={k} must be <= min(n_samples, n_features) = "
                             f"{min(m, n)}{extra}")
        data = _as_dense_data(X)
        key = _key_from_random_state(self.random_state)
        res = _run_fit(data, p["solver"], k, key=key, init=self.init, n_init=p["n_init"], max_iter=p["max_iter"],
                       tol=p["tol"], check_every=p["check_every"], verbose=p["verbose"])
        _warn_status(self, res, p["tol"])
        _report(self, res)
        W = np.asarray(res.factors.W).astype(X.dtype, copy=False)
        self.components_ = np.asarray(res.factors.H).astype(X.dtype, copy=False)
        self.n_components_ = k
        self.n_iter_ = int(np.asarray(res.n_iter))
        self.loss_ = float(np.asarray(res.loss))
        R = X - W @ self.components_
        self.reconstruction_err_ = float(np.sqrt(np.nansum(R.astype(np.float64) ** 2)))
        return W

    def fit(self, X, y=None):
        """Fit on ``X`` (NaN = missing); returns ``self``."""
        self.fit_transform(X)
        return self

    def transform(self, X):
        """Rows ``W`` of new data ``X`` (NaN = missing) with ``H = components_`` fixed."""
        check_is_fitted(self)
        p = self._params()
        X = self._validate_X(X, False, p["solver"].nonnegative)
        H = self.components_
        if not p["named"]:
            if p["solver"].name.startswith("svd"):  # its step recomputes an SVD: project instead
                return _solve_rows(X, H, method="ridge", l2=0.0)
            return self._transform_with_solver(X, p)
        l1W, l2W = p["l1"][0], p["l2"][0]
        if not p["nonneg"] and l1W == 0.0:
            return _solve_rows(X, H, method="ridge", l2=l2W)
        return _solve_rows(X, H, method="cd", l1=l1W, l2=l2W, n_iter=p["transform_max_iter"], tol=p["tol"],
                           nonnegative=p["nonneg"])

    def _transform_with_solver(self, X, p):
        solver = _frozen_h(p["solver"])
        dt = _compute_dtype(X.dtype)
        data = _as_dense_data(X)
        k = self.components_.shape[0]
        if solver.nonnegative:
            avg = np.sqrt(max(float(np.nanmean(X)), 0.0) / k) or 1.0
            W0 = jnp.full((X.shape[0], k), avg, dt)
        else:
            W0 = jnp.zeros((X.shape[0], k), dt)
        f0 = jmf.Factors(W0, jnp.asarray(self.components_, dt))
        res = jmf.fit(data, solver, key=0, init=f0, max_iter=p["transform_max_iter"], tol=None,
                      check_every=p["check_every"], progress=False)
        return np.asarray(res.factors.W).astype(X.dtype, copy=False)

    def inverse_transform(self, X):
        """``W H``: the reconstruction (missing entries filled in) from ``W`` of shape (n_samples, n_components)."""
        check_is_fitted(self)
        Z = _check_codes(X, self.components_.shape[0])
        return Z @ self.components_

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def _expected_failed_checks(self):
        if self.solver == "mu":
            return dict.fromkeys(_TRANSFORM_CONSISTENCY_CHECKS, _MU_REASON)
        return {}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        if self.solver in ("hals", "mu") or self.nonnegative or (
            isinstance(self.solver, jmf.solvers.Solver) and self.solver.nonnegative
        ):
            tags.input_tags.positive_only = True
        return tags


# =====================================================================================
# RatingsRegressor
# =====================================================================================


class RatingsRegressor(RegressorMixin, BaseEstimator):
    r"""Biased matrix factorization for ratings, as a scikit-learn regressor.

    Each row of ``X`` is one observed rating: a user id in column
    ``user_col`` and an item id in column ``item_col`` (any values: ints,
    strings, floats; other columns are ignored), with the rating in ``y``.
    The model predicts

    .. math::  \hat y_{ui} = \mu + b_u + c_i + W_u \cdot H_i

    fitted by minimizing jmf's loss on the observed ratings,
    ``(sum (y - yhat)^2 + l2 (|W|^2 + |H|^2) + bias_l2 (|b|^2 + |c|^2)) / N``.
    Users or items not seen in ``fit`` fall back to the biases: an unknown
    user has ``b_u = 0`` and ``W_u = 0`` (and likewise for items), so an
    unknown user gets ``mu + c_i`` and an unknown pair gets ``mu``.

    Parameters
    ----------
    n_components : int, default=10
        Rank (capped at ``min(n_users, n_items)`` of the training data).
    l2 : float, default=1.0
        Ridge penalty on the factors (jmf's units: per-rating sum, see above).
    bias_l2 : float or None, default=None
        Ridge penalty on the biases (default ``l2``).
    solver : {"als", "adam"}, default="als"
        "als": alternating least squares on the biased model; "adam": full-batch Adam.
    learning_rate : float, default=0.05
        Step size of "adam".
    max_iter : int, default=50
    tol : float or None, default=1e-4
    check_every : int, default=5
    user_col, item_col : int or str, default=0, 1
        Columns of ``X`` holding the ids (names when ``X`` is a DataFrame).
    clip : bool, default=False
        Clip predictions to the range of the training ratings.
    random_state : int, RandomState instance or None, default=None
        Seeds the ``jax.random.key`` of the fit.
    verbose : int, default=0

    Attributes
    ----------
    users_, items_ : ndarray
        Sorted distinct ids seen in ``fit``.
    user_factors_ : ndarray of shape (n_users, n_components_)
    item_factors_ : ndarray of shape (n_items, n_components_)
    user_bias_ : ndarray of shape (n_users,)
    item_bias_ : ndarray of shape (n_items,)
    global_mean_ : float
        The offset ``mu``.
    n_components_ : int
    n_iter_ : int
    loss_ : float
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
        n_components=10,
        *,
        l2=1.0,
        bias_l2=None,
        solver="als",
        learning_rate=0.05,
        max_iter=50,
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
        p["k"] = _check_int(self, "n_components", 1)
        p["l2"] = _check_real(self, "l2")
        p["bias_l2"] = _check_real(self, "bias_l2", none_ok=True)
        if p["bias_l2"] is None:
            p["bias_l2"] = p["l2"]
        p["max_iter"] = _check_int(self, "max_iter", 1)
        p["check_every"] = _check_int(self, "check_every", 1)
        p["tol"] = _check_real(self, "tol", none_ok=True)
        p["verbose"] = _check_verbose(self)
        _check_random_state_type(self)
        s = _check_choice(self, "solver", {"als", "adam"})
        if not isinstance(self.clip, (bool, np.bool_)):
            raise TypeError(f"RatingsRegressor: clip must be a bool, got {self.clip!r}")
        if s == "als":
            if p["l2"] == 0:
                raise ValueError("RatingsRegressor: solver='als' needs l2 > 0 (users or items with fewer ratings "
                                 "than n_components make the ridge solves singular)")
            p["solver"] = jmf.solvers.als(l2=p["l2"], bias_l2=p["bias_l2"], biases=True)
        else:
            lr = _check_real(self, "learning_rate")
            if lr <= 0:
                raise ValueError(f"RatingsRegressor: learning_rate must be > 0, got {lr}")
            loss = _biased_frobenius(p["l2"], p["bias_l2"])
            p["solver"] = jmf.solvers.adam(lr, loss=loss, biases=True)
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
        k = min(p["k"], m, n)
        data = _padded_ratings(u_idx.ravel(), i_idx.ravel(), y, m, n)
        key = _key_from_random_state(self.random_state)
        res = jmf.fit(data, p["solver"], k, key=key, init="normal", max_iter=p["max_iter"], tol=p["tol"],
                      check_every=p["check_every"], biases=True, progress=bool(p["verbose"]))
        _warn_status(self, res, p["tol"])
        _report(self, res)
        f = res.factors
        self.user_factors_ = np.asarray(f.W, dtype=np.float64)[:m]
        self.item_factors_ = np.asarray(f.H, dtype=np.float64).T[:n].copy()
        self.user_bias_ = np.asarray(f.row_bias, dtype=np.float64)[:m]
        self.item_bias_ = np.asarray(f.col_bias, dtype=np.float64)[:n]
        self.global_mean_ = float(np.asarray(f.offset))
        self.n_components_ = int(k)
        self.n_iter_ = int(np.asarray(res.n_iter))
        self.loss_ = float(np.asarray(res.loss))
        self._y_range = (float(np.min(y)), float(np.max(y)))
        return self

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
        if self.clip:
            yhat = np.clip(yhat, *self._y_range)
        return yhat

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.regressor_tags.poor_score = True
        tags.input_tags.string = True  # ids may be strings
        tags.input_tags.categorical = True
        return tags


def _padded_ratings(u, i, y, m, n):
    """The ratings as a :class:`jmf.Sparse` padded to bucketed sizes (see :func:`_bucket`).

    Users and items are padded to ``_bucket(m)`` and ``_bucket(n)`` (the
    extra ones have no ratings), entries to ``_bucket(nnz)`` with weight-0
    entries at the last coordinate (so the row-major order is kept).  Neither
    changes the objective: weight-0 entries never enter a loss, and a user or
    item without ratings only meets its own penalty, which keeps its factors
    at zero.  Folds of a cross-validation then share one compiled fit.
    """
    from jmf._src.data import _rebuild

    base = jmf.Sparse.from_triplets(u, i, y, shape=(m, n), duplicates="mean")
    nnz = base.nnz
    m_pad, n_pad, nnz_pad = _bucket(m), _bucket(n), _bucket(nnz)
    pad = nnz_pad - nnz
    dt = np.dtype(base.dtype)
    # Built with numpy and transferred once (eager jnp ops would each compile per shape).
    rows = np.concatenate([np.asarray(base.rows), np.full(pad, m_pad - 1, np.int32)])
    cols = np.concatenate([np.asarray(base.cols), np.full(pad, n_pad - 1, np.int32)])
    vals = np.concatenate([np.asarray(base.vals), np.zeros(pad, dt)])
    weights = np.concatenate([np.ones(nnz, dt), np.zeros(pad, dt)])
    leaves = (jnp.asarray(rows), jnp.asarray(cols), jnp.asarray(vals), jnp.asarray(weights))
    return _rebuild(jmf.Sparse, leaves, (m_pad, n_pad))


@functools.lru_cache(maxsize=256)
def _biased_frobenius(l2, bias_l2):
    return jmf.losses.frobenius(l2=l2, bias_l2=bias_l2)


# =====================================================================================
# Estimator checks that cannot apply
# =====================================================================================


def expected_failed_checks(estimator) -> dict:
    """scikit-learn checks that cannot apply to ``estimator``, with the reason.

    Pass it to scikit-learn's harness::

        from sklearn.utils.estimator_checks import parametrize_with_checks
        @parametrize_with_checks([NMF(), ...], expected_failed_checks=expected_failed_checks)

    (``check_estimator(est, expected_failed_checks=expected_failed_checks(est))``
    for a single estimator).  The dictionary is also available as the
    estimator's ``_expected_failed_checks()``.
    """
    fn = getattr(estimator, "_expected_failed_checks", None)
    return dict(fn()) if fn is not None else {}
