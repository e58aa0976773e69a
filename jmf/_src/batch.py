"""Running many members: memory-aware chunking, sharding, progress, and mixed-shape buckets.

:func:`execute` runs a group of members (the member grid of
:func:`jmf.fit_many`) through the compiled driver.  When the grid would not
fit a memory budget it is split along its outermost axis into chunks of one
common size (the last chunk padded by repeating members, so every chunk
reuses one compilation); with a mesh the outermost axis is also sharded
over devices.  Members are independent, so chunked, sharded and plain runs
give identical results.

:func:`fit_list` fits a list of matrices of mixed shapes: matrices are
grouped into buckets of a common padded shape (padding rows and columns are
unobserved, weight 0), each bucket runs as one batch, and results come back
trimmed, in input order.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .data import Dense, Sparse, _rebuild, as_data
from .driver import _RUNNING, Args, Job, Status, _Carry, _n_checks, advance_jit, run_jit, run_sharded_jit, start_jit
from .sharding import _axis_name, default_memory_budget, is_global

__all__ = ["execute", "fit_list", "member_bytes"]


# -- memory ---------------------------------------------------------------------------


def _single(x):
    """ShapeDtypeStruct of one matrix of a batched leaf."""
    return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)


def member_bytes(job: Job, args: Args) -> int:
    """Estimated bytes one member needs while running (factors, solver state, temporaries, history).

    Factors are counted three times (current, accepted copy, update) and the
    solver state twice; temporaries are three ``m x n`` arrays for dense data
    and three ``nnz x k`` arrays for sparse data (residuals, gathered rows).
    """
    data = args.data
    m, n = data.shape
    k = job.cfg.width
    item = jnp.dtype(data.dtype).itemsize
    factor_elems = (m + n) * k + (m + n + 1 if job.cfg.biases else 0)
    if isinstance(data, Dense):
        temps = 3 * m * n
        single = data if "matrix" not in job.axes else jax.tree_util.tree_map(_single, data)
    else:
        nnz = data.vals.shape[-1]
        temps = 3 * nnz * k + 2 * nnz
        single = data if "matrix" not in job.axes else jax.tree_util.tree_map(_single, data)
    from .factors import Factors

    f_struct = Factors(jax.ShapeDtypeStruct((m, k), data.dtype), jax.ShapeDtypeStruct((k, n), data.dtype))
    if job.cfg.biases:
        f_struct = f_struct._replace(row_bias=jax.ShapeDtypeStruct((m,), data.dtype),
                                     col_bias=jax.ShapeDtypeStruct((n,), data.dtype),
                                     offset=jax.ShapeDtypeStruct((), data.dtype))
    try:
        state = jax.eval_shape(lambda f, d: job.solver.init(f, d, jax.random.key(0)), f_struct, single)
        state_bytes = sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(state))
    except Exception:  # a solver whose init cannot be traced abstractly: assume Adam-like state
        state_bytes = 2 * factor_elems * item
    return int(item * (3 * factor_elems + temps + _n_checks(job.cfg) + 1) + 2 * state_bytes)


def _axis_len(job: Job, args: Args, axis: str) -> int:
    if axis == "matrix":
        return jax.tree_util.tree_leaves(args.data)[0].shape[0]
    if axis == "rank":
        return args.rank.shape[0]
    return args.key.shape[0]


def _data_bytes_per_matrix(args: Args) -> int:
    leaves = jax.tree_util.tree_leaves(args.data)
    return sum(x.size * x.dtype.itemsize for x in leaves) // max(1, leaves[0].shape[0])


def _take_outer(job: Job, args: Args, idx: np.ndarray) -> Args:
    outer = job.axes[0]
    idx = jnp.asarray(idx)
    if outer == "matrix":
        return args._replace(data=jax.tree_util.tree_map(lambda x: x[idx], args.data))
    if outer == "rank":
        return args._replace(rank=args.rank[idx], mask=args.mask[idx])
    return args._replace(key=args.key[idx])


def _plan(job: Job, args: Args, mesh, memory_budget) -> tuple[int, int]:
    """(number of outer slices, slices per chunk) -- chunk a multiple of the device count."""
    n_dev = 1 if mesh is None else mesh.devices.size
    if not job.axes:
        return 1, 1
    n_outer = _axis_len(job, args, job.axes[0])
    per_member = member_bytes(job, args)
    members_per_slice = math.prod(_axis_len(job, args, a) for a in job.axes[1:])
    per_slice = per_member * members_per_slice
    if job.axes[0] == "matrix":
        per_slice += _data_bytes_per_matrix(args)
    budget = default_memory_budget() if memory_budget is None else memory_budget
    fit_slices = max(1, budget // max(per_slice, 1))
    chunk = min(n_outer, fit_slices)
    chunk = max(n_dev, (chunk // n_dev) * n_dev)
    return n_outer, chunk


def host_threads() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. 1 under ``taskset -c 0``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# Per-member work (m n k, or nnz k) up to which XLA keeps a batched step on one core.
_SMALL_MEMBER_WORK = 1 << 17


def _concurrent_groups(job: Job, args: Args, mesh, callback, n_outer: int) -> int:
    """How many chunks to run at once from host threads (1: sequentially).

    XLA on CPU splits only large operations over cores; a batch of small
    matrices runs mostly on one core however many it has.  Such batches are
    cut into one chunk per core, each run from its own thread (measured on
    2 cores: 1.5-1.8x the fits/s of one call for the 4 x 2 seed problem,
    1.3x for 100 x 50 at rank 5).  The members are independent, so the
    results are those of a single call.
    """
    from . import lanes

    if mesh is not None or callback is not None or n_outer < 2 or jax.default_backend() != "cpu":
        return 1
    data = args.data
    k = job.cfg.width
    work = (data.nnz if isinstance(data, Sparse) else math.prod(data.shape)) * k
    if work > _SMALL_MEMBER_WORK:
        return 1
    members = n_outer * math.prod(_axis_len(job, args, a) for a in job.axes[1:])
    # Every thread needs enough members to fill its vector loops (lanes) or to amortize dispatch.
    per_thread = max(1, members // (256 if lanes.eligible(job, args) else 64))
    return max(1, min(host_threads(), per_thread, n_outer))


# -- running ----------------------------------------------------------------------------


def _progress_bar(progress, total, desc):
    if progress is False or progress is None:
        return None
    from tqdm.auto import tqdm

    # disable=None: tqdm switches itself off when stderr is not a terminal.
    return tqdm(total=total, desc=desc, unit="it", disable=None if progress is True else False, leave=False)


def _time_chunks(cfg, chunk_size, n_hint=20) -> list[int]:
    ce = cfg.check_every
    if chunk_size is None:
        chunk_size = max(ce, -(-cfg.max_iter // n_hint // ce) * ce)
    else:
        chunk_size = max(ce, -(-chunk_size // ce) * ce)
    return list(range(chunk_size, cfg.max_iter, chunk_size)) + [cfg.max_iter]


def _run_group(job: Job, args: Args, mesh, bar, callback, chunk_size, progress_info):
    """One chunk of members: a single compiled call, or time chunks for a live bar / callback."""
    cfg = job.cfg
    if mesh is not None:
        carry = run_sharded_jit(job, mesh, args)
        if bar is not None:
            bar.update(cfg.max_iter)
        return carry
    live = callback is not None or (bar is not None and not bar.disable)
    if not live:
        carry = run_jit(job, args)
        if bar is not None:
            bar.update(cfg.max_iter)
        return carry
    carry = start_jit(job, args)
    done = 0
    user_stop = False
    for stop_at in _time_chunks(cfg, chunk_size):
        carry = advance_jit(job, args, carry, jnp.asarray(stop_at, jnp.int32))
        status = np.asarray(carry.status)
        it = int(carry.it)
        if bar is not None:
            bar.update(max(it - done, 0))
            loss = np.asarray(carry.loss_prev)
            bar.set_postfix(loss=f"{float(np.nanmin(loss)):.4g}")
        done = it
        if callback is not None:
            if callback(progress_info(it, np.asarray(carry.loss_prev), np.asarray(carry.n_iter), status, carry.factors)):
                user_stop = True
        if user_stop or not (status == _RUNNING).any():
            break
    if bar is not None and done < cfg.max_iter:
        bar.update(cfg.max_iter - done)
    if user_stop:
        carry = carry._replace(status=jnp.where(carry.status == _RUNNING, Status.STOPPED.value, carry.status))
    return carry


def execute(job: Job, args: Args, *, progress=True, callback=None, chunk_size=None, mesh=None,
            memory_budget: Optional[int] = None, desc: str = "fit", progress_info=None) -> _Carry:
    """Run every member of ``args`` to completion; returns the (concatenated) carry."""
    if mesh is not None:
        _axis_name(mesh)
        if not job.axes:
            raise ValueError("mesh needs a batch to shard: give keys/n_restarts, ranks or a batch of matrices")
        if callback is not None:
            raise ValueError("callback is not supported together with mesh (each device runs its own loop)")
    if is_global(args):
        # Multi-host: every process holds its shard; no re-slicing on the host.
        if mesh is None:
            raise ValueError("data spans several processes; pass the mesh it is sharded over (mesh=...)")
        n_outer = _axis_len(job, args, job.axes[0])
        if n_outer % mesh.devices.size:
            raise ValueError(f"the {job.axes[0]} axis ({n_outer}) must be a multiple of the {mesh.devices.size} devices")
        bar = _progress_bar(progress, job.cfg.max_iter, desc)
        try:
            return _run_group(job, args, mesh, bar, None, chunk_size, progress_info)
        finally:
            if bar is not None:
                bar.close()

    n_outer, chunk = _plan(job, args, mesh, memory_budget)
    threads = _concurrent_groups(job, args, mesh, callback, n_outer)
    if threads > 1:
        chunk = min(chunk, -(-n_outer // threads))
    n_chunks = -(-n_outer // chunk)
    bar = _progress_bar(progress, job.cfg.max_iter * n_chunks, desc)
    try:
        if n_chunks == 1 and n_outer % chunk == 0:
            return _run_group(job, args, mesh, bar, callback, chunk_size, progress_info)

        def run(c):
            idx = np.arange(c * chunk, (c + 1) * chunk)
            idx = np.minimum(idx, n_outer - 1)  # pad the last chunk by repeating the last member
            return _run_group(job, _take_outer(job, args, idx), mesh, bar, callback, chunk_size, progress_info)

        if threads > 1:
            # Compile once on this thread, then run the remaining chunks concurrently.
            from concurrent.futures import ThreadPoolExecutor

            first = run(0)
            with ThreadPoolExecutor(threads) as pool:
                carries = [first] + list(pool.map(run, range(1, n_chunks)))
        else:
            carries = [run(c) for c in range(n_chunks)]
    finally:
        if bar is not None:
            bar.close()

    def cat(*xs):
        return jnp.concatenate(xs, axis=0)[:n_outer]

    members = [c._replace(it=None, check=None) for c in carries]
    carry = jax.tree_util.tree_map(cat, *members)
    it = max(int(jnp.max(c.it)) for c in carries)
    return carry._replace(it=jnp.asarray(it, jnp.int32), check=jnp.asarray(0, jnp.int32))


# -- mixed shapes ---------------------------------------------------------------------------


def _bucket_shapes(shapes: Sequence[tuple[int, int]], max_buckets: int) -> list[tuple[int, int]]:
    """Padded shape for each input shape, using at most ``max_buckets`` distinct shapes when possible.

    Exact shapes when there are few; otherwise each dimension is rounded up
    on a geometric grid whose ratio grows (1.125, 1.25, 1.5, 2, ...) until
    the number of buckets fits.
    """
    if len(set(shapes)) <= max_buckets:
        return list(shapes)
    for ratio in (1.125, 1.25, 1.5, 2.0, 4.0, 16.0):
        def up(x):
            return int(math.ceil(ratio ** math.ceil(math.log(x, ratio) - 1e-9))) if x > 1 else 1

        padded = [(up(m), up(n)) for m, n in shapes]
        if len(set(padded)) <= max_buckets:
            return padded
    big = (max(m for m, _ in shapes), max(n for _, n in shapes))
    return [big] * len(shapes)


def _pad_dense(d: Dense, shape, weighted: bool) -> tuple:
    m, n = d.shape
    M, N = shape
    A = jnp.pad(d.A, ((0, M - m), (0, N - n)))
    if not weighted:
        return A, None
    w = jnp.ones(d.shape, d.dtype) if d.weights is None else d.weights
    return A, jnp.pad(w, ((0, M - m), (0, N - n)))


def _stack_bucket(items: list, shape) -> "Dense | Sparse":
    dtype = jnp.result_type(*[x.dtype for x in items])
    if isinstance(items[0], Dense):
        weighted = any(x.weights is not None or x.shape != tuple(shape) for x in items)
        padded = [_pad_dense(x, shape, weighted) for x in items]
        A = jnp.stack([a.astype(dtype) for a, _ in padded])
        W = jnp.stack([w.astype(dtype) for _, w in padded]) if weighted else None
        return _rebuild(Dense, (A, W))
    nnz = max(x.nnz for x in items)
    cols = []
    for x in items:
        pad = nnz - x.nnz
        cols.append((jnp.pad(x.rows, (0, pad)), jnp.pad(x.cols, (0, pad)), jnp.pad(x.vals.astype(dtype), (0, pad)),
                     jnp.pad(x.effective_weights().astype(dtype), (0, pad))))
    leaves = tuple(jnp.stack(c) for c in zip(*cols))
    return _rebuild(Sparse, leaves, tuple(shape))


def fit_list(items: Sequence, fit_many_fn, max_buckets: int = 8, **kwargs) -> list:
    """Fit each matrix of ``items`` (mixed shapes allowed); see :func:`jmf.fit_many`."""
    datas = [as_data(x, name=f"data[{i}]") for i, x in enumerate(items)]
    if not datas:
        raise ValueError("data is an empty list")
    for i, d in enumerate(datas):
        if d.batch_shape:
            raise ValueError(f"data[{i}] is itself a batch {d.batch_shape}; give single matrices in a list")
    kinds = {type(d) for d in datas}
    if len(kinds) > 1:
        raise TypeError("data mixes Dense and Sparse matrices; fit them in separate calls")
    requested = [r for r in ([kwargs.get("rank")] + list(kwargs.get("ranks") or [])) if isinstance(r, (int, np.integer))]
    for i, d in enumerate(datas):
        if requested and max(requested) > min(d.shape):
            raise ValueError(f"rank {max(requested)} is out of range for data[{i}] of shape {d.shape}: "
                             f"it must be between 1 and {min(d.shape)}")
    padded = _bucket_shapes([d.shape for d in datas], max_buckets)
    results: list[Any] = [None] * len(datas)
    for shape in sorted(set(padded)):
        members = [i for i, s in enumerate(padded) if s == shape]
        bucket = _stack_bucket([datas[i] for i in members], shape)
        res = fit_many_fn(bucket, **kwargs)
        for b, i in enumerate(members):
            m, n = datas[i].shape
            sub = jax.tree_util.tree_map(lambda x: x[b], res.result._replace(iterations=None))
            f = sub.factors
            f = f._replace(
                W=f.W[..., :m, :],
                H=f.H[..., :, :n],
                row_bias=None if f.row_bias is None else f.row_bias[..., :m],
                col_bias=None if f.col_bias is None else f.col_bias[..., :n],
            )
            sub = sub._replace(factors=f, iterations=res.result.iterations)
            results[i] = type(res)(sub, tuple(a for a in res.axes if a != "matrix"), res.ranks)
    return results
