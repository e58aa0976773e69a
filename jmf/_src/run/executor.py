"""The execution plan: layout, devices and chunks of a group run, and the loop that carries it out.

:func:`make_plan` decides, before anything compiles,

* the **layout**: member-first ``vmap`` (:mod:`.driver`), batch-last
  ``lanes`` (:mod:`.lanes`) for batches of tiny dense matrices, or ``map``
  (members one after another, each with its own loop) for members that are
  large sparse problems;
* the **devices**: the outermost member axis is split over a 1-D mesh with
  ``jax.shard_map`` -- the caller's ``mesh``, or on a CPU host with several
  CPU devices (see :func:`jmf._src.sharding.cpu_devices`) an automatic mesh
  when the members are too small for XLA to spread one of them over cores,
  or are sparse ones run by ``map``;
* the **chunks**: the outer axis is cut into equal chunks that fit a memory
  budget (the last one padded by repeating members, so every chunk reuses
  one compilation); time chunks split the iterations for a live progress
  bar or a callback.

:func:`execute` then runs three programs per chunk -- start, advance
(called once, or once per time chunk: ``stop_at`` is traced, so the same
program either way) and finish -- so a run with a progress bar computes
exactly what a silent run computes.

Concurrency: programs never run concurrently from host threads.  Several
CPU devices of one process do run at once and share XLA's CPU worker pool;
LAPACK-backed custom calls (Cholesky, SVD, QR, ...) split their batch into
tasks on that pool and block until they finish, so when every worker is
blocked in such a call the process deadlocks.  Device-parallel runs are
therefore planned only for programs with no custom call (checked on the
lowered member program); others run on one device at a time.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import threading
from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..compilation import compilations, stored_fact, stored_program
from ..data import Dense, Sparse
from ..factors import Factors
from ..sharding import _axis_name, cpu_devices, default_memory_budget, is_global
from ..solvers.base import recipe_of
from . import driver, lanes
from .driver import Args, Job
from .loop import RUNNING, Carry, Status

__all__ = ["Plan", "ProgressInfo", "make_plan", "execute", "member_bytes", "blocking_custom_calls", "balanced_job",
           "restore_member_axes"]


class ProgressInfo(NamedTuple):
    """What a ``callback`` receives between compiled chunks (host arrays; batched for fit_many)."""

    iteration: int
    loss: np.ndarray
    n_iter: np.ndarray
    status: np.ndarray
    factors: Factors


class Plan(NamedTuple):
    """How a group of members runs.

    Attributes
    ----------
    layout : {"vmap", "map", "lanes"}
    mesh : Mesh or None
        The outermost member axis is split over this 1-D mesh; None runs on one device.
    n_outer : int
        Length of the outermost member axis (1 without member axes).
    chunk : int
        Outer slices per compiled call (a multiple of the mesh size).
    lane_width : int or None
        Members per cache chunk of the lanes layout (None: chosen from the matrix size).
    reason : str
        Why the plan runs where it runs (shown by ``repr``; for tests and debugging).
    """

    layout: str
    mesh: Optional[Mesh]
    n_outer: int
    chunk: int
    lane_width: Optional[int] = None
    reason: str = ""

    @property
    def n_chunks(self) -> int:
        return -(-self.n_outer // self.chunk)

    @property
    def n_devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.devices.size


# -- sizes ---------------------------------------------------------------------------------


def _axis_len(args: Args, axis: str) -> int:
    if axis == "matrix":
        return jax.tree_util.tree_leaves(args.data)[0].shape[0]
    if axis == "param":
        return jax.tree_util.tree_leaves(args.hparams)[0].shape[0]
    if axis == "rank":
        return args.rank.shape[0]
    return args.key.shape[0]


def _n_members(job: Job, args: Args) -> int:
    return math.prod(_axis_len(args, a) for a in job.axes)


def _one_matrix(job: Job, data):
    """The data of one member (ShapeDtypeStructs of a batched leaf's single matrix)."""
    if "matrix" not in job.axes:
        return data
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), data)


