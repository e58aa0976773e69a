"""The driver: one compiled loop runs every solver, alone or vmapped over many members.

Stopping rule (scikit-learn's NMF convention): every ``check_every``
iterations the solver's loss is evaluated and recorded; the fit stops with
``CONVERGED`` when ``(loss_prev - loss) / loss_init < tol``, with
``MAX_ITER`` after ``max_iter`` iterations, and with ``DIVERGED`` when the
loss is not finite -- then the factors of the last finite check are kept and
``loss`` is that check's loss.  ``tol=None`` runs exactly ``max_iter``
iterations.
"""

from __future__ import annotations

import enum
import math
import sys
from functools import partial
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .data import Dense, Sparse, as_data
from .factors import Factors, apply_rank_mask, rank_mask
from .init import add_biases, get_initializer
from .solvers.base import Solver, data_kind

__all__ = ["Status", "FitResult", "FitManyResult", "ProgressInfo", "fit", "fit_many"]


class Status(enum.IntEnum):
    """Why a fit stopped (``FitResult.status``)."""

    CONVERGED = 0
    MAX_ITER = 1
    DIVERGED = 2
    STOPPED = 3  # a callback asked to stop


_RUNNING = -1


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


def _start_member(solver: Solver, cfg: _Config, init_fn, key, rank, factors0, data):
    if factors0 is None:
        factors0 = init_fn(key, data, cfg.width, rank)
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

    def body(c: _Carry) -> _Carry:
        n = jnp.minimum(cfg.check_every, cfg.max_iter - c.it)
        # Frozen members are stepped too (SIMD lanes cannot idle) and their
        # results discarded below, once per check rather than once per step.
        f, s = jax.lax.fori_loop(0, n, lambda _, fs: step(fs[0], fs[1], data, mask), (c.factors, c.state))
        it = c.it + n
        check = c.check + 1
        loss = loss_fn(f, data)
        running = c.status == _RUNNING
        finite = jnp.isfinite(loss)
        if cfg.tol is None:
            converged = jnp.zeros(loss.shape, bool)
        else:
            converged = ((c.loss_prev - loss) < cfg.tol * c.loss_init) | (loss == 0)
        status = jnp.where(
            ~finite,
            Status.DIVERGED.value,
            jnp.where(converged, Status.CONVERGED.value, jnp.where(it >= cfg.max_iter, Status.MAX_ITER.value, _RUNNING)),
        ).astype(jnp.int32)
        accept = running & finite
        history = jnp.where(running[..., None], c.history.at[..., check].set(loss), c.history)
        return _Carry(
            factors=_select(accept, f, c.factors),
            state=_select(running, s, c.state),
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


def _to_result(cfg: _Config, c: _Carry) -> FitResult:
    iterations = np.minimum(np.arange(_n_checks(cfg) + 1, dtype=np.int32) * cfg.check_every, cfg.max_iter)
    return FitResult(c.factors, c.loss_prev, c.history, iterations, c.n_iter, c.status, c.state)


_STATIC = ("solver", "cfg", "init_fn", "axes", "start_axes", "advance_axes")


@partial(jax.jit, static_argnames=_STATIC)
def _start_many(solver, cfg, init_fn, axes, start_axes, advance_axes, key, rank, factors0, data):
    return _start(solver, cfg, init_fn, axes, start_axes, key, rank, factors0, data)


@partial(jax.jit, static_argnames=_STATIC, donate_argnames=("carry",))
def _advance_many(solver, cfg, init_fn, axes, start_axes, advance_axes, stop_at, carry, data, mask):
    return _advance(solver, cfg, axes, advance_axes, carry, data, mask, stop_at)


@partial(jax.jit, static_argnames=_STATIC)
def _fit_many_once(solver, cfg, init_fn, axes, start_axes, advance_axes, key, rank, factors0, data, mask):
    carry = _start(solver, cfg, init_fn, axes, start_axes, key, rank, factors0, data)
    return _advance(solver, cfg, axes, advance_axes, carry, data, mask, cfg.max_iter)


# -- validation ---------------------------------------------------------------------


def _check_solver(solver, data):
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a jmf Solver (e.g. jmf.solvers.adam(1e-2)), got {type(solver).__name__}")
    kind = data_kind(data)
    if kind not in solver.data_kinds:
        raise ValueError(f"solver {solver.name!r} does not support {kind} data (supports: {', '.join(solver.data_kinds)})")
    if solver.nonnegative:
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
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (tol >= 0) or math.isinf(tol):
        raise ValueError(f"tol must be a nonnegative finite float or None, got {tol!r}")
    return float(tol)


def _as_key(key, name="key"):
    if key is None:
        raise TypeError(f"{name} is required: pass a PRNG key such as jax.random.key(0) (or an int seed)")
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape[-1:] == (2,)):
        return key
    raise TypeError(f"{name} must be a jax.random.key (or an int seed), got {type(key).__name__}")


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


