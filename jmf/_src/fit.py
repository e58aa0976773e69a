"""The driver: one compiled loop runs every solver, alone or vmapped over many members.

Stopping rule (scikit-learn's NMF convention): every ``check_every``
iterations the solver's loss is evaluated and recorded; the fit stops with
``CONVERGED`` when ``|loss_prev - loss| / loss_init < tol``, with
``MAX_ITER`` after ``max_iter`` iterations, and with ``DIVERGED`` when the
loss is not finite or exceeds ``1e4`` times the initial loss -- then the
factors of the last accepted check are kept and ``loss`` is that check's loss.  ``tol=None`` runs exactly ``max_iter``
iterations.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._validation import as_key, check_bool, check_int, check_rank, check_tol
from .compilation import release_programs_near_map_limit
from .data import as_data
from .factors import Factors
from .fit_results import FitManyResult, FitResult, _to_result
from .init import get_initializer
from .mixed_shapes import _bucket_shapes, _stack_bucket
from .run.driver import Args, Job
from .run.executor import ProgressInfo, balanced_job, execute, make_plan, restore_member_axes
from .run.lanes import eligible as lanes_eligible
from .run.loop import Status, iteration_schedule, run_config
from .sharded import run_sharded
from .sharding import is_global
from .solvers.base import Solver, data_kind, traced_point

__all__ = ["Status", "FitResult", "FitManyResult", "ProgressInfo", "fit", "fit_many"]


# -- validation ---------------------------------------------------------------------


def _check_solver(solver, data):
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a jmf Solver (e.g. jmf.solvers.adam(1e-2)), got {type(solver).__name__}")
    kind = data_kind(data)
    if kind not in solver.data_kinds:
        raise ValueError(f"solver {solver.name!r} does not support {kind} data "
                         f"(supports: {', '.join(solver.data_kinds)})")
    if solver.nonnegative and not is_global(data):
        lo = data.min()
        if lo < 0:
            raise ValueError(f"data has negative observed entries (min {lo:.4g}); solver {solver.name!r} "
                             "fits a nonnegative model and needs nonnegative data")


def _check_biases(solver: Solver, biases) -> bool:
    """The model's biases: the solver's configuration decides; ``biases`` may only repeat it."""
    if biases is None:
        return solver.biases
    biases = check_bool(biases, "biases")
    if biases != solver.biases:
        if solver.biases:
            raise ValueError(f"biases=False, but solver {solver.name!r} is configured to fit biases; build it "
                             "without them (e.g. jmf.solvers.als(biases=False)) and leave fit's biases unset")
        raise ValueError(f"biases=True, but solver {solver.name!r} is configured without biases; build it with "
                         "them where the model supports them (e.g. jmf.solvers.als(biases=True), "
                         "jmf.solvers.adam(lr, biases=True)) and leave fit's biases unset")
    return biases


def _check_factors(f, data, biases):
    if not isinstance(f, Factors):
        raise TypeError(f"init must be a name, a callable or a jmf.Factors, got {type(f).__name__}")
    if not biases and f.has_biases:
        raise ValueError("init factors carry biases, but the solver fits a model without them")
    m, n = data.shape
    if f.W.ndim != 2 or f.H.ndim != 2 or f.W.shape[0] != m or f.H.shape[1] != n or f.W.shape[1] != f.H.shape[0]:
        raise ValueError(f"init factors have W {tuple(f.W.shape)} and H {tuple(f.H.shape)}; "
                         f"expected W (m, k) and H (k, n) with (m, n) = {(m, n)}")
    for leaf_name in ("W", "H", "row_bias", "col_bias", "offset"):
        leaf = getattr(f, leaf_name)
        if leaf is not None and not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError(f"init factors: {leaf_name} contains NaN or inf")
    f = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=data.dtype), f)
    return f


_PLAN_KEYS = ("layout", "devices", "lane_width")


def _check_plan(plan) -> dict:
    if plan is None:
        return {}
    if not isinstance(plan, dict):
        raise TypeError(f"plan must be a dict with keys among {_PLAN_KEYS}, got {type(plan).__name__}")
    unknown = set(plan) - set(_PLAN_KEYS)
    if unknown:
        raise ValueError(f"plan has unknown keys {sorted(unknown)}; known: {', '.join(_PLAN_KEYS)}")
    out = dict(plan)
    if "layout" in out and out["layout"] not in ("vmap", "map", "lanes"):
        raise ValueError(f"plan['layout'] must be 'vmap', 'map' or 'lanes', got {out['layout']!r}")
    for name in ("devices", "lane_width"):
        if name in out:
            out[name] = check_int(out[name], f"plan[{name!r}]")
    return out


def _refuse_tracers(fname: str, **args) -> None:
    """Clear error for ``fit``/``fit_many`` called under ``jax.jit``/``vmap``/``grad`` (traced inputs)."""
    for name, value in args.items():
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(value)):
            raise TypeError(
                f"jmf.{fname} was called inside a JAX transformation (jax.jit, vmap, grad, scan...): its "
                f"argument {name!r} is a traced value.  {fname} validates its inputs on the host and compiles "
                "its own loop, so it cannot be traced.  To batch fits, give the batch to jmf.fit_many "
                "(restarts, ranks and stacked matrices in one compiled call) instead of vmapping; to run "
                "iterations inside your own jit/scan, call the solver's pure functions: "
                "state = solver.init(factors, data); factors, state = solver.step(factors, state, data).")


# -- public API ---------------------------------------------------------------------


def fit(
    data,
    solver: Solver,
    rank: Optional[int] = None,
    *,
    key=None,
    init="random",
    max_iter: int = 200,
    tol: Optional[float] = 1e-4,
    check_every: int = 10,
    biases: Optional[bool] = None,
    progress: bool = True,
    callback: Optional[Callable[[ProgressInfo], Any]] = None,
    chunk_size: Optional[int] = None,
    mesh=None,
) -> FitResult:
    """Fit ``A ~ W H`` with ``solver`` in one compiled loop.

    Parameters
    ----------
    data : Dense, Sparse, array (m, n) or scipy.sparse matrix
        The matrix.  Arrays are wrapped in :class:`Dense` (NaN is an error;
        use ``jmf.Dense.from_nan`` for missing entries).
    solver : Solver
        E.g. ``jmf.solvers.adam(1e-2)`` or ``jmf.solvers.gradient(optax.sgd(0.1))``.
    rank : int
        Number of components ``k``, ``1 <= k <= min(m, n)``.  May be omitted
        when ``init`` is a :class:`Factors`.
    key : jax.random.key or int
        Source of all randomness (initialization, minibatch order).  The same
        key gives the same result.
    init : {"random", "uniform", "normal", "svd", ...}, callable or Factors
        Initializer name (see :mod:`jmf.init`), ``init(key, data, k, rank)``,
        or starting factors.
    max_iter : int, default 200
    tol : float or None, default 1e-4
        Stop when ``|loss_prev - loss| / loss_init < tol`` at a check; ``None``
        runs exactly ``max_iter`` iterations.  Whatever ``tol``, a loss that is
        not finite or exceeds ``1e4 * loss_init`` stops the member with
        ``DIVERGED`` and keeps its last accepted factors.
    check_every : int, default 10
        Iterations between loss evaluations (history entries and tol checks).
    biases : bool, optional
        Whether the model has row/column biases and an offset.  The solver's
        configuration decides (``solver.biases``, e.g.
        ``jmf.solvers.als(biases=True)``); a value that disagrees is an error.
    progress : bool or "always", default True
        Show a tqdm bar when stderr is a terminal; ``"always"`` shows it
        regardless, ``False`` turns it off.
    callback : callable, optional
        ``callback(ProgressInfo)`` between compiled chunks; return ``True`` to
        stop (status ``STOPPED``).  Chunks reuse one compiled function.
    chunk_size : int, optional
        Iterations per chunk when a bar or callback is active (default ``max_iter / 20``).
    mesh : jax.sharding.Mesh, optional
        Shard this ONE matrix over a 1-D mesh (:func:`jmf.sharding.model_mesh`):
        the rows of ``W`` and the columns of ``H`` (with their biases and
        entries) are split over its devices and stay sharded in the result,
        padded to a multiple of the device count (see
        :func:`jmf.sharding.gather_factors`).  ``data`` may be pre-sharded with
        :func:`jmf.sharding.shard_sparse` / :func:`~jmf.sharding.shard_dense`
        (required with several processes).  Supported solvers and the
        communication are described in ``docs/multihost.md``; ``state`` is None.

    Returns
    -------
    FitResult
        ``factors``, ``loss``, ``loss_history``, ``iterations``, ``n_iter``, ``status``, ``state``.
    """
    if mesh is not None:  # one matrix sharded over devices and hosts (jmf._src.sharded)
        _refuse_tracers("fit", rank=rank, key=key, init=init)
        if isinstance(solver, Solver) and solver.grid is not None:
            raise ValueError(f"solver {solver.name!r} carries a hyperparameter grid; a sharded fit takes one point")
        biases = _check_biases(solver, biases) if isinstance(solver, Solver) else False
        carry = run_sharded(data, solver, rank, key=key, init=init, max_iter=max_iter, tol=tol,
                            check_every=check_every, biases=biases, progress=progress, callback=callback,
                            chunk_size=chunk_size, mesh=mesh)
        return _to_result(max_iter, check_every, carry)
    _refuse_tracers("fit", data=data, rank=rank, key=key, init=init)
    data = as_data(data)
    if data.batch_shape:
        raise ValueError(f"data is a batch {data.batch_shape} of matrices; use jmf.fit_many for batches")
    if isinstance(solver, Solver) and solver.grid is not None:
        raise ValueError(f"solver {solver.name!r} carries a hyperparameter grid {solver.grid.names}; "
                         "use jmf.fit_many to fit every point")
    res = fit_many(data, solver, rank=rank, key=key, init=init, max_iter=max_iter, tol=tol,
                   check_every=check_every, biases=biases, progress=progress, callback=callback,
                   chunk_size=chunk_size)
    return res.result


def fit_many(
    data,
    solver: Solver,
    rank: Optional[int] = None,
    *,
    ranks: Optional[Sequence[int]] = None,
    key=None,
    keys=None,
    n_restarts: Optional[int] = None,
    init="random",
    max_iter: int = 200,
    tol: Optional[float] = 1e-4,
    check_every: int = 10,
    biases: Optional[bool] = None,
    progress: bool = True,
    callback: Optional[Callable[[ProgressInfo], Any]] = None,
    chunk_size: Optional[int] = None,
    mesh=None,
    memory_budget: Optional[int] = None,
    max_buckets: int = 8,
    plan: Optional[dict] = None,
) -> "FitManyResult | list[FitManyResult]":
    """Fit many members in one compiled call: restarts x ranks x matrices.

    The driver of :func:`fit` is vmapped over

    * matrices: ``data`` batched with a leading axis (``Dense`` of shape
      ``(B, m, n)``, or :func:`jmf.stack` of ``Sparse``);
    * ranks: ``ranks=[2, 4, 8]`` pads every member to ``max(ranks)`` columns
      and masks the unused ones (a rank-``r`` member equals ``fit(rank=r)``
      with the same key, to float rounding);
    * restarts: ``keys`` (an array of keys, e.g. ``jax.random.split(key, 32)``)
      or ``key`` with ``n_restarts``.

    Each member freezes once it has converged and reports its own
    ``n_iter`` and ``status``.  ``data`` may also be a list of matrices of
    mixed shapes (padded into at most ``max_buckets`` common shapes; one
    result per matrix, in order).  Other parameters are those of :func:`fit`.

    Parameters
    ----------
    mesh : jax.sharding.Mesh, optional
        A 1-D mesh (:func:`jmf.sharding.batch_mesh`): the outermost member
        axis is split over its devices, each running its own members.
        Without one, a CPU host with several CPU devices splits batches of
        small matrices over them by itself (see ``plan``).
    memory_budget : int, optional
        Bytes the run may use (default: half the free device or host
        memory); larger grids run in equal chunks of the outermost axis.
    max_buckets : int, default 8
        For a list of matrices: the most distinct padded shapes (compilations).
    plan : dict, optional
        Overrides of the execution plan, for experts and tests: ``layout``
        ("vmap": members batched; "map": members one after another in the
        same program; "lanes": batch-last), ``devices`` (CPU devices to split the members
        over; 1 runs on one device) and ``lane_width`` (members per cache
        chunk of the lanes layout).  Results do not depend on the plan
        beyond float rounding.

    Returns
    -------
    FitManyResult
        Leaves with leading member axes ``axes`` (see :class:`FitManyResult`);
        ``best()`` picks the lowest final loss over restarts.
    """
    _refuse_tracers("fit_many", data=data, rank=rank, ranks=ranks, key=key, keys=keys, init=init)
    release_programs_near_map_limit()  # before this call's programs: see jmf._src.compilation
    if isinstance(data, (list, tuple)):
        if isinstance(init, Factors):
            raise ValueError("init=Factors starts a single fit; it cannot be combined with a list of matrices")
        return _fit_list(data, solver, max_buckets=max_buckets, rank=rank, ranks=ranks,
                         key=key, keys=keys, n_restarts=n_restarts, init=init, max_iter=max_iter, tol=tol,
                         check_every=check_every, biases=biases, progress=progress, callback=callback,
                         chunk_size=chunk_size, mesh=mesh, memory_budget=memory_budget, plan=plan)
    data = as_data(data)
    _check_solver(solver, data)
    grid = solver.grid
    max_iter = check_int(max_iter, "max_iter")
    check_every = check_int(check_every, "check_every")
    tol = check_tol(tol)
    biases = _check_biases(solver, biases)
    axes: list[str] = []
    if data.batch_shape:
        if len(data.batch_shape) != 1:
            raise ValueError(f"data may have one batch axis, got batch shape {data.batch_shape}")
        axes.append("matrix")
    hparams = None
    if grid is not None:
        axes.append("param")
        hparams = {n: np.asarray(v, data.dtype) for n, v in grid.values.items()}

    factors0 = None
    init_fn = None
    if isinstance(init, Factors):
        if ranks is not None or keys is not None or n_restarts is not None or data.batch_shape or grid is not None:
            raise ValueError("init=Factors starts a single fit; it cannot be combined with ranks, keys, n_restarts, "
                             "batches or a hyperparameter grid")
        factors0 = _check_factors(init, data, biases)
        if rank is not None and rank != factors0.W.shape[1]:
            raise ValueError(f"rank={rank} does not match the init factors' rank {factors0.W.shape[1]}")
        width = factors0.W.shape[1]
        key = jax.random.key(0) if key is None else as_key(key)
    else:
        init_fn = get_initializer(init)

    rank_arr = None
    ranks_np = None
    if ranks is not None:
        if rank is not None:
            raise ValueError("give rank or ranks, not both")
        ranks_np = np.asarray([check_rank(r, data.shape, "ranks[i]") for r in ranks], dtype=np.int32)
        if ranks_np.size == 0:
            raise ValueError("ranks is empty")
        width = int(ranks_np.max())
        rank_arr = ranks_np
        axes.append("rank")
    elif factors0 is None:
        if rank is None:
            raise TypeError("rank is required (or pass ranks=[...] or init=Factors)")
        width = check_rank(rank, data.shape)

    if keys is not None:
        if key is not None or n_restarts is not None:
            raise ValueError("give keys, or key with n_restarts, not both")
        keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
        if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
            if keys.ndim != 1:
                raise ValueError(f"keys must be a 1-D array of keys, got shape {keys.shape}")
        elif keys.ndim != 2 or keys.shape[-1] != 2:
            raise ValueError("keys must be jax.random.split(key, S) (typed keys or uint32 (S, 2)), "
                             f"got shape {keys.shape}")
        elif keys.dtype != jnp.uint32:
            raise TypeError(f"keys must be typed PRNG keys or uint32 key data (jax.random.split(key, S)), "
                            f"got an array of {keys.dtype}")
        if keys.shape[0] == 0:
            raise ValueError("keys is empty")
        key_arg = keys
        axes.append("restart")
    elif n_restarts is not None:
        n_restarts = check_int(n_restarts, "n_restarts")
        key_arg = jax.random.split(as_key(key), n_restarts)
        axes.append("restart")
    else:
        key_arg = as_key(key) if factors0 is None else key

    cfg = run_config(max_iter, check_every, width, bool(biases))
    # Host-side (numpy) so that building the arguments compiles nothing.
    mask = None if ranks_np is None else (np.arange(width)[None, :] < ranks_np[:, None]).astype(data.dtype)
    # A grid's values are traced data (args.hparams); the static job keeps only what every point shares
    # (the factory and the metadata), so another grid of the same size reuses the compiled programs.
    job_solver = solver if grid is None else solver._replace(**_STRIPPED, name=solver.factory[0].__name__)
    job = Job(job_solver, cfg, init_fn, tuple(axes))
    # tol (a negative value never converges), max_iter and check_every are traced, so fits with other
    # tolerances and iteration budgets reuse the compiled programs.
    args = Args(key_arg, rank_arr, factors0, data, mask, np.asarray(-1.0 if tol is None else tol, data.dtype),
                hparams, iteration_schedule(max_iter, check_every))
    if grid is None:
        job, args = _traced_hyperparameters(job, args, solver)
    if memory_budget is not None:
        memory_budget = check_int(memory_budget, "memory_budget")
    plan_kw = dict(mesh=mesh, memory_budget=memory_budget, **_check_plan(plan))
    run_plan = make_plan(job, args, **plan_kw)
    # Members split over devices evenly along another axis when the first one would leave a device idle
    # part of the time; a callback sees members as they run, so it keeps the job's own order.
    run_job = None if callback is not None else balanced_job(job, args, run_plan)
    if run_job is not None:
        run_plan = make_plan(run_job, args, **plan_kw)
    carry = execute(run_job or job, args, run_plan, progress=progress, callback=callback, chunk_size=chunk_size,
                    desc=solver.name)
    if run_job is not None:
        carry = restore_member_axes(carry, run_job.axes, job.axes)
    params = None if grid is None else {n: np.asarray(v) for n, v in grid.values.items()}
    return FitManyResult(_to_result(max_iter, check_every, carry), tuple(axes), ranks_np, params)


# What a job's solver drops when its hyperparameters are traced: every member rebuilds it at its point
# (jmf._src.run.driver.member_solver), so the compiled programs depend on the factory and metadata alone.
_STRIPPED = dict(init=None, step=None, loss=None, spec=None, grid=None, update_w=None, direct=None, progress=None,
                 objective=None)


def _traced_hyperparameters(job: Job, args: Args, solver: Solver):
    """The job with ``solver``'s nonzero searchable hyperparameters as traced values: a grid of one point, no axis.

    ``als(l2=0.1)`` and ``als(l2=0.3)`` then run the same compiled programs,
    as points of a grid do: a script that loops over penalties or learning
    rates compiles once.  Kept as constants: zeros (a factory may skip the
    term), solvers that are not a factory's own product (see
    :func:`jmf._src.solvers.base.traced_point`), and the lanes layout's
    kernels for batches of tiny dense matrices, which take no traced values.
    """
    split = traced_point(solver)
    if split is None or solver.direct is not None or lanes_eligible(job, args):
        return job, args
    static, point = split
    job_solver = solver._replace(**_STRIPPED, factory=static)
    dtype = args.data.dtype
    # a (W, H) pair stays a pair of scalars: the factory reads a 1-D array as one value for both
    hparams = {n: tuple(np.asarray(x, dtype) for x in v) if isinstance(v, tuple) else np.asarray(v, dtype)
               for n, v in point.items()}
    return job._replace(solver=job_solver), args._replace(hparams=hparams)


# -- mixed shapes (jmf._src.mixed_shapes) ---------------------------------------------------


def _fit_list(items: Sequence, solver, max_buckets: int = 8, **kwargs) -> list:
    """Fit each matrix of ``items`` (mixed shapes allowed): one :func:`fit_many` call per bucket."""
    datas = [as_data(x, name=f"data[{i}]") for i, x in enumerate(items)]
    if not datas:
        raise ValueError("data is an empty list")
    for i, d in enumerate(datas):
        if d.batch_shape:
            raise ValueError(f"data[{i}] is itself a batch {d.batch_shape}; give single matrices in a list")
    kinds = {type(d) for d in datas}
    if len(kinds) > 1:
        raise TypeError("data mixes Dense and Sparse matrices; fit them in separate calls")
    if any(getattr(d, "absent", "missing") == "zero" for d in datas):  # padding would add observed zeros
        raise ValueError("a list of sparse matrices with absent='zero' cannot be padded into shared shapes; "
                         "fit them one by one, or stack same-shape matrices with jmf.stack")
    candidates = [kwargs.get("rank")] + list(kwargs.get("ranks") or [])
    requested = [r for r in candidates if isinstance(r, (int, np.integer))]
    for i, d in enumerate(datas):
        if requested and max(requested) > min(d.shape):
            raise ValueError(f"rank {max(requested)} is out of range for data[{i}] of shape {d.shape}: "
                             f"it must be between 1 and {min(d.shape)}")
    padded = _bucket_shapes([d.shape for d in datas], max_buckets)
    results: list[Any] = [None] * len(datas)
    for shape in sorted(set(padded)):
        members = [i for i, s in enumerate(padded) if s == shape]
        bucket = _stack_bucket([datas[i] for i in members], shape)
        res = fit_many(bucket, solver, **kwargs)
        subs = _members_of_bucket(res.result._replace(iterations=None), tuple(datas[i].shape for i in members))
        for sub, i in zip(subs, members):
            sub = sub._replace(iterations=res.result.iterations)
            results[i] = FitManyResult(sub, tuple(a for a in res.axes if a != "matrix"), res.ranks, res.params)
    return results


def _members_of_bucket(result: FitResult, shapes: tuple) -> list:
    """Every member of a bucket's result, its factors trimmed to its own ``shapes[b]``.

    The device arrays are split by ONE program per bucket (indexing and slicing them eagerly compiled a
    program per leaf shape and member); host arrays (the loss history) are split on the host.
    """
    leaves, tree = jax.tree_util.tree_flatten(result._replace(factors=None))
    on_device = [isinstance(x, jax.Array) for x in leaves]
    factors, others = _split_bucket(result.factors, [x for x, d in zip(leaves, on_device) if d], shapes)
    out = []
    for b, (f, rest) in enumerate(zip(factors, others)):
        it = iter(rest)
        sub = jax.tree_util.tree_unflatten(tree, [next(it) if d else x[b] for x, d in zip(leaves, on_device)])
        out.append(sub._replace(factors=f))
    return out


@partial(jax.jit, static_argnames=("shapes",))
def _split_bucket(factors: Factors, leaves: list, shapes: tuple):
    own = []
    for b, (m, n) in enumerate(shapes):
        f = jax.tree_util.tree_map(lambda x: x[b], factors)
        own.append(f._replace(W=f.W[..., :m, :], H=f.H[..., :, :n],
                              row_bias=None if f.row_bias is None else f.row_bias[..., :m],
                              col_bias=None if f.col_bias is None else f.col_bias[..., :n]))
    return own, [[x[b] for x in leaves] for b in range(len(shapes))]