def member_bytes(job: Job, args: Args) -> int:
    """Estimated bytes one member needs while running (factors, solver state, temporaries, history).

    Factors are counted four times (iterate, kept copy, update, accepted
    copy) and the solver state twice; temporaries are three ``m x n`` arrays
    for dense data and three ``nnz x k`` arrays for sparse data.
    """
    data = args.data
    m, n = data.shape
    k = job.cfg.width
    item = jnp.dtype(data.dtype).itemsize
    factor_elems = (m + n) * k + (m + n + 1 if job.cfg.biases else 0)
    if isinstance(data, Dense):
        temps = 3 * m * n
    else:
        nnz = data.vals.shape[-1]
        temps = 3 * nnz * k + 2 * nnz
    f_struct = Factors(jax.ShapeDtypeStruct((m, k), data.dtype), jax.ShapeDtypeStruct((k, n), data.dtype))
    if job.cfg.biases:
        f_struct = f_struct._replace(row_bias=jax.ShapeDtypeStruct((m,), data.dtype),
                                     col_bias=jax.ShapeDtypeStruct((n,), data.dtype),
                                     offset=jax.ShapeDtypeStruct((), data.dtype))
    first = args.hparams
    if first is not None and "param" in job.axes:
        first = {k: np.asarray(v)[0] for k, v in first.items()}
    solver = driver.member_solver(job, first)
    state = jax.eval_shape(lambda f, d: solver.init(f, d, jax.random.key(0)), f_struct, _one_matrix(job, data))
    state_bytes = sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(state))
    return int(item * (4 * factor_elems + temps + job.cfg.slots) + 2 * state_bytes)


def _sequential_members(job: Job, args: Args) -> bool:
    """Whether members run one after another ("map"): several members, each a large sparse matrix.

    vmapped, the sparse engine's gathers and scatters become batched ones,
    which XLA:CPU runs much slower: on MovieLens latest-small a vmapped
    member's sweep took 1.3-2x the time of the same member alone
    (BENCHMARKS.md, sequential members).
    """
    return bool(job.axes) and isinstance(args.data, Sparse) and _member_work(job, args) > SMALL_MEMBER_WORK


def _member_work(job: Job, args: Args) -> int:
    data = args.data
    return (data.nnz if isinstance(data, Sparse) else math.prod(data.shape)) * job.cfg.width


# -- pool safety ---------------------------------------------------------------------------

# Custom calls that only annotate placement; everything else may run a foreign kernel.
_PLACEMENT_CALLS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape", "annotate_device_placement"}
_CUSTOM_CALL = re.compile(r"custom_call\s*@([\w.\-]+)")
_blocking_cache: dict = {}


def blocking_custom_calls(job: Job, args: Args, mesh: Optional[Mesh] = None) -> frozenset:
    """Custom-call targets in one member's start, step and loss (lowered, not compiled).

    XLA's own kernels never wait on its CPU worker pool, but custom calls
    may (jaxlib's LAPACK kernels do), so a program with any of these must
    not run concurrently with another on the same pool.

    ``mesh``: the mesh the members would run on.  The member program is then
    traced inside ``shard_map`` over it, the context of the real programs, so
    that JAX's tracing cache hands them this trace of the start, step and
    loss (traced outside, the run traced them a second time).
    """

    def one(x, axis):
        return None if x is None else (x[0] if axis in job.axes else x)

    hparams = None if args.hparams is None else {k: one(v, "param") for k, v in args.hparams.items()}
    member_args = (one(args.key, "restart"), one(args.rank, "rank"), args.factors0,
                   _one_matrix(job, args.data), one(args.mask, "rank"), hparams)
    structs = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), member_args)
    cache_key = (_unordered(job), str(jax.tree_util.tree_structure(structs)),
                 tuple((s.shape, str(s.dtype)) for s in jax.tree_util.tree_leaves(structs)),
                 None if mesh is None else (mesh.axis_names, mesh.devices.shape))
    if cache_key in _blocking_cache:
        return _blocking_cache[cache_key]
    description = _check_description(job, structs, mesh)

    def check():
        def program(key, rank, factors0, data, mask, hparams):
            f, s, _ = driver.start_member(job, key, rank, factors0, data, hparams)
            f, s = driver.first_iteration(job, key, f, s, data, mask, hparams)
            return driver.member_loss(job, f, s, data, hparams), s

        if mesh is not None:
            program = jax.shard_map(program, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False)
        return sorted(_custom_calls(jax.jit(program).trace(*structs)))

    _blocking_cache[cache_key] = frozenset(stored_fact("custom_calls", description, check))
    return _blocking_cache[cache_key]


