"""Running the estimators' fits: jmf's driver, the half-step solver of ``transform``, and what is reported.

Every fit and every ``transform`` is one run of jmf's driver
(:func:`jmf.fit`): ``transform`` runs :func:`half_step` of the fit's solver
-- its ``update_w`` as the step, ``H`` held fixed -- from a starting ``W``,
so it solves the same problem with the same updates and the same stopping
rule as the fit's ``W`` updates.  scikit-learn's stopping rules are what
the solvers monitor: coordinate descent's projected-gradient violation
(:func:`jmf.solvers.hals` with ``stop="violation"``), the relative decrease
of the multiplicative updates' error ``sqrt(2 D_beta)`` every 10 iterations
(:func:`error_loss`), and the relative change of ``W`` of
:class:`~jmf.sklearn.MiniBatchNMF`'s ``transform`` (:func:`w_change`).
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax
from sklearn.exceptions import ConvergenceWarning

from ..factors import Factors
from ..fit import fit, fit_many
from ..losses.base import Loss
from ..losses.beta import DEFAULT_EPS, beta_divergence
from ..run.loop import Status
from ..solvers.base import Solver, derived

__all__ = ["half_step", "w_change", "stop_each_step", "iterations", "error_loss", "run", "warn_max_iter",
           "warn_status_max_iter", "warn_diverged",
           "report", "host_beta_divergence"]


@derived
def half_step(solver: Solver, progress=None) -> Solver:
    """``solver`` with ``step = update_w``: its update of ``W`` alone, ``H`` (and column biases) fixed.

    The loss and the solver's own ``progress`` measure stay; ``progress``
    replaces the latter.  Run from a starting ``W`` with ``H = components_``
    it is the estimators' ``transform``.
    """
    if solver.update_w is None:
        raise ValueError(f"solver {solver.name!r} has no update of W alone (update_w)")
    return solver._replace(step=solver.update_w, name=f"{solver.name}[W]", direct=None, factory=None, grid=None,
                           progress=solver.progress if progress is None else progress)


class WChangeState(NamedTuple):
    inner: object
    change: jax.Array  # |W_new - W| / |W_new| of the last step


@derived
def w_change(solver: Solver) -> Solver:
    """The half step of ``solver`` monitored by the relative change of ``W``: converged when ``|dW| / |W| <= tol``.

    scikit-learn's rule for :class:`~jmf.sklearn.MiniBatchNMF`'s ``W`` solves.
    """

    def init(f, data, key=None):
        return WChangeState(solver.init(f, data, key), jnp.full((), jnp.inf, f.W.dtype))

    def step(f, state, data, mask=None):
        g, inner = solver.update_w(f, state.inner, data, mask)
        change = jnp.linalg.norm(g.W - f.W) / jnp.linalg.norm(g.W)
        return g, WChangeState(inner, jnp.where(jnp.isnan(change), jnp.inf, change).astype(f.W.dtype))

    return solver._replace(init=init, step=step, update_w=None, name=f"{solver.name}[W, change]", direct=None,
                           factory=None, grid=None, progress=lambda f, state, data: state.change,
                           objective=_inner_objective(solver))


class StopState(NamedTuple):
    inner: object
    n_iter: jax.Array  # steps taken up to and including the one where the rule fired
    done: jax.Array  # the rule fired: further steps are the identity


@derived(searchable=("tol",))
def stop_each_step(solver: Solver, tol: float) -> Solver:
    """``solver`` testing its own ``progress <= tol`` after **every** step, so the driver may check less often.

    scikit-learn's coordinate descent stops at the first iteration where its
    violation rule holds.  Checked by the driver after every step, that costs
    an evaluation of the loss per iteration (for sparse data, one more pass
    over the nonzeros).  This wrapper applies the rule inside the step: once
    it holds, the solver stops updating (its further steps leave the factors
    and state as they are) and its ``progress`` reads 0, so the driver stops
    at its next check, with the factors of the iteration the rule fired at;
    ``state.n_iter`` counts the iterations up to it (what a check after every
    step reports).  A nonzero ``tol`` is a traced value of the fit's programs, as the wrapped
    solver's penalties are (:func:`jmf._src.solvers.base.derived`).
    """
    if solver.progress is None:
        raise ValueError(f"solver {solver.name!r} has no progress measure to stop on")
    progress = solver.progress

    def init(f, data, key=None):
        return StopState(solver.init(f, data, key), jnp.zeros((), jnp.int32), jnp.zeros((), bool))

    def step(f, state, data, mask=None):
        def advance(args):
            f, st = args
            g, inner = solver.step(f, st.inner, data, mask)
            return g, StopState(inner, st.n_iter + 1, progress(g, inner, data) <= tol)

        return lax.cond(state.done, lambda args: args, advance, (f, state))

    def stopped_progress(f, state, data):
        p = progress(f, state.inner, data)
        return jnp.where(state.done, jnp.zeros_like(p), p)

    return solver._replace(init=init, step=step, update_w=None, name=f"{solver.name}[stop each step]", direct=None,
                           factory=None, grid=None, progress=stopped_progress, objective=_inner_objective(solver))


def _inner_objective(solver: Solver):
    """The wrapped solver's state-reading objective on a wrapper state (``state.inner``), or None."""
    if solver.objective is None:
        return None
    return lambda f, state, data: solver.objective(f, state.inner, data)


