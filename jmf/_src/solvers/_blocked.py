r"""The sparse normal-equation engine: per-row systems in O(nnz + (m + n) k) memory, with batched matrix products.

Alternating least squares on observed entries solves, for every segment
``s`` (a row of one side, e.g. a user), a small ridge regression over the
rows ``y_j`` of the other side that it touches::

    (A_0 + sum_{j in I(s)} g_sj y_j y_j^T + D_s) x_s = sum_{j in I(s)} h_sj y_j

(``A_0`` is zero for explicit ratings and ``Y^T Y`` for implicit feedback.)
Forming ``y_j y_j^T`` per entry and scattering costs ``nnz K^2`` memory
traffic at elementwise speed, and XLA's CPU scatter of wide windows is slow,
so instead:

* segments are grouped into *buckets* by their number of entries, bucket
  ``b`` holding the segments with ``2^(b-1) < count <= 2^b`` entries (the
  smallest bucket, 32 entries, also holds the short and the empty segments);
* a bucket is processed in blocks of ``VB`` segments: their entries are
  gathered into a zero-padded ``(VB, 2^b, K)`` slab (at most 2x padding),
  the Gram matrices come from one batched matrix product, the systems are
  solved right there (by the caller's ``system``: a Cholesky solve with
  :func:`._normal.solve_spd`, coordinate descent for NMF, ...; or matrix-free
  conjugate gradients warm-started from the current rows, which never form
  the Gram matrices), and only the ``(VB, K)`` solutions are written out.
  The block size grows with ``nnz`` (2,048 to 65,536 entries per slab).

Every ALS-type solver on sparse data runs on this engine (ALS with or
without biases and count scaling, masked HALS, implicit ALS, the bucketed
gradient of ratings models).  It replaced a second engine that summed tiled
Gram blocks into an ``(S, K, K)`` array and solved them afterwards: on 100k
synthetic ratings at rank 32 the two took about the same time per exact
sweep, but only this one can run conjugate gradients without forming the
Gram matrices (3x faster sweeps) and never holds ``S K^2`` floats.

No ``(S, K, K)`` array is ever formed.  Everything runs inside ``jit``: the
bucket of each segment, the segment order and the number of blocks per
bucket (a ``fori_loop`` with a traced trip count) come from the sorted
segment ids; only the bucket sizes ``2^b`` are static.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

__all__ = ["Side", "SparseLayout", "side_layout", "sparse_layout", "bucketed_rows", "bucketed_solve", "bucketed_cg",
           "segment_counts"]


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
    """Static-size layout of one side's segments (computed once per data set, in ``Solver.init``)."""

    counts: jax.Array  # (S,) entries per segment
    indptr: jax.Array  # (S,) first entry of each segment in processing order
    order: Optional[jax.Array]  # (nnz,) data position of each entry in processing order; None: identity
    seg_order: jax.Array  # (S,) segments sorted by bucket (empty ones in the first)
    bucket_start: jax.Array  # (n_buckets,) first position in seg_order of each bucket
    bucket_size: jax.Array  # (n_buckets,)


# Smallest bucket: segments with up to this many entries share one slab width.  Ratings data are
# dominated by short rows/columns (ml-latest-small: most items have < 10 ratings), which a
# 32-wide slab padded ~6x; 4 made implicit ALS 1.5x and ALS-WR 1.7x faster there, for a few
# more loop bodies to compile (BENCHMARKS.md, CF section).
MIN_ENTRIES = 4


def _bucket_range(max_count: int, min_entries: int = MIN_ENTRIES):
    b_min = max(0, int(math.ceil(math.log2(max(min_entries, 1)))))
    b_max = max(b_min, int(math.ceil(math.log2(max(max_count, 1)))))
    return b_min, b_max