def _unordered(job: Job) -> Job:
    """``job`` with its member axes in a canonical order: one member's program and bytes depend on which axes
    there are, not on their order (a job split along another axis, :func:`balanced_job`, is the same member)."""
    return job._replace(axes=tuple(sorted(job.axes)))


def _check_description(job: Job, structs, mesh: Optional[Mesh]):
    """What determines the pool-safety check's answer or a member's bytes (see :func:`_description`), or None."""
    described = _job_description(_unordered(job))
    if described is None:
        return None
    leaves, tree = jax.tree_util.tree_flatten(structs)
    return described + (str(tree), tuple((s.shape, str(s.dtype)) for s in leaves),
                        None if mesh is None else (mesh.axis_names, mesh.devices.shape))


def _custom_calls(traced) -> frozenset:
    """Custom-call targets of a traced program, from its primitives when they settle it, else lowered.

    Lowering a sampler's program took 1.6 s, several times its tracing; the
    primitives settle it when one of them is a LAPACK routine (blocks) or
    when all of them are XLA's own operations (cannot block).
    """
    prims = _primitives(traced.jaxpr)
    lapack = prims & _LAPACK_PRIMITIVES
    if lapack:
        return frozenset(f"LAPACK ({name})" for name in lapack)
    if prims <= _XLA_PRIMITIVES:
        return frozenset()
    return frozenset(set(_CUSTOM_CALL.findall(traced.lower().as_text())) - _PLACEMENT_CALLS)


# Primitives that XLA:CPU runs as jaxlib's LAPACK custom calls.
_LAPACK_PRIMITIVES = frozenset({"cholesky", "triangular_solve", "lu", "qr", "householder_product", "geqrf", "geqp3",
                                "eigh", "eig", "svd", "schur", "hessenberg", "tridiagonal", "tridiagonal_solve"})
# Primitives that lower to XLA's own operations (or only hold nested jaxprs, whose primitives are checked
# too).  Anything else (callbacks, FFI calls, primitives of other libraries) is looked up in the lowering.
_XLA_PRIMITIVES = frozenset("""
    abs acos acosh add add_any and argmax argmin asin asinh atan atan2 atanh bitcast_convert_type broadcast_in_dim
    cbrt ceil clamp closed_call concatenate cond conj convert_element_type copy copy_p cos cosh cummax cummin
    cumlogsumexp cumprod cumsum custom_jvp_call custom_vjp_call custom_vjp_call_jaxpr digamma div dot_general
    dynamic_slice dynamic_update_slice eq erf erf_inv erfc exp exp2 expm1 floor gather ge gt igamma imag integer_pow
    iota is_finite jit le lgamma log log1p logistic lt lt_to max min mul ne neg nextafter not or pad pjit pow
    random_bits random_fold_in random_seed random_split random_unwrap random_wrap real reduce_and reduce_max
    reduce_min reduce_or reduce_prod reduce_precision reduce_sum reduce_xor rem remat reshape rev round rsqrt scan
    scatter scatter-add scatter_mul scatter_min scatter_max select_n shift_left shift_right_arithmetic
    shift_right_logical sign sin sinh slice sort sqrt square squeeze stack sub tan tanh threefry2x32 transpose while
    xor optimization_barrier split shard_map
""".split())


