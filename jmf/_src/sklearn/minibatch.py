"""MiniBatchNMF: online NMF (scikit-learn's), one compiled minibatch step run by jmf's driver.

A minibatch step (scikit-learn's ``_minibatch_step``) updates the ``W`` rows
of the batch (one multiplicative update, or a fresh solve from
``sqrt(mean / k)`` with ``fresh_restarts``), then ``H`` from the
accumulated numerator ``A`` and denominator ``B`` of the multiplicative
update, forgotten at the rate ``rho = forget_factor ** (batch_size /
n_samples)`` -- Lefèvre, Bach & Févotte (2011).  ``partial_fit`` runs one
compiled step per call.  ``fit`` runs the same step through jmf's driver as
an *epoch* solver (one driver iteration is one pass over the minibatches,
as :func:`jmf.solvers.gradient` with ``batch_size`` does): scikit-learn's
stopping tests (small change of ``H``, no improvement of the smoothed batch
cost) are applied after every minibatch; once one fires the solver stops
updating, and its ``progress`` tells the driver to stop after that epoch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax
from sklearn.utils.validation import check_is_fitted

from ..data import Dense, Sparse, _rebuild
from ..data.checks import device_array
from ..factors import Factors
from ..losses.base import ALL_KINDS, zero_filled
from ..losses.beta import DEFAULT_EPS, beta_divergence, elementwise_beta_divergence
from ..solvers.base import EmptyState, Solver, derived
from ..solvers.mu import mu, mu_terms
from ._base import BaseNMF, jmf_penalties
from ._run import error_loss, report, run, w_change, warn_max_iter
from ._validation import as_data, bool_param, int_param, precision, real_param

__all__ = ["MiniBatchNMF"]

_TINY = float(np.finfo(np.float64).eps)


class _Config(NamedTuple):
    """Static settings of the minibatch step (part of the compilation key)."""

    beta: float
    bs: int  # rows per batch
    n_batches: int
    m: int  # real rows
    tol: float
    max_no_improvement: int  # -1: none
    fresh: bool
    fresh_max_iter: int
    alpha_W: float
    alpha_H: float
    l1_ratio: float
    rho: float
    entries: int  # stored entries per batch view of sparse data (0 for dense)

    @property
    def gamma(self) -> float:
        if self.beta < 1:
            return 1.0 / (2.0 - self.beta)
        if self.beta > 2:
            return 1.0 / (self.beta - 1.0)
        return 1.0


class MBState(NamedTuple):
    A: jax.Array  # (k, n) numerator accumulator
    B: jax.Array  # (k, n) denominator accumulator
    ewa: jax.Array  # smoothed batch cost (NaN before the second step)
    ewa_min: jax.Array
    no_improvement: jax.Array
    steps: jax.Array  # minibatch steps done
    done: jax.Array  # a stopping test fired


def _batch(data, b, cfg: _Config):
    """Rows ``[b bs, (b + 1) bs)`` of ``data`` (padded to ``bs`` rows at the end) as jmf data, and the real rows."""
    start = b * cfg.bs
    valid = (start + jnp.arange(cfg.bs)) < cfg.m
    if isinstance(data, Dense):
        A = lax.dynamic_slice_in_dim(data.A, start, cfg.bs, 0)
        w = None if data.weights is None else lax.dynamic_slice_in_dim(data.weights, start, cfg.bs, 0)
        return _rebuild(Dense, (A, w)), valid
    # Entries are sorted by row: the batch's entries are a contiguous run, read through a window of static size.
    first = jnp.searchsorted(data.rows, start)
    idx = first + jnp.arange(cfg.entries)
    inside = (idx < data.nnz) & (data.rows[jnp.minimum(idx, data.nnz - 1)] < start + cfg.bs)
    idx = jnp.minimum(idx, data.nnz - 1)
    w = inside if data.weights is None else inside & (data.weights[idx] > 0)
    rows = jnp.where(inside, data.rows[idx] - start, cfg.bs - 1)
    cols = jnp.where(inside, data.cols[idx], 0)
    vals = jnp.where(inside, data.vals[idx], 0)
    leaves = (rows, cols, vals, w.astype(data.vals.dtype))
    return _rebuild(Sparse, leaves, (cfg.bs, data.shape[1]), data.absent), valid


def _observed_mean(Xb, valid):
    """Mean of the batch's observed entries (its real rows only)."""
    n = Xb.shape[1]
    dt = Xb.dtype
    entries = jnp.sum(valid).astype(dt) * n  # every entry of the real rows
    if isinstance(Xb, Dense):
        w = valid[:, None].astype(dt) if Xb.weights is None else Xb.weights
        return jnp.sum(w * Xb.A) / jnp.maximum(jnp.sum(w) if Xb.weights is not None else entries, 1).astype(dt)
    v = Xb.stored_vals()
    if zero_filled(Xb):
        return jnp.sum(v) / jnp.maximum(entries, 1).astype(dt)
    return jnp.sum(v) / jnp.maximum(jnp.sum(Xb.weights), 1).astype(dt)


