"""The solver interface.

A solver is a pair of pure functions in the shape of an Optax
``GradientTransformation``, plus the objective it decreases::

    state = solver.init(factors, data, key)
    factors, state = solver.step(factors, state, data, mask)

``step`` performs exactly one iteration (no loop inside); :func:`jmf.fit`
owns the loop, the stopping rule and the status.  ``mask`` is ``None`` or a
0/1 vector of length ``k`` marking the active factor columns of a
rank-padded member of :func:`jmf.fit_many`; a solver must keep the inactive
columns of ``W`` and rows of ``H`` at zero and stay well defined (no 0/0)
when they are zero.  Hyperparameters are closed over by the factory
(``jmf.solvers.als(l2=0.1)``), so a solver is hashable and ``fit`` compiles
once per solver object.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

from ..losses import Loss

__all__ = ["Solver", "DATA_KINDS", "cached_factory"]

DATA_KINDS = ("dense", "weighted", "sparse")


class Solver(NamedTuple):
    """An iterative factorization method.

    Attributes
    ----------
    init : (Factors, data, key) -> state
        Build the solver state (a pytree); ``key`` is a PRNG key for
        stochastic solvers (minibatch order), derived from the fit's key.
    step : (Factors, state, data, mask) -> (Factors, state)
        One iteration.
    loss : Loss
        The objective this solver decreases; :func:`jmf.fit` records
        ``loss.value`` in ``loss_history`` and applies ``tol`` to it.
    name : str
    nonnegative : bool
        The model is nonnegative: fitting data with negative observed
        entries is an error, and factors stay >= 0.
    biases : bool
        The model has row/column biases and an offset (``fit`` adds them to
        the initial factors).
    data_kinds : tuple of str
        Which data the solver accepts: "dense" (unweighted :class:`jmf.Dense`),
        "weighted" (:class:`jmf.Dense` with weights), "sparse" (:class:`jmf.Sparse`).
    spec : optional
        What the solver declares about its step beyond ``init``/``step``
        (e.g. :class:`jmf._src.solvers.gradient.GradientSpec`), from which
        the run layer may choose a specialized layout such as the
        batch-last kernels for batches of tiny dense matrices; ``None``
        for solvers that declare nothing.
    """

    init: Callable[..., Any]
    step: Callable[..., Any]
    loss: Loss
    name: str = "solver"
    nonnegative: bool = False
    biases: bool = False
    data_kinds: tuple = DATA_KINDS
    spec: Any = None


def data_kind(data) -> str:
    """"dense", "weighted" or "sparse"."""
    from ..data import Dense

    if isinstance(data, Dense):
        return "dense" if data.weights is None else "weighted"
    return "sparse"


def cached_factory(factory):
    """Return the same :class:`Solver` object for equal hyperparameters.

    ``fit`` compiles once per solver object; memoizing the factories means
    ``jmf.solvers.adam(1e-2)`` written twice does not compile twice.
    Unhashable arguments (arrays) bypass the cache.
    """
    cached = functools.lru_cache(maxsize=256)(factory)

    @functools.wraps(factory)
    def wrapper(*args, **kwargs):
        try:
            hash((args, tuple(sorted(kwargs.items()))))
        except TypeError:
            return factory(*args, **kwargs)
        return cached(*args, **kwargs)

    return wrapper