def _primitives(jaxpr) -> set:
    """Names of the primitives in a (closed) jaxpr and every jaxpr nested in its equations' parameters."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        stack = list(eqn.params.values())
        while stack:
            v = stack.pop()
            if isinstance(v, (tuple, list)):
                stack.extend(v)
            elif hasattr(v, "eqns") or hasattr(getattr(v, "jaxpr", None), "eqns"):
                names |= _primitives(v)
    return names


# -- the plan ------------------------------------------------------------------------------

# Per-member work (m n k, or nnz k) up to which XLA keeps a member's step on one core, so
# that only splitting the members over devices puts a second core to work.
SMALL_MEMBER_WORK = 1 << 17
# Members each device needs before a split pays for itself (dispatch, vector width).
_MIN_MEMBERS_PER_DEVICE = {"lanes": 256, "vmap": 64, "map": 2}


def _auto_mesh(job: Job, args: Args, layout: str, n_outer: int, devices: Optional[int]):
    """(mesh or None, reason) for a run without a caller's mesh; ``devices`` forces the device count."""
    available = cpu_devices()
    if devices is not None and devices > max(1, len(available)):
        raise ValueError(f"plan['devices'] = {devices} but this process has {len(available)} CPU device(s)")
    if devices == 1:
        return None, "one device (plan)"
    if len(available) < 2 or jax.default_backend() != "cpu":
        return None, f"one device ({len(available)} CPU device(s) in this process)"
    if not job.axes or n_outer < 2:
        return None, "one device: nothing to split"
    if devices is None:
        # XLA:CPU runs a big dense member's matrix products on every core; a sparse member's gathers and
        # loops run on one, so sequential ("map") members still gain from a split.
        if layout != "map" and _member_work(job, args) > SMALL_MEMBER_WORK:
            return None, "one device: members large enough for XLA to use every core"
        per_device = _n_members(job, args) // _MIN_MEMBERS_PER_DEVICE[layout]
        devices = min(len(available), per_device, n_outer)
        if devices < 2:
            return None, "one device: too few members to split"
    mesh = Mesh(np.asarray(available[:devices]), ("members",))
    calls = blocking_custom_calls(job, args, mesh)
    if calls:
        return None, f"one device: custom calls {sorted(calls)} may block XLA's CPU pool"
    return mesh, f"{devices} CPU devices"


def _process_cpu_devices_in(mesh: Mesh) -> int:
    me = jax.process_index()
    return sum(1 for d in mesh.devices.flat if d.platform == "cpu" and d.process_index == me)


