"""The compiled driver shared by :func:`jmf.fit` and :func:`jmf.fit_many`.

A *group* of members (restarts x ranks x matrices, possibly one) runs in one
``lax.while_loop``.  Every ``check_every`` iterations the solver's loss is
evaluated and the sklearn NMF rule ``|loss_prev - loss| / loss_init < tol``
applied per member; members that stop are frozen.
"""

from __future__ import annotations

import enum
from functools import partial
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .factors import Factors, apply_rank_mask
from .init import add_biases
from .solvers.base import Solver

class Status(enum.IntEnum):
    """Why a fit stopped (``FitResult.status``)."""

    CONVERGED = 0
    MAX_ITER = 1
    DIVERGED = 2
    STOPPED = 3  # a callback asked to stop


_RUNNING = -1


# A member whose loss exceeds this multiple of its initial loss has diverged.
DIVERGENCE_FACTOR = 1e4


class _Config(NamedTuple):
    max_iter: int
    tol: Optional[float]
    check_every: int
    width: int
    biases: bool


class _Carry(NamedTuple):
    """Loop state of a group of members; member leaves have the member axes in front.

    All running members advance in lockstep, so the iteration counter ``it``
    and the history index ``check`` are shared scalars; a member that stops
    is frozen (its leaves are no longer updated) and keeps its own
    ``n_iter`` and ``status``.
    """

    factors: Factors  # last accepted factors (the last finite ones for a diverged member)
    state: Any
    loss_init: jax.Array
    loss_prev: jax.Array  # loss of `factors`
    history: jax.Array  # (..., n_checks + 1)
    n_iter: jax.Array
    status: jax.Array
    it: jax.Array  # shared iteration counter
    check: jax.Array  # shared index of the last written history entry