def iterations(result) -> int:
    """Iterations of a fit: the driver's count, or the wrapper's of :func:`stop_each_step`."""
    state = result.state
    return int(np.asarray(state.n_iter if isinstance(state, StopState) else result.n_iter))


@functools.lru_cache(maxsize=64)
def error_loss(beta: float, eps: float = DEFAULT_EPS) -> Loss:
    """scikit-learn's error of the multiplicative updates: ``sqrt(2 D_beta(X | W H))`` over the observed entries.

    No penalties, no division by the number of entries (scale-free rules do
    not care; this is the quantity scikit-learn's stopping rule watches).
    """
    div = beta_divergence(beta, eps=eps)

    def value(f, data):
        total = div.value(f, data) * data.n_observed()  # the sum of the divergences
        return jnp.sqrt(2 * jnp.maximum(total, 0))

    return Loss(value, jax.grad(value), f"error(beta={beta:g})", data_kinds=div.data_kinds)


def run(data, solver: Solver, *, init, rank=None, key=None, max_iter: int, tol, check_every: int, verbose=0,
        n_init: int = 1):
    """One fit through jmf's driver (``n_init > 1``: batched restarts, the lowest final loss kept)."""
    if n_init > 1 and not isinstance(init, Factors):
        keys = jax.random.split(key, n_init)
        many = fit_many(data, solver, rank, keys=keys, init=init, max_iter=max_iter, tol=tol,
                        check_every=check_every, progress=bool(verbose))
        return many.best().result
    return fit(data, solver, rank, key=key, init=init, max_iter=max_iter, tol=tol, check_every=check_every,
               progress=bool(verbose))


def warn_max_iter(max_iter: int, n_iter: int, tol) -> None:
    """scikit-learn's warning: the last allowed iteration ran and a tolerance was set."""
    if n_iter >= max_iter and tol:
        warnings.warn(f"Maximum number of iterations {max_iter} reached. Increase it to improve convergence.",
                      ConvergenceWarning, stacklevel=3)


def warn_status_max_iter(result, max_iter: int, tol) -> None:
    """jmf's rule: the fit ended by ``max_iter`` (not converged) although a tolerance was set."""
    if int(np.asarray(result.status)) == Status.MAX_ITER and tol:
        warnings.warn(f"Maximum number of iterations {max_iter} reached. Increase it to improve convergence.",
                      ConvergenceWarning, stacklevel=3)


def warn_diverged(est, result) -> None:
    if int(np.asarray(result.status)) == Status.DIVERGED:
        warnings.warn(
            f"{type(est).__name__}: the fit diverged (non-finite loss) after {int(result.n_iter)} iterations; "
            "the last finite factors are kept. Lower the learning rate or add regularization.",
            RuntimeWarning, stacklevel=3)


