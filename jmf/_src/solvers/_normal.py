r"""Row-wise normal equations shared by ALS and masked HALS.

With the other factor fixed, every row ``i`` of ``W`` (or column ``j`` of
``H``) solves its own least-squares problem over the entries it observes::

    min_x  sum_j w_ij (a_ij - s_j - x . f_j)^2

whose normal equations are ``G_i x = b_i`` with the *Gram block*
``G_i = sum_j w_ij f_j f_j^T`` (``q x q``) and ``b_i = sum_j w_ij (a_ij - s_j) f_j``
(``s_j`` is a known shift, e.g. ``offset + col_bias_j``).  Three data kinds:

* unweighted :class:`Dense`: one shared Gram ``G = F^T F`` and ``B = A F`` (matrix products);
* weighted :class:`Dense`: all blocks at once with one matrix product
  ``G = M (F * F)`` where ``F * F`` is the row-wise Khatri--Rao square
  (``p x q^2``) -- ``m n q^2`` FLOPs at matrix-product speed;
* :class:`Sparse`: a *tile layout* (built once per fit, see :func:`tile_layout`)
  groups the entries of each row into tiles of ``T`` slots (padded with
  weight 0); each tile's Gram is a small ``(q x T)(T x q)`` product and the
  tiles are added into their row's block (``indices_are_sorted`` scatter).
  Tiles are processed in chunks with ``lax.scan`` so that memory stays at
  ``O(nnz + (m + n) q^2)`` -- never an ``m x n`` or ``nnz x q^2`` array.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..data import Dense

# Elements of the per-chunk tile arrays (``tiles * (T q + q^2)``): 4M floats = 16 MB in float32.
CHUNK_ELEMENTS = 1 << 22
# Systems solved per batch by the Cholesky solver (bounds the factor's temporary memory).
SOLVE_BATCH = 2048


class TileLayout(NamedTuple):
    """Entries of one grouping (by row or by column) in fixed-size tiles.

    Attributes
    ----------
    other : int32 (n_tiles, T)
        Index of the *other* entity of each slot (the column for row groups).
    vals : float (n_tiles, T)
        Observed value per slot (0 in padding slots).
    sqrt_w : float (n_tiles, T)
        Square root of the entry weight (0 in padding slots).
    group : int32 (n_tiles,)
        Group (row) of each tile, nondecreasing.
    count : float (n_groups,)
        Sum of the weights of each group (``n_i`` of ALS-WR).
    """

    other: jax.Array
    vals: jax.Array
    sqrt_w: jax.Array
    group: jax.Array
    count: jax.Array


def tile_size(nnz: int, n_groups: int, q: int) -> int:
    """Static tile size: the largest power of two <= half the mean group size, clipped to [8, 128].

    Larger tiles make the batched ``(q x T)(T x q)`` products more efficient
    (measured on 2 Zen 3 cores at q = 65: 7 GFLOP/s at T = 16, 15 at 64, 25
    at 128) and halve the per-tile accumulation traffic, while padding
    wastes at most ``T - 1`` slots per group (about a quarter of the entries
    when ``T`` is half the mean group size).  ``q`` is accepted for future
    tuning.
    """
    half_mean = max(1, nnz // max(n_groups, 1) // 2)
    t = 8
    while t * 2 <= min(half_mean, 128):
        t *= 2
    return t


def n_tiles_bound(nnz: int, n_groups: int, T: int) -> int:
    """Static upper bound on ``sum_i ceil(c_i / T)`` for counts ``c_i`` summing to ``nnz``."""
    return max(1, (nnz + (T - 1) * min(n_groups, nnz)) // T)


def tile_layout(groups, other, vals, weights, n_groups: int, T: int) -> TileLayout:
    """Build the :class:`TileLayout` of entries grouped by ``groups`` (any order; jit-able)."""
    nnz = groups.shape[0]
    n_tiles = n_tiles_bound(nnz, n_groups, T)
    order = jnp.argsort(groups, stable=True)
    g = groups[order]
    cnt = jax.ops.segment_sum(jnp.ones((nnz,), jnp.int32), g, num_segments=n_groups, indices_are_sorted=True)
    start = jnp.cumsum(cnt) - cnt
    pos = jnp.arange(nnz, dtype=jnp.int32) - start[g]
    tiles_per = (cnt + (T - 1)) // T
    tile_start = jnp.cumsum(tiles_per) - tiles_per
    tile = tile_start[g] + pos // T
    flat = tile * T + pos % T
    size = n_tiles * T
    w = jnp.ones_like(vals) if weights is None else weights
    other_t = jnp.zeros((size,), jnp.int32).at[flat].set(other[order], unique_indices=True)
    vals_t = jnp.zeros((size,), vals.dtype).at[flat].set(vals[order], unique_indices=True)
    sw_t = jnp.zeros((size,), vals.dtype).at[flat].set(jnp.sqrt(w[order]), unique_indices=True)
    # Tiles past the last used one keep group n_groups - 1 (weights 0): the
    # group array stays sorted, which the scatter-add below relies on.
    group_t = jnp.full((n_tiles,), n_groups - 1, jnp.int32).at[tile].min(g)
    count = jax.ops.segment_sum(w, groups, num_segments=n_groups)
    shape = (n_tiles, T)
    return TileLayout(other_t.reshape(shape), vals_t.reshape(shape), sw_t.reshape(shape), group_t, count)


def sparse_layouts(data, q: int) -> tuple[TileLayout, TileLayout]:
    """Tile layouts of a :class:`Sparse` grouped by rows (for ``W``) and by columns (for ``H``)."""
    m, n = data.shape
    nnz = data.vals.shape[-1]
    by_row = tile_layout(data.rows, data.cols, data.vals, data.weights, m, tile_size(nnz, m, q))
    by_col = tile_layout(data.cols, data.rows, data.vals, data.weights, n, tile_size(nnz, n, q))
    return by_row, by_col


def _tile_products(lay_other, lay_vals, lay_sw, F, shift):
    X = F[lay_other] * lay_sw[..., None]  # (t, T, q)
    y = lay_vals if shift is None else lay_vals - shift[lay_other]
    y = y * lay_sw
    G = jnp.einsum("tsa,tsb->tab", X, X)
    b = jnp.einsum("tsa,ts->ta", X, y)
    return G, b


def sparse_normal_equations(layout: TileLayout, F, shift, n_groups: int):
    """Gram blocks ``(n_groups, q, q)`` and right-hand sides ``(n_groups, q)`` from a tile layout.

    ``F`` is ``(p, q)``: row ``j`` is the fixed factor of other entity ``j``;
    ``shift`` is ``(p,)`` or ``None``.
    """
    n_tiles, T = layout.other.shape
    q = F.shape[1]
    dtype = F.dtype
    per_tile = T * q + q * q
    chunk = max(1, min(n_tiles, CHUNK_ELEMENTS // per_tile))
    n_chunks = -(-n_tiles // chunk)
    if n_chunks == 1:
        G, b = _tile_products(layout.other, layout.vals, layout.sqrt_w, F, shift)
        G = jax.ops.segment_sum(G, layout.group, num_segments=n_groups, indices_are_sorted=True)
        b = jax.ops.segment_sum(b, layout.group, num_segments=n_groups, indices_are_sorted=True)
        return G, b
    pad = n_chunks * chunk - n_tiles

    def padded(x, fill=0):
        x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1), constant_values=fill)
        return x.reshape((n_chunks, chunk) + x.shape[1:])

    xs = (padded(layout.other), padded(layout.vals), padded(layout.sqrt_w), padded(layout.group, n_groups - 1))

    def body(carry, x):
        G_acc, b_acc = carry
        o, v, sw, grp = x
        G, b = _tile_products(o, v, sw, F, shift)
        G_acc = G_acc.at[grp].add(G, indices_are_sorted=True)
        b_acc = b_acc.at[grp].add(b, indices_are_sorted=True)
        return (G_acc, b_acc), None

    init = (jnp.zeros((n_groups, q, q), dtype), jnp.zeros((n_groups, q), dtype))
    (G, b), _ = lax.scan(body, init, xs)
    return G, b


def khatri_rao_square(F):
    """Row-wise Kronecker square: ``(p, q) -> (p, q * q)`` with row ``j`` = ``vec(f_j f_j^T)``."""
    p, q = F.shape
    return (F[:, :, None] * F[:, None, :]).reshape(p, q * q)


def dense_normal_equations(data: Dense, F, shift, side: int):
    """Normal equations of every row (``side=0``) or column (``side=1``) of a :class:`Dense`.

    Returns ``(G, b)``: for unweighted data ``G`` is the shared ``(q, q)``
    Gram ``F^T F``; for weighted data ``(g, q, q)`` blocks.  ``b`` is ``(g, q)``.
    """
    A = data.A
    q = F.shape[1]

    def prod(X, Y):  # A-like (m, n) times F-like, oriented by side
        return X @ Y if side == 0 else jnp.matmul(X.T, Y)

    if data.weights is None:
        G = F.T @ F
        b = prod(A, F)
        if shift is not None:
            b = b - (shift @ F)[None, :]
        return G, b
    M = data.weights
    g = A.shape[side]
    G = prod(M, khatri_rao_square(F)).reshape(g, q, q)
    b = prod(M * A, F)
    if shift is not None:
        b = b - prod(M, F * shift[:, None])
    return G, b


def solve_spd(G, b, ridge):
    """Solve ``(G + diag(ridge)) x = b`` by Cholesky, batched.

    Parameters
    ----------
    G : (q, q) or (g, q, q)
        Gram block(s), symmetric positive semidefinite.
    b : (g, q)
        Right-hand sides (one per group; a shared ``G`` solves them all at once).
    ridge : (q,) or (g, q)
        Diagonal added to ``G`` (ridge penalties, and 1 for masked-out
        columns so that padded ranks stay nonsingular).

    A relative floor of ``eps * trace(G)`` (:func:`ridge_floor`) keeps
    singular PSD blocks (zero penalty, rank-deficient data) from breaking
    the Cholesky factorization; it is at the level of rounding and does not
    move the solution of well-posed problems beyond it.  Empty groups (zero
    block, zero ridge) get ``x = 0``.
    """
    q = b.shape[-1]
    eye = jnp.eye(q, dtype=G.dtype)

    def one_batch(Gb, bb, rb):
        Gr = Gb + rb[..., :, None] * eye
        Gr = Gr + ridge_floor(Gr)[..., None, None] * eye
        # Gr is symmetric: factor its transpose, which in LAPACK's column-major
        # layout is Gr's row-major memory as is.  Otherwise XLA copies all
        # (g, q, q) blocks into column-major order before the batch loop.
        L = lax.linalg.cholesky(jnp.swapaxes(Gr, -1, -2), symmetrize_input=False)
        return _cho_solve(L, bb)

    if G.ndim == 2:
        Gr = G + (ridge if ridge.ndim == 1 else jnp.zeros((q,), G.dtype)) * eye
        if ridge.ndim == 2:
            # Different ridge per group with a shared Gram: batch the blocks.
            return _batched_solve(one_batch, jnp.broadcast_to(G, (b.shape[0], q, q)), b, ridge)
        Gr = Gr + ridge_floor(Gr) * eye
        L = lax.linalg.cholesky(Gr, symmetrize_input=False)
        # x_i = (G^-1 b_i): solve for all rows at once with the columns of b^T.
        y = lax.linalg.triangular_solve(L, b.T, left_side=True, lower=True)
        x = lax.linalg.triangular_solve(L, y, left_side=True, lower=True, transpose_a=True)
        return x.T
    ridge = jnp.broadcast_to(ridge, b.shape)
    return _batched_solve(one_batch, G, b, ridge)


def ridge_floor(G):
    """Diagonal to add to Gram block(s) ``G`` (..., q, q) so that Cholesky cannot break down: ``eps * trace(G)``.

    When the rank exceeds the data's effective rank (or a sparse row has
    fewer entries than the rank), ``G`` is singular and its computed
    eigenvalues scatter around 0 by rounding errors of the order of ``eps``
    times its scale -- some come out negative, Cholesky returns NaN and the
    fit stops DIVERGED with its initial factors.  The floor must cover that
    scatter: ``eps * trace(G) / q`` (the earlier value) did not (ALS at rank
    6 on rank-3 float32 data diverged for 9 of 10 seeds), ``eps * trace(G)``
    did for every case tried (float32 and float64, dense, weighted and
    sparse, q up to 60, 1500 summed rows).  It moves the solution of a
    well-posed system by about ``eps * q * cond(G)`` relative -- rounding
    level -- and leaves the loss unchanged to second order.  An all-zero
    block (an empty row) gets 1, so its solution is 0.
    """
    eps = jnp.finfo(G.dtype).eps
    tr = jnp.trace(G, axis1=-2, axis2=-1)
    return jnp.where(tr > 0, eps * tr, 1).astype(G.dtype)


def _cho_solve(L, b):
    y = lax.linalg.triangular_solve(L, b[..., :, None], left_side=True, lower=True)
    x = lax.linalg.triangular_solve(L, y, left_side=True, lower=True, transpose_a=True)
    return x[..., 0]


def _batched_solve(fn, G, b, ridge):
    """Apply ``fn`` to batches of at most ``SOLVE_BATCH`` systems without copying ``G``.

    A ``fori_loop`` slices ``G`` in place; the last batch is aligned to the
    end and overlaps the previous one (its rows are simply solved twice), so
    no padded copy of the ``(g, q, q)`` blocks is ever made.
    """
    g = b.shape[0]
    S = SOLVE_BATCH
    if g <= S:
        return fn(G, b, ridge)
    n_batches = -(-g // S)

    def body(i, x):
        start = jnp.minimum(i * S, g - S)
        Gi = lax.dynamic_slice_in_dim(G, start, S, 0)
        bi = lax.dynamic_slice_in_dim(b, start, S, 0)
        ri = lax.dynamic_slice_in_dim(ridge, start, S, 0)
        return lax.dynamic_update_slice_in_dim(x, fn(Gi, bi, ri), start, 0)

    return lax.fori_loop(0, n_batches, body, jnp.zeros_like(b))
