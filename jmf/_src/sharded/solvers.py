r"""Per-device math of the sharded solvers: each function runs inside ``shard_map`` on one device's shards.

A sharded solver (:class:`Impl`) is the pure-function triple of
:class:`jmf._src.solvers.base.Solver` seen from one device:
``init_state(ctx, f, data)``, ``step(ctx, f, state, data)`` and
``loss(ctx, f, state, data)`` where ``f`` holds this device's rows of ``W``
(``(mb, k)``) and columns of ``H`` (``(k, nb)``) with their biases, ``data``
its entries (:func:`.layout.local_view`), and the loss is already summed
over devices (``psum``), so every device takes the same decisions in the
check loop.  The per-row math is the single-device solvers' own:

* ALS (``als``, ``ratings_als``): :func:`jmf._src.solvers.als._sparse_side`
  on the device's row layout against the fetched table of ``H`` columns (W
  half-step), then on its column layout against the fetched rows of ``W``
  (H half-step); biases ride along as one more column of the table.
* implicit ALS: the engine (:mod:`jmf._src.solvers._blocked`) with the shared
  Gram ``Y^T Y = psum`` of every device's ``Y_d^T Y_d``.
* HALS on sparse data: :func:`jmf._src.solvers.hals._sparse_sweep`.
* gradient solvers (full batch, elementwise Optax transforms): the gradient
  of own rows from the row layout, of own columns from the column layout;
  the offset's from the row layout, summed over devices.
* dense ALS / HALS: ``A``'s rows with ``W``'s rows; ``H`` column-sharded like
  the sparse case.  W half-step: ``all_gather`` of ``H`` (``n k`` per device,
  transient), ``H H^T`` by ``psum``; H half-step: ``W^T A`` by ``psum_scatter``
  (each device receives its own columns), ``W^T W`` by ``psum``.

Each device's entries come with one padding segment (row ``mb`` / column
``nb``) holding the weight-0 padding entries; its solution is dropped.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from ..data import Sparse, _rebuild
from ..factors import Factors
from ..init import _grid
from ..losses.base import _pair
from ..losses.ratings import chunked_entry_sum
from ..solvers._blocked import Side, SparseLayout, packed_cg, packed_solve, side_layout
from ..solvers.als import _augment, _sparse_side
from ..solvers.als import als as _als_factory
from ..solvers.base import Solver
from ..solvers.bpmf import _NOISE, BPMFState, GibbsSettings, _rows, gibbs_sweep, sample_rows
from ..solvers.gradient import GradientSpec, gradient_update, nonnegative, optax_update
from ..solvers.hals import _cd_blocks, _cd_shared, _sparse_sweep
from ..solvers.hals import hals as _hals_factory
from ..solvers.implicit import implicit_als as _implicit_factory
from ..solvers.nmf import _inner_sweeps, _nz, _repeated
from ..solvers.svdpp import SVDppParams, SVDppState
from ..solvers.svdpp import svdpp as _svdpp_factory
from .layout import Exchange
from .linalg import spd_solver

__all__ = ["Ctx", "Impl", "make_impl", "LocalLayout", "fetch"]


class Ctx(NamedTuple):
    """Static description of a sharded run (hashable; part of the compilation key)."""

    axis: str
    devices: int
    shape: tuple
    blocks: tuple  # (mb, nb)
    kind: str  # "sparse" or "dense"
    h_exchange: Any  # Exchange (sparse) or None
    w_exchange: Any
    lapack: bool  # LAPACK solves are safe (not several CPU devices of one process)
    chunk_size: int = 1 << 16
    max_counts: Any = None  # (row layout, column layout): longest segment, ShardedSparse.max_counts

    @property
    def spd(self) -> Callable:
        return spd_solver(self.lapack)


class Impl(NamedTuple):
    """A sharded solver: per-device ``init_state``, ``step`` and ``loss`` (see the module docstring).

    ``export(ctx, f, state)`` (optional) gives what the fit's result keeps of the final state, laid out by
    ``export_specs(axis)`` (e.g. the Gibbs sampler's sample buffers, row blocks over the devices); the
    result's ``state`` is None without it.
    """

    init_state: Callable
    step: Callable
    loss: Callable
    name: str
    uses_spd: bool  # may call an exact SPD solve (LAPACK on safe meshes)
    export: Optional[Callable] = None
    export_specs: Optional[Callable] = None


# -- communication ---------------------------------------------------------------------------------


def fetch(ctx: Ctx, X, send, ex: Exchange):
    """The table of other-side rows this device's entries need: ``(ex.table, q)`` from own rows ``X`` (blk, q).

    all_to_all: gather own rows at ``send`` (P, T) -- row ``send[e, t]`` goes
    to device ``e`` -- and exchange; slot ``o T + t`` holds what device ``o``
    sent.  all_gather: every device's rows, slot = padded global index.
    """
    if ex.mode == "all_gather":
        return lax.all_gather(X, ctx.axis, tiled=True)
    buf = X[send]  # (P, T, q)
    return lax.all_to_all(buf, ctx.axis, 0, 0, tiled=True).reshape(ex.table, X.shape[1])


def psum(x, ctx: Ctx):
    return lax.psum(x, ctx.axis)


# -- the local layouts --------------------------------------------------------------------------------


class LocalLayout(NamedTuple):
    """One device's entries by row and by column, as :class:`jmf.Sparse` of its segments against the tables."""

    rows: Sparse  # rows = local row (mb: padding), cols = slot in the table of H columns
    rside: Side
    rcount: jax.Array  # (mb + 1,) sum of weights per local row
    cols: Sparse  # rows = local column (nb: padding), cols = slot in the table of W rows
    cside: Side
    ccount: jax.Array  # (nb + 1,)


def local_layout(ctx: Ctx, d) -> LocalLayout:
    """This device's two layouts as :class:`jmf.Sparse` with their engine packing.

    The second dimension of each ``Sparse``'s shape is the static bound on a
    segment's entries that the sparse engine sizes its chunks by (the
    single-device solvers read it from ``shape[1]``): the longest segment of
    the layout (``ctx.max_counts``), at most the fetched table.  Slots index
    the fetched table, which the engine sizes from the features it is given.
    """
    mb, nb = ctx.blocks
    r_max, c_max = ctx.h_exchange.table, ctx.w_exchange.table
    if ctx.max_counts is not None:
        r_max, c_max = min(r_max, max(1, ctx.max_counts[0])), min(c_max, max(1, ctx.max_counts[1]))
    rows = _rebuild(Sparse, (d.r_seg, d.r_slot, d.r_vals, d.r_w), (mb + 1, r_max))
    cols = _rebuild(Sparse, (d.c_seg, d.c_slot, d.c_vals, d.c_w), (nb + 1, c_max))
    rcount = jax.ops.segment_sum(d.r_w, d.r_seg, num_segments=mb + 1, indices_are_sorted=True)
    ccount = jax.ops.segment_sum(d.c_w, d.c_seg, num_segments=nb + 1, indices_are_sorted=True)
    rside = side_layout(d.r_seg, mb + 1, None, r_max)
    cside = side_layout(d.c_seg, nb + 1, None, c_max)
    return LocalLayout(rows, rside, rcount, cols, cside, ccount)


def observed(ctx: Ctx, d):
    """0/1 masks of this device's rows ``(mb,)`` and columns ``(nb,)`` with an observed (weight > 0) entry."""
    mb, nb = ctx.blocks
    if ctx.kind == "dense":
        i = lax.axis_index(ctx.axis)
        m, n = ctx.shape
        return (i * mb + jnp.arange(mb, dtype=jnp.int32)) < m, (i * nb + jnp.arange(nb, dtype=jnp.int32)) < n
    r = jax.ops.segment_sum((d.r_w > 0).astype(jnp.int32), d.r_seg, num_segments=mb + 1, indices_are_sorted=True)
    c = jax.ops.segment_sum((d.c_w > 0).astype(jnp.int32), d.c_seg, num_segments=nb + 1, indices_are_sorted=True)
    return r[:mb] > 0, c[:nb] > 0


def entry_sums(ctx: Ctx, d):
    """``(sum w, sum w v, sum w |v|)`` over all entries (psum), as the single-device mean and init scale see them."""
    if ctx.kind == "dense":
        A = d.A
        n_all = jnp.asarray(ctx.shape[0] * ctx.shape[1], A.dtype)
        return n_all, psum(jnp.sum(A), ctx), psum(jnp.sum(jnp.abs(A)), ctx)
    w, v = d.r_w, d.r_vals
    return psum(jnp.sum(w), ctx), psum(jnp.sum(w * v), ctx), psum(jnp.sum(w * jnp.abs(v)), ctx)


def _ext(X):
    """``X`` with one zero row appended: the padding segment."""
    return jnp.concatenate([X, jnp.zeros((1,) + X.shape[1:], X.dtype)], axis=0)


# -- the objective shared by ALS, HALS and the gradient solvers ---------------------------------------


class Objective(NamedTuple):
    """``(sum w (a - yhat)^2 + l2W sum s_i |w_i|^2 + l2H sum s_j |h_j|^2 + l1 |.|_1 + bias_l2 (...)) / N``."""

    l2: tuple  # (W, H)
    l1: tuple
    bias_l2: float
    count_scaled: bool


def _objective_of(loss) -> Objective:
    spec = loss.spec
    if spec[:1] == ("frobenius",):
        _, l2, l1, bias_l2 = spec
        return Objective(_pair(l2, "l2"), _pair(l1, "l1"), _pair(bias_l2, "bias_l2")[0], False)
    if spec[:1] == ("ratings",):
        _, l2, bias_l2, count_scaled = spec
        return Objective(_pair(l2, "l2"), (0.0, 0.0), bias_l2, count_scaled)
    raise ValueError(f"a sharded fit supports the Frobenius loss (jmf.losses.frobenius) and "
                     f"jmf.losses.ratings_loss for gradient solvers, not {loss.name!r}")


def _scales(ctx: Ctx, obj: Objective, lay, dtype):
    """Penalty scales ``s`` of own rows ``(mb,)`` and own columns ``(nb,)`` (ones unless count-scaled)."""
    mb, nb = ctx.blocks
    if not obj.count_scaled:
        return jnp.ones((mb,), dtype), jnp.ones((nb,), dtype)
    if ctx.kind == "dense":
        m, n = ctx.shape
        return jnp.full((mb,), n, dtype), jnp.full((nb,), m, dtype)
    return lay.rcount[:mb].astype(dtype), lay.ccount[:nb].astype(dtype)


def _penalty(ctx: Ctx, obj: Objective, f: Factors, lay):
    sr, sc = _scales(ctx, obj, lay, f.W.dtype)
    out = obj.l2[0] * jnp.sum(sr * jnp.sum(f.W * f.W, axis=1)) + obj.l2[1] * jnp.sum(sc * jnp.sum(f.H * f.H, axis=0))
    if _nz(obj.l1[0]):
        out = out + obj.l1[0] * jnp.sum(jnp.abs(f.W))
    if _nz(obj.l1[1]):
        out = out + obj.l1[1] * jnp.sum(jnp.abs(f.H))
    if f.row_bias is not None:
        out = out + obj.bias_l2 * (jnp.sum(sr * f.row_bias ** 2) + jnp.sum(sc * f.col_bias ** 2))
    return out


def _h_table(ctx: Ctx, f: Factors, lay: LocalLayout, data):
    """Fetched columns of ``H`` (and column biases) for this device's row layout: ``(Ht_tab, cb_tab or None)``."""
    k = f.W.shape[1]
    feats = f.H.T if f.col_bias is None else jnp.concatenate([f.H.T, f.col_bias[:, None]], axis=1)
    tab = fetch(ctx, feats, data.h_send, ctx.h_exchange)
    return (tab, None) if f.col_bias is None else (tab[:, :k], tab[:, k])


def _w_table(ctx: Ctx, f: Factors, lay: LocalLayout, data):
    k = f.W.shape[1]
    feats = f.W if f.row_bias is None else jnp.concatenate([f.W, f.row_bias[:, None]], axis=1)
    tab = fetch(ctx, feats, data.w_send, ctx.w_exchange)
    return (tab, None) if f.row_bias is None else (tab[:, :k], tab[:, k])


def _sparse_squared_error(ctx: Ctx, f: Factors, lay: LocalLayout, data):
    """``sum w (a - yhat)^2`` over this device's rows (chunks of entries), with the fetched ``H`` table."""
    Ht, cb = _h_table(ctx, f, lay, data)
    W = _ext(f.W)
    rb = None if f.row_bias is None else _ext(f.row_bias)
    seg, slot, v, w = lay.rows.rows, lay.rows.cols, lay.rows.vals, lay.rows.weights

    def fn(acc, idx, live):
        s, o = seg[idx], slot[idx]
        pred = jnp.sum(W[s] * Ht[o], axis=1)
        if rb is not None:
            pred = pred + rb[s] + cb[o] + f.offset
        res = v[idx] - pred
        return acc + jnp.sum(w[idx] * live.astype(w.dtype) * res * res)

    return chunked_entry_sum(seg.shape[0], ctx.chunk_size, fn, jnp.zeros((), W.dtype))


def _dense_full_H(ctx: Ctx, f: Factors):
    return lax.all_gather(f.H, ctx.axis, axis=1, tiled=True)  # (k, n_pad)


def _objective_value(ctx: Ctx, obj: Objective, f: Factors, lay, data, n_obs):
    if ctx.kind == "dense":
        R = data.A - f.W @ _dense_full_H(ctx, f)
        se = jnp.sum(R * R)
    else:
        se = _sparse_squared_error(ctx, f, lay, data)
    return psum(se + _penalty(ctx, obj, f, lay), ctx) / n_obs


def _n_observed(ctx: Ctx, data):
    if ctx.kind == "dense":
        return jnp.asarray(ctx.shape[0] * ctx.shape[1], data.A.dtype)
    return psum(jnp.sum(data.r_w), ctx)


class State(NamedTuple):
    lay: Any  # LocalLayout or None (dense)
    n_obs: jax.Array
    extra: Any = None  # solver-specific (optimizer state)


def _base_init(ctx: Ctx, f, data, key=None) -> State:
    lay = local_layout(ctx, data) if ctx.kind == "sparse" else None
    return State(lay, _n_observed(ctx, data))


# -- ALS --------------------------------------------------------------------------------------------


def _als_impl(kw: dict) -> Impl:
    l2W, l2H = _pair(kw["l2"], "l2")
    biases = kw["biases"]
    bias_l2 = l2W if kw["bias_l2"] is None else kw["bias_l2"]
    count_scaled = bool(kw["count_scaled"] or kw.get("row_scaled_l2"))
    solve, cg_steps = kw["solve"], kw["cg_steps"]
    obj = Objective((l2W, l2H), (0.0, 0.0), bias_l2, count_scaled)

    def sparse_half(ctx, f: Factors, st: State, data, side):
        k = f.W.shape[1]
        dtype = f.W.dtype
        if side == 0:
            X, own_b, lam = f.W, f.row_bias, l2W
            F, oth_b = _h_table(ctx, f, st.lay, data)
            local, sd, counts = st.lay.rows, st.lay.rside, st.lay.rcount
        else:
            X, own_b, lam = f.H.T, f.col_bias, l2H
            F, oth_b = _w_table(ctx, f, st.lay, data)
            local, sd, counts = st.lay.cols, st.lay.cside, st.lay.ccount
        pen = lam * jnp.ones((k,), dtype)
        extra = jnp.zeros((k,), dtype)
        X = _ext(X)
        shift = None
        if biases:
            pen = jnp.concatenate([pen, jnp.full((1,), bias_l2, dtype)])
            extra = jnp.concatenate([extra, jnp.zeros((1,), dtype)])
            X = jnp.concatenate([X, _ext(own_b)[:, None]], axis=1)
            shift = oth_b + f.offset
        F = _augment(F, biases)
        lay = SparseLayout(sd, sd, counts, counts)
        sol = _sparse_side(local, lay, X, F, shift, 0, pen, extra, count_scaled, solve, cg_steps, spd=ctx.spd)[:-1]
        new = sol[:, :k]
        if side == 0:
            f = f._replace(W=new)
            return f._replace(row_bias=sol[:, k]) if biases else f
        f = f._replace(H=new.T)
        return f._replace(col_bias=sol[:, k]) if biases else f

    def dense_half(ctx, f: Factors, st: State, data, side):
        k = f.W.shape[1]
        dtype = f.W.dtype
        m, n = ctx.shape
        lam = l2W if side == 0 else l2H
        ridge = lam * jnp.ones((k,), dtype)
        if count_scaled:
            ridge = (n if side == 0 else m) * ridge
        if side == 0:
            G = psum(f.H @ f.H.T, ctx)
            B = data.A @ _dense_full_H(ctx, f).T
            return f._replace(W=ctx.spd(G, B, ridge))
        G = psum(f.W.T @ f.W, ctx)
        B = lax.psum_scatter(f.W.T @ data.A, ctx.axis, scatter_dimension=1, tiled=True)  # (k, nb)
        return f._replace(H=ctx.spd(G, B.T, ridge).T)

    def step(ctx, f, st, data):
        half = sparse_half if ctx.kind == "sparse" else dense_half
        f = half(ctx, f, st, data, 0)
        return half(ctx, f, st, data, 1), st

    def loss(ctx, f, st, data):
        return _objective_value(ctx, obj, f, st.lay, data, st.n_obs)

    return Impl(_base_init, step, loss, "als-wr" if count_scaled else "als", solve == "cholesky")


# -- implicit ALS -----------------------------------------------------------------------------------


def _implicit_impl(kw: dict) -> Impl:
    l2, alpha, solve, cg_steps = kw["l2"], kw["alpha"], kw["solve"], kw["cg_steps"]
    w0 = kw.get("unobserved_weight", 1.0)  # the weight of unobserved entries (nu = 0 only, see make_impl)

    def half(ctx, X, Y, Ytab, local: Sparse, sd: Side):
        k = X.shape[1]
        dtype = X.dtype
        base = w0 * psum(Y.T @ Y, ctx) + jnp.diag(jnp.full((k,), l2, dtype))  # the Gram of ALL other-side rows
        w_all = local.weights

        def contrib(ent, valid):
            w = jnp.where(valid, w_all[ent], 0).astype(dtype)
            c = 1 + alpha * local.vals[ent].astype(dtype)
            return Ytab[local.cols[ent]], w * (c - w0), w * c

        max_count, nnz = local.shape[1], local.nnz
        if solve == "cg":
            return packed_cg(sd, _ext(X), contrib, lambda p, seg: p @ base, cg_steps, max_count, nnz)[:-1]
        return packed_solve(sd, _ext(X), contrib, lambda G, R, seg, x0: ctx.spd(G + base[None], R), max_count,
                              nnz)[:-1]

    def step(ctx, f, st, data):
        lay = st.lay
        W = half(ctx, f.W, f.H.T, _h_table(ctx, f, lay, data)[0], lay.rows, lay.rside)
        f = f._replace(W=W)
        Ht = half(ctx, f.H.T, f.W, _w_table(ctx, f, lay, data)[0], lay.cols, lay.cside)
        return f._replace(H=Ht.T), st

    def loss(ctx, f, st, data):
        lay = st.lay
        dtype = f.W.dtype
        Ht, _ = _h_table(ctx, f, lay, data)
        W = _ext(f.W)
        seg, slot, v, w = lay.rows.rows, lay.rows.cols, lay.rows.vals, lay.rows.weights

        def fn(acc, idx, live):
            s = jnp.sum(W[seg[idx]] * Ht[slot[idx]], axis=1)
            conf = 1 + alpha * v[idx]
            return acc + jnp.sum((w[idx] * live.astype(dtype)) * (conf * (1 - s) ** 2 - w0 * s * s))

        obs = chunked_entry_sum(seg.shape[0], ctx.chunk_size, fn, jnp.zeros((), dtype))
        full = w0 * jnp.sum(psum(f.W.T @ f.W, ctx) * psum(f.H @ f.H.T, ctx))
        pen = l2 * (jnp.sum(f.W * f.W) + jnp.sum(f.H * f.H))
        m, n = ctx.shape
        return (full + psum(obs + pen, ctx)) / jnp.asarray(m * n, dtype)

    return Impl(_base_init, step, loss, "implicit-als", solve == "cholesky")


# -- Bayesian PMF -----------------------------------------------------------------------------------


def _bpmf_impl(cfg: GibbsSettings) -> Impl:
    """The Gibbs sampler of :func:`jmf.solvers.bpmf`: its own sweep (:func:`gibbs_sweep`) on the device's rows.

    Each device draws its rows against the fetched table of the other side
    (with the noise of their global indices, so the chain equals the
    single-device one), the Normal-Wishart statistics and the residual are
    summed over devices, and every device draws the same hyperparameters
    and noise precision.  The result's ``state`` holds the sample buffers
    (rows over the devices) for :func:`jmf.solvers.posterior_mean`.
    """
    obj = Objective((0.0, 0.0), (0.0, 0.0), 0.0, False)  # the mean squared error of the current sample

    def init_state(ctx, f, data, key=None):
        mb, nb = ctx.blocks
        dtype = f.W.dtype
        D = f.W.shape[1] + 1
        key = jax.random.key(0) if key is None else key
        eye, zero, count = jnp.eye(D, dtype=dtype), jnp.zeros((D,), dtype), jnp.zeros((), jnp.int32)
        chain = BPMFState(None, jax.random.key_data(key), jnp.asarray(cfg.a0 / cfg.b0, dtype), zero, eye, zero, eye,
                          count, count, jnp.zeros((cfg.n_keep, mb, D), dtype), jnp.zeros((cfg.n_keep, nb, D), dtype))
        return _base_init(ctx, f, data)._replace(extra=chain)

    def step(ctx, f, st, data):
        lay = st.lay
        mb, nb = ctx.blocks
        dtype = f.W.dtype
        k = f.W.shape[1]
        mk = jnp.ones((k + 1,), dtype)

        def side_rows(f, side, seed, alpha, mu, lam):
            if side == 0:
                (tab, other_bias), local, sd, block = _h_table(ctx, f, lay, data), lay.rows, lay.rside, mb
            else:
                (tab, other_bias), local, sd, block = _w_table(ctx, f, lay, data), lay.cols, lay.cside, nb
            own = sample_rows(f)[side]
            F = jnp.concatenate([tab, jnp.ones((tab.shape[0], 1), dtype)], axis=1)
            start = lax.axis_index(ctx.axis) * block
            noise = _grid(seed, _NOISE + side, k + 1, block, "normal", dtype, start=start)
            noise = jnp.concatenate([noise, jnp.zeros((k + 1, 1), dtype)], axis=1)  # and the padding segment
            new, sse = _rows(local, sd, _ext(own), F, other_bias + f.offset, local.cols, alpha, mu, lam, mk, noise,
                             local.shape[1], lapack=ctx.lapack)
            real = start + jnp.arange(block, dtype=start.dtype) < ctx.shape[side]  # rows past (m, n) stay zero padding
            new = jnp.where(real[:, None], new[:-1], 0)
            if side == 0:
                return f._replace(W=new[:, :k], row_bias=new[:, k]), sse
            return f._replace(H=new[:, :k].T, col_bias=new[:, k]), sse

        live = ((lay.rcount[:mb] > 0).astype(dtype), (lay.ccount[:nb] > 0).astype(dtype))
        f, chain = gibbs_sweep(f, st.extra, side_rows, live, st.n_obs.astype(dtype), mk, cfg,
                               total=functools.partial(psum, ctx=ctx))
        return f, st._replace(extra=chain)

    def loss(ctx, f, st, data):
        return _objective_value(ctx, obj, f, st.lay, data, st.n_obs)

    def export(ctx, f, st):
        return st.extra

    def export_specs(axis):
        r, rows = P(), P(None, axis)
        return BPMFState(None, r, r, r, r, r, r, r, r, rows, rows)

    return Impl(init_state, step, loss, "bpmf", True, export, export_specs)


# -- HALS ---------------------------------------------------------------------------------------------


def _hals_impl(kw: dict) -> Impl:
    l1W, l1H = _pair(kw["l1"], "l1")
    l2W, l2H = _pair(kw["l2"], "l2")
    inner, inner_tol = kw["inner"], kw["inner_tol"]
    obj = Objective((l2W, l2H), (l1W, l1H), 0.0, False)

    def dense_half(ctx, f: Factors, st, data, side):
        k = f.W.shape[1]
        m, n = ctx.shape
        eye = jnp.eye(k, dtype=f.W.dtype)
        lam2, lam1 = (l2W, l1W) if side == 0 else (l2H, l1H)
        if side == 0:
            G = psum(f.H @ f.H.T, ctx)
            B = (data.A @ _dense_full_H(ctx, f).T).T
            X, sweeps = f.W.T, _inner_sweeps(inner, m, n, k)
        else:
            G = psum(f.W.T @ f.W, ctx)
            B = lax.psum_scatter(f.W.T @ data.A, ctx.axis, scatter_dimension=1, tiled=True)
            X, sweeps = f.H, _inner_sweeps(inner, n, m, k)
        if _nz(lam2):
            G = G + lam2 * eye
        if _nz(lam1):
            B = B - lam1 / 2
        X = _repeated(lambda X: _cd_shared(X, G, B)[0], X, sweeps, inner_tol,
                      total=functools.partial(psum, ctx=ctx))  # one stopping decision for all devices
        return f._replace(W=X.T) if side == 0 else f._replace(H=X)

    def sparse_half(ctx, f: Factors, st: State, data, side):
        k = f.W.shape[1]
        eye = jnp.eye(k, dtype=f.W.dtype)
        lam2, lam1 = (l2W, l1W) if side == 0 else (l2H, l1H)
        if side == 0:
            X, F = f.W, _h_table(ctx, f, st.lay, data)[0]
            local, sd = st.lay.rows, st.lay.rside
        else:
            X, F = f.H.T, _w_table(ctx, f, st.lay, data)[0]
            local, sd = st.lay.cols, st.lay.cside

        def sweep(G, B, X):
            if _nz(lam2):
                G = G + lam2 * jnp.broadcast_to(eye, G.shape)  # G: a bucket's blocks
            if _nz(lam1):
                B = B - lam1 / 2
            return _cd_blocks(X, G, B)[0]  # (X, violation): the violation is not tracked here

        X = _sparse_sweep(local, SparseLayout(sd, sd, None, None), _ext(X), F, 0, sweep)[:-1]
        return f._replace(W=X) if side == 0 else f._replace(H=X.T)

    def step(ctx, f, st, data):
        half = sparse_half if ctx.kind == "sparse" else dense_half
        return half(ctx, half(ctx, f, st, data, 0), st, data, 1), st

    def loss(ctx, f, st, data):
        return _objective_value(ctx, obj, f, st.lay, data, st.n_obs)

    return Impl(_base_init, step, loss, "hals", False)


# -- gradient solvers -----------------------------------------------------------------------------------


def _side_residuals(X, xb, tab, tb, offset, local: Sparse, n_seg):
    """``sum_e w (a - yhat) [y, 1]`` over each own segment: ``(grad rows (S, k), grad biases (S,), sum)``."""
    seg, slot = local.rows, local.cols
    Xe = _ext(X)
    pred = jnp.sum(Xe[seg] * tab[slot], axis=1)
    if xb is not None:
        pred = pred + _ext(xb)[seg] + tb[slot] + offset
    r = local.weights * (local.vals - pred)
    g = jax.ops.segment_sum(r[:, None] * tab[slot], seg, num_segments=n_seg + 1, indices_are_sorted=True)
    gb = jax.ops.segment_sum(r, seg, num_segments=n_seg + 1, indices_are_sorted=True)
    return g[:n_seg], gb[:n_seg], jnp.sum(r)


def _residual_sums(ctx: Ctx, f: Factors, lay: LocalLayout, data):
    """The data term's residual sums of own rows ``(g, g_bias, sum)`` and own columns ``(g, g_bias)``.

    ``-2 / N`` times them is the gradient of ``sum w (a - yhat)^2 / N`` (the
    offset's from the rows' sum, to be summed over devices).
    """
    mb, nb = ctx.blocks
    Ht, cb = _h_table(ctx, f, lay, data)
    rows = _side_residuals(f.W, f.row_bias, Ht, cb, f.offset, lay.rows, mb)
    Wt, rb = _w_table(ctx, f, lay, data)
    gc, gc_b, _ = _side_residuals(f.H.T, f.col_bias, Wt, rb, f.offset, lay.cols, nb)
    return rows, (gc, gc_b)


def _gradient_impl(spec: GradientSpec, loss_obj, biases: bool) -> Impl:
    obj = _objective_of(loss_obj)
    optimizer, projection = spec.optimizer, spec.projection

    def init_state(ctx, f, data, key=None):
        st = _base_init(ctx, f, data)
        with jax.numpy_dtype_promotion("standard"):
            opt_state = optimizer.init(f)
        return st._replace(extra=opt_state)

    def grads(ctx, f: Factors, st: State, data) -> Factors:
        (gr, gr_b, total), (gc, gc_b) = _residual_sums(ctx, f, st.lay, data)
        sr, sc = _scales(ctx, obj, st.lay, f.W.dtype)
        inv = 1 / st.n_obs
        gW = (2 * obj.l2[0] * sr[:, None] * f.W - 2 * gr) * inv
        gH = (2 * obj.l2[1] * sc[None, :] * f.H - 2 * gc.T) * inv
        if _nz(obj.l1[0]):
            gW = gW + obj.l1[0] * jnp.sign(f.W) * inv
        if _nz(obj.l1[1]):
            gH = gH + obj.l1[1] * jnp.sign(f.H) * inv
        if f.row_bias is None:
            return Factors(gW, gH)
        g_rb = (2 * obj.bias_l2 * sr * f.row_bias - 2 * gr_b) * inv
        g_cb = (2 * obj.bias_l2 * sc * f.col_bias - 2 * gc_b) * inv
        g_off = -2 * psum(total, ctx) * inv
        return Factors(gW, gH, g_rb, g_cb, g_off)

    def step(ctx, f, st, data):
        f, opt_state = gradient_update(optimizer, projection, f, grads(ctx, f, st, data), st.extra, None)
        return f, st._replace(extra=opt_state)

    def loss(ctx, f, st, data):
        return _objective_value(ctx, obj, f, st.lay, data, st.n_obs)

    return Impl(init_state, step, loss, "gradient", False)


# -- SVD++ ----------------------------------------------------------------------------------------------


def _kept_sum(ctx: Ctx, X, send, ex: Exchange, local: Sparse, n_seg: int):
    """``sum`` over each own segment's entries of positive weight of the other side's rows ``X``: (n_seg, k).

    ``X`` (own block of the other side) is fetched like the factors (``send``, ``ex``).
    """
    tab = fetch(ctx, X, send, ex)
    keep = (local.weights > 0).astype(X.dtype)
    out = jax.ops.segment_sum(keep[:, None] * tab[local.cols], local.rows, num_segments=n_seg + 1,
                              indices_are_sorted=True)
    return out[:n_seg]


def _svdpp_impl(kw: dict) -> Impl:
    """:func:`jmf.solvers.svdpp` with ``P``, the rows of ``W``, own rows; ``H``, ``Y``, own columns.

    The data gradient at the effective ``W = P + N Y`` is the gradient
    solvers' (:func:`_residual_sums`); ``N^T G`` fetches the rows of
    ``norm * G`` to the column layout and ``N Y`` the rows of ``Y`` to the row
    layout: two more fetches of ``k`` numbers per row than a biased gradient
    step.  The elementwise optimizer moves each device's parameters.  The
    result's ``state`` holds ``P``, ``Y`` and ``norm``, sharded like the factors' rows.
    """
    optimizer = kw["optimizer"]
    l2 = kw["l2"]
    bias_l2 = l2 if kw["bias_l2"] is None else kw["bias_l2"]
    implicit_l2 = l2 if kw["implicit_l2"] is None else kw["implicit_l2"]
    obj = Objective((0.0, 0.0), (0.0, 0.0), bias_l2, False)  # the data term and the bias penalty

    def init_state(ctx, f, data, key=None):
        mb, nb = ctx.blocks
        dtype = f.W.dtype
        counts = jax.ops.segment_sum((data.r_w > 0).astype(dtype), data.r_seg, num_segments=mb + 1,
                                     indices_are_sorted=True)[:mb]
        norm = jnp.where(counts > 0, lax.rsqrt(jnp.maximum(counts, 1)), 0).astype(dtype)
        Y = jnp.zeros((nb, f.W.shape[1]), dtype)
        with jax.numpy_dtype_promotion("standard"):
            opt_state = optimizer.init(SVDppParams(f.W, f.H, Y, f.row_bias, f.col_bias, f.offset))
        return _base_init(ctx, f, data)._replace(extra=SVDppState(f.W, Y, norm, opt_state, None))

    def implicit_rows(ctx, Y, norm, lay, data):  # N Y of own rows
        mb = ctx.blocks[0]
        return norm[:, None] * _kept_sum(ctx, Y, data.h_send, ctx.h_exchange, lay.rows, mb)

    def step(ctx, f, st, data):
        lay, sv = st.lay, st.extra
        nb = ctx.blocks[1]
        inv = 1 / st.n_obs
        (gr, gr_b, total), (gc, gc_b) = _residual_sums(ctx, f, lay, data)
        gW = -2 * gr * inv  # the data term's gradient at the effective W
        gY = _kept_sum(ctx, sv.norm[:, None] * gW, data.w_send, ctx.w_exchange, lay.cols, nb)
        grads = SVDppParams(gW + 2 * l2 * inv * sv.P, (2 * l2 * f.H - 2 * gc.T) * inv,
                            gY + 2 * implicit_l2 * inv * sv.Y,
                            None if f.row_bias is None else (2 * bias_l2 * f.row_bias - 2 * gr_b) * inv,
                            None if f.col_bias is None else (2 * bias_l2 * f.col_bias - 2 * gc_b) * inv,
                            None if f.offset is None else -2 * psum(total, ctx) * inv)
        params = SVDppParams(sv.P, f.H, sv.Y, f.row_bias, f.col_bias, f.offset)
        updates, opt_state = optax_update(optimizer, grads, sv.opt_state, params)
        new = optax.apply_updates(params, updates)
        W = new.P + implicit_rows(ctx, new.Y, sv.norm, lay, data)
        f = Factors(W, new.H, new.row_bias, new.col_bias, new.offset)
        return f, st._replace(extra=SVDppState(new.P, new.Y, sv.norm, opt_state, None))

    def loss(ctx, f, st, data):
        sv = st.extra
        factors = l2 * (jnp.sum(sv.P * sv.P) + jnp.sum(f.H * f.H)) + implicit_l2 * jnp.sum(sv.Y * sv.Y)
        return _objective_value(ctx, obj, f, st.lay, data, st.n_obs) + psum(factors, ctx) / st.n_obs

    def export(ctx, f, st):
        return st.extra._replace(opt_state=None)

    def export_specs(axis):
        return SVDppState(P(axis), P(axis), P(axis), None, None)

    return Impl(init_state, step, loss, "svdpp", False, export, export_specs)


# -- which solver -------------------------------------------------------------------------------------


def _factory_of(solver: Solver):
    return None if solver.factory is None else solver.factory[0]


@functools.lru_cache(maxsize=64)
def make_impl(solver: Solver, kind: str) -> Impl:
    """The sharded version of ``solver`` for "sparse" or "dense" data, or a ValueError saying what is supported."""
    supported = ("supported: jmf.solvers.als / ratings_als (sparse, or dense without biases), implicit_als "
                 "(sparse), hals (dense or sparse), bpmf and svdpp (sparse), and full-batch gradient solvers with an "
                 "elementwise Optax transform (adam, sgd, gradient(..., elementwise=True)) on sparse data with the "
                 "Frobenius or ratings loss")
    factory = _factory_of(solver)
    kw = {} if factory is None else dict(solver.factory[1])
    if factory is getattr(_als_factory, "__wrapped__", None):
        if kind == "dense" and kw["biases"]:
            raise ValueError("a sharded fit of dense data supports ALS without biases; give the matrix as jmf.Sparse "
                             "to fit biases")
        return _als_impl(kw)
    if factory is getattr(_implicit_factory, "__wrapped__", None):
        if kind != "sparse":
            raise ValueError("implicit_als needs sparse data")
        if kw.get("nu", 0.0) != 0:
            raise ValueError("a sharded implicit_als fit supports the plain penalty (nu=0) only; the frequency-scaled "
                             "penalty (nu > 0) runs unsharded (jmf.fit without mesh=)")
        return _implicit_impl(kw)
    if factory is getattr(_hals_factory, "__wrapped__", None):
        return _hals_impl(kw)
    if factory is getattr(_svdpp_factory, "__wrapped__", None):
        if kind != "sparse":
            raise ValueError(f"svdpp takes sparse ratings (jmf.Sparse); {supported}")
        if not kw.get("elementwise", False):
            raise ValueError("a sharded svdpp fit needs an elementwise Optax transform (each device updates its own "
                             "rows): declare it with jmf.solvers.svdpp(optax.adam(...), elementwise=True)")
        return _svdpp_impl(kw)
    if isinstance(solver.spec, GibbsSettings):
        if kind != "sparse":
            raise ValueError(f"bpmf takes sparse ratings (jmf.Sparse); {supported}")
        return _bpmf_impl(solver.spec)
    spec = solver.spec
    if isinstance(spec, GradientSpec):
        if kind != "sparse":
            raise ValueError(f"sharded gradient solvers take sparse data (jmf.Sparse); {supported}")
        if spec.batch_size is not None:
            raise ValueError("a sharded fit runs full-batch gradient solvers (batch_size=None)")
        if not spec.elementwise:
            raise ValueError("a sharded gradient fit needs an elementwise Optax transform (each device updates its "
                             "own shards): use jmf.solvers.adam/sgd or gradient(opt, elementwise=True)")
        if spec.projection not in (None, nonnegative):
            raise ValueError("a sharded gradient fit supports projection=None or 'nonnegative'")
        if not isinstance(spec.optimizer, optax.GradientTransformation) and not hasattr(spec.optimizer, "update"):
            raise ValueError("optimizer must be an Optax transformation")
        return _gradient_impl(spec, solver.loss, solver.biases)
    raise ValueError(f"solver {solver.name!r} has no sharded version; {supported}")
