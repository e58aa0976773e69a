r"""Truncated SVD as a direct method: the Eckart--Young optimum, computed once.

For an unweighted dense matrix the best rank-``k`` approximation in
Frobenius norm is the truncated SVD ``U_k S_k V_k^T`` (Eckart & Young 1936),
split as ``W = U_k S_k^{1/2}``, ``H = S_k^{1/2} V_k^T``.  :func:`svd` is a
*direct* solver (:attr:`Solver.direct`): :func:`jmf.fit` computes the
decomposition once instead of running the loop and reports one iteration
with status ``CONVERGED`` (history: the loss of the initial factors, then
the optimum).  Rank-masked members of :func:`jmf.fit_many` keep their
leading components, which is the rank-``r`` optimum.
"""

from __future__ import annotations

import jax.numpy as jnp

from .._validation import check_choice, check_int
from ..data import Dense
from ..factors import Factors, apply_rank_mask
from ..linalg import _exact, _randomized
from ..losses import frobenius
from .base import EmptyState, Solver, cached_factory

__all__ = ["svd", "SVDState"]

_METHODS = ("auto", "exact", "randomized")

#: The state of :func:`svd` (it keeps none: the decomposition is the result).
SVDState = EmptyState


@cached_factory
def svd(method: str = "auto", n_oversamples: int = 10, n_power_iter: int = 4) -> Solver:
    r"""Truncated SVD solver (the Eckart--Young optimum of the unweighted Frobenius loss).

    Parameters
    ----------
    method : {"auto", "exact", "randomized"}, default "auto"
        "exact": LAPACK SVD of the dense matrix (``O(m n min(m, n))``);
        "randomized": :func:`jmf.randomized_svd` (``O((2 q + 2) m n (k + p))``
        dense, ``O((2 q + 2) nnz (k + p))`` sparse); "auto": exact for dense
        data, randomized for sparse data.
    n_oversamples, n_power_iter : int
        Parameters ``p`` and ``q`` of the randomized method.

    Returns
    -------
    Solver
        Loss :func:`jmf.losses.frobenius`.  Accepts unweighted dense data
        and sparse data; for :class:`jmf.Sparse` the unobserved entries are
        treated as zeros (the "PureSVD" recommender baseline), which is not
        the minimizer of the loss over observed entries (use
        :func:`jmf.solvers.als` for that).  For sparse data with
        ``absent="zero"`` (absent entries are zeros) it is the optimum.

    Notes
    -----
    A direct method: ``step`` is ``None`` and the run layer calls
    ``direct(key, data, width, mask)`` once.  The exact method needs dense
    data (the factory declares it), the randomized one uses the key.
    """
    check_choice(method, "method", _METHODS, "svd")
    n_oversamples = check_int(n_oversamples, "n_oversamples", "svd", lo=0)
    n_power_iter = check_int(n_power_iter, "n_power_iter", "svd", lo=0)
    kinds = ("dense",) if method == "exact" else ("dense", "sparse", "sparse-zero")

    def init(f: Factors, data, key=None):
        return EmptyState()

    def direct(key, data, width: int, mask=None) -> Factors:
        use = method
        if use == "auto":
            use = "exact" if isinstance(data, Dense) else "randomized"
        if use == "exact":
            U, s, Vt = _exact(data, width)
        else:
            U, s, Vt = _randomized(data, width, key, int(n_oversamples), int(n_power_iter))
        root = jnp.sqrt(s).astype(data.dtype)
        return apply_rank_mask(Factors(U * root[None, :], root[:, None] * Vt), mask)

    return Solver(init=init, step=None, loss=frobenius(), name=f"svd({method})", data_kinds=kinds, direct=direct)