def _n_checks(cfg: _Config) -> int:
    return -(-cfg.max_iter // cfg.check_every)


def _nest_vmap(fn, axes: Sequence[str], arg_axes: Sequence[frozenset]):
    """vmap ``fn`` once per member axis (outermost first); ``arg_axes[i]`` lists the axes argument i varies along."""
    for axis in reversed(axes):
        in_axes = tuple(0 if axis in a else None for a in arg_axes)
        fn = jax.vmap(fn, in_axes=in_axes)
    return fn


def _select(pred, new, old):
    """Leafwise ``where(pred, new, old)`` with ``pred`` of the member shape broadcast over trailing axes."""

    def sel(a, b):
        p = jnp.reshape(pred, pred.shape + (1,) * (jnp.ndim(a) - pred.ndim))
        return jnp.where(p, a, b)

    return jax.tree_util.tree_map(sel, new, old)


def _observed_lines(data):
    """0/1 masks ``(m,)`` and ``(n,)`` of rows and columns with any observed weight (None if all are)."""
    from .data import Dense

    if isinstance(data, Dense):
        if data.weights is None:
            return None
        observed = data.weights > 0
        return jnp.any(observed, axis=1), jnp.any(observed, axis=0)
    m, n = data.shape
    w = (data.effective_weights() > 0).astype(jnp.int32)
    rows = jax.ops.segment_sum(w, data.rows, num_segments=m) > 0
    cols = jax.ops.segment_sum(w, data.cols, num_segments=n) > 0
    return rows, cols


def _start_member(solver: Solver, cfg: _Config, init_fn, key, rank, factors0, data):
    if factors0 is None:
        factors0 = init_fn(key, data, cfg.width, rank)
        # Rows/columns without observations cannot be learned: start them at
        # zero (this also makes a matrix padded into a mixed-shape bucket
        # start exactly like the matrix alone).
        lines = _observed_lines(data)
        if lines is not None:
            r, c = lines
            factors0 = factors0._replace(W=jnp.where(r[:, None], factors0.W, 0), H=jnp.where(c[None, :], factors0.H, 0))
    if cfg.biases and factors0.row_bias is None:
        factors0 = add_biases(factors0, data)
    state = solver.init(factors0, data, jax.random.fold_in(key, 1))
    loss0 = solver.loss.value(factors0, data)
    return factors0, state, loss0


def _start(solver, cfg, init_fn, axes, start_axes, key, rank, factors0, data) -> _Carry:
    member = lambda k, r, f0, d: _start_member(solver, cfg, init_fn, k, r, f0, d)
    factors, state, loss0 = _nest_vmap(member, axes, start_axes)(key, rank, factors0, data)
    history = jnp.full(loss0.shape + (_n_checks(cfg) + 1,), jnp.nan, dtype=loss0.dtype).at[..., 0].set(loss0)
    status = jnp.where(jnp.isfinite(loss0), _RUNNING, Status.DIVERGED.value).astype(jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    return _Carry(factors, state, loss0, loss0, history, jnp.zeros(loss0.shape, jnp.int32), status, zero, zero)


def _advance(solver: Solver, cfg: _Config, axes, advance_axes, carry: _Carry, data, mask, stop_at) -> _Carry:
    """Run all members, one check block at a time, until ``stop_at``, ``max_iter`` or every member stopped."""

    def member_step(f, s, d, mk):
        f, s = solver.step(f, s, d, mk)
        if mk is not None:
            f = apply_rank_mask(f, mk)
        return f, s

    every, per_matrix, per_rank = advance_axes
    step = _nest_vmap(member_step, axes, (every, every, per_matrix, per_rank))
    loss_fn = _nest_vmap(solver.loss.value, axes, (every, per_matrix))
    return loop(cfg, carry, lambda f, s: step(f, s, data, mask), lambda f: loss_fn(f, data), _select, stop_at)


def loop(cfg: _Config, carry: _Carry, step, loss_fn, select, stop_at) -> _Carry:
    """The check loop shared by all layouts.

    ``step(factors, state)`` advances every member by one iteration,
    ``loss_fn(factors)`` returns the member-shaped losses, and
    ``select(pred, new, old)`` keeps the ``old`` leaves of members where
    ``pred`` (member-shaped) is false.
    """

    def body(c: _Carry) -> _Carry:
        n = jnp.minimum(cfg.check_every, cfg.max_iter - c.it)
        # Frozen members are stepped too (SIMD lanes cannot idle) and their
        # results discarded below, once per check rather than once per step.
        f, s = jax.lax.fori_loop(0, n, lambda _, fs: step(*fs), (c.factors, c.state))
        it = c.it + n
        check = c.check + 1
        loss = loss_fn(f)
        if loss.ndim == 0:
            # A single member only reaches the body while running; a constant
            # lets XLA drop the freezing selects (fewer kernels to compile).
            running = jnp.ones((), bool)
        else:
            running = c.status == _RUNNING
        # A loss far above the initial one is a blow-up (a too-large step), not
        # convergence, even though it passes the tol test; treat it like inf.
        finite = jnp.isfinite(loss) & (loss <= DIVERGENCE_FACTOR * c.loss_init)
        if cfg.tol is None:
            converged = jnp.zeros(loss.shape, bool)
        else:
            # sklearn's rule on the absolute change: for monotone solvers (ALS,
            # HALS, MU) identical to (loss_prev - loss) / loss_init < tol; for
            # gradient methods an increase larger than tol is oscillation or a
            # blow-up in progress, not convergence.
            converged = (jnp.abs(c.loss_prev - loss) < cfg.tol * c.loss_init) | (loss == 0)
        status = jnp.where(
            ~finite,
            Status.DIVERGED.value,
            jnp.where(converged, Status.CONVERGED.value, jnp.where(it >= cfg.max_iter, Status.MAX_ITER.value, _RUNNING)),
        ).astype(jnp.int32)
        accept = running & finite
        history = jnp.where(running[..., None], c.history.at[..., check].set(loss), c.history)
        return _Carry(
            factors=select(accept, f, c.factors),
            state=select(running, s, c.state),
            loss_init=c.loss_init,
            loss_prev=jnp.where(accept, loss, c.loss_prev),
            history=history,
            n_iter=jnp.where(running, it, c.n_iter),
            status=jnp.where(running, status, c.status),
            it=it,
            check=check,
        )

    def cond(c: _Carry):
        return jnp.any(c.status == _RUNNING) & (c.it < stop_at)

    return jax.lax.while_loop(cond, body, carry)


class Job(NamedTuple):
    """Static description of a group run (hashable: the jit cache key)."""

    solver: Solver
    cfg: _Config
    init_fn: Any
    axes: tuple  # member axes, outermost first, subset of ("matrix", "rank", "restart")

    @property
    def start_axes(self):
        # start_member(key, rank, factors0, data)
        return (frozenset({"restart"}), frozenset({"rank"}), frozenset(), frozenset({"matrix"}))

    @property
    def advance_axes(self):
        # carry, data, mask
        return (frozenset(self.axes), frozenset({"matrix"}), frozenset({"rank"}))


class Args(NamedTuple):
    """Traced inputs of a group run; leaves vary along the member axes named in ``Job.start_axes``."""

    key: Any
    rank: Any
    factors0: Any
    data: Any
    mask: Any


def start(job: Job, args: Args) -> _Carry:
    return _start(job.solver, job.cfg, job.init_fn, job.axes, job.start_axes, args.key, args.rank, args.factors0, args.data)


def advance(job: Job, args: Args, carry: _Carry, stop_at) -> _Carry:
    return _advance(job.solver, job.cfg, job.axes, job.advance_axes, carry, args.data, args.mask, stop_at)


@partial(jax.jit, static_argnames=("job",))
def start_jit(job: Job, args: Args) -> _Carry:
    return start(job, args)


@partial(jax.jit, static_argnames=("job",), donate_argnames=("carry",))
def advance_jit(job: Job, args: Args, carry: _Carry, stop_at) -> _Carry:
    return advance(job, args, carry, stop_at)


def run(job: Job, args: Args) -> _Carry:
    """Start and run to completion (batch-last kernels for tiny dense batches, vmap otherwise)."""
    from . import lanes

    if lanes.eligible(job, args):
        return lanes.run_lanes(job, args, start, _Carry)
    return advance(job, args, start(job, args), job.cfg.max_iter)


@partial(jax.jit, static_argnames=("job",))
def run_jit(job: Job, args: Args) -> _Carry:
    """Start and run to completion in one compiled call."""
    return run(job, args)


def _outer_specs(job: Job, args: Args, name: str):
    """PartitionSpecs sharding the outermost member axis of every argument that varies along it."""
    from jax.sharding import PartitionSpec as P

    outer = job.axes[0]
    varies = {"key": outer == "restart", "rank": outer == "rank", "mask": outer == "rank", "data": outer == "matrix"}
    return Args(*(P(name) if varies.get(field, False) else P() for field in Args._fields))


@partial(jax.jit, static_argnames=("job", "mesh"))
def run_sharded_jit(job: Job, mesh, args: Args) -> _Carry:
    """:func:`run_jit` with the outermost member axis split over a 1-D ``mesh``.

    Each device runs its own loop over its local members (no communication),
    so the result equals the single-device run.  The shared counters come
    back with one entry per device.
    """
    from jax.sharding import PartitionSpec as P

    name = mesh.axis_names[0]

    def local(a: Args) -> _Carry:
        c = run(job, a)
        return c._replace(it=c.it[None], check=c.check[None])

    # check_vma=False: members are independent, no value is replicated across devices.
    return jax.shard_map(local, mesh=mesh, in_specs=(_outer_specs(job, args, name),), out_specs=P(name),
                         check_vma=False)(args)
