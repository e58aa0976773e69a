"""First-order solvers driven by any Optax gradient transformation."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from .._validation import check_bool, check_choice, check_float, check_int, check_nonneg_float, check_positive_float
from ..data import Sparse, _rebuild, pad_entries
from ..factors import Factors, apply_rank_mask
from ..losses import Loss, frobenius
from .base import Solver, cached_factory

__all__ = ["gradient", "sgd", "adam", "nonnegative", "GradientState", "GradientSpec", "optax_update",
           "gradient_update"]


def nonnegative(f: Factors) -> Factors:
    """Projection onto ``W >= 0, H >= 0`` (biases and offset are left free)."""
    return f._replace(W=jnp.maximum(f.W, 0), H=jnp.maximum(f.H, 0))


_PROJECTIONS = {"nonnegative": nonnegative}


def optax_update(optimizer, grads, opt_state, params):
    # Optax mixes int32 step counts with floats (e.g. Adam's bias correction),
    # which JAX's strict dtype promotion rejects; run third-party update code
    # under standard promotion so jmf works whatever the user's setting.
    with jax.numpy_dtype_promotion("standard"):
        return optimizer.update(grads, opt_state, params)


def _reject_value_transforms(optimizer, who: str) -> None:
    """Refuse Optax transforms whose ``update`` needs the loss value.

    E.g. ``optax.lbfgs``, ``polyak_sgd``, ``reduce_on_plateau``.

    The update is traced once with :func:`jax.eval_shape` on tiny dummy factors: such transforms
    fail with a ``TypeError`` about missing ``value``/``grad``/``value_fn`` keyword arguments.
    Any other failure is left to surface where it happens.
    """
    import re

    dummy = Factors(W=jax.ShapeDtypeStruct((2, 1), jnp.float32), H=jax.ShapeDtypeStruct((1, 2), jnp.float32))
    try:
        with jax.numpy_dtype_promotion("standard"):
            jax.eval_shape(lambda f: optimizer.update(f, optimizer.init(f), f), dummy)
    except TypeError as e:
        if re.search(r"missing \d+ required (keyword-only )?arguments?:.*'(value|grad|value_fn)'", str(e)):
            raise ValueError(
                f"{who}: this Optax transformation needs the loss value in update(..., value=, grad=, value_fn=) "
                f"({e}); jmf's gradient solver calls optimizer.update(grads, state, params) with the gradient "
                "only.  Line-search methods such as optax.lbfgs need the loss value: use adam/sgd/any "
                "elementwise transform, or run L-BFGS yourself with solver.loss.value and optax's "
                "value_and_grad_from_state around your own loop.") from None
    except Exception:  # noqa: BLE001 - only the missing-value case is this check's business
        pass


def _w_side_only(g: Factors) -> Factors:
    """``g`` with the components of ``H``, the column biases and the offset zeroed."""
    zero = lambda x: None if x is None else jnp.zeros_like(x)  # noqa: E731
    return g._replace(H=zero(g.H), col_bias=zero(g.col_bias), offset=zero(g.offset))


def gradient_update(optimizer, projection, f: Factors, g: Factors, opt_state, mask, w_only: bool = False):
    """One optimizer update of ``f`` along gradient ``g``: ``(new factors, new optimizer state)``.

    With ``w_only`` only ``W`` and the row biases move (``H``, the column
    biases and the offset are kept exactly, whatever the optimizer's momentum
    holds for them).  The update is projected, and inactive (rank-masked)
    columns are zeroed in the gradient and in the result: the solver owns
    its rank mask.
    """
    if w_only:
        g = _w_side_only(g)
    if mask is not None:
        g = apply_rank_mask(g, mask)
    updates, opt_state = optax_update(optimizer, g, opt_state, f)
    new = optax.apply_updates(f, updates)
    if projection is not None:
        new = projection(new)
    if w_only:
        new = new._replace(H=f.H, col_bias=f.col_bias, offset=f.offset)
    return apply_rank_mask(new, mask), opt_state


class GradientState(NamedTuple):
    opt_state: optax.OptState
    key: jax.Array


class GradientSpec(NamedTuple):
    """What a gradient solver declares about itself, so the run layer can pick a layout for it."""

    optimizer: optax.GradientTransformation
    projection: Optional[Callable]
    batch_size: Optional[int]
    elementwise: bool


def _minibatch_epoch(loss: Loss, optimizer, projection, batch_size: int):
    """One step = one epoch over a fresh permutation of the observed entries."""

    def epoch(f: Factors, state: GradientState, data: Sparse, mask=None):
        nnz = data.vals.shape[-1]
        n_batches = -(-nnz // batch_size)
        key, sub = jax.random.split(state.key)
        perm = jax.random.permutation(sub, nnz)
        total = data.n_observed()
        shuffled = pad_entries(data.rows[perm], data.cols[perm], data.vals[perm], data.effective_weights()[perm],
                               n_batches * batch_size)
        batches = tuple(x.reshape(n_batches, batch_size) for x in shuffled)

        def one(carry, batch):
            f, opt_state = carry
            r, c, v, w = batch
            # Rescale the batch weights to sum to N, so the batch loss is an
            # unbiased estimate of the full loss (same penalty scale).
            w = w * (total / jnp.maximum(jnp.sum(w), jnp.finfo(w.dtype).tiny))
            sub_data = _rebuild(Sparse, (r, c, v, w), data.shape)
            return gradient_update(optimizer, projection, f, loss.grad(f, sub_data), opt_state, mask), None

        (f, opt_state), _ = jax.lax.scan(one, (f, state.opt_state), batches)
        return f, GradientState(opt_state, key)

    return epoch


def gradient(
    optimizer: optax.GradientTransformation,
    loss: Optional[Loss] = None,
    projection: "Callable | str | None" = None,
    batch_size: Optional[int] = None,
    biases: bool = False,
    name: Optional[str] = None,
    elementwise: bool = False,
) -> Solver:
    """Gradient-based solver using any Optax transformation.

    Each step computes ``g = loss.grad(factors, data)`` and applies
    ``optimizer.update``; with a ``projection`` the factors are projected
    after every update (projected gradient, e.g. ``"nonnegative"`` for NMF).

    Parameters
    ----------
    optimizer : optax.GradientTransformation
        E.g. ``optax.adam(1e-2)``, ``optax.sgd(0.1, momentum=0.9)`` or a chain.
    loss : Loss, optional
        Objective (default :func:`jmf.losses.frobenius`).
    projection : callable or "nonnegative", optional
        ``Factors -> Factors`` applied after each update.
    batch_size : int, optional
        Sparse data only: one step is one *epoch* of minibatch updates over a
        fresh random permutation of the observed entries (``ceil(nnz /
        batch_size)`` updates, the last batch padded with weight-0 entries).
        Each batch's weights are rescaled to sum to ``N`` so its loss is an
        unbiased estimate of the full loss.  ``None``: full-batch gradient.
    biases : bool, default False
        Fit row/column biases and an offset (``yhat = offset + b_i + c_j + W_i H_j``).
    elementwise : bool, default False
        Declare that ``optimizer`` acts on each parameter entry independently
        (true of sgd, momentum, adam, adamw, rmsprop, adagrad, lion...; false
        of global-norm clipping, LARS/LAMB, L-BFGS).  It lets
        :func:`jmf.fit_many` run batches of tiny dense matrices in the
        batch-last layout (:mod:`jmf._src.run.lanes`), several times faster.
        The shortcuts :func:`sgd` and :func:`adam` set it.

    Returns
    -------
    Solver
        Accepts the data kinds ``loss`` is defined on (sparse only with
        ``batch_size``).  ``update_w`` is a full-batch step on ``W`` and the
        row biases alone (``H``, the column biases and the offset stay
        exactly as they are, whatever the optimizer's state holds for them).
    """
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"gradient: name must be a non-empty string or None, got {name!r}")
    who = name or "gradient"
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"{who}: optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")
    _reject_value_transforms(optimizer, who)
    loss = frobenius() if loss is None else loss
    if not isinstance(loss, Loss):
        raise TypeError(f"{who}: loss must be a jmf.losses.Loss (see jmf.losses.custom), got {type(loss).__name__}")
    if isinstance(projection, str):
        check_choice(projection, "projection", sorted(_PROJECTIONS), who)
        projection = _PROJECTIONS[projection]
    elif projection is not None and not callable(projection):
        raise TypeError(f"{who}: projection must be callable or a name, got {type(projection).__name__}")
    batch_size = check_int(batch_size, "batch_size", who, none_ok=True)
    biases = check_bool(biases, "biases", who)
    elementwise = check_bool(elementwise, "elementwise", who)

    def init(f: Factors, data, key=None):
        if batch_size is not None and key is None:
            key = jax.random.key(0)
        with jax.numpy_dtype_promotion("standard"):
            opt_state = optimizer.init(f)
        return GradientState(opt_state, key if batch_size is not None else None)

    def full_batch(f: Factors, state: GradientState, data, mask, w_only):
        f, opt_state = gradient_update(optimizer, projection, f, loss.grad(f, data), state.opt_state, mask, w_only)
        return f, GradientState(opt_state, state.key)

    def update_w(f: Factors, state: GradientState, data, mask=None):
        return full_batch(f, state, data, mask, True)

    if batch_size is None:

        def step(f: Factors, state: GradientState, data, mask=None):
            return full_batch(f, state, data, mask, False)

        # The Frobenius loss defines no biased model on sparse data with absent zeros.
        kinds = tuple(k for k in loss.data_kinds if not (biases and k == "sparse-zero"))
    else:
        step = _minibatch_epoch(loss, optimizer, projection, batch_size)
        kinds = tuple(k for k in loss.data_kinds if k == "sparse")

    return Solver(
        init=init,
        step=step,
        loss=loss,
        name=name or ("minibatch-gradient" if batch_size else "gradient"),
        nonnegative=projection is nonnegative,
        biases=biases,
        data_kinds=kinds,
        spec=GradientSpec(optimizer, projection, batch_size, bool(elementwise)),
        update_w=update_w,
    )


@cached_factory(searchable=("learning_rate",))
def sgd(learning_rate: float, momentum: Optional[float] = None, nesterov: bool = False, **kwargs) -> Solver:
    """:func:`gradient` with ``optax.sgd`` (keyword arguments go to :func:`gradient`)."""
    learning_rate = _check_lr(learning_rate, "sgd")
    momentum = check_nonneg_float(momentum, "momentum", "sgd", none_ok=True)
    nesterov = check_bool(nesterov, "nesterov", "sgd")
    kwargs.setdefault("elementwise", True)
    return gradient(optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov), name="sgd", **kwargs)


@cached_factory(searchable=("learning_rate",))
def adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, **kwargs) -> Solver:
    """:func:`gradient` with ``optax.adam`` (keyword arguments go to :func:`gradient`)."""
    learning_rate = _check_lr(learning_rate, "adam")
    b1 = check_float(b1, "b1", owner="adam", lo=0.0, hi=1.0, hi_open=True)
    b2 = check_float(b2, "b2", owner="adam", lo=0.0, hi=1.0, hi_open=True)
    eps = check_nonneg_float(eps, "eps", "adam")
    kwargs.setdefault("elementwise", True)
    return gradient(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps), name="adam", **kwargs)


def _check_lr(lr, owner: str):
    """A positive finite learning rate, or an Optax schedule (a callable of the step count)."""
    if callable(lr):
        return lr
    return check_positive_float(lr, "learning_rate", owner)
