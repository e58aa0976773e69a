r"""The sharded run: one ``shard_map``-ed program per phase, the run layer's check loop inside.

``jmf.fit(data, solver, rank, mesh=mesh)`` for ONE matrix lands here
(:func:`run_sharded`).  Two compiled programs, both ``jax.jit`` of a
``jax.shard_map`` over the 1-D mesh:

* **start** -- every device builds its bucket layouts (the engine's
  :func:`jmf._src.solvers._blocked.side_layout` on its entries), draws its own
  rows of the initial factors (the counter-based initializers of
  :mod:`jmf._src.init` at global indices, so the start equals the
  single-device one), zeroes rows/columns without observations, adds biases
  (offset = the global mean, by ``psum``), builds the solver state and
  evaluates the loss;
* **advance** -- :func:`jmf._src.run.loop.check_loop`, the same loop every
  fit runs: the loss is summed over devices, so status, history and the
  stopping rule are identical on every device and equal to a single-device
  fit's (to float rounding).  ``stop_at`` is traced: with a progress bar or a
  callback the same program runs in time chunks.

Factors stay sharded: ``W`` (``(P mb, k)``, ``P(axis)``), ``H`` (``(k, P nb)``,
``P(None, axis)``), biases like their factor, the offset replicated.  Rows
and columns beyond ``(m, n)`` are zero padding (a ``NamedSharding`` splits
evenly); :func:`jmf.sharding.gather_factors` returns the trimmed NumPy
factors, :func:`jmf.sharding.save_sharded` writes one file per shard.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .._validation import as_key, check_int, check_rank, check_tol
from ..data import Sparse, as_data
from ..factors import Factors
from ..init import _grid, _seed_words
from ..run.driver import select
from ..run.executor import ProgressInfo, _compiling_note, _progress_bar, _time_stops
from ..run.loop import (
    RUNNING,
    Carry,
    RunConfig,
    Status,
    check_loop,
    initial_history,
    initial_status,
    iteration_schedule,
    run_config,
)
from ..sharding import _axis_name
from ..solvers.base import Solver
from .layout import ShardedDense, ShardedSparse, local_view, shard_dense, shard_sparse
from .solvers import Ctx, Impl, entry_sums, make_impl, observed

__all__ = ["run_sharded", "make_ctx", "factor_specs", "lapack_safe", "SHARDED_INITS"]

#: Initializers a sharded fit draws on every device (counter-based: a device draws exactly its own rows).
SHARDED_INITS = ("random", "uniform", "normal")


def lapack_safe(mesh: Mesh) -> bool:
    """LAPACK custom calls cannot deadlock: at most one CPU device of this process is in the mesh."""
    me = jax.process_index()
    return sum(1 for d in mesh.devices.flat if d.platform == "cpu" and d.process_index == me) <= 1


def make_ctx(data, chunk_size: int = 1 << 16) -> Ctx:
    mesh = data.mesh
    if isinstance(data, ShardedSparse):
        return Ctx(data.axis, data.devices, tuple(data.shape), data.blocks, "sparse", data.h_exchange,
                   data.w_exchange, lapack_safe(mesh), chunk_size, data.max_counts)
    return Ctx(data.axis, data.devices, tuple(data.shape), data.blocks, "dense", None, None, lapack_safe(mesh),
               chunk_size)


def factor_specs(axis: str, biases: bool) -> Factors:
    b = P(axis) if biases else None
    return Factors(P(axis), P(None, axis), b, b, P() if biases else None)


def _carry_specs(axis: str, biases: bool) -> Carry:
    fs = factor_specs(axis, biases)
    r = P()
    return Carry(fs, P(axis), r, r, fs, r, r, r, r, r, r)


def _lead(tree):
    return jax.tree_util.tree_map(lambda x: x[None], tree)


def _unlead(tree):
    return jax.tree_util.tree_map(lambda x: x[0], tree)


# -- per-device phases ----------------------------------------------------------------------------------


def _init_factors(ctx: Ctx, cfg: RunConfig, init_kind: str, key, data) -> Factors:
    """This device's rows of ``init_kind(key, data, k)`` (see :func:`jmf._src.init._components`)."""
    mb, nb = ctx.blocks
    k = cfg.width
    dtype = data.A.dtype if ctx.kind == "dense" else data.r_vals.dtype
    i = lax.axis_index(ctx.axis)
    seed = _seed_words(key)
    kind = "uniform" if init_kind == "uniform" else "normal"
    W = _grid(seed, 0, k, mb, kind, dtype, start=i * mb).T
    H = _grid(seed, 1, k, nb, kind, dtype, start=i * nb)
    if init_kind != "uniform":
        n_w, _, s_abs = entry_sums(ctx, data)
        scale = jnp.sqrt((s_abs / n_w) / jnp.asarray(k, dtype)).astype(dtype)
        W, H = scale * W, scale * H
        if init_kind == "random":
            W, H = jnp.abs(W), jnp.abs(H)
    rows, cols = observed(ctx, data)
    return Factors(jnp.where(rows[:, None], W, 0), jnp.where(cols[None, :], H, 0))