def _mu_w(cfg: _Config, n: int):
    """Multiplicative updates of ``W`` with scikit-learn's ``W`` penalties (they do not depend on the batch size)."""
    l1, l2 = jmf_penalties(cfg.beta, (n * cfg.alpha_W * cfg.l1_ratio, 0.0, n * cfg.alpha_W * (1 - cfg.l1_ratio), 0.0))
    return mu(beta=cfg.beta, l1=l1, l2=l2)


def _solve_w(cfg: _Config, Xb, H, valid, max_iter):
    """scikit-learn's ``_solve_W``: multiplicative updates of ``W`` from ``sqrt(mean / k)`` to ``|dW| / |W| <= tol``."""
    k = H.shape[0]
    solver = _mu_w(cfg, Xb.shape[1])
    avg = jnp.sqrt(jnp.maximum(_observed_mean(Xb, valid), 0) / k)
    W0 = jnp.where(valid[:, None], avg, 0).astype(H.dtype) * jnp.ones((cfg.bs, k), H.dtype)

    def cond(c):
        i, _, stop = c
        return (i < max_iter) & ~stop

    def body(c):
        i, W, _ = c
        Wn = solver.update_w(Factors(W, H), EmptyState(), Xb)[0].W
        diff = jnp.linalg.norm(Wn - W) / jnp.linalg.norm(Wn)
        return i + 1, Wn, (cfg.tol > 0) & (diff <= cfg.tol)

    return lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), W0, jnp.zeros((), bool)))[1]


def _batch_cost(cfg: _Config, Xb, Wb, H, valid, real, regs):
    """scikit-learn's batch cost: (divergence + penalties) / batch size, over the batch's real rows."""
    l1W, l1H, l2W, l2H = regs
    if isinstance(Xb, Dense):
        d = elementwise_beta_divergence(Xb.A, Wb @ H, cfg.beta)
        w = valid[:, None].astype(d.dtype) if Xb.weights is None else Xb.weights
        div = jnp.sum(w * d)
    else:
        div = beta_divergence(cfg.beta).value(Factors(Wb, H), Xb) * Xb.n_observed()
    pen = l1W * jnp.sum(Wb) + l1H * jnp.sum(H) + l2W * jnp.sum(Wb * Wb) + l2H * jnp.sum(H * H)
    return (div + pen) / real


def _h_update(cfg: _Config, Xb, Wb, H, A, B, real):
    """scikit-learn's online ``H`` update: accumulate the multiplicative update's numerator and denominator."""
    n = H.shape[1]
    l1H, l2H = real * cfg.alpha_H * cfg.l1_ratio, real * cfg.alpha_H * (1 - cfg.l1_ratio)
    num, den = (t.T for t in mu_terms(Xb, Wb, H, 1, cfg.beta, DEFAULT_EPS))
    if cfg.beta == 1:  # scikit-learn's W column sums, with 1 for an all-zero column
        wsum = jnp.sum(Wb, axis=0)
        den = jnp.broadcast_to(jnp.where(wsum == 0, 1, wsum)[:, None], (H.shape[0], n))
    den = den + l1H + l2H * H
    den = jnp.where(den == 0, DEFAULT_EPS, den)
    gamma = cfg.gamma
    Hg = H ** (1 / gamma) if gamma != 1 else H
    A = cfg.rho * A + num * Hg
    B = cfg.rho * B + den
    H = A / B
    if gamma != 1:
        H = H**gamma
    if cfg.beta <= 1:
        H = jnp.where(H < _TINY, 0, H)
    return H, A, B


