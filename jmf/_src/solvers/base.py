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
* ``progress(factors, state, data) -> scalar``: the solver's own measure of
  how far from converged it is (e.g. scikit-learn's projected-gradient
  violation of coordinate descent relative to its first value, kept in the
  state by ``step``).  When given, the driver's loop stops a member at a
  check where ``progress <= tol``, instead of applying its relative
  loss-change rule; the loss is still evaluated at every check (history,
  divergence, result).
* ``objective(factors, state, data) -> scalar``: the objective when it
  involves parameters the factors do not hold (SVD++ keeps its explicit user
  factors and implicit item factors in the state; the factors carry their
  effective sum).  When given, the driver records it instead of
  ``loss.value(factors, data)``, which stays for callers without a state.
"""

from __future__ import annotations

import collections
import functools
import inspect
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

from .._memo import memo_cache, remembered
from ..losses import DATA_KINDS, Loss
from ..losses.base import _LOSS_MADE

__all__ = ["Solver", "EmptyState", "Grid", "DATA_KINDS", "cached_factory", "data_kind", "at_point"]


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
        "weighted" (:class:`jmf.Dense` with weights), "sparse" (:class:`jmf.Sparse`,
        absent entries missing), "sparse-zero" (:class:`jmf.Sparse` with
        ``absent="zero"``: absent entries are zeros).  The default omits
        "sparse-zero": a solver opts in when its updates have that path.
    spec : optional
        What the solver declares about its step beyond ``init``/``step``
        (e.g. :class:`jmf._src.solvers.gradient.GradientSpec`), from which
        the run layer may choose a specialized layout such as the
        batch-last kernels for batches of tiny dense matrices; ``None``
        for solvers that declare nothing.
    factory : optional
        ``(factory, frozen keyword arguments)`` that rebuilds this solver at
        other values of its searchable hyperparameters (set by
        :func:`cached_factory` for factories that declare some).
    grid : Grid, optional
        The hyperparameter grid when the factory was given arrays for
        searchable hyperparameters (e.g. ``als(l2=np.array([0.01, 0.1, 1.0]))``):
        :func:`jmf.fit_many` then fits every grid point as a member.
    progress : (Factors, state, data) -> scalar, optional
        A convergence measure replacing the loss-change rule: a member
        converges at a check where ``progress <= tol`` (see the module docstring).
    objective : (Factors, state, data) -> scalar, optional
        The objective :func:`jmf.fit` records (history, ``tol``, result) in
        place of ``loss.value`` when it depends on the solver state (see the
        module docstring).
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
    factory: Any = None
    grid: Any = None
    progress: Optional[Callable[..., Any]] = None
    objective: Optional[Callable[..., Any]] = None


def unsharded_total(x):
    """The ``total`` of a single-device step: the identity (a sharded step passes ``psum`` over its devices)."""
    return x


def data_kind(data) -> str:
    """"dense", "weighted", "sparse" (absent entries missing) or "sparse-zero" (absent entries zero)."""
    from ..data import Dense

    if isinstance(data, Dense):
        return "dense" if data.weights is None else "weighted"
    return "sparse-zero" if getattr(data, "absent", "missing") == "zero" else "sparse"


class Grid(NamedTuple):
    """Hyperparameter values, one member per point: the cartesian product of the arrays given, flattened.

    ``values[name]`` has shape ``(P,)`` for every name; point ``p`` is
    ``{name: values[name][p]}``.
    """

    names: tuple
    values: dict

    @property
    def size(self) -> int:
        return len(next(iter(self.values.values())))

    def point(self, p: int) -> dict:
        return {n: self.values[n][p] for n in self.names}


def _grid_axis(value) -> bool:
    """A 1-D array (numpy or JAX) marks a grid; tuples keep their meaning (e.g. penalty pairs)."""
    import jax

    return isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 1


def _frozen(kwargs: dict) -> tuple:
    return tuple(sorted(kwargs.items()))


# Solvers made by a memoized factory, by id while the factory's cache holds them: (factory, its frozen
# arguments, the solver).  What rebuilds a solver in another process (see recipe_of).
_MADE: dict = {}


def _plain(x):
    """``x`` as nested tuples of numbers, strings and recipes of solvers and losses, or None when not that plain."""
    if x is None or isinstance(x, (bool, int, float, str)):
        return (type(x).__name__, repr(x))
    if isinstance(x, np.generic) and x.dtype.kind in "biuf":
        return (x.dtype.str, repr(x.item()))
    if isinstance(x, Solver):
        return recipe_of(x)
    if callable(x) and x in _NAMED_FUNCTIONS:  # a solver factory or builder, by its name (same source)
        return ("function", x.__module__, x.__qualname__)
    if isinstance(x, Loss):  # a memoized loss factory's product, by its factory and arguments
        made = _LOSS_MADE.get(id(x))
        if made is None or made[2] is not x:
            return None
        args = _plain(made[1])
        return None if args is None else ("loss", made[0].__module__, made[0].__qualname__, args)
    if isinstance(x, (tuple, list)):
        parts = tuple(_plain(v) for v in x)
        return None if any(p is None for p in parts) else ("seq", parts)
    return None


_DERIVED_KEPT = 1024  # solvers of derived() builders remembered (the oldest lose their recipe: traced again)
_derived_order: collections.OrderedDict = collections.OrderedDict()
# The undecorated builders of derived() (with their signature and searchable arguments) and factories of
# cached_factory(): module-level functions that recipes may name.
_DERIVED: dict = {}
_NAMED_FUNCTIONS: set = set()


def derived(builder: Optional[Callable] = None, *, searchable: tuple = ()) -> Callable:
    """Memoize a function that builds a solver from plain arguments and other solvers, recording how.

    For wrappers of solvers (e.g. the scikit-learn layer's half step of a
    solver, or its stopping rule inside the step): the solver they return
    has a recipe (:func:`recipe_of`) when their arguments do, so its
    compiled programs are found without tracing, as a factory's are.  A
    wrapper of one solver takes that solver's hyperparameters as traced
    values (see :func:`traced_point`), and its own numbers named in
    ``searchable`` too (e.g. a stopping rule's ``tol``).
    """
    if builder is None:
        return functools.partial(derived, searchable=tuple(searchable))
    cached = functools.lru_cache(maxsize=256)(builder)
    _DERIVED[builder] = (inspect.signature(builder), tuple(searchable))
    _NAMED_FUNCTIONS.add(builder)

    @functools.wraps(builder)
    def wrapper(*args, **kwargs):
        solver = cached(*args, **kwargs)
        key = id(solver)
        _MADE[key] = (builder, (args, tuple(sorted(kwargs.items()))), solver)
        _derived_order[key] = None
        _derived_order.move_to_end(key)
        while len(_derived_order) > _DERIVED_KEPT:
            old, _ = _derived_order.popitem(last=False)
            _MADE.pop(old, None)
        return solver

    wrapper.cache_clear = cached.cache_clear
    return wrapper


def recipe_of(solver: Solver):
    """A description of ``solver`` that builds the same solver in any process (same jmf), or None.

    A solver a memoized factory made (and still holds) is described by the
    factory's name and its arguments, when they are plain (numbers, strings,
    recipes of solvers); a grid's static job solver (its closures stripped,
    see :func:`jmf.fit_many`) by its factory, static arguments and metadata.
    Used to find a job's compiled programs without tracing them (see
    :mod:`jmf._src.run.executor`); None for anything else (e.g. a solver
    holding an Optax transformation, or one modified by ``_replace``).
    """
    made = _MADE.get(id(solver))
    if made is not None and made[2] is solver:
        factory, frozen, _ = made
        args = _plain(tuple(frozen) if isinstance(frozen, tuple) else frozen)
        return None if args is None else ("made", factory.__module__, factory.__qualname__, args)
    stripped = (solver.init, solver.step, solver.loss, solver.spec, solver.grid, solver.update_w, solver.direct,
                solver.progress, solver.objective)
    if solver.factory is None or any(f is not None for f in stripped):
        return None
    factory, frozen = solver.factory
    parts = _plain((tuple(frozen), solver.name, solver.nonnegative, solver.biases, tuple(solver.data_kinds)))
    return None if parts is None else ("grid", factory.__module__, factory.__qualname__, parts)


def cached_factory(factory=None, *, searchable: tuple = ()):
    """Memoize a solver factory, and let it build hyperparameter grids.

    ``fit`` compiles once per solver object; memoizing the factories means
    ``jmf.solvers.adam(1e-2)`` written twice does not compile twice.  The
    cache key is the full argument list with defaults filled in, so
    ``als(0.1)``, ``als(l2=0.1)`` and ``als(l2=0.1, biases=False)`` are one
    object.  Unhashable arguments and calls the signature does not accept
    (the factory reports them) bypass the cache.

    ``searchable`` names hyperparameters the factory's solver can take as
    traced values: given a 1-D array for any of them, the factory returns a
    solver carrying a :class:`Grid` (the cartesian product of the arrays)
    and a way to rebuild itself at each point, so :func:`jmf.fit_many`
    fits every point in the same compiled call.  Every grid value is
    validated here, by building the solver at it.
    """
    if factory is None:
        return functools.partial(cached_factory, searchable=tuple(searchable))
    if searchable:
        _SEARCHABLE[factory] = tuple(searchable)
    _NAMED_FUNCTIONS.add(factory)
    signature = inspect.signature(factory)
    var_keyword = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)
    cache = memo_cache()

    def make(named: dict):
        solver = factory(**named)
        # The solver can rebuild itself at other values of its searchable hyperparameters; a factory that
        # forwards to another searchable one (a deprecated spelling, a preset) keeps the canonical recipe.
        if searchable and solver.factory is None:
            solver = solver._replace(factory=(factory, _frozen(named)))
        return solver

    def build(named: dict):
        try:
            k = _frozen(named)
            hash(k)
        except TypeError:  # unhashable settings (e.g. arrays): no cache, and no grid rebuilding
            return factory(**named)
        return remembered(cache, _MADE, factory, k, lambda: make(named))

    @functools.wraps(factory)
    def wrapper(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return factory(*args, **kwargs)  # let the factory report the bad call
        bound.apply_defaults()
        named = dict(bound.arguments)
        if var_keyword is not None:
            named.update(named.pop(var_keyword))
        axes = {n: np.asarray(named[n]) for n in searchable if n in named and _grid_axis(named[n])}
        if not axes:
            return build(named)
        for name, values in axes.items():
            if values.size == 0:
                raise ValueError(f"{factory.__name__}: {name} is an empty array (a grid needs values)")
            if values.dtype.kind not in "iuf":
                raise TypeError(f"{factory.__name__}: {name} grid must hold numbers, got dtype {values.dtype}")
        names = tuple(axes)
        mesh = np.meshgrid(*[axes[n] for n in names], indexing="ij")
        values = {n: m.ravel().astype(np.float64) for n, m in zip(names, mesh)}
        static = {k: v for k, v in named.items() if k not in axes}
        try:
            hash(_frozen(static))
        except TypeError:
            raise TypeError(f"{factory.__name__}: a hyperparameter grid needs the other arguments hashable "
                            "(numbers, strings, solver parts), not arrays") from None
        for p in range(len(values[names[0]])):  # validate every point before anything compiles
            build({**static, **{n: float(values[n][p]) for n in names}})
        first = factory(**static, **{n: float(values[n][0]) for n in names})
        return first._replace(factory=(factory, _frozen(static)), grid=Grid(names, values))

    wrapper.searchable = tuple(searchable)
    return wrapper


# The searchable hyperparameters of each memoized factory (the undecorated function), by factory.
_SEARCHABLE: dict = {}


def _traceable(value) -> bool:
    """A number, or a ``(W, H)`` pair of them, a job may take as traced data: nonzero (a zero may let the
    factory skip a term) and finite."""
    if isinstance(value, (tuple, list)):
        return len(value) == 2 and all(_traceable(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return value != 0 and bool(np.isfinite(value))


def _as_point_value(value):
    return tuple(float(v) for v in value) if isinstance(value, (tuple, list)) else float(value)


def traced_point(solver: Solver):
    """``solver`` split into what a compiled program keeps and the hyperparameters it may take as data.

    For a solver a searchable factory made (and still holds), the nonzero
    numbers (or ``(W, H)`` pairs of them) among its searchable hyperparameters
    (``als(l2=0.1)``'s ``l2``, ``adam(1e-2)``'s learning rate) become traced values, as a grid's are,
    so that fits at other values of them reuse the same compiled programs.
    A :func:`derived` wrapper of such a solver (the scikit-learn layer's
    half steps and stopping rules) is split the same way: its inner
    solver's values are traced and the wrapper is rebuilt around it.
    Returns ``(static, point)``: the factory with its other arguments, the
    way a grid's solver carries them (see :func:`at_point`), and
    ``{name: value}``; or None (solvers from ``_replace``, other wrappers,
    grids, nothing to trace).
    """
    made = _MADE.get(id(solver))
    if made is None or made[2] is not solver or solver.grid is not None:
        return None
    if made[0] in _DERIVED:
        return _derived_point(made[0], *made[1])
    if solver.factory is None:
        return None
    factory, frozen = solver.factory
    if made[0] is not factory:  # a wrapper's product (e.g. another loss) that kept its inner solver's factory
        return None
    named = dict(frozen)
    point = {n: _as_point_value(named[n]) for n in _SEARCHABLE.get(factory, ()) if _traceable(named.get(n))}
    if not point:
        return None
    return (factory, _frozen({k: v for k, v in named.items() if k not in point})), point


def _derived_point(builder, args: tuple, kwargs: tuple):
    """:func:`traced_point` of a :func:`derived` builder's product: the traced values of the one solver it
    wraps and of the builder's own searchable numbers, and a factory that rebuilds the wrapper at other
    values (see :func:`rebuild_derived`).  None when the builder takes no solver or several, or nothing is
    left to trace."""
    signature, searchable = _DERIVED[builder]
    try:
        bound = signature.bind(*args, **dict(kwargs))
    except TypeError:
        return None
    bound.apply_defaults()
    named = dict(bound.arguments)
    solvers = [n for n, v in named.items() if isinstance(v, Solver)]
    if len(solvers) != 1:
        return None
    solver_arg = solvers[0]
    split = traced_point(named[solver_arg])
    inner, point = (named[solver_arg], {}) if split is None else split
    own = {n: _as_point_value(named[n]) for n in searchable if _traceable(named.get(n))}
    if set(own) & set(point) or not (own or point):
        return None
    rest = {n: v for n, v in named.items() if n != solver_arg and n not in own}
    static = _frozen({"builder": builder, "named": _frozen(rest), "solver_arg": solver_arg, "inner": inner,
                      "inner_names": None if split is None else tuple(sorted(point))})
    return (rebuild_derived, static), {**point, **own}


def rebuild_derived(builder, named: tuple, solver_arg: str, inner, inner_names, **point) -> Solver:
    """``builder(**named)`` around its solver argument ``solver_arg`` at ``point`` (traced values allowed):
    a wrapper rebuilt inside a compiled member.

    ``inner`` is the wrapped solver itself (``inner_names`` None) or ``(factory, frozen arguments)`` that
    builds it at the values ``inner_names`` of ``point``; the rest of ``point`` are the builder's own
    arguments.  The undecorated builder is called: its memo must never hold a solver closing over traced
    values.
    """
    if inner_names is None:
        solver = inner
    else:
        factory, static = inner
        solver = factory(**{**dict(static), **{n: point[n] for n in inner_names}})
    own = {n: v for n, v in point.items() if inner_names is None or n not in inner_names}
    return builder(**{**dict(named), solver_arg: solver, **own})


_NAMED_FUNCTIONS.add(rebuild_derived)


def at_point(solver: Solver, point: dict) -> Solver:
    """``solver`` rebuilt with hyperparameters ``point`` (traced values allowed; used inside compiled members)."""
    factory, static = solver.factory
    return factory(**{**dict(static), **point})
