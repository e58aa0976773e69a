r"""Row-wise normal equations of dense data, and the one SPD solver every ALS-type update uses.

With the other factor fixed, every row ``i`` of ``W`` (or column ``j`` of
``H``) solves its own least-squares problem over the entries it observes::

    min_x  sum_j w_ij (a_ij - s_j - x . f_j)^2

whose normal equations are ``G_i x = b_i`` with the *Gram block*
``G_i = sum_j w_ij f_j f_j^T`` (``q x q``) and ``b_i = sum_j w_ij (a_ij - s_j) f_j``
(``s_j`` is a known shift, e.g. ``offset + col_bias_j``).  For dense data:

* unweighted :class:`Dense`: one shared Gram ``G = F^T F`` and ``B = A F`` (matrix products);
* weighted :class:`Dense`: all blocks at once with one matrix product
  ``G = M (F * F)`` where ``F * F`` is the row-wise Khatri--Rao square
  (``p x q^2``) -- ``m n q^2`` FLOPs at matrix-product speed.

Sparse data forms its blocks bucket by bucket (:mod:`._blocked`) and solves
them there with :func:`solve_spd` too.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from ..data import Dense
from ..losses.base import zero_filled

__all__ = ["dense_normal_equations", "khatri_rao_square", "solve_spd", "ridge_floor", "spd_draw", "packed_spd_draw",
           "cholesky_loop", "triangular_solve_loop", "UNROLLED_MAX"]

# Systems solved per batch by the Cholesky solver (bounds the factor's temporary memory).
SOLVE_BATCH = 2048
# Widths up to this are factored by straight-line code vectorized over the batch (:func:`spd_draw`);
# wider ones take seconds to compile that way and run no faster than LAPACK (BENCHMARKS.md).
UNROLLED_MAX = 16


def khatri_rao_square(F):
    """Row-wise Kronecker square: ``(p, q) -> (p, q * q)`` with row ``j`` = ``vec(f_j f_j^T)``."""
    p, q = F.shape
    return (F[:, :, None] * F[:, None, :]).reshape(p, q * q)


def dense_normal_equations(data: Dense, F, shift, side: int):
    """Normal equations of every row (``side=0``) or column (``side=1``) of a :class:`Dense`.

    Returns ``(G, b)``: for unweighted data ``G`` is the shared ``(q, q)``
    Gram ``F^T F``; for weighted data ``(g, q, q)`` blocks.  ``b`` is ``(g, q)``.
    Sparse data whose absent entries are zeros (``absent="zero"``) is an
    unweighted matrix too: ``b`` comes from sparse products (``O(nnz q)``).
    """
    q = F.shape[1]
    if zero_filled(data):  # sparse with absent zeros: every entry observed, sparse products
        b = data.dot(F, transpose=side == 1)
        if shift is not None:
            b = b - (shift @ F)[None, :]
        return F.T @ F, b
    A = data.A

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


def solve_spd(G, b, ridge=None):
    """Solve ``(G + diag(ridge)) x = b`` by Cholesky, batched: the one solver of every ``k x k`` SPD system in jmf.

    Parameters
    ----------
    G : (q, q) or (g, q, q)
        Gram block(s), symmetric positive semidefinite.
    b : (g, q)
        Right-hand sides (one per group; a shared ``G`` solves them all at once).
    ridge : (q,) or (g, q), optional
        Diagonal added to ``G`` (ridge penalties, and 1 for masked-out
        columns so that padded ranks stay nonsingular); default none.

    A relative floor of ``eps * trace(G)`` (:func:`ridge_floor`) keeps
    singular PSD blocks (zero penalty, rank-deficient data) from breaking
    the Cholesky factorization; it is at the level of rounding and does not
    move the solution of well-posed problems beyond it.  Empty groups (zero
    block, zero ridge) get ``x = 0``.
    """
    q = b.shape[-1]
    eye = jnp.eye(q, dtype=G.dtype)
    if ridge is None:
        ridge = jnp.zeros((q,), G.dtype)

    def one_batch(Gb, bb, rb):
        Gr = Gb + rb[..., :, None] * eye[None]
        Gr = Gr + ridge_floor(Gr)[..., None, None] * eye[None]
        # Gr is symmetric: factor its transpose, which in LAPACK's column-major
        # layout is Gr's row-major memory as is.  Otherwise XLA copies all
        # (g, q, q) blocks into column-major order before the batch loop.
        L = lax.linalg.cholesky(jnp.swapaxes(Gr, -1, -2), symmetrize_input=False)
        return _cho_solve(L, bb)

    if G.ndim == 2:
        Gr = G + (ridge if ridge.ndim == 1 else jnp.zeros((q,), G.dtype))[None, :] * eye
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


# -- LAPACK-free kernels ----------------------------------------------------------------------------
# jaxlib's CPU Cholesky and triangular solves are LAPACK custom calls that split their batch into tasks
# on XLA's CPU worker pool and block until they finish: programs that contain them cannot run on several
# CPU devices of one process at once (see jmf._src.run.executor.blocking_custom_calls).  The kernels below
# are plain XLA operations.


def spd_draw(P, b, z=None):
    """``P^-1 b + L^-T z`` for SPD ``P = L L^T`` (S, q, q), ``b``, ``z`` (S, q), with no custom call.

    ``z = None`` gives the solve ``P^-1 b``; with ``z ~ N(0, I)`` the term
    ``L^-T z`` has covariance ``P^-1`` (a Gaussian draw).  For ``q <=``
    :data:`UNROLLED_MAX`: straight-line code over the ``q`` columns, every
    operation a vector over the batch (batch-last), which XLA fuses into a
    few passes -- faster than LAPACK's per-matrix calls at these widths, for
    about a second more compilation (BENCHMARKS.md); wider systems go through the loops of
    :func:`cholesky_loop` and :func:`triangular_solve_loop`.  Only the lower
    triangle of ``P`` is read.
    """
    q = P.shape[-1]
    if q > UNROLLED_MAX:
        L = cholesky_loop(P)
        y = triangular_solve_loop(L, b[..., None], transpose=False)
        if z is not None:
            y = y + z[..., None]
        return triangular_solve_loop(L, y, transpose=True)[..., 0]
    Pt = jnp.moveaxis(P, (-2, -1), (0, 1))  # (q, q, ...): each entry a contiguous vector over the batch
    zt = None if z is None else jnp.moveaxis(z, -1, 0)
    return jnp.stack(_unrolled_draw(lambda j: Pt[:, j], jnp.moveaxis(b, -1, 0), zt), axis=-1)


def packed_spd_draw(Gt, scale, shift, bt, zt=None):
    """:func:`spd_draw` batch-last, for ``P = scale G + shift`` with the Gram blocks ``G`` packed.

    ``Gt`` (Q, ...) holds the upper triangles of the blocks ``G`` (q, q)
    in ``np.triu_indices(q)`` order, ``Q = q (q + 1) / 2``; ``scale`` is a
    scalar, ``shift`` (q, q) is shared; ``bt``, ``zt`` (q, ...) and the
    result are batch-last; ``q <= UNROLLED_MAX``.  Gram blocks accumulated as packed triangles are
    factored without first being unpacked into (..., q, q) and transposed,
    two passes over the largest array of a sampler's sweep.
    """
    q = bt.shape[0]
    if q > UNROLLED_MAX:
        raise ValueError(f"packed_spd_draw: blocks of width {q} > UNROLLED_MAX ({UNROLLED_MAX})")
    index = {}
    for pos, (i, j) in enumerate(zip(*np.triu_indices(q))):
        index[i, j] = index[j, i] = pos
    extra = (1,) * (Gt.ndim - 1)

    def column(j):
        rows = np.array([index[i, j] for i in range(q)])
        return scale * Gt[rows] + shift[:, j].reshape((q,) + extra)

    return jnp.stack(_unrolled_draw(column, bt, zt), axis=0)


def _unrolled_draw(column, bt, zt):
    """The straight-line Cholesky draw on batch-last vectors: rows of ``x`` (each (...)) in a list.

    ``column(j)`` gives column ``j`` of ``P`` as (q, ...) (only its entries from ``j`` down are read).
    """
    q = bt.shape[0]
    below = jnp.arange(q).reshape((q,) + (1,) * (bt.ndim - 1))
    cols, diag = [], []  # column j of L as (q, ...) with zeros above the diagonal; L_jj
    for j in range(q):
        v = column(j)
        for k in range(j):
            v = v - cols[k] * cols[k][j][None]
        d = jnp.sqrt(v[j])
        cols.append(jnp.where(below >= j, v / d[None], 0))
        diag.append(d)
    y = []  # L y = b, row by row
    for j in range(q):
        acc = bt[j]
        for k in range(j):
            acc = acc - cols[k][j] * y[k]
        y.append(acc / diag[j])
    if zt is not None:
        y = [y[j] + zt[j] for j in range(q)]
    x = [None] * q  # L^T x = y, last row first
    for j in reversed(range(q)):
        acc = y[j]
        for k in range(j + 1, q):
            acc = acc - cols[j][k] * x[k]
        x[j] = acc / diag[j]
    return x


def cholesky_loop(A):
    """Lower Cholesky factors of ``A`` (..., q, q), right-looking, one column per loop step (no custom call).

    Small programs for any ``q``, but an order of magnitude slower than LAPACK on big batches
    (BENCHMARKS.md): for single matrices, and wide systems where LAPACK must be avoided.
    """
    q = A.shape[-1]
    idx = jnp.arange(q)

    def body(j, A):
        col = lax.dynamic_index_in_dim(A, j, A.ndim - 1, False)  # (..., q)
        d = lax.dynamic_index_in_dim(col, j, col.ndim - 1, False)
        c = jnp.where(idx >= j, col * lax.rsqrt(d)[..., None], 0)
        A = A - c[..., :, None] * c[..., None, :]  # clears row and column j, updates the trailing block
        return lax.dynamic_update_index_in_dim(A, c[..., :, None], j, A.ndim - 1)

    return lax.fori_loop(0, q, body, A)


def triangular_solve_loop(L, b, *, transpose: bool):
    """Solve ``L x = b`` (or ``L^T x = b`` with ``transpose``) for lower ``L`` (..., q, q), ``b`` (..., q, r)."""
    q = L.shape[-1]

    def body(i, x):
        j = q - 1 - i if transpose else i
        # Row j of L (column j of L^T): the entries of x already solved, the others still zero.
        Lj = lax.dynamic_index_in_dim(L, j, L.ndim - (1 if transpose else 2), False)  # (..., q)
        s = jnp.sum(Lj[..., :, None] * x, axis=-2)
        xj = (lax.dynamic_index_in_dim(b, j, b.ndim - 2, False) - s) / lax.dynamic_index_in_dim(Lj, j, Lj.ndim - 1,
                                                                                                 True)
        return lax.dynamic_update_index_in_dim(x, xj, j, x.ndim - 2)

    return lax.fori_loop(0, q, body, jnp.zeros_like(b))