def minibatch_step(cfg: _Config, Xb, Wb, H, A, B, valid, real):
    """One minibatch step: the batch's ``W`` (fresh solve, or one update of ``Wb``), then ``H``, ``A``, ``B``.

    Returns ``(Wb, H, A, B, batch_cost)`` (the cost after the ``W`` update, before the ``H`` update).
    """
    n = Xb.shape[1]
    if cfg.fresh or Wb is None:
        Wb = _solve_w(cfg, Xb, H, valid, cfg.fresh_max_iter)
    else:
        Wb = _mu_w(cfg, n).update_w(Factors(Wb, H), EmptyState(), Xb)[0].W
    if cfg.beta < 1:
        Wb = jnp.where(Wb < _TINY, 0, Wb)
    Wb = jnp.where(valid[:, None], Wb, 0)
    regs = (n * cfg.alpha_W * cfg.l1_ratio, real * cfg.alpha_H * cfg.l1_ratio,
            n * cfg.alpha_W * (1 - cfg.l1_ratio), real * cfg.alpha_H * (1 - cfg.l1_ratio))
    cost = _batch_cost(cfg, Xb, Wb, H, valid, real, regs)
    H, A, B = _h_update(cfg, Xb, Wb, H, A, B, real)
    return Wb, H, A, B, cost


@functools.partial(jax.jit, static_argnames=("cfg",))
def _partial_step(cfg: _Config, Xb, H, A, B):
    valid = jnp.ones((cfg.bs,), bool)
    _, H, A, B, _ = minibatch_step(cfg, Xb, None, H, A, B, valid, jnp.asarray(cfg.bs, H.dtype))
    return H, A, B


@derived
def epoch_solver(cfg: _Config) -> Solver:
    """The driver's solver for ``fit``: one step is a pass over the ``n_batches`` minibatches."""

    def init(f: Factors, data, key=None):
        nan = jnp.full((), jnp.nan, f.H.dtype)
        zero = jnp.zeros((), jnp.int32)
        return MBState(f.H, jnp.ones_like(f.H), nan, nan, zero, zero, jnp.zeros((), bool))

    def one(b, carry, data):
        f, st = carry
        Xb, valid = _batch(data, b, cfg)
        real = jnp.sum(valid).astype(f.H.dtype)
        start = b * cfg.bs
        Wb = lax.dynamic_slice_in_dim(f.W, start, cfg.bs, 0)
        Wb, H, A, B, cost = minibatch_step(cfg, Xb, Wb, f.H, st.A, st.B, valid, real)
        W = lax.dynamic_update_slice_in_dim(f.W, Wb, start, 0)
        steps = st.steps + 1
        # scikit-learn's _minibatch_convergence (the first step only starts the bookkeeping).
        alpha = jnp.minimum(real / (cfg.m + 1), 1)
        ewa = jnp.where(jnp.isnan(st.ewa), cost, st.ewa * (1 - alpha) + cost * alpha)
        ewa = jnp.where(steps == 1, st.ewa, ewa)
        h_diff = jnp.linalg.norm(H - f.H) / jnp.linalg.norm(H)
        small = (cfg.tol > 0) & (h_diff <= cfg.tol)
        better = jnp.isnan(st.ewa_min) | (ewa < st.ewa_min)
        no_imp = jnp.where(better, 0, st.no_improvement + 1)
        ewa_min = jnp.where(better, ewa, st.ewa_min)
        stale = (cfg.max_no_improvement >= 0) & (no_imp >= cfg.max_no_improvement)
        first = steps == 1
        done = ~first & (small | stale)
        st = MBState(A, B, ewa, jnp.where(first, st.ewa_min, ewa_min), jnp.where(first, st.no_improvement, no_imp),
                     steps, done)
        return Factors(W, H), st

    def step(f: Factors, state, data, mask=None):
        def body(b, carry):
            return lax.cond(carry[1].done, lambda c: c, lambda c: one(b, c, data), carry)

        return lax.fori_loop(0, cfg.n_batches, body, (f, state))

    def progress(f, state, data):
        return jnp.where(state.done, 0.0, 1.0).astype(f.H.dtype)

    return Solver(init=init, step=step, loss=error_loss(cfg.beta), name="minibatch-nmf", nonnegative=True,
                  data_kinds=ALL_KINDS, progress=progress)