def _progress_bar(progress, total, desc):
    if progress is False or progress is None:
        return None
    from tqdm.auto import tqdm

    # disable=None: tqdm switches itself off when stderr is not a terminal.
    return tqdm(total=total, desc=desc, unit="it", disable=None if progress is True else False, leave=False)


def _chunk_plan(cfg: _Config, chunk_size, n_chunks_hint=20) -> list[int]:
    ce = cfg.check_every
    if chunk_size is None:
        chunk_size = max(ce, -(-cfg.max_iter // n_chunks_hint // ce) * ce)
    else:
        chunk_size = _check_int(chunk_size, "chunk_size")
        chunk_size = max(ce, -(-chunk_size // ce) * ce)
    stops = list(range(chunk_size, cfg.max_iter, chunk_size)) + [cfg.max_iter]
    return stops


def _run(solver, cfg, init_fn, axes, start_axes, advance_axes, key, rank, factors0, data, mask,
         progress, callback, chunk_size, desc):
    """Run members to completion, in one call or in chunks with progress/callback."""
    bar = _progress_bar(progress, cfg.max_iter, desc)
    chunked = callback is not None or (bar is not None and not bar.disable)
    if not chunked:
        if bar is not None:
            bar.close()
        return _fit_many_once(solver, cfg, init_fn, tuple(axes), start_axes, advance_axes,
                              key, rank, factors0, data, mask), Status.MAX_ITER
    carry = _start_many(solver, cfg, init_fn, tuple(axes), start_axes, advance_axes, key, rank, factors0, data)
    done_at = 0
    user_stop = False
    try:
        for stop_at in _chunk_plan(cfg, chunk_size):
            carry = _advance_many(solver, cfg, init_fn, tuple(axes), start_axes, advance_axes,
                                  jnp.asarray(stop_at, jnp.int32), carry, data, mask)
            status = np.asarray(carry.status)
            it_max = int(carry.it)
            running = status == _RUNNING
            if bar is not None:
                bar.update(max(it_max - done_at, 0))
                loss_now = np.asarray(carry.loss_prev)
                bar.set_postfix(loss=f"{float(np.nanmin(loss_now)) if loss_now.size else float('nan'):.4g}")
            done_at = it_max
            if callback is not None:
                info = ProgressInfo(it_max, np.asarray(carry.loss_prev), np.asarray(carry.n_iter), status, carry.factors)
                if callback(info):
                    user_stop = True
            if not running.any() or user_stop:
                break
    finally:
        if bar is not None:
            bar.close()
    if user_stop:
        carry = carry._replace(status=jnp.where(carry.status == _RUNNING, Status.STOPPED.value, carry.status))
    return carry, Status.MAX_ITER


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
        Stop when ``(loss_prev - loss) / loss_init < tol`` at a check; ``None``
        runs exactly ``max_iter`` iterations.
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
) -> FitManyResult:
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
    start_axes = (frozenset({"restart"}), frozenset({"rank"}), frozenset(), frozenset({"matrix"}))
    advance_axes = (frozenset(axes), frozenset({"matrix"}), frozenset({"rank"}))
    desc = solver.name
    carry, _ = _run(solver, cfg, init_fn, tuple(axes), start_axes, advance_axes, key_arg, rank_arr, factors0, data,
                    mask, progress, callback, chunk_size, desc)
    result = _to_result(cfg, carry)
    return FitManyResult(result, tuple(axes), ranks_np)
