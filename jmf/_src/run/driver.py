"""The member-first layouts: the driver vmapped over the member axes (restarts x ranks x matrices), or mapped.

:class:`Job` (static: solver, config, initializer, member axes) and
:class:`Args` (traced: keys, ranks, starting factors, data, rank masks)
describe a group of members; :func:`start` builds their :class:`Carry`
(initial factors, solver state, initial loss) and :func:`advance` runs the
check loop on it, all members batched in each step ("vmap");
:func:`advance_sequential` runs each member's own loop, one member after
another ("map", for members that are large sparse problems).  Leaves carry
the member axes in front, in ``Job.axes`` order.

A direct solver (``Solver.direct``, e.g. the truncated SVD) has no loop:
:func:`start` computes its solution right away and returns a finished carry
(one iteration, ``CONVERGED``), and :func:`advance` leaves it as it is.
Rank masks are applied by the solvers themselves (see
:mod:`jmf._src.solvers.base`), never re-applied here.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from ..data import Dense
from ..init import add_biases
from ..solvers.base import Solver, at_point
from .loop import Carry, RunConfig, Status, check_loop, initial_history, initial_status

__all__ = ["Job", "Args", "ARG_AXES", "start", "advance", "advance_sequential", "select", "nest_vmap", "nest_map",
           "start_member", "member_solver", "member_step", "member_loss", "first_iteration"]


class Job(NamedTuple):
    """Static description of a group run (hashable: part of the compilation key)."""

    solver: Solver
    cfg: RunConfig
    init_fn: Any
    axes: tuple  # member axes, outermost first, a subset of ("matrix", "param", "rank", "restart")


class Args(NamedTuple):
    """Traced inputs of a group run.

    ``key`` varies along "restart", ``rank`` and ``mask`` along "rank",
    ``data`` along "matrix", ``hparams`` (hyperparameter values, a dict of
    arrays) along "param"; ``factors0`` (a single fit's starting factors)
    ``tol`` (the stopping tolerance, negative for none) and ``schedule``
    (:func:`jmf._src.run.loop.iteration_schedule`) along none.
    """

    key: Any
    rank: Any
    factors0: Any
    data: Any
    mask: Any
    tol: Any = -1.0
    hparams: Any = None
    schedule: Any = None


# The member axes each Args field varies along (the one table the layouts and the device split read).
ARG_AXES = {"key": frozenset({"restart"}), "rank": frozenset({"rank"}), "factors0": frozenset(),
            "data": frozenset({"matrix"}), "mask": frozenset({"rank"}), "tol": frozenset(),
            "hparams": frozenset({"param"}), "schedule": frozenset()}
# start_member(key, rank, factors0, data, hparams)
_START_AXES = tuple(ARG_AXES[name] for name in ("key", "rank", "factors0", "data", "hparams"))


def nest_vmap(fn, axes: Sequence[str], arg_axes: Sequence[frozenset]):
    """vmap ``fn`` once per member axis (outermost first); ``arg_axes[i]`` lists the axes argument i varies along."""
    for axis in reversed(axes):
        in_axes = tuple(0 if axis in a else None for a in arg_axes)
        fn = jax.vmap(fn, in_axes=in_axes)
    return fn


def nest_map(fn, axes: Sequence[str], arg_axes: Sequence[frozenset]):
    """Like :func:`nest_vmap`, but one member after another (``lax.map``), each with unbatched operations."""
    for axis in reversed(axes):
        fn = _map_axis(fn, tuple(axis in a for a in arg_axes))
    return fn


def _map_axis(fn, mapped: tuple):
    def over_members(*args):
        xs = tuple(a for a, m in zip(args, mapped) if m)

        def one(x):
            it = iter(x)
            return fn(*(next(it) if m else a for a, m in zip(args, mapped)))

        return jax.lax.map(one, xs)

    return over_members


def select(pred, new, old):
    """Leafwise ``where(pred, new, old)`` with ``pred`` of the member shape broadcast over trailing axes."""

    def sel(a, b):
        p = jnp.reshape(pred, pred.shape + (1,) * (jnp.ndim(a) - pred.ndim))
        return jnp.where(p, a, b)

    return jax.tree_util.tree_map(sel, new, old)


def _observed_lines(data):
    """0/1 masks ``(m,)`` and ``(n,)`` of rows and columns with any observed weight (None if all are)."""
    if isinstance(data, Dense):
        if data.weights is None:
            return None
        observed = data.weights > 0
        return jnp.any(observed, axis=1), jnp.any(observed, axis=0)
    if getattr(data, "absent", "missing") == "zero":
        return None  # absent entries are zeros: every entry is observed
    m, n = data.shape
    w = (data.effective_weights() > 0).astype(jnp.int32)
    rows = jax.ops.segment_sum(w, data.rows, num_segments=m) > 0
    cols = jax.ops.segment_sum(w, data.cols, num_segments=n) > 0
    return rows, cols


def member_solver(job: Job, hparams) -> Solver:
    """The member's solver: the job's, or rebuilt at the member's (traced) hyperparameters."""
    return job.solver if hparams is None else at_point(job.solver, hparams)


@functools.lru_cache(maxsize=256)
def _traced_once(solver: Solver, method: str):
    """``solver``'s ``step`` or ``loss`` as one jitted function ``(*args, hparams)``, shared by every program.

    The loss is ``solver.objective(f, state, data)`` when the solver declares
    one (its objective involves parameters the factors do not hold), else
    ``solver.loss.value(f, data)``.

    A job traces its solver's step in several programs (the pool-safety
    check, the start, the loop); through one ``jax.jit`` with a stable
    identity, JAX traces it once per argument shapes and reuses the jaxpr
    (also under ``vmap``).  XLA inlines the call, so the compiled programs
    are the same.
    """

    def call(*args):
        *args, hparams = args
        s = solver if hparams is None else at_point(solver, hparams)
        if method == "step":
            return s.step(*args)
        f, state, data = args
        return s.loss.value(f, data) if s.objective is None else s.objective(f, state, data)

    return jax.jit(call)


def member_step(job: Job, f, s, data, mask, hparams=None):
    """One member's ``step`` (traced once per job and shapes, see :func:`_traced_once`)."""
    return _traced_once(job.solver, "step")(f, s, data, mask, hparams)


def member_loss(job: Job, f, s, data, hparams=None):
    """One member's loss value at factors ``f`` and solver state ``s`` (traced once per job and shapes)."""
    return _traced_once(job.solver, "loss")(f, s, data, hparams)


def start_member(job: Job, key, rank, factors0, data, hparams=None):
    """One member's starting factors, solver state and loss (traced once per job and shapes)."""
    return _start_once(job)(key, rank, factors0, data, hparams)


@functools.lru_cache(maxsize=256)
def _start_once(job: Job):
    return jax.jit(functools.partial(_start_member, job))


def _start_member(job: Job, key, rank, factors0, data, hparams):
    solver, cfg = member_solver(job, hparams), job.cfg
    if factors0 is None:
        factors0 = job.init_fn(key, data, cfg.width, rank)
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
    loss0 = member_loss(job, factors0, state, data, hparams)
    return factors0, state, loss0


def first_iteration(job: Job, key, factors, state, data, mask, hparams=None):
    """One member's first iteration: the direct solution of a direct solver, else one ``step``."""
    solver = member_solver(job, hparams)
    if solver.direct is not None:
        return solver.direct(jax.random.fold_in(key, 1), data, job.cfg.width, mask), state
    return member_step(job, factors, state, data, mask, hparams)


def start(job: Job, args: Args) -> Carry:
    member = lambda k, r, f0, d, hp: start_member(job, k, r, f0, d, hp)  # noqa: E731
    factors, state, loss0 = nest_vmap(member, job.axes, _START_AXES)(args.key, args.rank, args.factors0, args.data,
                                                                     args.hparams)
    zero = jnp.zeros((), jnp.int32)
    carry = Carry(factors, state, loss0, loss0, factors, loss0, initial_history(job.cfg, loss0),
                  jnp.zeros(loss0.shape, jnp.int32), initial_status(loss0), zero, zero)
    if job.solver.direct is not None:
        carry = _direct(job, args, carry)
    return carry


def _direct(job: Job, args: Args, carry: Carry) -> Carry:
    """The finished carry of a direct solver: its solution as iteration 1.

    The status is ``CONVERGED``, or ``DIVERGED`` if the solution is not finite."""

    def member(key, f, s, d, mk):
        f, s = first_iteration(job, key, f, s, d, mk)
        return f, member_loss(job, f, s, d)

    every = frozenset(job.axes)
    axes = (frozenset({"restart"}), every, every, frozenset({"matrix"}), frozenset({"rank"}))
    run = nest_vmap(member, job.axes, axes)
    f, loss = run(args.key, carry.factors, carry.state, args.data, args.mask)
    ok = jnp.isfinite(loss)  # the solution does not depend on the start, whatever its loss
    status = jnp.where(ok, Status.CONVERGED.value, Status.DIVERGED.value).astype(jnp.int32)
    factors = select(ok, f, carry.factors)  # a non-finite solution keeps the start, as the loop would
    kept_loss = jnp.where(ok, loss, carry.loss_init)
    one = jnp.ones((), jnp.int32)
    return carry._replace(factors=factors, loss_prev=kept_loss, kept=factors, kept_loss=kept_loss,
                          history=carry.history.at[..., 1].set(loss), n_iter=jnp.ones(loss.shape, jnp.int32),
                          status=status, it=one, check=one)


def advance(job: Job, args: Args, carry: Carry, stop_at) -> Carry:
    """Run the check loop until ``stop_at`` (traced), ``max_iter`` or every member stopped."""
    if job.solver.direct is not None:
        return carry  # finished by start

    def one_step(f, s, d, mk, hp):
        return member_step(job, f, s, d, mk, hp)

    def one_loss(f, s, d, hp):
        return member_loss(job, f, s, d, hp)

    def member_progress(f, s, d, hp):
        return member_solver(job, hp).progress(f, s, d)

    every, matrix, rank, param = frozenset(job.axes), frozenset({"matrix"}), frozenset({"rank"}), frozenset({"param"})
    step = nest_vmap(one_step, job.axes, (every, every, matrix, rank, param))
    loss_fn = nest_vmap(one_loss, job.axes, (every, every, matrix, param))
    progress_fn = None
    one_point = args.hparams if "param" not in job.axes else _first_point(args.hparams)
    if member_solver(job, one_point).progress is not None:
        progress = nest_vmap(member_progress, job.axes, (every, every, matrix, param))
        progress_fn = lambda f, s: progress(f, s, args.data, args.hparams)  # noqa: E731
    return check_loop(job.cfg, carry, lambda f, s: step(f, s, args.data, args.mask, args.hparams),
                      lambda f, s: loss_fn(f, s, args.data, args.hparams), select, stop_at, args.tol, args.schedule,
                      progress_fn)


def advance_sequential(job: Job, args: Args, carry: Carry, stop_at) -> Carry:
    """:func:`advance` with each member's own loop, one member after another (the "map" layout).

    vmapping a member whose step is already large (a sweep over a sparse
    matrix) turns each gather and scatter of the sparse engine into a
    batched one, which XLA:CPU runs several times slower than the member's
    own.  Here every member runs its check loop alone (unbatched, its state
    updated in place, stopping when it stops) inside ``lax.map``; results
    equal the vmapped layout's to float rounding.
    """
    if job.solver.direct is not None:
        return carry
    single = job._replace(axes=())
    shape = carry.loss_prev.shape
    carry = carry._replace(it=jnp.broadcast_to(carry.it, shape), check=jnp.broadcast_to(carry.check, shape))

    def member(carry_m, *fields):
        return advance(single, Args(*fields), carry_m, stop_at)

    arg_axes = (frozenset(job.axes),) + tuple(ARG_AXES[name] for name in Args._fields)
    out = nest_map(member, job.axes, arg_axes)(carry, *args)
    return out._replace(it=jnp.max(out.it), check=jnp.max(out.check))


def _first_point(hparams):
    """One member's hyperparameters (to ask the solver what it declares), or None."""
    return None if hparams is None else {k: v[0] for k, v in hparams.items()}
