r"""Bayesian personalized ranking (Rendle et al. 2009): pairwise ranking for implicit feedback, any Optax transform.

Every observed entry ``(u, i)`` of a :class:`jmf.Sparse` is a positive
interaction (its value is ignored; its weight multiplies its terms).  BPR
fits scores ``s_ui = x_u . y_i + c_i`` (``X = W``, ``Y = H^T``, ``c`` the
item biases, kept in ``Factors.col_bias``) so that a user's positive items
rank above the others, by minimizing over triples ``(u, i, j)`` with ``i``
positive for ``u`` and ``j`` a sampled negative item::

    l(u, i, j) = softplus(-(s_ui - s_uj)) + l2 (|x_u|^2 + |y_i|^2 + |y_j|^2) + bias_l2 (c_i^2 + c_j^2)

(``-log sigmoid`` of the score difference plus the per-triple penalties of
stochastic BPR).  One solver step is one *epoch*: the observed entries in a
fresh random order, cut into minibatches of ``batch_size``; every positive
gets a negative drawn uniformly from the items, redrawn (up to
``resample`` times) while it is one of the user's positives, and dropped if
it still is.  Each minibatch applies one update of the Optax ``optimizer``
along the gradient of the *sum* of its triples' losses, so learning rates
mean what they mean in per-triple SGD.  All randomness comes from the key
the driver gives ``init`` (split once per step): a fit is reproducible from
its key, and restarts under :func:`jmf.fit_many` differ.

The loss :func:`jmf.fit` records is the mean of ``l`` over a *fixed* sample
of ``n_eval`` triples (drawn with a constant key): a deterministic,
comparable-across-iterations estimate of the epoch objective (the exact sum
over all ``nnz x n`` triples is not formed).  Run with ``tol=None`` and
``max_iter`` epochs, or a loose ``tol``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from .._validation import check_bool, check_int, check_nonneg_float
from ..data import Sparse
from ..factors import Factors
from ..losses import Loss
from ._blocked import segment_counts
from .base import Solver, cached_factory
from .gradient import _reject_value_transforms, gradient_update

__all__ = ["bpr", "BPRState"]


class BPRState(NamedTuple):
    """State of :func:`bpr`: the optimizer's state, the PRNG key, and each row's span of entries."""

    opt_state: optax.OptState
    key: jax.Array  # raw key data (jax.random.key_data), split once per step
    indptr: jax.Array  # (m,) first entry of each row (entries are sorted by row, then column)
    counts: jax.Array  # (m,) entries of each row


def is_observed(cols, indptr, counts, u, j, n_cols: int):
    """Whether column ``j`` is among row ``u``'s entries: a vectorized binary search in the sorted columns."""
    nnz = cols.shape[0]
    lo, end = indptr[u], indptr[u] + counts[u]

    def body(_, lh):
        lo, hi = lh
        mid = (lo + hi) // 2
        right = cols[jnp.minimum(mid, nnz - 1)] < j
        active = lo < hi
        return jnp.where(active & right, mid + 1, lo), jnp.where(active & ~right, mid, hi)

    lo, _ = jax.lax.fori_loop(0, max(1, math.ceil(math.log2(n_cols + 1))), body, (lo, end))
    return (lo < end) & (cols[jnp.minimum(lo, nnz - 1)] == j)


def _negatives(key, data: Sparse, users, indptr, counts, resample: int):
    """Uniform negative items for ``users``, redrawn while observed; ``(items, ok)``."""
    n = data.shape[1]
    keys = jax.random.split(key, resample + 1)
    j = jax.random.randint(keys[0], users.shape, 0, n, dtype=jnp.int32)
    bad = is_observed(data.cols, indptr, counts, users, j, n)
    for r in range(resample):
        j = jnp.where(bad, jax.random.randint(keys[r + 1], users.shape, 0, n, dtype=jnp.int32), j)
        bad = bad & is_observed(data.cols, indptr, counts, users, j, n)
    return j, ~bad


def _triple_loss(f: Factors, u, i, j, w, l2, bias_l2):
    """Sum over the triples of ``w l(u, i, j)`` (see the module docstring)."""
    x, yi, yj = f.W[u], f.H.T[i], f.H.T[j]
    d = jnp.sum(x * (yi - yj), axis=1)
    pen = l2 * (jnp.sum(x * x, axis=1) + jnp.sum(yi * yi, axis=1) + jnp.sum(yj * yj, axis=1))
    if f.col_bias is not None:
        bi, bj = f.col_bias[i], f.col_bias[j]
        d = d + bi - bj
        pen = pen + bias_l2 * (bi * bi + bj * bj)
    return jnp.sum(w * (jax.nn.softplus(-d) + pen))


def _bpr_loss(l2, bias_l2, n_eval: int, resample: int) -> Loss:
    def value(f: Factors, data):
        if not isinstance(data, Sparse):
            raise TypeError("the BPR loss works on jmf.Sparse data")
        f = jax.tree_util.tree_map(jnp.asarray, f)
        dtype = f.W.dtype
        nnz = data.vals.shape[-1]
        E = min(nnz, n_eval)
        k_pos, k_neg = jax.random.split(jax.random.key(0))
        idx = jnp.arange(nnz) if E == nnz else jax.random.choice(k_pos, nnz, (E,), replace=False)
        u, i = data.rows[idx], data.cols[idx]
        counts, indptr = segment_counts(data.rows, data.shape[0])
        j, ok = _negatives(k_neg, data, u, indptr, counts, resample)
        w = jnp.where(ok, data.effective_weights()[idx], 0).astype(dtype)
        total = _triple_loss(f, u, i, j, w, l2, bias_l2)
        return total / jnp.maximum(jnp.sum(w), jnp.finfo(dtype).tiny)

    def grad(f: Factors, data):
        g = jax.grad(value)(jax.tree_util.tree_map(jnp.asarray, f), data)
        return g

    return Loss(value, grad, "bpr", data_kinds=("sparse",))


