"""The results of :func:`jmf.fit` and :func:`jmf.fit_many`: one fit's :class:`FitResult`, many members'
:class:`FitManyResult`."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .factors import Factors
from .run.loop import Status, n_checks

__all__ = ["FitResult", "FitManyResult"]


class FitResult(NamedTuple):
    """Result of :func:`fit` (or one member of :func:`fit_many`).

    Attributes
    ----------
    factors : Factors
        Final factors (the last finite ones if the fit diverged).
    loss : Array, ()
        Loss of ``factors`` (the solver's objective, mean convention).
    loss_history : Array, (n_checks + 1,)
        Loss at iterations ``iterations``; NaN after the fit stopped.
    iterations : Array of int, (n_checks + 1,)
        Iteration number of each history entry: 0, check_every, 2 check_every, ..., max_iter.
    n_iter : Array of int, ()
        Iterations performed.
    status : Array of int, ()
        A :class:`Status` value.
    state : pytree
        Final solver state (for warm starts).
    """

    factors: Factors
    loss: jax.Array
    loss_history: jax.Array
    iterations: jax.Array
    n_iter: jax.Array
    status: jax.Array
    state: Any = None

    @property
    def converged(self):
        return self.status == Status.CONVERGED

    @property
    def diverged(self):
        return self.status == Status.DIVERGED

    @property
    def status_name(self):
        """Status as a string (or an array of strings for batched results)."""
        s = np.asarray(self.status)
        if s.ndim == 0:
            return Status(int(s)).name
        return np.vectorize(lambda v: Status(int(v)).name)(s)

    def __repr__(self) -> str:
        if np.ndim(self.loss) == 0:
            return (f"FitResult(loss={float(self.loss):.6g}, n_iter={int(self.n_iter)}, "
                    f"status={self.status_name}, W={tuple(self.factors.W.shape)}, H={tuple(self.factors.H.shape)})")
        return f"FitResult(batch={tuple(np.shape(self.loss))}, W={tuple(self.factors.W.shape)})"


def _to_result(max_iter: int, check_every: int, c) -> FitResult:
    """The result of a finished carry; its history is cut to the run's ``n_checks + 1`` entries (the
    programs' history has a bucketed length, see :func:`jmf._src.run.loop.run_config`)."""
    n = n_checks(max_iter, check_every) + 1
    iterations = np.minimum(np.arange(n, dtype=np.int32) * check_every, max_iter)
    history = c.history
    if history.shape[-1] != n:
        # on the host where it can be (slicing a JAX array would compile a program per shape)
        whole = not isinstance(history, jax.Array) or history.is_fully_addressable
        history = np.asarray(history)[..., :n] if whole else history[..., :n]
    return FitResult(c.factors, c.loss_prev, history, iterations, c.n_iter, c.status, c.state)


class FitManyResult(NamedTuple):
    """Result of :func:`fit_many`: every leaf has the member axes ``axes`` in front.

    ``axes`` is a subset of ``("matrix", "param", "rank", "restart")`` in
    that order: "matrix" when the data is a batch ``(B, m, n)``, "param"
    when the solver carries a hyperparameter grid (``params`` holds each
    member's values), "rank" when ``ranks`` was given, "restart" when
    ``keys`` (or ``n_restarts``) was given.  For
    example ``loss`` has shape ``(len(ranks), n_restarts)`` for one matrix
    and ``(B, len(ranks), n_restarts)`` for a batch.  Rank-padded members
    have ``W`` of width ``max(ranks)`` with zero columns beyond their rank.
    """

    result: FitResult
    axes: tuple
    ranks: Optional[np.ndarray] = None
    params: Optional[dict] = None  # hyperparameter values along the "param" axis: name -> (P,)

    @property
    def factors(self) -> Factors:
        return self.result.factors

    @property
    def loss(self):
        return self.result.loss

    @property
    def loss_history(self):
        return self.result.loss_history

    @property
    def iterations(self):
        return self.result.iterations

    @property
    def n_iter(self):
        return self.result.n_iter

    @property
    def status(self):
        return self.result.status

    @property
    def status_name(self):
        return self.result.status_name

    def best(self) -> "FitManyResult":
        """Keep, for every other axis, the restart with the lowest final loss.

        Diverged members are never chosen unless all diverged.  The "restart"
        axis is removed; e.g. with ranks and restarts, ``best().loss`` has
        shape ``(len(ranks),)``.
        """
        if "restart" not in self.axes:
            return self
        ax = self.axes.index("restart")
        loss = jnp.where(self.result.status == Status.DIVERGED, jnp.inf, self.result.loss)
        loss = jnp.where(jnp.isnan(loss), jnp.inf, loss)
        idx = jnp.argmin(loss, axis=ax)

        def pick(x):
            if x is None:
                return None
            x = jnp.asarray(x)
            if x.ndim < len(self.axes):  # e.g. `iterations`, shared by all members
                return x
            trailing = (1,) * (x.ndim - len(self.axes))
            i = jnp.expand_dims(idx, ax).reshape(idx.shape[:ax] + (1,) + idx.shape[ax:] + trailing)
            return jnp.take_along_axis(x, i, axis=ax).squeeze(ax)

        result = jax.tree_util.tree_map(pick, self.result._replace(iterations=None))
        result = result._replace(iterations=self.result.iterations)
        return FitManyResult(result, tuple(a for a in self.axes if a != "restart"), self.ranks, self.params)

    def member(self, *index) -> FitResult:
        """One member's :class:`FitResult` (index along ``axes``); rank padding is trimmed."""
        if len(index) != len(self.axes):
            raise IndexError(f"give one index per axis {self.axes}, got {index}")
        res = jax.tree_util.tree_map(lambda x: x[index], self.result._replace(iterations=None))
        res = res._replace(iterations=self.result.iterations)
        if "rank" in self.axes:
            r = int(self.ranks[index[self.axes.index("rank")]])
            f = res.factors
            res = res._replace(factors=f._replace(W=f.W[:, :r], H=f.H[:r]))
        return res
