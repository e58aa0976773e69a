r"""The sparse normal-equation engine: per-row systems in O(nnz + (m + n) k) memory, in one small program.

Alternating least squares on observed entries solves, for every segment
``s`` (a row of one side, e.g. a user), a small ridge regression over the
rows ``y_j`` of the other side that it touches::

    (A_0 + sum_{j in I(s)} g_sj y_j y_j^T + D_s) x_s = sum_{j in I(s)} h_sj y_j

(``A_0`` is zero for explicit ratings and ``Y^T Y`` for implicit feedback.)
Forming ``y_j y_j^T`` per entry and scattering costs ``nnz K^2`` memory
traffic at elementwise speed, and XLA's CPU scatter of wide windows is slow,
so instead:

* each segment's entries (contiguous in a processing order) are cut into
  *tiles* of ``T`` slots, one width per side (:func:`tile_width`: about
  half the average segment length, a power of two from the :class:`Tiling`'s
  narrowest tile to 64);
* whole segments are *packed* into chunks of ``C`` tiles (about the
  tiling's ``slots``) and at most ``L`` segments, in processing order, a
  segment never straddling two chunks (``C`` holds at least two of the
  longest possible segment; ``L`` is about 1.25x an average chunk's
  segments, see :func:`packing`);
* a chunk is processed in one step: its entries are gathered into a
  zero-padded ``(C, T, K)`` slab, per-tile Grams / right-hand sides are
  summed into the chunk's segments with a sorted ``segment_sum``, the
  systems are solved right there (by the caller's ``system``: a Cholesky
  solve with :func:`._normal.solve_spd`, coordinate descent for NMF, ...;
  or matrix-free conjugate gradients warm-started from the current rows,
  which never form the Gram matrices and keep the slab in cache across
  their steps), and only the segments' ``(K,)`` solutions are written out.

All chunks share one shape, so a half-step is ONE loop body whatever the
distribution of segment lengths: the engine it replaced grouped segments
into power-of-two length buckets with one loop body each (about 22 on
MovieLens latest-small), which made ALS programs take 20-30 s to compile;
the packed engine compiles in a few seconds (BENCHMARKS.md, compilation).

No ``(S, K, K)`` array is ever formed.  Everything runs inside ``jit``: the
packing comes from a ``lax.scan`` over the segments' tile counts, and the
number of chunks is a traced trip count; only ``T``, ``C`` and ``L`` are static.
Each engine picks the tiling that suits its inner loop (:func:`gram_tiling`,
:func:`cg_tiling`); the layout must be built with the same one.
"""


from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

__all__ = ["Side", "SparseLayout", "side_layout", "sparse_layout", "packed_rows", "packed_solve", "packed_cg",
           "per_segment", "packing", "tile_width", "segment_counts", "Tiling", "gram_tiling", "cg_tiling",
           "solve_tiling"]


def _cg_iteration(matvec: Callable, state):
    """One conjugate-gradient iteration on a batch of systems: ``(x, r, p, |r|^2) -> next``, no 0/0.

    Every iterate decreases ``x^T A x / 2 - b^T x``, so a warm-started,
    truncated solve never increases an ALS objective.  Converged systems
    (zero residual) stay put.
    """
    x, r, p, rs = state
    tiny = jnp.finfo(x.dtype).tiny
    Ap = matvec(p)
    pAp = jnp.sum(p * Ap, axis=1)
    alpha = jnp.where(pAp > tiny, rs / jnp.where(pAp > tiny, pAp, 1), 0)
    x = x + alpha[:, None] * p
    r = r - alpha[:, None] * Ap
    rs_new = jnp.sum(r * r, axis=1)
    beta = jnp.where(rs > tiny, rs_new / jnp.where(rs > tiny, rs, 1), 0)
    return x, r, r + beta[:, None] * p, rs_new