def side_layout(seg, n_segments: int, order, max_count: int, min_entries: int = MIN_ENTRIES) -> Side:
    """Layout of the segments with sorted ids ``seg`` (processing order); see :func:`bucketed_solve`."""
    counts, indptr = segment_counts(seg, n_segments)
    b_min, b_max = _bucket_range(max_count, min_entries)
    bucket = jnp.full((n_segments,), b_min, jnp.int32)
    for b in range(b_min, b_max):
        bucket = bucket + (counts > (1 << b)).astype(jnp.int32)
    key = bucket  # empty segments (count 0) join the smallest bucket
    seg_order = jnp.argsort(key, stable=True).astype(jnp.int32)
    n_in = jax.ops.segment_sum(jnp.ones_like(key), key - b_min, num_segments=b_max - b_min + 1)
    return Side(counts, indptr, order, seg_order, (jnp.cumsum(n_in) - n_in).astype(jnp.int32),
                n_in.astype(jnp.int32))


def bucketed_rows(side: Side, X0, block_fn: Callable, max_count: int, nnz: int, min_entries: int = MIN_ENTRIES):
    """New rows of ``X0`` (S, K') computed block by block from each segment's entries.

    ``block_fn(ent, valid, seg, cnt, x0)`` gets the entry positions ``ent``
    (VB, L) (valid where ``valid``), the segment ids ``seg`` (VB,), their
    entry counts ``cnt`` (0 for padding) and current rows ``x0`` (VB, K'),
    and returns the new rows (VB, K').  Rows of segments that are not
    visited (none: every segment is in a bucket) keep ``X0``.
    """
    S = X0.shape[0]
    b_min, b_max = _bucket_range(max_count, min_entries)
    counts, indptr, order, seg_order = side.counts, side.indptr, side.order, side.seg_order
    start, n_in = side.bucket_start, side.bucket_size
    # Entries per block: a slab is processed whole even when its bucket has fewer segments, so the
    # block size grows with nnz (the waste stays a small fraction) while bounding memory and loop overhead.
    per_block = int(min(max(2 ** round(math.log2(max(nnz, 1) / 32)), 2048), 65536))
    X = X0
    for i, b in enumerate(range(b_min, b_max + 1)):
        L = 1 << b
        # at most nnz / 2^(b-1) segments have more than 2^(b-1) entries
        cap = max(1, nnz // max(1, L // 2))
        # small buckets: at least 8192 entries per block (many segments; loop overhead dominates there)
        entries = per_block if L > 32 else max(per_block, 8192)
        VB = int(max(1, min(entries // L, cap, S)))
        lane = jnp.arange(L, dtype=jnp.int32)
        first, n_b = start[i], n_in[i]

        def body(t, X, L=L, VB=VB, lane=lane, first=first, n_b=n_b):
            j = t * VB + jnp.arange(VB, dtype=jnp.int32)
            ok = j < n_b
            seg = seg_order[jnp.minimum(first + j, S - 1)]
            cnt = jnp.where(ok, counts[seg], 0)
            valid = lane[None, :] < cnt[:, None]
            pos = jnp.where(valid, indptr[seg][:, None] + lane[None, :], 0)
            ent = pos if order is None else order[pos]
            x = block_fn(ent, valid, seg, cnt, X[seg])
            return X.at[jnp.where(ok, seg, S)].set(x, mode="drop")

        X = jax.lax.fori_loop(0, (n_b + VB - 1) // VB, body, X)
    return X


def bucketed_solve(
    side: Side,
    X0,
    contrib: Callable,
    system: Callable,
    max_count: int,
    nnz: int,
    min_entries: int = MIN_ENTRIES,
):
    """Solve every segment's normal equations, bucket by bucket.

    Parameters
    ----------
    side : Side
        From :func:`side_layout`: entries per segment, the position of each
        segment's first entry in the processing order (entries of a segment
        are contiguous there), the data position of each entry in processing
        order (``None``: the data order, for the rows of a :class:`jmf.Sparse`)
        and the segments grouped by bucket.
    X0 : (S, K)
        Current solutions (warm start; written over segment by segment).
        Segments with no entries get ``system`` applied to a zero Gram, zero
        right-hand side and zero start (so 0 for a regularized system).
    contrib : (ent (VB, L), valid (VB, L)) -> (Y (VB, L, K), g (VB, L) or None, h (VB, L))
        Features and weights of the entries; padded slots must get ``g = h = 0``
        (or, with ``g = None`` meaning all ones, zero features).
    system : (G (VB, K, K), R (VB, K), seg (VB,), x0 (VB, K)) -> x (VB, K)
        Adds the segment's regularization (and any shared term) and solves.
    max_count : int
        Static upper bound on a segment's number of entries (the size of the other side).
    nnz : int
        Number of entries (static); sets the block size.

    Returns
    -------
    X : (S, K)
    """
    dtype = X0.dtype

    def block_fn(ent, valid, seg, cnt, x0):
        Y, g, h = contrib(ent, valid)
        Yg = Y if g is None else Y * g[..., None]
        G = jnp.einsum("vlk,vlj->vkj", Yg, Y, preferred_element_type=dtype)
        R = jnp.einsum("vlk,vl->vk", Y, h, preferred_element_type=dtype)
        x0 = jnp.where((cnt > 0)[:, None], x0, 0)  # empty segments start (and stay) at 0
        return system(G, R, seg, x0)

    return bucketed_rows(side, X0, block_fn, max_count, nnz, min_entries)


def bucketed_cg(side: Side, X0, contrib: Callable, base_apply: Callable, steps: int, max_count: int, nnz: int,
                min_entries: int = MIN_ENTRIES):
    """Matrix-free variant of :func:`bucketed_solve` with conjugate gradients.

    Each segment's matrix ``A_s = B_s + sum_l g_l y_l y_l^T`` is applied as
    ``base_apply(p, seg) + Y^T (g * (Y p))`` on the gathered slab, so a CG
    step costs ``O(L K)`` per segment instead of forming the ``K x K`` Gram
    matrix (``O(L K^2)``): the right choice when ``steps`` is small compared
    with ``K`` (as in implicit ALS, Takacs et al. 2011).  Same arguments as
    :func:`bucketed_solve` with ``base_apply(p (VB, K), seg (VB,)) -> (VB, K)``
    applying the shared / regularization part ``B_s``.
    """
    dtype = X0.dtype

    def block_fn(ent, valid, seg, cnt, x0):
        Y, g, h = contrib(ent, valid)
        R = jnp.einsum("vlk,vl->vk", Y, h, preferred_element_type=dtype)

        def matvec(p):
            s = jnp.einsum("vlk,vk->vl", Y, p, preferred_element_type=dtype)
            if g is not None:
                s = s * g
            return base_apply(p, seg) + jnp.einsum("vlk,vl->vk", Y, s, preferred_element_type=dtype)

        x = jnp.where((cnt > 0)[:, None], x0, 0)
        r = R - matvec(x)
        state = (x, r, r, jnp.sum(r * r, axis=1))
        for _ in range(steps):  # unrolled: a few steps, fused with the slab gather
            state = _cg_iteration(matvec, state)
        return state[0]

    return bucketed_rows(side, X0, block_fn, max_count, nnz, min_entries)


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


def sparse_layout(data) -> SparseLayout:
    """The :class:`SparseLayout` of ``data`` (jit-able).

    The row side uses the entries in data order: :class:`jmf.Sparse` keeps
    them sorted by row (the constructor sorts; :func:`jmf.stack` and the
    mixed-shape buckets pad in the last row), so grouping by row needs no
    sort and no indirection.  The column side is sorted once here.
    """
    m, n = data.shape
    w = data.effective_weights()
    rows = side_layout(data.rows, m, None, n)
    row_weight = jax.ops.segment_sum(w, data.rows, num_segments=m, indices_are_sorted=True)
    order = jnp.argsort(data.cols, stable=True).astype(jnp.int32)
    cols = side_layout(data.cols[order], n, order, m)
    col_weight = jax.ops.segment_sum(w[order], data.cols[order], num_segments=n, indices_are_sorted=True)
    return SparseLayout(rows, cols, row_weight, col_weight)
