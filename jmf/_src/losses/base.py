r"""The :class:`Loss` type, penalties, and the elementwise data terms every built-in loss shares.

Convention (used by every loss, solver and reported number in jmf)
------------------------------------------------------------------
A loss is a **mean over observed entries**: the data term is summed over
entries and divided by ``N``, the sum of the weights (``m n`` for an
unweighted dense matrix, ``nnz`` for unweighted sparse data), and the
regularization is added *inside* the sum in ridge-regression units::

    L(W, H, b) = ( sum_ij w_ij rho(a_ij, yhat_ij)
                   + l2 (||W||^2 + ||H||^2) + l1 (|W|_1 + |H|_1)
                   + bias_l2 (||b_row||^2 + ||b_col||^2) ) / N

With ``rho = (a - yhat)^2`` and no regularization the loss is exactly the
(weighted) mean squared error; an ``l2`` value means what it means in ridge
regression and ALS.  Its scale does not depend on the size of the matrix,
so learning rates carry over between problems.

Losses whose data term is a sum of an elementwise ``rho(a, yhat)`` (the
Frobenius loss, beta-divergences, robust losses) share :func:`entry_sum` and
:func:`entry_grad`: dense data uses matrix products, sparse data gathers rows
of ``W`` and columns of ``H`` and scatters with ``segment_sum`` (O(nnz k),
never an ``m x n`` array).
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from .._memo import memo_cache, remembered
from .._validation import check_penalty
from ..data import Dense
from ..factors import Factors, matmul, predict_entries

__all__ = ["Loss", "custom", "penalty", "squared_error", "n_observed", "entry_sum", "entry_grad", "DATA_KINDS",
           "ALL_KINDS", "zero_filled", "fold_row_blocks", "map_row_blocks"]

DATA_KINDS = ("dense", "weighted", "sparse")
#: The data kinds of the built-in Frobenius and beta-divergence losses: also sparse data whose absent entries are zeros.
ALL_KINDS = DATA_KINDS + ("sparse-zero",)


class Loss(NamedTuple):
    """A loss as a pair of pure functions.

    Attributes
    ----------
    value : (Factors, data) -> scalar
    grad : (Factors, data) -> Factors
        Gradient with the structure of the factors (``None`` leaves stay ``None``).
    name : str
    spec : tuple
        ``("frobenius", l2, l1, bias_l2)`` for the built-in Frobenius loss and
        ``("ratings", (l2W, l2H), bias_l2, count_scaled)`` for :func:`ratings_loss`: lets the
        run layer pick specialized kernels and sharded fits rebuild the objective; ``()`` otherwise.
    data_kinds : tuple of str
        The data the loss is defined on ("dense", "weighted", "sparse"); solvers built on
        it accept no other (checked by :func:`jmf.fit` before anything runs).
    """

    value: Callable
    grad: Callable
    name: str = "loss"
    spec: tuple = ()
    data_kinds: tuple = DATA_KINDS


# Losses a memoized loss factory made, by id while the factory's cache holds them: (factory, its frozen
# arguments, the loss).  What describes a loss in another process (jmf._src.solvers.base.recipe_of).
_LOSS_MADE: dict = {}


def loss_factory(factory: Callable) -> Callable:
    """Memoize a loss factory: the same arguments give the same :class:`Loss` object.

    A solver built on a loss is memoized on it (its factory's cache key holds
    the loss), and compiled programs are cached per solver: without this,
    ``adam(1e-2, loss=huber(0.5))`` written twice was two solvers, and the
    second fit compiled again.  Unhashable arguments (arrays, the traced
    values of a grid's point) bypass the cache.
    """
    signature = inspect.signature(factory)
    cache = memo_cache()

    @functools.wraps(factory)
    def wrapper(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            key = tuple(sorted(bound.arguments.items()))
            hash(key)
        except TypeError:  # a bad call (the factory reports it) or unhashable arguments
            return factory(*args, **kwargs)
        return remembered(cache, _LOSS_MADE, factory, key, lambda: factory(**bound.arguments))

    return wrapper


def n_observed(data):
    """``N``: the sum of weights of one (unbatched) data pytree."""
    return data.n_observed()


def zero_filled(data) -> bool:
    """Sparse data whose absent entries are zeros (``jmf.Sparse(..., absent="zero")``)."""
    return getattr(data, "absent", "missing") == "zero"


def _refuse_zero_filled(data, what: str):
    if zero_filled(data):  # at trace time; fit refuses such data earlier through the data kinds
        raise NotImplementedError(f"{what} is not defined on sparse data with absent='zero' (it would sum over all "
                                  "m x n entries); use a loss that declares 'sparse-zero' in its data_kinds")


def entry_sum(f: Factors, data, rho: Callable) -> jax.Array:
    """``sum_ij w_ij rho(a_ij, yhat_ij)`` over observed entries (no division by N)."""
    _refuse_zero_filled(data, "entry_sum")
    if isinstance(data, Dense):
        d = rho(data.A, f.predict())
    else:
        d = rho(data.vals, predict_entries(f, data.rows, data.cols))
    if data.weights is not None:
        d = data.weights * d
    return jnp.sum(d)


def entry_grad(f: Factors, data, drho: Callable) -> Factors:
    """Gradient of :func:`entry_sum` given ``drho(a, yhat) = d rho / d yhat`` (elementwise)."""
    _refuse_zero_filled(data, "entry_grad")
    if isinstance(data, Dense):
        G = drho(data.A, f.predict())
        if data.weights is not None:
            G = data.weights * G
        gW = matmul(G, f.H.T)
        gH = matmul(f.W.T, G)
        g_row = None if f.row_bias is None else jnp.sum(G, axis=1)
        g_col = None if f.col_bias is None else jnp.sum(G, axis=0)
        g_off = None if f.offset is None else jnp.sum(G)
        return Factors(gW, gH, g_row, g_col, g_off)
    m, n = data.shape
    G = drho(data.vals, predict_entries(f, data.rows, data.cols))
    if data.weights is not None:
        G = data.weights * G
    gW = jax.ops.segment_sum(G[:, None] * f.H.T[data.cols], data.rows, num_segments=m)
    gH = jax.ops.segment_sum(G[:, None] * f.W[data.rows], data.cols, num_segments=n).T
    g_row = None if f.row_bias is None else jax.ops.segment_sum(G, data.rows, num_segments=m)
    g_col = None if f.col_bias is None else jax.ops.segment_sum(G, data.cols, num_segments=n)
    g_off = None if f.offset is None else jnp.sum(G)
    return Factors(gW, gH, g_row, g_col, g_off)


def _squared(a, y):
    r = a - y
    return r * r


def squared_error(f: Factors, data) -> jax.Array:
    """``sum_ij w_ij (a_ij - yhat_ij)^2`` over observed entries (no division).

    For sparse data with ``absent="zero"`` every entry is observed:
    ``|X|^2 - 2 <X H^T, W> + <W^T W, H H^T>`` from one sparse product and two
    ``k x k`` Grams (``O(nnz k + (m + n) k^2)``; models without biases).
    """
    if zero_filled(data):
        if f.has_biases:
            raise NotImplementedError("squared_error: absent='zero' sparse data with biases is not supported")
        return data.sq_norm() - 2 * jnp.sum(data.dot(f.H.T) * f.W) + jnp.sum((f.W.T @ f.W) * (f.H @ f.H.T))
    return entry_sum(f, data, _squared)


def row_blocks(m: int, n: int, max_elems: int = 1 << 20) -> tuple:
    """``(b, n_blocks)``: blocks of ``b`` rows whose ``b x n`` piece of an ``m x n`` product holds at most
    ``max_elems`` entries (at least one row)."""
    b = max(1, min(m, max_elems // max(n, 1)))
    return b, -(-m // b)


def _blocked_rows(W, b: int, n_blocks: int):
    m, k = W.shape
    pad = n_blocks * b - m
    Wp = jnp.concatenate([W, jnp.zeros((pad, k), W.dtype)]) if pad else W
    valid = (jnp.arange(n_blocks * b) < m).reshape(n_blocks, b)
    return Wp.reshape(n_blocks, b, k), valid


def map_row_blocks(W, fn, n: int, max_elems: int = 1 << 20):
    """``fn(W_b, valid_b) -> (b, p)`` on blocks of rows of ``W`` (m, k), joined into ``(m, p)``.

    For work on every entry of ``Y = W H`` (``n`` columns) that is never
    formed whole: each block sees ``b`` rows of ``W`` (zero-padded at the
    end; ``valid_b`` marks the real ones), so memory is ``O(b n)`` with
    ``b n <= max_elems``.
    """
    m = W.shape[0]
    b, nb = row_blocks(m, n, max_elems)
    Wb, valid = _blocked_rows(W, b, nb)
    out = jax.lax.map(lambda x: fn(*x), (Wb, valid))
    return out.reshape((nb * b,) + out.shape[2:])[:m]


def fold_row_blocks(W, fn, init, n: int, max_elems: int = 1 << 20):
    """``sum_b fn(W_b, valid_b)`` over the row blocks of :func:`map_row_blocks` (a scan: ``O(b n)`` memory)."""
    m = W.shape[0]
    b, nb = row_blocks(m, n, max_elems)
    Wb, valid = _blocked_rows(W, b, nb)
    out, _ = jax.lax.scan(lambda acc, x: (jax.tree_util.tree_map(jnp.add, acc, fn(*x)), None), init, (Wb, valid))
    return out


def _pair(x, name: str, owner=None):
    """A penalty given as one value (both factors) or a ``(W value, H value)`` pair, as a pair of floats."""
    return check_penalty(x, name, owner)


def _same_form(x, pair):
    """The checked ``pair`` in the form ``x`` was given (one value or a pair): numpy scalars become floats."""
    return pair if isinstance(x, (tuple, list)) else pair[0]


def _nonzero(x) -> bool:
    """Static test used to skip terms; traced hyperparameters are always kept."""
    if isinstance(x, (int, float)):
        return x != 0
    return True


def penalty(f: Factors, l2=0.0, l1=0.0, bias_l2=0.0) -> jax.Array:
    """``l2 (||W||^2 + ||H||^2) + l1 (|W|_1 + |H|_1) + bias_l2 (||b_row||^2 + ||b_col||^2)``.

    ``l2`` and ``l1`` may be pairs ``(for W, for H)``.
    """
    (l2W, l2H), (l1W, l1H) = _pair(l2, "l2"), _pair(l1, "l1")
    out = jnp.zeros((), f.W.dtype)
    if _nonzero(l2W):
        out = out + l2W * jnp.sum(f.W * f.W)
    if _nonzero(l2H):
        out = out + l2H * jnp.sum(f.H * f.H)
    if _nonzero(l1W):
        out = out + l1W * jnp.sum(jnp.abs(f.W))
    if _nonzero(l1H):
        out = out + l1H * jnp.sum(jnp.abs(f.H))
    if _nonzero(bias_l2):
        if f.row_bias is not None:
            out = out + bias_l2 * jnp.sum(f.row_bias * f.row_bias)
        if f.col_bias is not None:
            out = out + bias_l2 * jnp.sum(f.col_bias * f.col_bias)
    return out


def _penalty_grad(f: Factors, l2, l1, bias_l2) -> Factors:
    (l2W, l2H), (l1W, l1H) = _pair(l2, "l2"), _pair(l1, "l1")
    gW = jnp.zeros_like(f.W)
    gH = jnp.zeros_like(f.H)
    if _nonzero(l2W):
        gW = gW + 2 * l2W * f.W
    if _nonzero(l2H):
        gH = gH + 2 * l2H * f.H
    if _nonzero(l1W):
        gW = gW + l1W * jnp.sign(f.W)
    if _nonzero(l1H):
        gH = gH + l1H * jnp.sign(f.H)
    g_row = None if f.row_bias is None else 2 * bias_l2 * f.row_bias
    g_col = None if f.col_bias is None else 2 * bias_l2 * f.col_bias
    g_off = None if f.offset is None else jnp.zeros_like(f.offset)
    return Factors(gW, gH, g_row, g_col, g_off)


def mean_of(data_term: Callable, data_grad: Callable, l2, l1, bias_l2):
    """``(value, grad)`` of ``(data_term + penalty) / N`` from a data term and its gradient (sum units)."""

    def value(f: Factors, data):
        return (data_term(f, data) + penalty(f, l2, l1, bias_l2)) / data.n_observed()

    def grad(f: Factors, data):
        inv_n = 1 / data.n_observed()
        return jax.tree_util.tree_map(lambda a, b: (a + b) * inv_n, data_grad(f, data),
                                      _penalty_grad(f, l2, l1, bias_l2))

    return value, grad


def custom(value: Callable, name: str = "custom") -> Loss:
    """Wrap any differentiable ``value(factors, data) -> scalar`` as a :class:`Loss` (gradient by autodiff)."""
    if not callable(value):
        raise TypeError(f"value must be callable, got {type(value).__name__}")
    return Loss(value, jax.grad(value), name)