class Side(NamedTuple):
    """Static-size packing of one side's segments (computed once per data set, in ``Solver.init``).

    Tile slots are laid out chunk after chunk (``n_slots = n_chunks_max * C``), segment slots
    likewise (``n_chunks_max * L``).
    """

    counts: jax.Array  # (S,) entries per segment
    indptr: jax.Array  # (S,) processing position of each segment's first entry
    order: Optional[jax.Array]  # (nnz,) data position of each entry in processing order; None: identity
    tile_start: jax.Array  # (n_slots,) processing position of each tile's first entry
    tile_length: jax.Array  # (n_slots,) entries in the tile (0: an unused slot)
    tile_local: jax.Array  # (n_slots,) the tile's segment slot within its chunk (L for unused slots)
    local_segment: jax.Array  # (n_chunks_max * L,) segment id of each chunk-local segment slot (S: unused)
    n_chunks: jax.Array  # () chunks in use


# Tiles this short form their Gram blocks with fused elementwise products instead of batched GEMMs
# (2x faster at 4 x 33 per tile on the development machine; GEMMs win from about 16 entries on).
_SHORT_TILE = 8


class Tiling(NamedTuple):
    """Static shape rules of a layout: the narrowest tile and the slots of a chunk.

    The engine that reads a layout must be given the tiling it was built
    with (:func:`packed_rows` checks the shapes).  The defaults suit
    matrix-free passes (gradients, Khatri-Rao sums): the narrowest tiles
    waste the fewest slots; see :func:`gram_tiling` and :func:`cg_tiling`.
    """

    min_tile: int = 4
    slots: int = 1 << 14


def gram_tiling(width: int) -> Tiling:
    """Tiling of engines that form ``width x width`` Gram blocks with GEMMs (:func:`packed_solve`).

    Every tile writes a Gram block before the blocks are summed into
    segments, so short tiles multiply that traffic by the tiles per segment;
    wider tiles pad more zero rows into the GEMMs instead.  A narrowest tile
    of about ``width / 4`` balances the two (measured at widths 11 to 65,
    BENCHMARKS.md).
    """
    return Tiling(int(min(32, max(8, 2 ** round(math.log2(max(width / 4, 1.0)))))))


def cg_tiling(width: int, itemsize: int) -> Tiling:
    """Tiling of conjugate gradients (:func:`packed_cg`) on ``width`` features of ``itemsize`` bytes.

    Each CG step multiplies by the chunk's ``(slots, width)`` slab twice:
    slabs of about half a megabyte stay in the core's cache across the steps
    (much bigger ones are read from memory every time), and 8-slot tiles
    run those batched products faster than 4-slot ones despite more padding
    (BENCHMARKS.md).
    """
    slots = 2 ** round(math.log2(max((1 << 19) / max(width * itemsize, 1), 1.0)))
    return Tiling(8, int(min(1 << 14, max(1 << 10, slots))))


def solve_tiling(solve: str, width: int, dtype) -> Tiling:
    """Tiling for row solves by ``solve`` ("cholesky": :func:`gram_tiling`, "cg": :func:`cg_tiling`)."""
    return gram_tiling(width) if solve == "cholesky" else cg_tiling(width, jnp.dtype(dtype).itemsize)


def tile_width(nnz: int, n_segments: int, min_tile: int = 4) -> int:
    """Slots per tile: about half a segment's average length, a power of two in [min_tile, 64] (static)."""
    average = max(nnz / max(n_segments, 1), 1.0)
    return int(min(max(64, min_tile), max(min_tile, 2 ** round(math.log2(max(average / 2, 1.0))))))


