"""The batch-last ("lanes") layout for batches of tiny dense matrices.

``vmap`` puts the member axis first: a batch of 4x2 problems becomes arrays
of shape ``(M, 4, 2)`` whose minor dimension (2) is far narrower than a SIMD
register, and every small product becomes its own kernel.  Here the member
axis is last instead -- ``W`` is ``(m, k, L)``, ``H`` is ``(k, n, L)`` -- and
every product is unrolled into elementwise multiply-adds, so one step of
every member compiles to a handful of fused, fully vectorized loops.
Members are cut into ``C`` chunks of ``L`` lanes whose working set stays in
cache, run one after another with ``lax.map``.

The carry keeps this layout between calls (``(C, ..., L)`` leaves), so a run
can advance in time chunks (progress, callbacks) with the same programs as
a run to completion.  The check loop, statuses and history are the
driver's own (:func:`check_loop`), so results equal the member-first layout
to rounding.

The run layer chooses this layout from what a solver declares
(:class:`jmf._src.solvers.gradient.GradientSpec` with an elementwise Optax
transformation and the Frobenius loss); solvers never import it.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ..data import Dense
from ..factors import Factors
from ..losses.base import _pair
from ..solvers.gradient import GradientSpec, GradientState, nonnegative, optax_update
from . import driver
from .driver import Args, Job
from .loop import Carry, check_loop

__all__ = ["eligible", "start", "advance", "finish", "MAX_WORK"]

# Use the lanes layout when m * n * k is at most this (per member).
MAX_WORK = 512
_MAX_UNROLL = 16


class _Kernel(NamedTuple):
    """``init(f) -> state``; ``step(f, state, A, w, inv_n, mask) -> (f, state)``; ``loss(f, A, w, inv_n) -> (L,)``.

    ``f`` holds ``W (m, k, L)`` and ``H (k, n, L)``; ``A`` and ``w`` are
    ``(m, n, L)`` or ``(m, n, 1)`` (``w`` may be None); ``inv_n`` is ``(L,)``;
    ``mask`` is ``(k, L)`` or None.
    """

    init: Callable
    step: Callable
    loss: Callable


def _mm(X, Y):
    """``(p, q, L) @ (q, r, L) -> (p, r, L)``, unrolled over ``q`` when small."""
    q = X.shape[1]
    if q <= _MAX_UNROLL:
        out = X[:, 0, None, :] * Y[None, 0, :, :]
        for j in range(1, q):
            out = out + X[:, j, None, :] * Y[None, j, :, :]
        return out
    return jnp.sum(X[:, :, None, :] * Y[None, :, :, :], axis=1)


def _t(X):
    return jnp.swapaxes(X, 0, 1)


def _frobenius_kernel(spec: GradientSpec, l2, l1) -> _Kernel:
    """Batch-last kernel of ``gradient(optimizer, frobenius(l2, l1), projection)``."""
    optimizer, projection = spec.optimizer, spec.projection
    (l2W, l2H), (l1W, l1H) = _pair(l2, "l2"), _pair(l1, "l1")

    def penalty(f):
        out = 0
        if l2W:
            out = out + l2W * jnp.sum(f.W * f.W, axis=(0, 1))
        if l2H:
            out = out + l2H * jnp.sum(f.H * f.H, axis=(0, 1))
        if l1W:
            out = out + l1W * jnp.sum(jnp.abs(f.W), axis=(0, 1))
        if l1H:
            out = out + l1H * jnp.sum(jnp.abs(f.H), axis=(0, 1))
        return out

    def residual(f, A, w):
        R = A - _mm(f.W, f.H)
        return R, (R if w is None else w * R)

    def loss(f, A, w, inv_n):
        R, Rw = residual(f, A, w)
        return (jnp.sum(Rw * R, axis=(0, 1)) + penalty(f)) * inv_n

    def grad(f, A, w, inv_n):
        _, Rw = residual(f, A, w)
        gW = -2 * _mm(Rw, _t(f.H))
        gH = -2 * _mm(_t(f.W), Rw)
        if l2W:
            gW = gW + 2 * l2W * f.W
        if l2H:
            gH = gH + 2 * l2H * f.H
        if l1W:
            gW = gW + l1W * jnp.sign(f.W)
        if l1H:
            gH = gH + l1H * jnp.sign(f.H)
        return Factors(gW * inv_n[None, None, :], gH * inv_n[None, None, :])

    def init(f):
        with jax.numpy_dtype_promotion("standard"):
            return GradientState(optimizer.init(f), None)

    def step(f, state, A, w, inv_n, mask):
        g = grad(f, A, w, inv_n)
        if mask is not None:
            g = Factors(g.W * mask[None], g.H * mask[:, None])
        updates, opt_state = optax_update(optimizer, g, state.opt_state, f)
        f = Factors(f.W + updates.W, f.H + updates.H)
        if projection is not None:
            f = projection(f)
        if mask is not None:
            f = Factors(f.W * mask[None], f.H * mask[:, None])
        return f, GradientState(opt_state, None)

    return _Kernel(init, step, loss)


def _kernel(job: Job) -> _Kernel:
    loss_spec = job.solver.loss.spec
    return _frobenius_kernel(job.solver.spec, loss_spec[1], loss_spec[2])


def eligible(job: Job, args: Args) -> bool:
    """Whether a group can run in the lanes layout."""
    solver, cfg, data = job.solver, job.cfg, args.data
    spec = solver.spec
    if not isinstance(spec, GradientSpec) or not spec.elementwise or spec.batch_size is not None:
        return False
    if spec.projection not in (None, nonnegative) or solver.loss.spec[:1] != ("frobenius",):
        return False
    if not job.axes or cfg.biases or not isinstance(data, Dense):
        return False
    if args.factors0 is not None or args.hparams is not None:
        return False
    m, n = data.shape
    return m * n * cfg.width <= MAX_WORK


def member_shape(job: Job, args: Args) -> tuple:
    sizes = {"matrix": lambda: jax.tree_util.tree_leaves(args.data)[0].shape[0],
             "rank": lambda: args.rank.shape[0], "restart": lambda: args.key.shape[0]}
    return tuple(sizes[a]() for a in job.axes)


def lane_width(job: Job, args: Args) -> int:
    """Members per cache-resident chunk: a power of two whose working set stays near 512 KiB."""
    m, n = args.data.shape
    k = job.cfg.width
    item = jnp.dtype(args.data.dtype).itemsize
    per_member = item * (4 * (m * k + k * n) + 3 * m * n + 8)
    lanes = max(1, (512 * 1024) // per_member)
    return int(min(8192, max(128, 2 ** int(math.log2(lanes)))))


def _geometry(job: Job, args: Args, L=None):
    shape = member_shape(job, args)
    M = math.prod(shape)
    L = min(lane_width(job, args) if L is None else L, M)
    C = -(-M // L)
    return shape, M, L, C


def _chunked(x, shape, M, L, C):
    """(member_shape..., *rest) -> (C, L, *rest), padding by repeating the last member."""
    x = x.reshape((M,) + x.shape[len(shape):])
    pad = C * L - M
    if pad:
        x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)
    return x.reshape((C, L) + x.shape[1:])


def _unchunked(x, shape, M, L, C):
    x = x.reshape((C * L,) + x.shape[2:])[:M]
    return x.reshape(tuple(shape) + x.shape[1:])


def _broadcast_members(x, job, axis: str, shape):
    """Broadcast a leaf that varies along one member axis (leading) to the full member grid."""
    lead = [1] * len(job.axes)
    lead[job.axes.index(axis)] = shape[job.axes.index(axis)]
    x = x.reshape(tuple(lead) + x.shape[1:])
    return jnp.broadcast_to(x, tuple(shape) + x.shape[len(job.axes):])


def _lane(x):
    """(C, L, *rest) -> (C, *rest, L)."""
    return jnp.moveaxis(x, 1, -1)


def _unlane(x):
    """(C, *rest, L) -> (C, L, *rest)."""
    return jnp.moveaxis(x, -1, 1)


def start(job: Job, args: Args, L=None) -> Carry:
    """The member-first start (:func:`driver.start`) moved into the lanes layout."""
    shape, M, L, C = _geometry(job, args, L)
    mf = driver.start(job, args)
    chunk = lambda x: _chunked(x, shape, M, L, C)  # noqa: E731
    f = Factors(_lane(chunk(mf.factors.W)), _lane(chunk(mf.factors.H)))
    state = jax.vmap(_kernel(job).init)(f)
    per_member = [chunk(x) for x in (mf.loss_init, mf.history, mf.n_iter, mf.status)]
    loss0, history, n_iter, status = per_member
    zeros = jnp.zeros((C,), jnp.int32)
    return Carry(f, state, loss0, loss0, f, loss0, history, n_iter, status, zeros, zeros)


def advance(job: Job, args: Args, carry: Carry, stop_at, L=None) -> Carry:
    """Run every chunk's check loop until ``stop_at``, ``max_iter`` or all its members stopped."""
    shape, M, L, C = _geometry(job, args, L)
    kernel = _kernel(job)
    data = args.data
    chunk = lambda x: _chunked(x, shape, M, L, C)  # noqa: E731
    per_member = {}
    if "matrix" in job.axes:
        per_member["A"] = _lane(chunk(_broadcast_members(data.A, job, "matrix", shape)))
        if data.weights is not None:
            per_member["w"] = _lane(chunk(_broadcast_members(data.weights, job, "matrix", shape)))
        n_obs = jax.vmap(lambda d: d.n_observed())(data)
        per_member["inv_n"] = chunk((1 / _broadcast_members(n_obs, job, "matrix", shape)).astype(data.dtype))
    if args.mask is not None:
        per_member["mask"] = _lane(chunk(_broadcast_members(args.mask, job, "rank", shape)))
    shared_inv_n = None if "matrix" in job.axes else (1 / data.n_observed()).astype(data.dtype)

    def select(pred, new, old):
        def sel(a, b):
            if jnp.ndim(a) == 0:
                # Shared per-chunk scalars (Optax step counts) keep counting for
                # frozen members: one count per chunk instead of per member spares
                # a power per member and step in Adam's bias correction.
                return a
            return jnp.where(pred, a, b)

        return jax.tree_util.tree_map(sel, new, old)

    def run_chunk(xs):
        c, pm = xs
        if "A" in pm:
            A, w, inv_n = pm["A"], pm.get("w"), pm["inv_n"]
        else:
            A = data.A[..., None]
            w = None if data.weights is None else data.weights[..., None]
            inv_n = jnp.broadcast_to(shared_inv_n, (L,))
        mask = pm.get("mask")
        return check_loop(job.cfg, c, lambda f, s: kernel.step(f, s, A, w, inv_n, mask),
                          lambda f, s: kernel.loss(f, A, w, inv_n), select, stop_at, args.tol, args.schedule)

    return jax.lax.map(run_chunk, (carry, per_member))


def finish(job: Job, args: Args, carry: Carry, L=None) -> Carry:
    """The lanes carry back in the member-first layout (shared counters become the chunks' maximum)."""
    shape, M, L, C = _geometry(job, args, L)
    unchunk = lambda x: _unchunked(x, shape, M, L, C)  # noqa: E731

    def member_first(x):
        if x.ndim == 1:  # a per-chunk scalar such as an Optax step count
            return unchunk(jnp.broadcast_to(x[:, None], (C, L)))
        return unchunk(_unlane(x))

    factors = Factors(member_first(carry.factors.W), member_first(carry.factors.H))
    kept = Factors(member_first(carry.kept.W), member_first(carry.kept.H))
    state = jax.tree_util.tree_map(member_first, carry.state)
    per_member = [unchunk(x) for x in (carry.loss_init, carry.loss_prev, carry.kept_loss, carry.history,
                                       carry.n_iter, carry.status)]
    loss_init, loss_prev, kept_loss, history, n_iter, status = per_member
    return Carry(factors, state, loss_init, loss_prev, kept, kept_loss, history, n_iter, status,
                 jnp.max(carry.it), jnp.max(carry.check))
