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

import math
from functools import partial
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._validation import as_key, check_tol
from .data import Dense, Sparse, as_data
from .driver import Args, Job, Status, _Config, _n_checks
from .factors import Factors, rank_mask
from .init import get_initializer
from .solvers.base import Solver, data_kind
from .batch import execute, fit_list
from .sharding import is_global

__all__ = ["Status", "FitResult", "FitManyResult", "ProgressInfo", "fit", "fit_many"]


class FitResult(NamedTuple):
    """Result of :func:`fit` (or one member of :func:`fit_many`).

    Attributes
    ----------
    factors : Factors
        Final factors (the last finite ones if the fit diverged).
    loss : Array, ()
        Loss of ``factors`` (the solver's objective, mean convention).
    loss_history : Array, (n_checks + 1,)
        Loss at iterations ``iterations``; NaN after the fit stopped.
    iterations : Array of int, (n_checks + 1,)
        Iteration number of each history entry: 0, check_every, 2 check_every, ..., max_iter.
    n_iter : Array of int, ()
        Iterations performed.
    status : Array of int, ()
        A :class:`Status` value.
    state : pytree
        Final solver state (for warm starts).
    """

    factors: Factors
    loss: jax.Array
    loss_history: jax.Array
    iterations: jax.Array
    n_iter: jax.Array
    status: jax.Array
    state: Any = None

    @property
    def converged(self):
        return self.status == Status.CONVERGED

    @property
    def diverged(self):
        return self.status == Status.DIVERGED

    @property
    def status_name(self):
        """Status as a string (or an array of strings for batched results)."""
        s = np.asarray(self.status)
        if s.ndim == 0:
            return Status(int(s)).name
        return np.vectorize(lambda v: Status(int(v)).name)(s)

    def __repr__(self) -> str:
        if np.ndim(self.loss) == 0:
            return (f"FitResult(loss={float(self.loss):.6g}, n_iter={int(self.n_iter)}, "
                    f"status={self.status_name}, W={tuple(self.factors.W.shape)}, H={tuple(self.factors.H.shape)})")
        return f"FitResult(batch={tuple(np.shape(self.loss))}, W={tuple(self.factors.W.shape)})"


class ProgressInfo(NamedTuple):
    """What a ``callback`` receives between compiled chunks (host arrays; batched for fit_many)."""

    iteration: int
    loss: np.ndarray
    n_iter: np.ndarray
    status: np.ndarray
    factors: Factors


def _to_result(cfg: _Config, c) -> FitResult:
    iterations = np.minimum(np.arange(_n_checks(cfg) + 1, dtype=np.int32) * cfg.check_every, cfg.max_iter)
    return FitResult(c.factors, c.loss_prev, c.history, iterations, c.n_iter, c.status, c.state)


# -- validation ---------------------------------------------------------------------


def _check_solver(solver, data):
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a jmf Solver (e.g. jmf.solvers.adam(1e-2)), got {type(solver).__name__}")
    kind = data_kind(data)
    if kind not in solver.data_kinds:
        raise ValueError(f"solver {solver.name!r} does not support {kind} data (supports: {', '.join(solver.data_kinds)})")
    if solver.nonnegative and not is_global(data):
        lo = data.min()
        if lo < 0:
            raise ValueError(f"data has negative observed entries (min {lo:.4g}); solver {solver.name!r} "
                             "fits a nonnegative model and needs nonnegative data")