def packing(nnz: int, n_segments: int, max_count: int, tiling: Tiling = Tiling()) -> tuple[int, int, int, int]:
    """Static ``(T, C, L, n_chunks_max)``: tile width, tiles and segments per chunk, a bound on the chunks.

    ``C`` holds two of the longest possible segments (``max_count`` entries)
    and at least ~16k slots.  ``L`` segment slots per chunk are about 1.25x
    the segments of an average chunk: every chunk's systems are solved (and
    its per-segment arrays formed) for all ``L`` slots, so ``L = C`` would
    solve ~3x more systems than there are segments when segments are a few
    tiles long.  A chunk closes when its tiles or its segment slots run out:
    one closed for tiles is more than half full (``2 tiles / C`` of those at
    most), one closed for segments holds ``L`` (``S / L`` of those at most).
    """
    T = tile_width(nnz, n_segments, tiling.min_tile)
    longest = -(-max(max_count, 1) // T)
    n_tiles = nnz // T + n_segments  # each segment adds at most one partial tile
    C = max(2 * longest, min(-(-tiling.slots // T), n_tiles))
    typical = max(nnz / T + n_segments / 2, 1.0)  # tiles of an average packing (half a partial tile each)
    L = int(min(C, max(8, -(-int(1.25 * C * n_segments / typical) // 8) * 8)))
    return T, C, L, 2 * n_tiles // C + max(n_segments, 1) // L + 2


def side_layout(seg, n_segments: int, order, max_count: int, tiling: Tiling = Tiling()) -> Side:
    """Packing of the segments with sorted ids ``seg`` (processing order); see the module docstring.

    The engine that reads it must be given the same ``tiling``.
    """
    S = n_segments
    nnz = seg.shape[0]
    T, C, L, NC = packing(nnz, S, max_count, tiling)
    counts, indptr = segment_counts(seg, S)
    n_tiles = (counts + T - 1) // T

    def place(carry, nt):
        chunk, fill, local = carry
        new = (fill + nt > C) | ((nt > 0) & (local >= L))
        chunk, fill, local = jnp.where(new, chunk + 1, chunk), jnp.where(new, 0, fill), jnp.where(new, 0, local)
        return (chunk, fill + nt, local + (nt > 0).astype(jnp.int32)), (chunk, fill, local)

    zero = jnp.zeros((), jnp.int32)
    (last, _, _), (chunk, fill, local) = jax.lax.scan(place, (zero, zero, zero), n_tiles)
    first_slot = chunk * C + fill  # nondecreasing in processing order
    p = jnp.arange(NC * C, dtype=jnp.int32)
    s = jnp.clip(jnp.searchsorted(first_slot, p, side="right").astype(jnp.int32) - 1, 0, S - 1)
    j = p - first_slot[s]
    used = (j >= 0) & (j < n_tiles[s])
    tile_start = jnp.where(used, indptr[s] + j * T, 0)
    tile_length = jnp.where(used, jnp.clip(counts[s] - j * T, 0, T), 0)
    tile_local = jnp.where(used, local[s], L)
    slot = jnp.where(n_tiles > 0, chunk * L + local, NC * L)  # empty segments own no slot
    local_segment = jnp.full((NC * L,), S, jnp.int32).at[slot].set(jnp.arange(S, dtype=jnp.int32), mode="drop")
    return Side(counts, indptr, order, tile_start.astype(jnp.int32), tile_length.astype(jnp.int32),
                tile_local.astype(jnp.int32), local_segment, last + 1)


def packed_rows(side: Side, X0, chunk_fn: Callable, nnz: int, max_count: int, tiling: Tiling = Tiling()):
    """New rows of ``X0`` (S, K') computed chunk by chunk from each segment's entries.

    ``chunk_fn(ent, valid, tile_local, seg, x0)`` gets the entry positions
    ``ent`` (C, T) of the chunk's tiles (valid where ``valid``), each tile's
    chunk-local segment slot ``tile_local`` (C,) (``L`` for unused tiles;
    sorted, so :func:`per_segment` sums tiles into segments), the segment id
    ``seg`` (L,) of each of the chunk's ``L`` segment slots (``S`` for unused
    slots) and their current rows ``x0`` (L, K'), and returns the new rows
    (L, K').  Segments without entries get rows of zeros.
    """
    S = X0.shape[0]
    T, C, L, NC = packing(nnz, S, max_count, tiling)
    if side.tile_start.shape[0] != NC * C or side.local_segment.shape[0] != NC * L:
        raise ValueError(f"packed_rows: the layout was not built for {tiling} (or for other data)")
    lane = jnp.arange(T, dtype=jnp.int32)
    order = side.order

    def body(c, X):
        at = c * C
        start = jax.lax.dynamic_slice_in_dim(side.tile_start, at, C)
        length = jax.lax.dynamic_slice_in_dim(side.tile_length, at, C)
        tile_local = jax.lax.dynamic_slice_in_dim(side.tile_local, at, C)
        seg = jax.lax.dynamic_slice_in_dim(side.local_segment, c * L, L)
        valid = lane[None, :] < length[:, None]
        pos = jnp.where(valid, start[:, None] + lane[None, :], 0)
        ent = pos if order is None else order[pos]
        x0 = jnp.where((seg < S)[:, None], X[jnp.minimum(seg, S - 1)], 0)
        return X.at[seg].set(chunk_fn(ent, valid, tile_local, seg, x0), mode="drop")

    X = jax.lax.fori_loop(0, side.n_chunks, body, X0)
    return jnp.where((side.counts > 0)[:, None], X, 0)


def per_segment(x, tile_local, n_local: int):
    """Sum per-tile values ``x`` (C, ...) into the chunk's ``n_local`` segment slots (unused tiles dropped)."""
    return jax.ops.segment_sum(x, tile_local, num_segments=n_local, indices_are_sorted=True)


def packed_solve(side: Side, X0, contrib: Callable, system: Callable, max_count: int, nnz: int,
                 tiling: Tiling = Tiling()):
    """Solve every segment's normal equations, chunk by chunk.

    Parameters
    ----------
    side : Side
        From :func:`side_layout`.
    X0 : (S, K)
        Current solutions (the start of iterative ``system`` solvers).
        Segments with no entries get 0.
    contrib : (ent (C, T), valid (C, T)) -> (Y (C, T, K), g (C, T) or None, h (C, T))
        Features and weights of the entries; padded slots must get ``g = h = 0``
        (or, with ``g = None`` meaning all ones, zero features).
    system : (G (C, K, K), R (C, K), seg (C,), x0 (C, K)) -> x (C, K)
        Adds the segment's regularization (and any shared term) and solves;
        ``seg`` is ``S`` for unused slots (their ``G``, ``R`` are 0).
    max_count : int
        Static upper bound on a segment's number of entries (the size of the other side).
    nnz : int
        Number of entries (static).
    tiling : Tiling
        As given to :func:`sparse_layout` (:func:`gram_tiling` of the width is the faster one here).

    Returns
    -------
    X : (S, K)
    """
    dtype = X0.dtype

    def chunk_fn(ent, valid, tile_local, seg, x0):
        Y, g, h = contrib(ent, valid)
        Yg = Y if g is None else Y * g[..., None]
        if Y.shape[1] <= _SHORT_TILE:  # a batch of tiny GEMMs runs one small kernel per tile: fused products
            G = jnp.sum(Yg[..., :, None] * Y[..., None, :], axis=1)
        else:
            G = jnp.einsum("ctk,ctj->ckj", Yg, Y, preferred_element_type=dtype)
        G = per_segment(G, tile_local, seg.shape[0])
        R = per_segment(jnp.einsum("ctk,ct->ck", Y, h, preferred_element_type=dtype), tile_local, seg.shape[0])
        return system(G, R, seg, x0)

    return packed_rows(side, X0, chunk_fn, nnz, max_count, tiling)


def packed_cg(side: Side, X0, contrib: Callable, base_apply: Callable, steps: int, max_count: int, nnz: int,
              tiling: Tiling = Tiling()):
    """Matrix-free variant of :func:`packed_solve` with conjugate gradients.

    Each segment's matrix ``A_s = B_s + sum_l g_l y_l y_l^T`` is applied as
    ``base_apply(p, seg) + Y^T (g * (Y p))`` on the chunk's slab, so a CG
    step costs ``O(L K)`` per segment instead of forming the ``K x K`` Gram
    matrix (``O(L K^2)``): the right choice when ``steps`` is small compared
    with ``K`` (as in implicit ALS, Takacs et al. 2011).  Same arguments as
    :func:`packed_solve` with ``base_apply(p (C, K), seg (C,)) -> (C, K)``
    applying the shared / regularization part ``B_s``.
    """
    dtype = X0.dtype

    def chunk_fn(ent, valid, tile_local, seg, x0):
        Y, g, h = contrib(ent, valid)
        pad = jnp.zeros((1,) + x0.shape[1:], dtype)

        def back(s):  # Y^T s, summed into the segments
            return per_segment(jnp.einsum("ctk,ct->ck", Y, s, preferred_element_type=dtype), tile_local, seg.shape[0])

        def forward(p):  # g * (Y p) per entry; unused tiles read a zero row
            s = jnp.einsum("ctk,ck->ct", Y, jnp.concatenate([p, pad], axis=0)[tile_local],
                           preferred_element_type=dtype)
            return s if g is None else s * g

        def matvec(p):
            return base_apply(p, seg) + back(forward(p))

        # (b - A x0 as ONE product Y^T (h - g Y x0) saves a pass, but XLA:CPU's LLVM backend fails to compile
        # that fusion in float64 on the development machine (AVX-512): "Cannot select X86ISD::SUBV_BROADCAST_LOAD".)
        r = back(h) - matvec(x0)
        state = (x0, r, r, jnp.sum(r * r, axis=1))
        for _ in range(steps):  # unrolled: a few steps on the slab while it is in cache
            state = _cg_iteration(matvec, state)
        return state[0]

    return packed_rows(side, X0, chunk_fn, nnz, max_count, tiling)


def segment_counts(seg, n_segments: int):
    """``(counts, indptr)`` int32 of sorted segment ids ``seg``."""
    counts = jax.ops.segment_sum(jnp.ones(seg.shape, jnp.int32), seg, num_segments=n_segments,
                                 indices_are_sorted=True)
    return counts, jnp.cumsum(counts) - counts


class SparseLayout(NamedTuple):
    """Both sides' layouts of one :class:`jmf.Sparse` (built once per fit, in ``Solver.init``).

    Attributes
    ----------
    rows, cols : Side
        The entries grouped by row (to update ``W``) and by column (to update ``H``).
    row_weight, col_weight : (m,), (n,)
        Sum of the entry weights of every row / column (the counts of ALS-WR's penalty).
    """

    rows: Side
    cols: Side
    row_weight: jax.Array
    col_weight: jax.Array


def sparse_layout(data, tiling: Tiling = Tiling()) -> SparseLayout:
    """The :class:`SparseLayout` of ``data`` (jit-able).

    The row side uses the entries in data order: :class:`jmf.Sparse` keeps
    them sorted by row (the constructor sorts; :func:`jmf.stack` and the
    mixed-shape buckets pad in the last row), so grouping by row needs no
    sort and no indirection.  The column side is sorted once here.
    The engine must be given the same ``tiling``.
    """
    m, n = data.shape
    w = data.effective_weights()
    rows = side_layout(data.rows, m, None, n, tiling)
    row_weight = jax.ops.segment_sum(w, data.rows, num_segments=m, indices_are_sorted=True)
    order = _column_order(data.cols, n)
    cols = side_layout(data.cols[order], n, order, m, tiling)
    col_weight = jax.ops.segment_sum(w[order], data.cols[order], num_segments=n, indices_are_sorted=True)
    return SparseLayout(rows, cols, row_weight, col_weight)


def _column_order(cols, n: int):
    """Stable ``argsort(cols)`` (int32) of column ids in ``[0, n)``.

    When ``n * nnz`` fits in int32, the entry index is folded into the key
    and ONE array is sorted, which XLA:CPU does several times faster than
    the key-value sort of a stable ``argsort`` (BENCHMARKS.md); the order is
    the same, ties broken by entry index.
    """
    nnz = cols.shape[0]
    if nnz == 0 or n * nnz >= 2 ** 31:
        return jnp.argsort(cols, stable=True).astype(jnp.int32)
    idx = jnp.arange(nnz, dtype=jnp.int32)
    return jnp.sort(cols.astype(jnp.int32) * nnz + idx) % nnz
