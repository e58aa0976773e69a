"""The solver interface.

A solver is a pair of pure functions in the shape of an Optax
``GradientTransformation``, plus the objective it decreases::

    state = solver.init(factors, data, key)
    factors, state = solver.step(factors, state, data, mask)

``step`` performs exactly one iteration (no loop inside); :func:`jmf.fit`
owns the loop, the stopping rule and the status.  Hyperparameters are
closed over by the factory (``jmf.solvers.als(l2=0.1)``), which validates
them: ``init`` and ``step`` never raise, so a solver is hashable and ``fit``
compiles once per solver object.  The configuration decides the model: a
solver built with ``biases=True`` receives factors with biases, one built
without receives none (:func:`jmf.fit` checks this at the edge).

Rank masks are the solver's business: ``mask`` is ``None`` or a 0/1 vector
of length ``k`` marking the active factor columns of a rank-padded member
of :func:`jmf.fit_many`.  A solver keeps the inactive columns of ``W`` and
rows of ``H`` out of its solves and returns them exactly zero (it needs the
mask anyway, to keep padded columns from coupling with the active ones), so
the driver never re-masks.

Optional parts:

* ``update_w(factors, state, data, mask) -> (factors, state)``: the solver's
  update of ``W`` (and the row biases) with ``H`` (and the column biases and
  offset) fixed.  For alternating solvers ``step`` is ``update_w`` followed by
  the same update of ``H``; iterated alone it solves for the rows of new data
  against fixed components (a transform).
* ``direct(key, data, width, mask) -> Factors``: a method that computes its
  solution in one go (the truncated SVD).  The run layer calls it once
  instead of the loop, and reports one iteration, ``CONVERGED``.
"""

from __future__ import annotations

import collections
import functools
import inspect
from typing import Any, Callable, NamedTuple, Optional

from ..losses import DATA_KINDS, Loss

__all__ = ["Solver", "EmptyState", "DATA_KINDS", "cached_factory", "data_kind"]


class EmptyState(NamedTuple):
    """The state of a solver that keeps nothing between steps (a pytree without leaves)."""


class Solver(NamedTuple):
    """An iterative factorization method.

    Attributes
    ----------
    init : (Factors, data, key) -> state
        Build the solver state (a pytree, :class:`EmptyState` when there is
        none); ``key`` is a PRNG key for stochastic solvers (minibatch
        order), derived from the fit's key.
    step : (Factors, state, data, mask) -> (Factors, state), or None
        One iteration (``None`` for a direct method).
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
    update_w: Optional[Callable[..., Any]] = None
    direct: Optional[Callable[..., Any]] = None


def data_kind(data) -> str:
    """"dense", "weighted" or "sparse"."""
    from ..data import Dense

    if isinstance(data, Dense):
        return "dense" if data.weights is None else "weighted"
    return "sparse"


def cached_factory(factory):
    """Return the same :class:`Solver` object for equal hyperparameters.

    ``fit`` compiles once per solver object; memoizing the factories means
    ``jmf.solvers.adam(1e-2)`` written twice does not compile twice.  The
    cache key is the full argument list with defaults filled in, so
    ``als(0.1)``, ``als(l2=0.1)`` and ``als(l2=0.1, biases=False)`` are one
    object.  Unhashable arguments (arrays) and calls the signature does not
    accept (the factory reports them) bypass the cache.
    """
    sig = inspect.signature(factory)
    cache: collections.OrderedDict = collections.OrderedDict()

    def key(args, kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        items = []
        for name, value in bound.arguments.items():
            if sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                value = tuple(sorted(value.items()))
            items.append((name, value))
        out = tuple(items)
        hash(out)
        return out

    @functools.wraps(factory)
    def wrapper(*args, **kwargs):
        try:
            k = key(args, kwargs)
        except TypeError:
            return factory(*args, **kwargs)
        if k in cache:
            cache.move_to_end(k)
            return cache[k]
        solver = factory(*args, **kwargs)
        cache[k] = solver
        if len(cache) > 256:
            cache.popitem(last=False)
        return solver

    return wrapper