def report(est, result, what: str = "fit") -> None:
    if est.verbose:
        print(f"[{type(est).__name__}] {what}: {int(np.asarray(result.n_iter))} iterations, "
              f"loss {float(np.asarray(result.loss)):.6g}, status {result.status_name}")


# -- reconstruction error, on the host in float64 ------------------------------------------

_EPS = float(np.finfo(np.float32).eps)


def _row_blocks(m: int, n: int):
    step = max(1, (1 << 20) // max(n, 1))
    return range(0, m, step), step


def host_beta_divergence(X, W, H, beta: float, absent: str = "zero") -> float:
    """``D_beta(X | W H)`` as scikit-learn's ``_beta_divergence`` computes it, in float64, without an ``m x n``
    array for sparse ``X``.

    Dense ``X``: ``NaN`` entries are left out.  Sparse ``X``: absent entries
    are zeros (``absent="zero"``, products and Grams as scikit-learn does) or
    left out (``absent="missing"``).  ``D_2 = |X - WH|^2 / 2``; entries
    ``x <= eps`` are zeros of the divergence for ``beta != 2`` and ``W H``
    is clipped at ``eps`` (scikit-learn's safeguards).
    """
    W = np.asarray(W, np.float64)
    H = np.asarray(H, np.float64)
    if sp.issparse(X):
        X = X.tocsr().astype(np.float64)
        X.sum_duplicates()
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
        x = X.data
        y = np.einsum("pk,kp->p", W[rows], H[:, X.indices])
        if absent == "missing":
            return _entries_divergence(x, y, beta)
        if beta == 2:
            cross = float(np.sum(x * y))
            return max((float(x @ x) + float(np.sum((W.T @ W) * (H @ H.T))) - 2 * cross) / 2, 0.0)
        return _zero_filled_divergence(x, y, W, H, beta)
    X = np.asarray(X, np.float64)
    obs = ~np.isnan(X)
    if obs.all():
        total = 0.0
        blocks, step = _row_blocks(*X.shape)
        for i in blocks:
            Xb, Yb = X[i:i + step], W[i:i + step] @ H
            total += _entries_divergence(Xb.ravel(), Yb.ravel(), beta)
        return total
    Y = W @ H
    return _entries_divergence(X[obs], Y[obs], beta)


def _entries_divergence(x, y, beta):
    if beta == 2:
        r = x - y
        return float(r @ r) / 2
    keep = x > _EPS
    xk, yk = x[keep], np.maximum(y[keep], _EPS)
    if beta == 1:
        return float(np.sum(xk * np.log(xk / yk)) - np.sum(xk) + np.sum(y))
    if beta == 0:
        div = xk / yk
        return float(np.sum(div) - x.size - np.sum(np.log(div)))
    return float((np.sum(xk**beta) + (beta - 1) * np.sum(y**beta) - beta * np.sum(xk * yk ** (beta - 1)))
                 / (beta * (beta - 1)))


def _zero_filled_divergence(x, y, W, H, beta):
    """Divergence over all ``m n`` entries of a sparse ``X`` with absent zeros (``x``, ``y``: the stored entries)."""
    keep = x > _EPS
    xk, yk = x[keep], np.maximum(y[keep], _EPS)
    if beta == 1:
        return float(np.sum(xk * np.log(xk / yk)) + np.sum(W, axis=0) @ np.sum(H, axis=1) - np.sum(xk))
    if beta == 0:
        div = xk / yk
        return float(np.sum(div) - W.shape[0] * H.shape[1] - np.sum(np.log(div)))
    total_y = 0.0
    blocks, step = _row_blocks(W.shape[0], H.shape[1])
    for i in blocks:
        total_y += float(np.sum((W[i:i + step] @ H) ** beta))
    return float((np.sum(xk**beta) + (beta - 1) * total_y - beta * np.sum(xk * yk ** (beta - 1)))
                 / (beta * (beta - 1)))