def _check_int(value, name, lo=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def _check_rank(rank, shape, name="rank"):
    rank = _check_int(rank, name)
    if rank > min(shape):
        raise ValueError(f"{name} {rank} is out of range: it must be between 1 and min(m, n) = {min(shape)} for shape {shape}")
    return rank


def _check_tol(tol):
    return check_tol(tol)


def _as_key(key, name="key"):
    return as_key(key, name)


def _check_factors(f, data, biases):
    if not isinstance(f, Factors):
        raise TypeError(f"init must be a name, a callable or a jmf.Factors, got {type(f).__name__}")
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
        Add row/column biases and an offset (default: ``solver.biases``).
    progress : bool or "always", default True
        Show a tqdm bar when stderr is a terminal; ``"always"`` shows it
        regardless, ``False`` turns it off.
    callback : callable, optional
        ``callback(ProgressInfo)`` between compiled chunks; return ``True`` to
        stop (status ``STOPPED``).  Chunks reuse one compiled function.
    chunk_size : int, optional
        Iterations per chunk when a bar or callback is active (default ``max_iter / 20``).

    Returns
    -------
    FitResult
        ``factors``, ``loss``, ``loss_history``, ``iterations``, ``n_iter``, ``status``, ``state``.
    """
    data = as_data(data)
    if data.batch_shape:
        raise ValueError(f"data is a batch {data.batch_shape} of matrices; use jmf.fit_many for batches")
    res = fit_many(data, solver, rank=rank, key=key, init=init, max_iter=max_iter, tol=tol,
                   check_every=check_every, biases=biases, progress=progress, callback=callback,
                   chunk_size=chunk_size)
    return res.result


class FitManyResult(NamedTuple):
    """Result of :func:`fit_many`: every leaf has the member axes ``axes`` in front.

    ``axes`` is a subset of ``("matrix", "rank", "restart")`` in that order:
    "matrix" when the data is a batch ``(B, m, n)``, "rank" when ``ranks``
    was given, "restart" when ``keys`` (or ``n_restarts``) was given.  For
    example ``loss`` has shape ``(len(ranks), n_restarts)`` for one matrix
    and ``(B, len(ranks), n_restarts)`` for a batch.  Rank-padded members
    have ``W`` of width ``max(ranks)`` with zero columns beyond their rank.
    """

    result: FitResult
    axes: tuple
    ranks: Optional[np.ndarray] = None

    @property
    def factors(self) -> Factors:
        return self.result.factors

    @property
    def loss(self):
        return self.result.loss

    @property
    def loss_history(self):
        return self.result.loss_history

    @property
    def iterations(self):
        return self.result.iterations

    @property
    def n_iter(self):
        return self.result.n_iter

    @property
    def status(self):
        return self.result.status

    @property
    def status_name(self):
        return self.result.status_name

    def best(self) -> "FitManyResult":
        """Keep, for every other axis, the restart with the lowest final loss.

        Diverged members are never chosen unless all diverged.  The "restart"
        axis is removed; e.g. with ranks and restarts, ``best().loss`` has
        shape ``(len(ranks),)``.
        """
        if "restart" not in self.axes:
            return self
        ax = self.axes.index("restart")
        loss = jnp.where(self.result.status == Status.DIVERGED, jnp.inf, self.result.loss)
        loss = jnp.where(jnp.isnan(loss), jnp.inf, loss)
        idx = jnp.argmin(loss, axis=ax)

        def pick(x):
            if x is None:
                return None
            x = jnp.asarray(x)
            if x.ndim < len(self.axes):  # e.g. `iterations`, shared by all members
                return x
            i = jnp.expand_dims(idx, ax).reshape(idx.shape[:ax] + (1,) + idx.shape[ax:] + (1,) * (x.ndim - len(self.axes)))
            return jnp.take_along_axis(x, i, axis=ax).squeeze(ax)

        result = jax.tree_util.tree_map(pick, self.result._replace(iterations=None))
        result = result._replace(iterations=self.result.iterations)
        return FitManyResult(result, tuple(a for a in self.axes if a != "restart"), self.ranks)

    def member(self, *index) -> FitResult:
        """One member's :class:`FitResult` (index along ``axes``); rank padding is trimmed."""
        if len(index) != len(self.axes):
            raise IndexError(f"give one index per axis {self.axes}, got {index}")
        res = jax.tree_util.tree_map(lambda x: x[index], self.result._replace(iterations=None))
        res = res._replace(iterations=self.result.iterations)
        if "rank" in self.axes:
            r = int(self.ranks[index[self.axes.index("rank")]])
            f = res.factors
            res = res._replace(factors=f._replace(W=f.W[:, :r], H=f.H[:r]))
        return res


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
    ``n_iter`` and ``status``.  Other parameters are those of :func:`fit`.

    Returns
    -------
    FitManyResult
        Leaves with leading member axes ``axes`` (see :class:`FitManyResult`);
        ``best()`` picks the lowest final loss over restarts.
    """
    if isinstance(data, (list, tuple)):
        if isinstance(init, Factors):
            raise ValueError("init=Factors starts a single fit; it cannot be combined with a list of matrices")
        return fit_list(data, partial(fit_many, solver=solver), max_buckets=max_buckets, rank=rank, ranks=ranks,
                        key=key, keys=keys, n_restarts=n_restarts, init=init, max_iter=max_iter, tol=tol,
                        check_every=check_every, biases=biases, progress=progress, callback=callback,
                        chunk_size=chunk_size, mesh=mesh, memory_budget=memory_budget)
    data = as_data(data)
    _check_solver(solver, data)
    max_iter = _check_int(max_iter, "max_iter")
    check_every = _check_int(check_every, "check_every")
    tol = _check_tol(tol)
    if biases is None:
        biases = solver.biases
    axes: list[str] = []
    if data.batch_shape:
        if len(data.batch_shape) != 1:
            raise ValueError(f"data may have one batch axis, got batch shape {data.batch_shape}")
        axes.append("matrix")

    factors0 = None
    init_fn = None
    if isinstance(init, Factors):
        if ranks is not None or keys is not None or n_restarts is not None or data.batch_shape:
            raise ValueError("init=Factors starts a single fit; it cannot be combined with ranks, keys, n_restarts or batches")
        factors0 = _check_factors(init, data, biases)
        if rank is not None and rank != factors0.W.shape[1]:
            raise ValueError(f"rank={rank} does not match the init factors' rank {factors0.W.shape[1]}")
        width = factors0.W.shape[1]
        key = jax.random.key(0) if key is None else _as_key(key)
    else:
        init_fn = get_initializer(init)

    rank_arr = None
    ranks_np = None
    if ranks is not None:
        if rank is not None:
            raise ValueError("give rank or ranks, not both")
        ranks_np = np.asarray([_check_rank(r, data.shape, "ranks[i]") for r in ranks], dtype=np.int32)
        if ranks_np.size == 0:
            raise ValueError("ranks is empty")
        width = int(ranks_np.max())
        rank_arr = jnp.asarray(ranks_np)
        axes.append("rank")
    elif factors0 is None:
        if rank is None:
            raise TypeError("rank is required (or pass ranks=[...] or init=Factors)")
        width = _check_rank(rank, data.shape)

    if keys is not None:
        if key is not None or n_restarts is not None:
            raise ValueError("give keys, or key with n_restarts, not both")
        keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
        if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
            if keys.ndim != 1:
                raise ValueError(f"keys must be a 1-D array of keys, got shape {keys.shape}")
        elif keys.ndim != 2 or keys.shape[-1] != 2:
            raise ValueError(f"keys must be jax.random.split(key, S) (typed keys or uint32 (S, 2)), got shape {keys.shape}")
        if keys.shape[0] == 0:
            raise ValueError("keys is empty")
        key_arg = keys
        axes.append("restart")
    elif n_restarts is not None:
        n_restarts = _check_int(n_restarts, "n_restarts")
        key_arg = jax.random.split(_as_key(key), n_restarts)
        axes.append("restart")
    else:
        key_arg = _as_key(key) if factors0 is None else key

    cfg = _Config(max_iter, tol, check_every, width, bool(biases))
    mask = None if rank_arr is None else jax.vmap(lambda r: rank_mask(r, width, data.dtype))(rank_arr)
    job = Job(solver, cfg, init_fn, tuple(axes))
    args = Args(key_arg, rank_arr, factors0, data, mask)
    if memory_budget is not None:
        memory_budget = _check_int(memory_budget, "memory_budget")
    carry = execute(job, args, progress=progress, callback=callback, chunk_size=chunk_size, mesh=mesh,
                    memory_budget=memory_budget, desc=solver.name, progress_info=ProgressInfo)
    return FitManyResult(_to_result(cfg, carry), tuple(axes), ranks_np)
