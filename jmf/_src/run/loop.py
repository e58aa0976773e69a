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
import numpy as np

__all__ = ["Status", "RUNNING", "DIVERGENCE_FACTOR", "RunConfig", "Carry", "n_checks", "run_config",
           "iteration_schedule", "check_loop"]


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
    """Static settings of a run (part of the compilation key).

    ``max_iter``, ``check_every`` and ``tol`` are not: they are traced (see
    :func:`check_loop`), so fits that differ only in them share programs.
    Built by :func:`run_config`.
    """

    slots: int  # entries of the loss history: n_checks + 1 rounded up to a power of two (see run_config)
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


def n_checks(max_iter: int, check_every: int) -> int:
    """Loss checks of a run: one every ``check_every`` iterations, and one at ``max_iter``."""
    return -(-max_iter // check_every)


def run_config(max_iter: int, check_every: int, width: int, biases: bool) -> RunConfig:
    """The static configuration of a run.

    The loss history needs ``n_checks + 1`` entries; that length is rounded
    up to a power of two, so ``max_iter=100`` and ``max_iter=120`` (10
    iterations per check) run the same programs, the unused entries NaN.
    """
    need = n_checks(max_iter, check_every) + 1
    return RunConfig(max(2, 1 << (need - 1).bit_length()), int(width), bool(biases))


def iteration_schedule(max_iter: int, check_every: int) -> np.ndarray:
    """``[max_iter, check_every]``, the traced schedule :func:`check_loop` takes."""
    return np.asarray([max_iter, check_every], np.int32)


def initial_status(loss0):
    return jnp.where(jnp.isfinite(loss0), RUNNING, Status.DIVERGED.value).astype(jnp.int32)


def initial_history(cfg: RunConfig, loss0):
    return jnp.full(loss0.shape + (cfg.slots,), jnp.nan, dtype=loss0.dtype).at[..., 0].set(loss0)


def check_loop(cfg: RunConfig, carry: Carry, step, loss_fn, select, stop_at, tol, schedule,
               progress_fn=None) -> Carry:
    """Run every member, one check block at a time, until ``stop_at``, ``max_iter`` or every member stopped.

    ``tol`` (traced, so fits with other tolerances reuse the program) is the
    relative tolerance; a negative value (``tol=None``) never converges.
    ``schedule`` is the traced :func:`iteration_schedule` ``[max_iter, check_every]``:
    fits with other iteration budgets reuse the program too, as long as
    their history fits ``cfg.slots``.

    ``step(factors, state)`` advances every member by one iteration,
    ``loss_fn(factors, state)`` returns the member-shaped losses (the state
    matters to solvers with an ``objective``, e.g. SVD++), and
    ``select(pred, new, old)`` keeps the ``old`` leaves of members where
    ``pred`` (member-shaped) is false.  ``progress_fn(factors, state)``
    (optional, member-shaped) replaces the loss-change test: a member
    converges where ``progress <= tol``.
    """

    max_iter, check_every = schedule[0], schedule[1]

    def body(c: Carry) -> Carry:
        n = jnp.minimum(check_every, max_iter - c.it)
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
            jnp.where(converged, Status.CONVERGED.value, jnp.where(it >= max_iter, Status.MAX_ITER.value, RUNNING)),
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
        return jnp.any(c.status == RUNNING) & (c.it < jnp.minimum(stop_at, max_iter))

    return jax.lax.while_loop(cond, body, carry)