def _start_local(impl: Impl, ctx: Ctx, cfg: RunConfig, init_kind: str, data, key, f0) -> Carry:
    data = local_view(data)
    f = _init_factors(ctx, cfg, init_kind, key, data) if f0 is None else f0
    if cfg.biases and f.row_bias is None:
        mb, nb = ctx.blocks
        n_w, s_v, _ = entry_sums(ctx, data)
        dtype = f.W.dtype
        f = f._replace(row_bias=jnp.zeros((mb,), dtype), col_bias=jnp.zeros((nb,), dtype),
                       offset=(s_v / n_w).astype(dtype))
    state = impl.init_state(ctx, f, data, jax.random.fold_in(key, 1))
    loss0 = impl.loss(ctx, f, state, data)
    zero = jnp.zeros((), jnp.int32)
    return Carry(f, _lead(state), loss0, loss0, f, loss0, initial_history(cfg, loss0), zero, initial_status(loss0),
                 zero, zero)


def _advance_local(impl: Impl, ctx: Ctx, cfg: RunConfig, data, carry: Carry, stop_at, tol, schedule) -> Carry:
    data = local_view(data)
    state0 = _unlead(carry.state)
    carry = carry._replace(state=state0)
    out = check_loop(cfg, carry, lambda f, s: impl.step(ctx, f, s, data),
                     lambda f, s: impl.loss(ctx, f, s, data), select, stop_at, tol, schedule)
    return out._replace(state=_lead(out.state))


# -- programs -----------------------------------------------------------------------------------------


def _data_spec(ctx: Ctx):
    return P(ctx.axis)


@partial(jax.jit, static_argnames=("impl", "ctx", "cfg", "init_kind", "mesh"))
def _start_program(impl, ctx, cfg, init_kind, mesh, data, key, f0):
    f0_spec = None if f0 is None else factor_specs(ctx.axis, f0.row_bias is not None)
    fn = jax.shard_map(partial(_start_local, impl, ctx, cfg, init_kind), mesh=mesh,
                       in_specs=(_data_spec(ctx), P(), f0_spec), out_specs=_carry_specs(ctx.axis, cfg.biases),
                       check_vma=False)
    return fn(data, key, f0)


@partial(jax.jit, static_argnames=("impl", "ctx", "cfg", "mesh"), donate_argnames=("carry",))
def _advance_program(impl, ctx, cfg, mesh, data, carry, stop_at, tol, schedule):
    spec = _carry_specs(ctx.axis, cfg.biases)
    fn = jax.shard_map(partial(_advance_local, impl, ctx, cfg), mesh=mesh,
                       in_specs=(_data_spec(ctx), spec, P(), P(), P()), out_specs=spec, check_vma=False)
    return fn(data, carry, stop_at, tol, schedule)


@partial(jax.jit, static_argnames=("impl", "ctx", "cfg", "mesh"))
def _export_program(impl, ctx, cfg, mesh, carry):
    """What the result keeps of the final state (``impl.export``), laid out by ``impl.export_specs``."""
    spec = _carry_specs(ctx.axis, cfg.biases)
    fn = jax.shard_map(lambda f, state: impl.export(ctx, f, _unlead(state)), mesh=mesh,
                       in_specs=(spec.factors, spec.state), out_specs=impl.export_specs(ctx.axis), check_vma=False)
    return fn(carry.factors, carry.state)


