r"""Truncated SVD as a solver: the Eckart--Young optimum in one step.

For an unweighted dense matrix the best rank-``k`` approximation in
Frobenius norm is the truncated SVD ``U_k S_k V_k^T`` (Eckart & Young 1936).
:func:`svd` computes it once, in the solver's ``init``, and every ``step``
returns it (split as ``W = U_k S_k^{1/2}``, ``H = S_k^{1/2} V_k^T``).  Run
through :func:`jmf.fit` it therefore gives the optimum after one iteration;
the driver's tolerance rule sees an unchanged loss at the second check and
reports ``CONVERGED`` there (at the first check with ``init="svd"``).  Rank-
masked members of :func:`jmf.fit_many` keep their leading components, which
is the rank-``r`` optimum.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._validation import check_choice, check_int
from ..data import Dense
from ..factors import Factors
from ..linalg import _exact, _randomized
from ..losses import frobenius
from .base import Solver, cached_factory

__all__ = ["svd", "SVDState"]

_METHODS = ("auto", "exact", "randomized")


class SVDState(NamedTuple):
    """The truncated SVD factors ``W = U S^{1/2}``, ``H = S^{1/2} V^T``."""

    W: jax.Array
    H: jax.Array


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
        :func:`jmf.solvers.als` for that).

    Notes
    -----
    The decomposition is computed in ``init`` from the solver key (used by
    the randomized method only); ``step`` costs nothing.
    """
    check_choice(method, "method", _METHODS, "svd")
    n_oversamples = check_int(n_oversamples, "n_oversamples", "svd", lo=0)
    n_power_iter = check_int(n_power_iter, "n_power_iter", "svd", lo=0)

    def init(f: Factors, data, key=None) -> SVDState:
        if f.has_biases:
            raise ValueError("svd does not fit biases (use biases=False)")
        k = f.W.shape[1]
        use = method
        if use == "auto":
            use = "exact" if isinstance(data, Dense) else "randomized"
        if use == "exact":
            if not isinstance(data, Dense):
                raise ValueError("svd(method='exact') needs dense data; use method='randomized' for jmf.Sparse")
            U, s, Vt = _exact(data, k)
        else:
            key = jax.random.key(0) if key is None else key
            U, s, Vt = _randomized(data, k, key, int(n_oversamples), int(n_power_iter))
        root = jnp.sqrt(s).astype(f.W.dtype)
        return SVDState(U * root, root[:, None] * Vt)

    def step(f: Factors, state: SVDState, data, mask=None):
        W, H = state.W, state.H
        if mask is not None:
            W, H = W * mask, H * mask[:, None]
        return f._replace(W=W, H=H), state

    return Solver(init=init, step=step, loss=frobenius(), name=f"svd({method})", data_kinds=("dense", "sparse"))
