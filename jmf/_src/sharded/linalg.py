r"""A LAPACK-free SPD solve for sharded fits on several CPU devices of one process.

jaxlib's CPU Cholesky and triangular solves are LAPACK custom calls that
split their batch into tasks on XLA's CPU worker pool and block until they
finish; several CPU devices of one process share that pool, so when every
device of a ``shard_map`` program sits in such a call the process deadlocks
(see :func:`jmf._src.run.executor.blocking_custom_calls`).  Sharded fits
therefore solve with :func:`spd_solve_jax` -- plain XLA operations, a loop
over the ``q`` columns -- whenever the mesh holds two or more CPU devices of
this process, and with :func:`jmf._src.solvers._normal.solve_spd` otherwise
(one CPU device per process, GPUs, TPUs).  Same semantics, including the
ridge floor; measured on the 2-core development machine it is 3x (q = 9) to
15x (q = 33) slower than LAPACK for 2,048 systems (BENCHMARKS.md), so on
such meshes prefer ``solve="cg"`` (matrix-free, LAPACK-free, the default of
``ratings_als`` and ``implicit_als``).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ..solvers._normal import ridge_floor, solve_spd

__all__ = ["spd_solve_jax", "spd_solver", "cholesky_jax"]


def cholesky_jax(A):
    """Lower Cholesky factors of ``A`` (..., q, q), right-looking, one column per loop step (no custom call)."""
    q = A.shape[-1]
    idx = jnp.arange(q)

    def body(j, A):
        col = lax.dynamic_index_in_dim(A, j, A.ndim - 1, False)  # (..., q)
        d = lax.dynamic_index_in_dim(col, j, col.ndim - 1, False)
        c = jnp.where(idx >= j, col * lax.rsqrt(d)[..., None], 0)
        A = A - c[..., :, None] * c[..., None, :]  # clears row and column j, updates the trailing block
        return lax.dynamic_update_index_in_dim(A, c[..., :, None], j, A.ndim - 1)

    return lax.fori_loop(0, q, body, A)


def _cho_solve_jax(L, b):
    """Solve ``L L^T x = b`` for ``L`` (..., q, q), ``b`` (..., q, r)."""
    q = L.shape[-1]

    def fwd(j, y):
        Lj = lax.dynamic_index_in_dim(L, j, L.ndim - 2, False)  # row j: (..., q)
        s = jnp.sum(Lj[..., :, None] * y, axis=-2)  # rows < j of y are final, rows >= j still zero
        yj = (lax.dynamic_index_in_dim(b, j, b.ndim - 2, False) - s) / lax.dynamic_index_in_dim(Lj, j, Lj.ndim - 1,
                                                                                                 True)
        return lax.dynamic_update_index_in_dim(y, yj, j, y.ndim - 2)

    y = lax.fori_loop(0, q, fwd, jnp.zeros_like(b))

    def bwd(i, x):
        j = q - 1 - i
        Lj = lax.dynamic_index_in_dim(L, j, L.ndim - 1, False)  # column j: (..., q)
        s = jnp.sum(Lj[..., :, None] * x, axis=-2)
        xj = (lax.dynamic_index_in_dim(y, j, y.ndim - 2, False) - s) / lax.dynamic_index_in_dim(Lj, j, Lj.ndim - 1,
                                                                                                True)
        return lax.dynamic_update_index_in_dim(x, xj, j, x.ndim - 2)

    return lax.fori_loop(0, q, bwd, jnp.zeros_like(y))


def spd_solve_jax(G, b, ridge=None):
    """:func:`jmf._src.solvers._normal.solve_spd` without LAPACK: ``(G + diag(ridge)) x = b``, same ridge floor."""
    q = b.shape[-1]
    eye = jnp.eye(q, dtype=G.dtype)
    if ridge is None:
        ridge = jnp.zeros((q,), G.dtype)
    if G.ndim == 2 and ridge.ndim == 1:  # one shared system, many right-hand sides
        Gr = G + ridge[None, :] * eye
        Gr = Gr + ridge_floor(Gr) * eye
        return _cho_solve_jax(cholesky_jax(Gr), b.T).T
    G = jnp.broadcast_to(G, b.shape[:-1] + (q, q))
    eye = jnp.broadcast_to(eye, G.shape)
    Gr = G + jnp.broadcast_to(ridge, b.shape)[..., :, None] * eye
    Gr = Gr + ridge_floor(Gr)[..., None, None] * eye
    return _cho_solve_jax(cholesky_jax(Gr), b[..., None])[..., 0]


def spd_solver(lapack: bool):
    """The SPD solve of a sharded program: LAPACK's when safe, else :func:`spd_solve_jax`."""
    return solve_spd if lapack else spd_solve_jax