def make_plan(job: Job, args: Args, *, mesh: Optional[Mesh] = None, memory_budget: Optional[int] = None,
              layout: Optional[str] = None, devices: Optional[int] = None,
              lane_width: Optional[int] = None) -> Plan:
    """Decide layout, devices and chunk size for a group run (nothing is compiled).

    ``layout``, ``devices`` and ``lane_width`` override the automatic
    choices (``fit_many(..., plan={...})``); a device split is still never
    planned for programs with custom calls.
    """
    can_lane = lanes.eligible(job, args)
    if layout is None:
        layout = "lanes" if can_lane else "map" if _sequential_members(job, args) else "vmap"
    elif layout == "lanes" and not can_lane:
        raise ValueError("plan['layout'] = 'lanes' needs a batch of small dense matrices and an elementwise "
                         "gradient solver with the Frobenius loss (e.g. jmf.solvers.adam)")
    n_outer = _axis_len(args, job.axes[0]) if job.axes else 1
    if mesh is not None and devices is not None:
        raise ValueError("give mesh or plan['devices'], not both")
    if mesh is not None:
        _axis_name(mesh)
        if not job.axes:
            raise ValueError("mesh needs a batch to shard: give keys/n_restarts, ranks or a batch of matrices")
        reason = f"the caller's mesh of {mesh.devices.size} device(s)"
        if _process_cpu_devices_in(mesh) > 1 and blocking_custom_calls(job, args):
            if is_global(args):
                raise ValueError(
                    f"solver {job.solver.name!r} uses custom calls {sorted(blocking_custom_calls(job, args))} that "
                    "can deadlock when several CPU devices of one process run at once; give each process one "
                    "CPU device (jax_num_cpu_devices=1) for multi-process runs of this solver")
            mesh, reason = None, "one device (the mesh's CPU devices would block each other in custom calls)"
    else:
        mesh, reason = _auto_mesh(job, args, layout, n_outer, devices)
    n_dev = 1 if mesh is None else mesh.devices.size
    if is_global(args):
        if mesh is None:
            raise ValueError("data spans several processes; pass the mesh it is sharded over (mesh=...)")
        if n_outer % n_dev:
            raise ValueError(f"the {job.axes[0]} axis ({n_outer}) must be a multiple of the {n_dev} devices")
        return Plan(layout, mesh, n_outer, n_outer, lane_width, reason)
    if not job.axes:
        return Plan(layout, None, 1, 1, lane_width, reason)
    structs = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), getattr(x, "dtype", None)
                                                                    or np.result_type(x)), args)
    one_member = stored_fact("member_bytes", _check_description(job, structs, None), lambda: member_bytes(job, args))
    per_slice = one_member * (_n_members(job, args) // n_outer)
    if job.axes[0] == "matrix":
        leaves = jax.tree_util.tree_leaves(args.data)
        per_slice += sum(x.size * x.dtype.itemsize for x in leaves) // n_outer
    budget = default_memory_budget() if memory_budget is None else memory_budget
    fits = max(1, budget // max(per_slice, 1))
    if fits >= n_outer:  # one chunk, padded to a multiple of the devices by repeating members
        chunk = -(-n_outer // n_dev) * n_dev
    else:
        chunk = max(n_dev, fits // n_dev * n_dev)
    return Plan(layout, mesh, n_outer, chunk, lane_width, reason)


def balanced_job(job: Job, args: Args, plan: Plan) -> Optional[Job]:
    """``job`` with another member axis outermost when that splits the members evenly over the plan's devices.

    Devices split the outermost axis; when its length is not a multiple of
    the device count its last slices are padded (5 folds on 2 devices: 3
    slices each, one of them a repeat), and the busiest device sets the wall
    time.  Another axis of a multiple length (6 penalties) splits the same
    members with no padding.  None when the plan has no devices to balance,
    runs in chunks, or no other axis divides evenly.  Members come back in
    the job's own order (:func:`restore_member_axes`).
    """
    if plan.mesh is None or len(job.axes) < 2 or is_global(args) or plan.n_chunks != 1:
        return None
    n_dev = plan.mesh.devices.size
    if plan.n_outer % n_dev == 0:
        return None
    even = [a for a in job.axes[1:] if _axis_len(args, a) % n_dev == 0]
    if not even:
        return None
    outer = max(even, key=lambda a: _axis_len(args, a))
    return job._replace(axes=(outer,) + tuple(a for a in job.axes if a != outer))


@partial(jax.jit, static_argnames=("perm",))
def _permuted(tree, perm: tuple):
    return jax.tree_util.tree_map(lambda x: jnp.transpose(x, perm + tuple(range(len(perm), x.ndim))), tree)


def restore_member_axes(carry: Carry, run_axes: tuple, axes: tuple) -> Carry:
    """A member-first carry of a job run with member axes ``run_axes``, its leaves moved to ``axes`` order."""
    perm = tuple(run_axes.index(a) for a in axes)
    moved = _permuted(carry._replace(it=None, check=None), perm)
    return moved._replace(it=carry.it, check=carry.check)


# -- programs ------------------------------------------------------------------------------

_MEMBER_FIRST = ("vmap", "map")  # layouts whose carry leaves lead with the member axes

_LAYOUTS = {
    "vmap": (driver.start, driver.advance, None),
    "map": (driver.start, driver.advance_sequential, None),
    "lanes": (lanes.start, lanes.advance, lanes.finish),
}


def _layout_fns(plan: Plan):
    start, advance, finish = _LAYOUTS[plan.layout]
    if plan.layout == "lanes":
        L = plan.lane_width
        start = partial(start, L=L)
        advance = partial(advance, L=L)
        finish = partial(finish, L=L)
    return start, advance, finish


def _arg_specs(job: Job, name: str) -> Args:
    """PartitionSpecs splitting the outermost member axis of every argument that varies along it."""
    outer = job.axes[0]
    return Args(*(P(name) if outer in driver.ARG_AXES[field] else P() for field in Args._fields))


def _sharded(fn, plan: Plan, job: Job, *, carry_in: bool, scalar_counters_in: bool, scalar_counters_out: bool,
             n_scalars: int = 0):
    """``fn(args[, carry], *scalars)`` run on every device of the plan's mesh over its own members."""
    if plan.mesh is None:
        return fn
    name = plan.mesh.axis_names[0]

    def local(args, *rest):
        if carry_in:
            carry, *others = rest
            if scalar_counters_in:
                carry = carry._replace(it=carry.it[0], check=carry.check[0])
            rest = (carry, *others)
        out = fn(args, *rest)
        if scalar_counters_out:
            out = out._replace(it=out.it[None], check=out.check[None])
        return out

    in_specs = (_arg_specs(job, name),) + ((P(name),) if carry_in else ()) + (P(),) * n_scalars
    # check_vma=False: members are independent, nothing is replicated across devices.
    return jax.shard_map(local, mesh=plan.mesh, in_specs=in_specs, out_specs=P(name), check_vma=False)


@partial(jax.jit, static_argnames=("job", "plan"))
def _start_program(job: Job, plan: Plan, args: Args) -> Carry:
    start, _, _ = _layout_fns(plan)
    scalar = plan.layout in _MEMBER_FIRST
    return _sharded(lambda a: start(job, a), plan, job, carry_in=False, scalar_counters_in=False,
                    scalar_counters_out=scalar)(args)


@partial(jax.jit, static_argnames=("job", "plan"), donate_argnames=("carry",))
def _advance_program(job: Job, plan: Plan, args: Args, carry: Carry, stop_at) -> Carry:
    _, advance, _ = _layout_fns(plan)
    scalar = plan.layout in _MEMBER_FIRST
    return _sharded(lambda a, c, s: advance(job, a, c, s), plan, job, carry_in=True, scalar_counters_in=scalar,
                    scalar_counters_out=scalar, n_scalars=1)(args, carry, stop_at)


@partial(jax.jit, static_argnames=("job", "plan"))
def _finish_program(job: Job, plan: Plan, args: Args, carry: Carry) -> Carry:
    _, _, finish = _layout_fns(plan)
    return _sharded(lambda a, c: finish(job, a, c), plan, job, carry_in=True, scalar_counters_in=False,
                    scalar_counters_out=True)(args, carry)


# -- programs found without tracing ----------------------------------------------------------


class _Undescribed(Exception):
    pass


def _function_name(fn) -> tuple:
    """``(module, qualname)`` of a module-level function that resolves back to ``fn``, else raise."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    obj = sys.modules.get(module or "")
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if obj is not fn or "<" in qualname:
        raise _Undescribed
    return module, qualname


def _leaf_description(x) -> tuple:
    if isinstance(x, jax.Array):
        if not x.is_fully_addressable:
            raise _Undescribed
        committed = getattr(x, "committed", getattr(x, "_committed", True))
        return ("jax", x.shape, str(x.dtype), bool(x.aval.weak_type), repr(x.sharding) if committed else None)
    if isinstance(x, (np.ndarray, np.generic)):
        return ("numpy", x.shape, x.dtype.str)
    if isinstance(x, (bool, int, float)):
        return ("python", type(x).__name__)
    raise _Undescribed


def _job_description(job: Job) -> Optional[tuple]:
    """The job as plain values: the solver's recipe, the run configuration, the initializer and the axes."""
    solver = recipe_of(job.solver)
    if solver is None:
        return None
    try:
        init = None if job.init_fn is None else _function_name(job.init_fn)
    except _Undescribed:
        return None
    return (solver, tuple(job.cfg), init, job.axes)


def _description(job: Job, plan: Plan, dynamic: tuple):
    """What determines a program of ``job`` under ``plan`` for arguments like ``dynamic``, as plain values
    (see :func:`jmf._src.compilation.stored_program`), or None when some part cannot be described."""
    described = _job_description(job)
    if described is None:
        return None
    try:
        leaves, tree = jax.tree_util.tree_flatten(dynamic)
        arguments = (str(tree), tuple(_leaf_description(x) for x in leaves))
    except _Undescribed:
        return None
    mesh = None if plan.mesh is None else (tuple(d.id for d in plan.mesh.devices.flat), plan.mesh.axis_names,
                                           plan.mesh.devices.shape)
    return described + ((plan.layout, mesh, plan.n_outer, plan.chunk, plan.lane_width), arguments,
                        str(jax.config.jax_default_device))


def _run_program(fn, job: Job, plan: Plan, *dynamic):
    """``fn(job, plan, *dynamic)``, with the compiled program found by description when it is stored.

    A warm process then neither traces nor lowers it (``fn``: one of the jitted programs above).
    """
    program = stored_program(fn.__name__, _description(job, plan, dynamic),
                             lambda: fn.lower(job, plan, *dynamic).compile())
    if program is not None:
        try:
            return program(*dynamic)
        except TypeError:  # JAX refused the arguments (not expected: their types are in the description)
            pass
    return fn(job, plan, *dynamic)


def _finished(job: Job, plan: Plan, args: Args, carry: Carry) -> Carry:
    """The member-first carry, with the shared counters as host integers."""
    if plan.layout not in _MEMBER_FIRST:
        carry = _run_program(_finish_program, job, plan, args, carry)
    return carry._replace(it=_local_max(carry.it), check=_local_max(carry.check))


def _local_max(x) -> int:
    """Largest value of a (possibly multi-process) counter array among this process's shards."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return max(int(np.max(np.asarray(s.data))) for s in x.addressable_shards)
    return int(np.max(np.asarray(x)))


@partial(jax.jit, static_argnames=("outer",))
def _take_outer(args: Args, idx, outer: str) -> Args:
    """The members of outer slices ``idx`` (one program for every chunk)."""
    if outer == "matrix":
        return args._replace(data=jax.tree_util.tree_map(lambda x: x[idx], args.data))
    if outer == "param":
        return args._replace(hparams={k: v[idx] for k, v in args.hparams.items()})
    if outer == "rank":
        return args._replace(rank=args.rank[idx], mask=args.mask[idx])
    return args._replace(key=args.key[idx])


@partial(jax.jit, static_argnames=("n_outer",))
def _concatenate(members: list, n_outer: int):
    """Chunks' member leaves joined along the outer axis, padding dropped."""
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=0)[:n_outer], *members)


# -- running -------------------------------------------------------------------------------


def _progress_bar(progress, total, desc):
    if progress is False or progress is None:
        return None
    from tqdm.auto import tqdm

    # disable=None: tqdm switches itself off when stderr is not a terminal.
    return tqdm(total=total, desc=desc, unit="it", disable=None if progress is True else False, leave=False)


@contextlib.contextmanager
def _compiling_note(bar, first: bool):
    """Say "compiling" on a live bar when a program call takes long enough to be compiling.

    Only the bar's text changes (from a timer thread; no XLA work runs
    there).  Compiled programs are cached on disk (see
    :mod:`jmf._src.compilation`), so this shows on a machine's first run.
    """
    if not first or bar is None or bar.disable:
        yield
        return
    timer = threading.Timer(0.5, lambda: bar.set_postfix_str("compiling (first run on this machine)"))
    timer.daemon = True
    timer.start()
    try:
        with compilations() as log:
            yield
    finally:
        timer.cancel()
        if log.compiled:
            bar.set_postfix_str(f"compiled {log.compiled} program(s) in {log.seconds:.1f} s")


def _time_stops(max_iter: int, check_every: int, chunk_size, n_hint=20) -> list[int]:
    ce = check_every
    if chunk_size is None:
        chunk_size = max(ce, -(-max_iter // n_hint // ce) * ce)
    else:
        chunk_size = max(ce, -(-chunk_size // ce) * ce)
    return list(range(chunk_size, max_iter, chunk_size)) + [max_iter]


def _schedule(args: Args) -> tuple[int, int]:
    """``(max_iter, check_every)`` of a run, as host integers."""
    max_iter, check_every = (int(x) for x in np.asarray(args.schedule))
    return max_iter, check_every


def _host_view(job: Job, plan: Plan, args: Args, carry: Carry, field: str, n_real: int) -> np.ndarray:
    """A per-member carry field on the host, member-first, without padding members (no compilation)."""
    x = np.asarray(getattr(carry, field))
    if plan.layout == "lanes":
        # (C, L) per device, concatenated over devices: each device's members in order, then padding.
        per_device = x.reshape(plan.n_devices, -1)
        n_local = _n_members(job, args) // plan.n_devices
        x = per_device[:, :n_local].reshape(tuple(_axis_len(args, a) for a in job.axes))
    return x[:n_real] if job.axes else x


def _placed(job: Job, plan: Plan, args: Args) -> Args:
    """``args`` split over the plan's CPU devices as the programs take them, from host memory.

    Given arrays on one device, JAX splits them with a compiled slicing program per shape and dtype
    (which a warm process loads again); ``device_put`` of host memory splits without compiling.
    Typed PRNG keys and arrays already laid out right are left as they are.
    """
    mesh = plan.mesh
    if mesh is None or is_global(args) or any(d.platform != "cpu" for d in mesh.devices.flat):
        return args

    def place(spec, x):
        if not isinstance(x, jax.Array) or jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return x
        target = NamedSharding(mesh, spec)
        return x if x.sharding.is_equivalent_to(target, x.ndim) else jax.device_put(np.asarray(x), target)

    specs = _arg_specs(job, mesh.axis_names[0])
    return Args(*(jax.tree_util.tree_map(partial(place, spec), field) for spec, field in zip(specs, args)))


def _run_chunk(job: Job, plan: Plan, args: Args, n_real: int, *, bar, callback, chunk_size, first=True) -> Carry:
    """Start, advance (in time chunks when someone watches) and finish one chunk of members.

    ``n_real`` outer slices of ``args`` are real members, the rest repeat the last one.
    """
    args = _placed(job, plan, args)
    max_iter, check_every = _schedule(args)
    with _compiling_note(bar, first):
        carry = _run_program(_start_program, job, plan, args)
    # Processes of a multi-host run see only their own members: no live view.
    watched = (callback is not None or (bar is not None and not bar.disable)) and not is_global(args)
    stops = _time_stops(max_iter, check_every, chunk_size) if watched else [max_iter]
    done = 0
    user_stop = False
    for i, stop_at in enumerate(stops):
        with _compiling_note(bar, first and i == 0):
            carry = _run_program(_advance_program, job, plan, args, carry, np.int32(stop_at))
        if not watched:
            break
        status = _host_view(job, plan, args, carry, "status", n_real)
        loss = _host_view(job, plan, args, carry, "loss_prev", n_real)
        it = int(np.max(np.asarray(carry.it)))
        if bar is not None:
            bar.update(max(it - done, 0))
            bar.set_postfix(loss=f"{float(np.nanmin(loss)):.4g}")
        done = it
        if callback is not None:
            factors = _finished(job, plan, args, carry).factors if plan.layout not in _MEMBER_FIRST else carry.factors
            if job.axes:
                factors = jax.tree_util.tree_map(lambda x: x[:n_real], factors)
            info = ProgressInfo(it, loss, _host_view(job, plan, args, carry, "n_iter", n_real), status, factors)
            user_stop = bool(callback(info))
        if user_stop or not (status == RUNNING).any():
            break
    if bar is not None and done < max_iter:
        bar.update(max_iter - done if watched else max_iter)
    carry = _finished(job, plan, args, carry)
    if user_stop:
        carry = carry._replace(status=jnp.where(carry.status == RUNNING, Status.STOPPED.value, carry.status))
    return carry


def execute(job: Job, args: Args, plan: Plan, *, progress=True, callback=None, chunk_size=None,
            desc: str = "fit") -> Carry:
    """Run every member of ``args`` as ``plan`` says; returns the member-first carry (host int counters)."""
    if callback is not None and is_global(args):
        raise ValueError("callback is not supported for data spanning several processes")
    bar = _progress_bar(progress, _schedule(args)[0] * plan.n_chunks, desc)
    run = partial(_run_chunk, job, plan, bar=bar, callback=callback, chunk_size=chunk_size)
    try:
        if plan.n_chunks == 1 and plan.chunk == plan.n_outer:
            return run(args, plan.n_outer)
        carries = []
        for c in range(plan.n_chunks):
            # The last chunk is padded by repeating the last member, so every chunk has one shape.
            first = c * plan.chunk
            idx = np.minimum(np.arange(first, first + plan.chunk), plan.n_outer - 1).astype(np.int32)
            carries.append(run(_take_outer(args, idx, job.axes[0]), min(plan.chunk, plan.n_outer - first),
                               first=c == 0))
    finally:
        if bar is not None:
            bar.close()
    carry = _concatenate([c._replace(it=None, check=None) for c in carries], plan.n_outer)
    return carry._replace(it=max(c.it for c in carries), check=max(c.check for c in carries))