def step_program(impl: Impl, ctx: Ctx, cfg: RunConfig, mesh: Mesh):
    """One iteration (``step``) as its own ``jit(shard_map)`` program, for traffic and memory accounting."""
    spec = _carry_specs(ctx.axis, cfg.biases)

    def local(data, f, state):
        d = local_view(data)
        f, s = impl.step(ctx, f, _unlead(state), d)
        return f, _lead(s)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(_data_spec(ctx), spec.factors, P(ctx.axis)),
                       out_specs=(spec.factors, P(ctx.axis)), check_vma=False)
    return jax.jit(fn)


def loss_program(impl: Impl, ctx: Ctx, cfg: RunConfig, mesh: Mesh):
    """The loss evaluation of a check as its own program (for traffic accounting)."""
    spec = _carry_specs(ctx.axis, cfg.biases)

    def local(data, f, state):
        return impl.loss(ctx, f, _unlead(state), local_view(data))

    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(_data_spec(ctx), spec.factors, P(ctx.axis)),
                                 out_specs=P(), check_vma=False))


# -- the run ----------------------------------------------------------------------------------------


def _host(x):
    """A replicated (possibly multi-process) array as host NumPy."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def shard_data(data, mesh: Mesh):
    """``data`` laid out over ``mesh`` (already-sharded data is checked to use it)."""
    if isinstance(data, (ShardedSparse, ShardedDense)):
        if data.mesh != mesh:
            raise ValueError("data was sharded over another mesh than the one given to fit")
        return data
    data = as_data(data)
    if data.batch_shape:
        raise ValueError(f"data is a batch {data.batch_shape}; fit(..., mesh=) shards ONE matrix "
                         "(for batches use fit_many(..., mesh=jmf.sharding.batch_mesh()))")
    return shard_sparse(data, mesh) if isinstance(data, Sparse) else shard_dense(data, mesh)


def _place_factors(f: Factors, data, biases: bool) -> Factors:
    """User starting factors (host arrays of the real shape, or already-sharded padded ones) on the mesh."""
    if not isinstance(f, Factors):
        raise TypeError(f"init must be a name or a jmf.Factors, got {type(f).__name__}")
    if not biases and f.has_biases:
        raise ValueError("init factors carry biases, but the solver fits a model without them")
    mesh, (m, n), (M, N) = data.mesh, data.shape, data.padded_shape
    spec = factor_specs(data.axis, f.row_bias is not None)
    dtype = np.dtype(data.dtype)
    W, H = f.W, f.H
    if isinstance(W, jax.Array) and not W.is_fully_addressable:
        if W.shape[0] != M or H.shape[1] != N:
            raise ValueError(f"sharded init factors must have the padded shapes ({M}, k) and (k, {N})")
        return f
    W, H = np.asarray(W, dtype), np.asarray(H, dtype)
    if W.ndim != 2 or H.ndim != 2 or W.shape[0] != m or H.shape[1] != n or W.shape[1] != H.shape[0]:
        raise ValueError(f"init factors have W {W.shape} and H {H.shape}; expected W (m, k) and H (k, n) with "
                         f"(m, n) = {(m, n)}")
    for name in ("W", "H", "row_bias", "col_bias", "offset"):
        leaf = getattr(f, name)
        if leaf is not None and not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError(f"init factors: {name} contains NaN or inf")
    pad = lambda x, size, axis: np.pad(x, [(0, size - x.shape[axis]) if a == axis else (0, 0)  # noqa: E731
                                          for a in range(x.ndim)])
    leaves = [pad(W, M, 0), pad(H, N, 1)]
    if f.row_bias is not None:
        leaves += [pad(np.asarray(f.row_bias, dtype), M, 0), pad(np.asarray(f.col_bias, dtype), N, 0),
                   np.asarray(f.offset, dtype)]
    specs = [s for s in spec if s is not None]
    placed = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(leaves, specs)]
    return Factors(*placed) if len(placed) == 5 else Factors(placed[0], placed[1])


def run_sharded(data, solver: Solver, rank: Optional[int], *, key, init, max_iter: int, tol, check_every: int,
                biases: bool, progress, callback, chunk_size, mesh: Mesh):
    """Fit ONE matrix with its factors sharded over ``mesh``; returns its finished ``Carry`` like the run layer.

    The carry's factors are global sharded arrays (padded, see the module
    docstring); its scalars and history are host NumPy; ``state`` is what the
    solver exports (:class:`.solvers.Impl`; the Gibbs sampler's sample buffers), else None.
    """
    _axis_name(mesh)
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a jmf Solver, got {type(solver).__name__}")
    data = shard_data(data, mesh)
    kind = "sparse" if isinstance(data, ShardedSparse) else "dense"
    impl = make_impl(solver, kind)
    if solver.nonnegative and data.info is not None and data.info.get("local_min", 0.0) < 0:
        raise ValueError(f"data has negative observed entries; solver {solver.name!r} fits a nonnegative model")
    max_iter = check_int(max_iter, "max_iter")
    check_every = check_int(check_every, "check_every")
    tol = check_tol(tol)
    f0 = None
    if isinstance(init, Factors):
        f0 = _place_factors(init, data, biases)
        width = int(f0.W.shape[1])
        if rank is not None and rank != width:
            raise ValueError(f"rank={rank} does not match the init factors' rank {width}")
        init_kind = "factors"
        key = jax.random.key(0) if key is None else as_key(key)
    else:
        if init not in SHARDED_INITS:
            raise ValueError(f"a sharded fit draws its start on every device: init must be one of {SHARDED_INITS} "
                             f"or a jmf.Factors, got {init!r}")
        if rank is None:
            raise TypeError("rank is required (or pass init=Factors)")
        width = check_rank(rank, data.shape)
        init_kind = init
        key = as_key(key)
    kw = dict(solver.factory[1]) if solver.factory is not None else {}
    ctx = make_ctx(data, int(kw.get("chunk_size", 1 << 16)))
    cfg = run_config(max_iter, check_every, width, bool(biases))
    tol_arr = np.asarray(-1.0 if tol is None else tol, np.dtype(data.dtype))
    schedule = iteration_schedule(max_iter, check_every)
    multi = jax.process_count() > 1
    if callback is not None and multi:
        raise ValueError("callback is not supported for fits spanning several processes")
    bar = _progress_bar(False if multi else progress, max_iter, solver.name)
    try:
        with _compiling_note(bar, True):
            carry = _start_program(impl, ctx, cfg, init_kind, mesh, data, key, f0)
        watched = callback is not None or (bar is not None and not bar.disable)
        stops = _time_stops(max_iter, check_every, chunk_size) if watched else [max_iter]
        done, user_stop = 0, False
        for i, stop_at in enumerate(stops):
            with _compiling_note(bar, i == 0):
                carry = _advance_program(impl, ctx, cfg, mesh, data, carry, np.int32(stop_at), tol_arr, schedule)
            if not watched:
                break
            it = int(_host(carry.it))
            status = _host(carry.status)
            if bar is not None:
                bar.update(max(it - done, 0))
                bar.set_postfix(loss=f"{float(_host(carry.loss_prev)):.4g}")
            done = it
            if callback is not None:
                user_stop = bool(callback(ProgressInfo(it, _host(carry.loss_prev), _host(carry.n_iter), status,
                                                       carry.factors)))
            if user_stop or status != RUNNING:
                break
        if bar is not None and done < max_iter:
            bar.update(max_iter - done if watched else max_iter)
    finally:
        if bar is not None:
            bar.close()
    status = _host(carry.status)
    if user_stop and status == RUNNING:
        status = np.asarray(Status.STOPPED.value, np.int32)
    state = None if impl.export is None else _export_program(impl, ctx, cfg, mesh, carry)
    carry = Carry(carry.factors, state, _host(carry.loss_init), _host(carry.loss_prev), None, _host(carry.kept_loss),
                  _host(carry.history), _host(carry.n_iter), status, int(_host(carry.it)), int(_host(carry.check)))
    return carry

