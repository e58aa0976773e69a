r"""Nonnegative matrix factorization: what multiplicative updates and HALS share.

Both solvers (:func:`jmf._src.solvers.mu.mu`, :func:`jmf._src.solvers.hals.hals`)
keep ``W >= 0`` and ``H >= 0`` and update ``W`` then ``H`` in each step, as
scikit-learn's ``NMF`` does, so with the same start and iteration count they
follow the same path (see the tests).

Penalties ``l1`` and ``l2`` (a number or a pair ``(for W, for H)``) are in
the sum units of :func:`jmf.losses.frobenius`: the objective is
``(sum w (a - yhat)^2 + l2 (|W|^2 + |H|^2) + l1 (|W|_1 + |H|_1)) / N`` (for
``mu`` with ``beta != 2`` the squared error is replaced by the summed
beta-divergence, see :func:`jmf.losses.beta_divergence`).

Shared here: the data products of an update (:func:`products`), the test
for data whose updates need only those products and ``k x k`` Grams, and
the repeated inner updates of accelerated NMF (Gillis & Glineur 2012) with
the ``inner="auto"`` rule that sizes them.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from .._validation import check_fraction, check_int, is_int
from ..data import Dense
from ..factors import Factors
from ..losses.base import zero_filled
from .base import unsharded_total

__all__ = ["products"]


def _mask(mask, k, dtype):
    return jnp.ones((k,), dtype) if mask is None else mask.astype(dtype)


def _nz(x) -> bool:
    return not (isinstance(x, (int, float)) and x == 0)


def products(data, f: Factors, side: int):
    """``(A H^T)^T`` (side 0, ``(k, m)``) or ``W^T A`` (side 1, ``(k, n)``): the data products of an update.

    Unweighted :class:`jmf.Dense` by matrix products; sparse data whose
    absent entries are zeros (``absent="zero"``) by sparse products
    (:meth:`jmf.Sparse.dot`, ``O(nnz k)``).
    """
    if isinstance(data, Dense):
        return (data.A @ f.H.T).T if side == 0 else f.W.T @ data.A
    return data.dot(f.H.T).T if side == 0 else data.dot(f.W, transpose=True).T


def _gram_kind(data) -> bool:
    """Data every entry of which is observed with weight 1: the updates need only products and ``k x k`` Grams."""
    return (isinstance(data, Dense) and data.weights is None) or zero_filled(data)


def _repeated(sweep, X, max_sweeps, rel_tol: float, first=None, total=unsharded_total):
    """Up to ``max_sweeps`` applications of ``sweep`` to ``X`` with the products held fixed (accelerated NMF).

    Stops early once a sweep changes ``X`` by less than ``rel_tol`` times the
    change of the first sweep (Gillis & Glineur, Neural Computation 2012).
    Each sweep (a HALS coordinate sweep, or a multiplicative update) does not
    increase the loss on its own, so neither do the repeats.  ``max_sweeps``
    may be traced (it depends on the effective rank of a rank-masked member).
    ``first``: the result of the first sweep, when the caller has it already.
    ``total`` sums the change over the row blocks of a sharded fit (``psum``: one decision for all devices).
    """
    X1 = sweep(X) if first is None else first
    if isinstance(max_sweeps, int) and max_sweeps <= 1:
        return X1
    d0 = total(jnp.sum((X1 - X) ** 2))

    def cond(c):
        i, _, d = c
        return (i < max_sweeps) & (d > rel_tol * rel_tol * d0)

    def body(c):
        i, Xc, _ = c
        Xn = sweep(Xc)
        return i + 1, Xn, total(jnp.sum((Xn - Xc) ** 2))

    return lax.while_loop(cond, body, (jnp.ones((), jnp.int32), X1, d0))[1]


def _check_inner(inner, inner_tol, owner: str):
    """``inner`` (a positive int or "auto") and ``inner_tol`` (in [0, 1)), normalized."""
    if isinstance(inner, str) or not is_int(inner):
        if inner != "auto":
            raise ValueError(f"{owner}: inner must be a positive int or 'auto', got {inner!r}")
    else:
        inner = check_int(inner, "inner", owner)
    return inner, check_fraction(inner_tol, "inner_tol", owner)


# The "auto" rule's cost model.  A sweep also pays a fixed cost (a handful of small kernels in
# a while loop, ~50 us on the 2-core CPU of BENCHMARKS.md) worth about 2.5 MFLOP of products;
# without it, unbalanced shapes (digits' H: 64 x 1797) got ~100 sweeps that cost more than they
# saved.  The cap bounds the work of one half-step whatever the shapes.
_SWEEP_OVERHEAD_FLOPS = 2.5e6
_MAX_SWEEPS = 32


def _inner_sweeps(inner, p: int, q: int, k, mask=None):
    """Sweeps per half-step: ``1 + alpha rho`` with ``rho`` the cost of the products over one sweep's.

    Updating ``X`` (``p x k``) against data of width ``q`` costs ``2 p q k +
    2 q k^2`` FLOPs for ``A F`` and ``F^T F`` and ``2 p k^2`` (plus a fixed
    overhead) per sweep; ``alpha = 0.5`` as in Gillis & Glineur, at most
    ``_MAX_SWEEPS``.  ``k`` is the member's own rank (the mask's count under
    ``fit_many``), so a padded member runs exactly the sweeps of a separate
    fit at its rank.
    """
    if inner != "auto":
        return int(inner)
    k_eff = jnp.maximum(jnp.asarray(k if mask is None else jnp.sum(mask), jnp.float32), 1)
    products = 2 * jnp.float32(q) * k_eff * (jnp.float32(p) + k_eff)
    sweep = 2 * jnp.float32(p) * k_eff * k_eff + _SWEEP_OVERHEAD_FLOPS
    return jnp.minimum(jnp.floor(1 + 0.5 * products / sweep), _MAX_SWEEPS).astype(jnp.int32)

