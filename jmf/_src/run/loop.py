"""Statuses, the run configuration, the loop carry, and the one check loop every layout runs.

Stopping rule (scikit-learn's NMF convention): every ``check_every``
iterations the solver's loss is evaluated and recorded; a member stops with
``CONVERGED`` when ``|loss_prev - loss| / loss_init < tol`` (or, for a
solver that declares its own ``progress`` measure, when ``progress <= tol``),
with ``MAX_ITER`` after ``max_iter`` iterations, and with ``DIVERGED`` when
the loss is not finite or exceeds ``DIVERGENCE_FACTOR`` times the initial loss.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Status", "RUNNING", "DIVERGENCE_FACTOR", "RunConfig", "Carry", "n_checks", "check_loop"]


class Status(enum.IntEnum):
    """Why a fit stopped (``FitResult.status``)."""

    CONVERGED = 0
    MAX_ITER = 1
    DIVERGED = 2
    STOPPED = 3  # a callback asked to stop


RUNNING = -1

# A member whose loss exceeds this multiple of its initial loss has diverged.
DIVERGENCE_FACTOR = 1e4


class RunConfig(NamedTuple):
    """Static settings of a run (part of the compilation key; ``tol`` is not: it is traced, see :func:`check_loop`)."""

    max_iter: int
    check_every: int
    width: int  # number of factor columns (the largest rank of a rank-padded batch)
    biases: bool


class Carry(NamedTuple):
    """Loop state of a group of members.

    All running members advance in lockstep, so the iteration counter ``it``
    and the history index ``check`` are shared; a member that stops is
    frozen (its leaves are no longer updated) and keeps its own ``n_iter``
    and ``status``.  Where the member leaves sit (leading member axes, or
    batch-last lanes) is the layout's business.
    """

    factors: Any  # Factors: the iterate at the last accepted check
    state: Any
    loss_init: jax.Array
    loss_prev: jax.Array  # loss of `factors`
    kept: Any  # Factors of the last check whose loss was finite and <= loss_init (the start at first)
    kept_loss: jax.Array  # loss of `kept`
    history: jax.Array  # (..., n_checks + 1)
    n_iter: jax.Array
    status: jax.Array
    it: jax.Array  # shared iteration counter
    check: jax.Array  # shared index of the last written history entry


def n_checks(cfg: RunConfig) -> int:
    return -(-cfg.max_iter // cfg.check_every)


def initial_status(loss0):
    return jnp.where(jnp.isfinite(loss0), RUNNING, Status.DIVERGED.value).astype(jnp.int32)


def initial_history(cfg: RunConfig, loss0):
    return jnp.full(loss0.shape + (n_checks(cfg) + 1,), jnp.nan, dtype=loss0.dtype).at[..., 0].set(loss0)


def check_loop(cfg: RunConfig, carry: Carry, step, loss_fn, select, stop_at, tol, progress_fn=None) -> Carry:
    """Run every member, one check block at a time, until ``stop_at``, ``max_iter`` or every member stopped.

    ``tol`` (traced, so fits with other tolerances reuse the program) is the
    relative tolerance; a negative value (``tol=None``) never converges.

    ``step(factors, state)`` advances every member by one iteration,
    ``loss_fn(factors, state)`` returns the member-shaped losses (the state
    matters to solvers with an ``objective``, e.g. SVD++), and
    ``select(pred, new, old)`` keeps the ``old`` leaves of members where
    ``pred`` (member-shaped) is false.  ``progress_fn(factors, state)``
    (optional, member-shaped) replaces the loss-change test: a member
    converges where ``progress <= tol``.
    """

    def body(c: Carry) -> Carry:
        n = jnp.minimum(cfg.check_every, cfg.max_iter - c.it)
        # Frozen members are stepped too (SIMD lanes cannot idle) and their
        # results discarded below, once per check rather than once per step.
        f, s = jax.lax.fori_loop(0, n, lambda _, fs: step(*fs), (c.factors, c.state))
        it = c.it + n
        check = c.check + 1
        loss = loss_fn(f, s)
        if loss.ndim == 0:
            # A single member only reaches the body while running; a constant
            # lets XLA drop the freezing selects (fewer kernels to compile).
            running = jnp.ones((), bool)
        else:
            running = c.status == RUNNING
        # A loss far above the initial one is a blow-up (a too-large step), not
        # convergence, even though it may pass the tol test; treat it like inf.
        finite = jnp.isfinite(loss) & (loss <= DIVERGENCE_FACTOR * c.loss_init)
        # sklearn's rule on the absolute change: for monotone solvers (ALS,
        # HALS, MU) identical to (loss_prev - loss) / loss_init < tol; for
        # gradient methods an increase larger than tol is oscillation or a
        # blow-up in progress, not convergence.
        if progress_fn is None:
            converged = (tol >= 0) & ((jnp.abs(c.loss_prev - loss) < tol * c.loss_init) | (loss == 0))
        else:
            converged = (tol >= 0) & (progress_fn(f, s) <= tol)
        status = jnp.where(
            ~finite,
            Status.DIVERGED.value,
            jnp.where(converged, Status.CONVERGED.value, jnp.where(it >= cfg.max_iter, Status.MAX_ITER.value, RUNNING)),
        ).astype(jnp.int32)
        accept = running & finite
        # A blow-up climbs above the initial loss before it reaches inf (or the
        # factor above), so a member that diverges ends with the factors of its
        # last check no worse than the start, not one already on its way up.
        sound = accept & (loss <= c.loss_init)
        kept = select(sound, f, c.kept)
        kept_loss = jnp.where(sound, loss, c.kept_loss)
        diverged = running & ~finite
        history = jnp.where(running[..., None], c.history.at[..., check].set(loss), c.history)
        return Carry(
            factors=select(diverged, kept, select(accept, f, c.factors)),
            state=select(running, s, c.state),
            loss_init=c.loss_init,
            loss_prev=jnp.where(diverged, kept_loss, jnp.where(accept, loss, c.loss_prev)),
            kept=kept,
            kept_loss=kept_loss,
            history=history,
            n_iter=jnp.where(running, it, c.n_iter),
            status=jnp.where(running, status, c.status),
            it=it,
            check=check,
        )

    def cond(c: Carry):
        return jnp.any(c.status == RUNNING) & (c.it < stop_at)

    return jax.lax.while_loop(cond, body, carry)