def _entries_per_batch(X, bs: int) -> int:
    """Largest number of stored entries in a batch of ``bs`` rows of a CSR matrix, rounded up to a power of two."""
    ptr = X.indptr
    ends = np.minimum(np.arange(bs, X.shape[0] + bs, bs), X.shape[0])
    starts = np.arange(0, X.shape[0], bs)
    most = int(np.max(ptr[ends] - ptr[starts])) if len(starts) else 1
    return 1 << max(most - 1, 1).bit_length()


class MiniBatchNMF(BaseNMF):
    """Mini-batch NMF, a drop-in for :class:`sklearn.decomposition.MiniBatchNMF` (online NMF, ``partial_fit``).

    Parameters are scikit-learn's (``init``, ``batch_size``, ``beta_loss``,
    ``tol``, ``max_no_improvement``, ``max_iter``, ``alpha_W``, ``alpha_H``,
    ``l1_ratio``, ``forget_factor``, ``fresh_restarts``,
    ``fresh_restarts_max_iter``, ``transform_max_iter``, ``random_state``,
    ``verbose``), with their meaning: ``max_iter`` counts passes over the
    data, ``tol`` is the relative change of ``H`` between minibatch steps
    (and of ``W`` in ``transform``), ``max_no_improvement`` the number of
    steps without improvement of the smoothed batch cost; plus jmf's
    ``absent`` (see :class:`~jmf.sklearn.NMF`).  Dense input may hold ``NaN``
    (missing) entries; sparse input is never densified.

    Attributes
    ----------
    components_, n_components_, reconstruction_err_, n_iter_, n_features_in_, feature_names_in_
        As in :class:`~jmf.sklearn.NMF`.
    n_steps_ : int
        Minibatch steps processed.

    Notes
    -----
    Each step is compiled once per batch shape and setting (see the module
    docstring); ``fit`` runs all its steps in one compiled loop and
    ``partial_fit`` one compiled step per call.  ``transform`` is the
    multiplicative ``W`` half-step through jmf's driver, monitored by the
    relative change of ``W`` as scikit-learn's ``_solve_W``.
    """

    def __init__(
        self,
        n_components="auto",
        *,
        init=None,
        batch_size=1024,
        beta_loss="frobenius",
        tol=1e-4,
        max_no_improvement=10,
        max_iter=200,
        alpha_W=0.0,
        alpha_H="same",
        l1_ratio=0.0,
        forget_factor=0.7,
        fresh_restarts=False,
        fresh_restarts_max_iter=30,
        transform_max_iter=None,
        random_state=None,
        verbose=0,
        absent="zero",
    ):
        self.n_components = n_components
        self.init = init
        self.batch_size = batch_size
        self.beta_loss = beta_loss
        self.tol = tol
        self.max_no_improvement = max_no_improvement
        self.max_iter = max_iter
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.forget_factor = forget_factor
        self.fresh_restarts = fresh_restarts
        self.fresh_restarts_max_iter = fresh_restarts_max_iter
        self.transform_max_iter = transform_max_iter
        self.random_state = random_state
        self.verbose = verbose
        self.absent = absent

    def _params(self) -> dict:
        p = super()._params()
        p["batch_size"] = int_param(self, "batch_size", 1)
        p["max_no_improvement"] = int_param(self, "max_no_improvement", 1, none_ok=True)
        p["forget_factor"] = real_param(self, "forget_factor", 0.0, 1.0)
        p["fresh_restarts"] = bool_param(self, "fresh_restarts")
        p["fresh_restarts_max_iter"] = int_param(self, "fresh_restarts_max_iter", 1)
        p["transform_max_iter"] = int_param(self, "transform_max_iter", 1, none_ok=True) or p["max_iter"]
        return p

    def _check_params(self, X):
        super()._check_params(X)
        p = self._params()
        self._batch_size = min(p["batch_size"], X.shape[0])
        self._rho = p["forget_factor"] ** (self._batch_size / X.shape[0])
        self._transform_max_iter = p["transform_max_iter"]

    def _config(self, p, X, bs, rho, entries=0) -> _Config:
        m = X.shape[0]
        mni = -1 if p["max_no_improvement"] is None else p["max_no_improvement"]
        return _Config(p["beta"], bs, -(-m // bs), m, p["tol"], mni, p["fresh_restarts"], p["fresh_restarts_max_iter"],
                       p["alpha_W"], p["alpha_H"], p["l1_ratio"], float(rho), entries)

    def _solve_w_all(self, X, H, p, max_iter):
        """scikit-learn's ``_solve_W`` on all of ``X``: the ``W`` half-step through the driver (``transform``)."""
        k = H.shape[0]
        cfg = self._config(p, X, max(X.shape[0], 1), 1.0)
        mean = max(self._mean(X, p["absent"]), 0.0)
        with precision(X.dtype):
            data = as_data(X, p["absent"])
            solver = w_change(_mu_w(cfg, X.shape[1]))
            W0 = np.full((X.shape[0], k), np.sqrt(mean / k), X.dtype)
            res = run(data, solver, init=Factors(W0, H.astype(X.dtype, copy=False)), max_iter=max_iter,
                      tol=p["tol"] if p["tol"] > 0 else None, check_every=1)
            return np.asarray(res.factors.W).astype(X.dtype, copy=False)

    def fit_transform(self, X, y=None, W=None, H=None):
        """Learn the model from ``X`` and return ``W`` (``W``, ``H``: the start with ``init="custom"``)."""
        self._params()
        X = self._validate_X(X, reset=True)
        W, H, n_iter, n_steps = self._fit_transform(X, W=W, H=H)
        self.reconstruction_err_ = self._reconstruction_err(X, W, H, self._beta_loss, self.absent)
        self.n_components_ = H.shape[0]
        self.components_ = H
        self.n_iter_ = n_iter
        self.n_steps_ = n_steps
        return W

    def _fit_transform(self, X, W=None, H=None, update_H=True):
        p = self._params()
        absent = p["absent"]
        self._check_nonnegative(X, absent)
        self._check_params(X)
        self._check_zeros_for_beta(X, absent)
        m, n = X.shape
        bs = self._batch_size
        n_batches = -(-m // bs)
        m_pad = n_batches * bs
        entries = _entries_per_batch(X, bs) if sp.issparse(X) else 0
        cfg = self._config(p, X, bs, self._rho, entries)
        with precision(X.dtype):
            data = as_data(X, absent)
            start = lambda k: np.full((m, k), np.sqrt(max(self._mean(X, absent), 0.0) / k), X.dtype)  # noqa: E731
            init, k = self._check_w_h(X, data, W, H, update_H, start)
            W0, H0 = np.asarray(init.W), np.asarray(init.H)
            if not update_H:
                W_out = self._solve_w_all(X, H0, p, self._transform_max_iter)
                return W_out, H0.astype(X.dtype, copy=False), 0, 0
            padded = _padded(X, data, m_pad)
            W0 = np.concatenate([W0, np.zeros((m_pad - m, k), W0.dtype)]) if m_pad > m else W0
            res = run(padded, epoch_solver(cfg), init=Factors(device_array(W0), device_array(H0)),
                      max_iter=p["max_iter"], tol=0.0, check_every=1, verbose=p["verbose"])
            W_out = np.asarray(res.factors.W)[:m].astype(X.dtype, copy=False)
            H_out = np.asarray(res.factors.H).astype(X.dtype, copy=False)
            n_steps = int(np.asarray(res.state.steps))
            self._components_numerator = np.asarray(res.state.A)  # partial_fit carries on from them
            self._components_denominator = np.asarray(res.state.B)
        if p["fresh_restarts"]:
            W_out = self._solve_w_all(X, H_out, p, self._transform_max_iter)
        n_iter = -(-n_steps // n_batches)
        warn_max_iter(p["max_iter"], n_iter, p["tol"])
        report(self, res)
        return W_out, H_out, n_iter, n_steps

    def transform(self, X):
        """``W`` of new rows ``X`` with ``H = components_`` fixed (scikit-learn's ``_solve_W``)."""
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        p = self._params()
        self._check_nonnegative(X, p["absent"])
        return self._solve_w_all(X, self.components_, p, p["transform_max_iter"])

    def partial_fit(self, X, y=None, W=None, H=None):
        """Update the model with one minibatch ``X`` (one compiled step); returns ``self``.

        The first call initializes ``H`` from this batch (``W``, ``H``: the
        start with ``init="custom"``); later calls ignore ``W`` and ``H``.
        """
        has_components = hasattr(self, "components_")
        p = self._params()
        X = self._validate_X(X, reset=not has_components)
        absent = p["absent"]
        self._check_nonnegative(X, absent)
        with precision(X.dtype):
            if not has_components:
                self._check_params(X)
                self._check_zeros_for_beta(X, absent)
                data = as_data(X, absent)
                start = lambda k: np.zeros((X.shape[0], k), X.dtype)  # noqa: E731
                init, k = self._check_w_h(X, data, W, H, True, start)
                H0 = np.asarray(init.H).astype(X.dtype, copy=False)
                self._components_numerator = H0.copy()
                self._components_denominator = np.ones(H0.shape, dtype=H0.dtype)
                self.n_steps_ = 0
            else:
                H0 = self.components_
            entries = _entries_per_batch(X, X.shape[0]) if sp.issparse(X) else 0
            cfg = self._config(p, X, X.shape[0], self._rho, entries)
            data = _host_batch(X, entries, absent) if sp.issparse(X) else as_data(X, absent)
            H1, A, B = _partial_step(cfg, data, device_array(H0), device_array(self._components_numerator),
                                     device_array(self._components_denominator))
            self.components_ = np.asarray(H1).astype(X.dtype, copy=False)
            self._components_numerator = np.asarray(A)
            self._components_denominator = np.asarray(B)
        self.n_components_ = self.components_.shape[0]
        self.n_steps_ += 1
        return self


def _host_batch(X, entries: int, absent: str):
    """A CSR batch as jmf sparse data with exactly ``entries`` stored entries (padding: weight 0), built on the host.

    Batches of one shape and one power-of-two entry count share the compiled
    step of ``partial_fit`` whatever their number of nonzeros.
    """
    X = X.tocsr()
    X.sum_duplicates()
    nnz = X.nnz
    rows = np.full(entries, X.shape[0] - 1, np.int32)
    cols = np.zeros(entries, np.int32)
    vals = np.zeros(entries, X.dtype)
    weights = np.zeros(entries, X.dtype)
    rows[:nnz] = np.repeat(np.arange(X.shape[0], dtype=np.int32), np.diff(X.indptr))
    cols[:nnz] = X.indices
    vals[:nnz] = X.data
    weights[:nnz] = 1
    leaves = tuple(device_array(a) for a in (rows, cols, vals, weights))
    return _rebuild(Sparse, leaves, X.shape, absent)


def _padded(X, data, m_pad: int):
    """``data`` with ``m_pad - m`` zero rows (unobserved for dense NaN data), so every batch has ``bs`` rows."""
    m, n = X.shape
    if m_pad == m:
        return data
    if isinstance(data, Dense):
        A = jnp.concatenate([data.A, jnp.zeros((m_pad - m, n), data.dtype)])
        w = None if data.weights is None else jnp.concatenate([data.weights, jnp.zeros((m_pad - m, n), data.dtype)])
        return _rebuild(Dense, (A, w))
    return _rebuild(Sparse, (data.rows, data.cols, data.vals, data.weights), (m_pad, n), data.absent)

