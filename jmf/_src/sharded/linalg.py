r"""A LAPACK-free SPD solve for sharded fits on several CPU devices of one process.

jaxlib's CPU Cholesky and triangular solves are LAPACK custom calls that
split their batch into tasks on XLA's CPU worker pool and block until they
finish; several CPU devices of one process share that pool, so when every
device of a ``shard_map`` program sits in such a call the process deadlocks
(see :func:`jmf._src.run.executor.blocking_custom_calls`).  Sharded fits
therefore solve with :func:`spd_solve_jax` -- plain XLA operations
(:func:`jmf._src.solvers._normal.spd_draw`) -- whenever the mesh holds two or
more CPU devices of this process, and with
:func:`jmf._src.solvers._normal.solve_spd` otherwise (one CPU device per
process, GPUs, TPUs).  Same semantics, including the ridge floor.  Up to
width 16 it is faster than LAPACK; wider systems go through loops that are
3x (q = 17) to 15x (q = 33) slower (BENCHMARKS.md), so on such meshes prefer
``solve="cg"`` (matrix-free, LAPACK-free, the default of ``ratings_als`` and
``implicit_als``).
"""

from __future__ import annotations

import jax.numpy as jnp

from ..solvers._normal import cholesky_loop, ridge_floor, solve_spd, spd_draw, triangular_solve_loop

__all__ = ["spd_solve_jax", "spd_solver"]


def spd_solve_jax(G, b, ridge=None):
    """:func:`jmf._src.solvers._normal.solve_spd` without LAPACK: ``(G + diag(ridge)) x = b``, same ridge floor."""
    q = b.shape[-1]
    eye = jnp.eye(q, dtype=G.dtype)
    if ridge is None:
        ridge = jnp.zeros((q,), G.dtype)
    if G.ndim == 2 and ridge.ndim == 1:  # one shared system, many right-hand sides
        Gr = G + ridge[None, :] * eye
        Gr = Gr + ridge_floor(Gr) * eye
        L = cholesky_loop(Gr)  # factored once, every row a right-hand side
        return triangular_solve_loop(L, triangular_solve_loop(L, b.T, transpose=False), transpose=True).T
    G = jnp.broadcast_to(G, b.shape[:-1] + (q, q))
    eye = jnp.broadcast_to(eye, G.shape)
    Gr = G + jnp.broadcast_to(ridge, b.shape)[..., :, None] * eye
    Gr = Gr + ridge_floor(Gr)[..., None, None] * eye
    return spd_draw(Gr, b)


def spd_solver(lapack: bool):
    """The SPD solve of a sharded program: LAPACK's when safe, else :func:`spd_solve_jax`."""
    return solve_spd if lapack else spd_solve_jax