@cached_factory(searchable=("l2", "bias_l2"))
def bpr(optimizer: Optional[optax.GradientTransformation] = None, l2: float = 0.01, bias_l2: Optional[float] = None,
        batch_size: int = 1024, item_bias: bool = True, resample: int = 3, n_eval: int = 1 << 14) -> Solver:
    """Bayesian personalized ranking for implicit feedback (Rendle et al. 2009), with any Optax transformation.

    Parameters
    ----------
    optimizer : optax.GradientTransformation, optional
        Applied to each minibatch's gradient, e.g. ``optax.adam(1e-2)``
        (the default), ``optax.sgd(0.05)``, ``optax.adagrad(0.1)`` or a chain.
        Transforms that need the loss value in ``update`` (L-BFGS) are refused.
    l2 : float >= 0, default 0.01
        Per-triple penalty on the user row and both item rows (see the
        module docstring).
    bias_l2 : float >= 0, optional
        Per-triple penalty on the item biases (default: ``l2``).
    batch_size : int, default 1024
        Triples per optimizer update; one step is ``ceil(nnz / batch_size)`` updates.
    item_bias : bool, default True
        Fit an item bias (``Factors.col_bias``; the solver has ``biases=True``,
        and the row biases and offset :func:`jmf.fit` adds stay at their
        initial values, as they do not change a user's ranking).
    resample : int, default 3
        Redraws of a negative that is one of the user's positives; a triple
        whose negative is still positive after them is dropped.
    n_eval : int, default 16384
        Triples in the fixed sample on which the recorded loss is evaluated.

    Returns
    -------
    Solver
        For :class:`jmf.Sparse` data (observed entries are the positives; the
        columns of each row sorted, as :class:`jmf.Sparse` keeps them).  Use
        with :func:`jmf.fit` / :func:`jmf.fit_many` (``tol=None``,
        ``max_iter`` = epochs); evaluate with
        :func:`jmf.metrics.ranking_metrics` (scores ``W[u] . H[:, i] + col_bias[i]``).
        ``l2`` and ``bias_l2`` accept 1-D arrays (a grid for :func:`jmf.fit_many`).
        ``update_w`` is an epoch that moves ``W`` only.
    """
    who = "bpr"
    if optimizer is None:
        optimizer = _default_optimizer()
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"{who}: optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")
    _reject_value_transforms(optimizer, who)
    l2 = check_nonneg_float(l2, "l2", who)
    bias_l2 = l2 if bias_l2 is None else check_nonneg_float(bias_l2, "bias_l2", who)
    batch_size = check_int(batch_size, "batch_size", who)
    item_bias = check_bool(item_bias, "item_bias", who)
    resample = check_int(resample, "resample", who, lo=0)
    n_eval = check_int(n_eval, "n_eval", who)
    loss = _bpr_loss(l2, bias_l2, n_eval, resample)

    def init(f: Factors, data, key=None):
        key = jax.random.key(0) if key is None else key
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):  # raw key data in the state (plain uint32 leaves)
            key = jax.random.key_data(key)
        with jax.numpy_dtype_promotion("standard"):
            opt_state = optimizer.init(f)
        counts, indptr = segment_counts(data.rows, data.shape[0])
        return BPRState(opt_state, key, indptr, counts)

    def epoch(f: Factors, state: BPRState, data: Sparse, mask, w_only):
        nnz = data.vals.shape[-1]
        nb = -(-nnz // batch_size)
        key, k_perm, k_neg = jax.random.split(jax.random.wrap_key_data(state.key), 3)
        perm = jax.random.permutation(k_perm, nnz)
        pad = nb * batch_size - nnz
        live = jnp.concatenate([jnp.ones((nnz,), bool), jnp.zeros((pad,), bool)])
        perm = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)])
        u, i = data.rows[perm], data.cols[perm]
        j, ok = _negatives(k_neg, data, u, state.indptr, state.counts, resample)
        w = jnp.where(ok & live, data.effective_weights()[perm], 0).astype(f.W.dtype)
        batches = tuple(x.reshape(nb, batch_size) for x in (u, i, j, w))

        def one(carry, batch):
            f, opt_state = carry
            g = jax.grad(_triple_loss)(f, *batch, l2, bias_l2)
            return gradient_update(optimizer, None, f, g, opt_state, mask, w_only), None

        (f, opt_state), _ = jax.lax.scan(one, (f, state.opt_state), batches)
        return f, state._replace(opt_state=opt_state, key=jax.random.key_data(key))

    def step(f: Factors, state: BPRState, data: Sparse, mask=None):
        return epoch(f, state, data, mask, False)

    def update_w(f: Factors, state: BPRState, data: Sparse, mask=None):
        return epoch(f, state, data, mask, True)

    return Solver(init=init, step=step, loss=loss, name="bpr", biases=item_bias, data_kinds=("sparse",),
                  update_w=update_w)


_DEFAULT = []


def _default_optimizer():
    """One ``optax.adam(1e-2)`` object, so ``bpr()`` written twice is one cached solver (and one compilation)."""
    if not _DEFAULT:
        _DEFAULT.append(optax.adam(1e-2))
    return _DEFAULT[0]
