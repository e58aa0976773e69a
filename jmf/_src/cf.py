"""Collaborative filtering helpers: predictions that tolerate unknown users/items, and top-n recommendation.

Indices ``-1`` stand for users or items that were not in the training data
(see :meth:`jmf.datasets.Ratings.encode`).  Their predictions fall back to
what the model knows: an unknown user gets ``offset + col_bias[j]``, an
unknown item ``offset + row_bias[i]``, both unknown the offset alone (and 0
when the model has no biases).
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .data import Sparse, _rebuild
from .data.checks import device_array
from .factors import Factors, predict_entries

__all__ = ["predict", "recommend", "padded_user_entries", "similar_items", "similar_users", "fold_in"]


def predict(factors: Factors, rows, cols, clip: Optional[tuple] = None) -> jax.Array:
    """Predicted ratings at ``(rows[p], cols[p])``; ``-1`` marks an unknown user or item.

    Parameters
    ----------
    factors : Factors
        ``W (m, k)``, ``H (k, n)`` and optional biases / offset.
    rows, cols : int arrays, shape (p,)
        Indices in ``[-1, m)`` and ``[-1, n)``.
    clip : (low, high), optional
        Clip the predictions to the rating scale.

    Returns
    -------
    Array, shape (p,)
        ``offset + row_bias[i] + col_bias[j] + W[i] . H[:, j]`` with every
        term involving an unknown index dropped.  O(p k), no m x n array.
    """
    rows = device_array(rows)
    cols = device_array(cols)
    if rows.shape != cols.shape or rows.ndim != 1:
        raise ValueError(f"rows and cols must be 1-D of the same length, got {rows.shape} and {cols.shape}")
    return _predict(factors, rows.astype(jnp.int32), cols.astype(jnp.int32), clip)


@partial(jax.jit, static_argnames=("clip",))
def _predict(f: Factors, rows, cols, clip):
    ku, ki = rows >= 0, cols >= 0
    out = predict_entries(f, jnp.where(ku, rows, 0), jnp.where(ki, cols, 0), known_rows=ku, known_cols=ki)
    if clip is not None:
        out = jnp.clip(out, clip[0], clip[1])
    return out


def padded_user_entries(data: Sparse, users: np.ndarray, batch_size: int, threshold=None):
    """Entries of the given users, grouped into batches of ``batch_size`` users (host-side layout).

    Returns ``(loc, cols, n_rel)``: ``loc`` and ``cols`` of shape
    ``(n_batches, L)`` hold, for each entry of a batch, the position of its
    user in the batch (``batch_size`` marks padding) and its column; ``L`` is
    the largest number of entries in a batch.  With ``threshold`` only
    entries with value ``>= threshold`` are kept.  ``users`` may contain
    ``-1`` (no entries).
    """
    if data.batch_shape:
        raise ValueError("a single (unbatched) Sparse is needed")
    m = data.shape[0]
    rows = np.asarray(data.rows)
    keep = np.ones(rows.shape, bool)
    if data.weights is not None:
        keep &= np.asarray(data.weights) > 0
    if threshold is not None:
        keep &= np.asarray(data.vals) >= threshold
    rows_k = rows[keep]
    cols_k = np.asarray(data.cols)[keep]
    indptr = np.searchsorted(rows_k, np.arange(m + 1))  # rows are sorted (Sparse invariant)
    users = np.asarray(users, dtype=np.int64)
    known = users >= 0
    u = np.where(known, users, 0)
    start = indptr[u]
    count = np.where(known, indptr[u + 1] - indptr[u], 0)
    U = users.size
    n_batches = max(1, -(-U // batch_size))
    pos = np.arange(U)
    batch_of = pos // batch_size
    per_batch = np.bincount(batch_of, weights=count, minlength=n_batches).astype(np.int64)
    L = max(1, int(per_batch.max()))
    total = int(count.sum())
    # entry e belongs to requested user owner[e]; its index in data is start[owner] + offset within the user
    owner = np.repeat(pos, count)
    first = np.cumsum(count) - count
    within = np.arange(total) - np.repeat(first, count)
    src = start[owner] + within
    batch_first = np.cumsum(per_batch) - per_batch
    slot = np.arange(total) - batch_first[batch_of[owner]]
    loc = np.full((n_batches, L), batch_size, np.int32)
    cc = np.zeros((n_batches, L), np.int32)
    loc[batch_of[owner], slot] = (owner % batch_size).astype(np.int32)
    cc[batch_of[owner], slot] = cols_k[src]
    return loc, cc, count


@partial(jax.jit, static_argnames=("n", "batch_size", "use_row_bias"))
def _topn(f: Factors, users_pad, seen_loc, seen_cols, n, batch_size, use_row_bias=False):
    """Top-n columns for every batch of users; seen entries are excluded (-inf)."""
    nb = users_pad.shape[0] // batch_size
    n_items = f.H.shape[1]
    col_term = jnp.zeros((n_items,), f.W.dtype) if f.col_bias is None else f.col_bias

    def one(args):
        u, loc, cols = args
        known = (u >= 0)[:, None]
        Wu = f.W[jnp.where(u >= 0, u, 0)] * known.astype(f.W.dtype)
        s = Wu @ f.H + col_term[None, :]
        if use_row_bias and f.row_bias is not None:
            s = s + f.row_bias[jnp.where(u >= 0, u, 0)][:, None]
        seen = jnp.zeros((batch_size, n_items), bool).at[loc, cols].set(True, mode="drop")
        s = jnp.where(seen, -jnp.inf, s)
        return jax.lax.top_k(s, n)

    scores, items = jax.lax.map(one, (users_pad.reshape(nb, batch_size), seen_loc, seen_cols))
    return items.reshape(nb * batch_size, n), scores.reshape(nb * batch_size, n)


def recommend(factors: Factors, users, n: int = 10, exclude_seen: bool = True, seen: Optional[Sparse] = None,
              batch_size: int = 1024):
    """Top-``n`` items for each user, batched over users.

    Parameters
    ----------
    factors : Factors
        A fitted model.
    users : int array, shape (U,)
        Row indices; ``-1`` (unknown user) ranks items by ``col_bias`` alone.
    n : int
        Items per user (at most the number of items).
    exclude_seen : bool, default True
        Leave out the items each user has in ``seen`` (typically the training data).
    seen : Sparse, optional
        Required when ``exclude_seen`` is true.
    batch_size : int
        Users scored at a time (memory ``batch_size x n_items``).

    Returns
    -------
    items : int32 Array, shape (U, n)
        Best first.  When a user has fewer than ``n`` unseen items the tail
        holds seen items with score ``-inf``.
    scores : Array, shape (U, n)
        ``W[u] . H[:, j] + col_bias[j]`` (the user's bias does not change the order).
    """
    users = np.asarray(users)
    if users.ndim != 1 or users.dtype.kind not in "iu":
        raise ValueError(f"users must be a 1-D integer array, got shape {users.shape} and dtype {users.dtype}")
    m, n_items = factors.W.shape[0], factors.H.shape[1]
    if users.size and (users.min() < -1 or users.max() >= m):
        raise ValueError(f"users must be in [-1, {m}), got values in [{users.min()}, {users.max()}]")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= n_items:
        raise ValueError(f"n must be an int in [1, n_items={n_items}], got {n!r}")
    if exclude_seen:
        if seen is None:
            raise ValueError("exclude_seen=True needs seen= (the training Sparse); pass exclude_seen=False otherwise")
        if not isinstance(seen, Sparse) or seen.shape != (m, n_items):
            raise ValueError(f"seen must be a jmf.Sparse of shape {(m, n_items)}")
    B = int(min(batch_size, max(1, users.size)))
    nb = max(1, -(-users.size // B))
    users_pad = np.full(nb * B, -1, np.int32)
    users_pad[: users.size] = users
    if exclude_seen:
        loc, cols, _ = padded_user_entries(seen, users_pad, B)
    else:
        loc, cols = np.full((nb, 1), B, np.int32), np.zeros((nb, 1), np.int32)
    items, scores = _topn(factors, device_array(users_pad), device_array(loc), device_array(cols), int(n), B)
    return items[: users.size], scores[: users.size]


# -- similar items and users ----------------------------------------------------------------------


def _next_pow2(x: int, floor: int = 1) -> int:
    return max(floor, 1 << max(0, int(x) - 1).bit_length())


@partial(jax.jit, static_argnames=("n", "batch_size", "columns"))
def _similar(V, queries, n, batch_size, columns):
    """Top-``n`` cosine neighbours of the rows (columns) ``queries`` of ``V`` (itself excluded), per batch."""
    V = V.T if columns else V
    norm = jnp.sqrt(jnp.sum(V * V, axis=1))
    Vn = V / jnp.where(norm > 0, norm, 1)[:, None]
    ids = jnp.arange(V.shape[0], dtype=jnp.int32)

    def one(q):
        s = Vn[q] @ Vn.T
        s = jnp.where(ids[None, :] == q[:, None], -jnp.inf, s)
        return jax.lax.top_k(s, n)

    scores, idx = jax.lax.map(one, queries.reshape(-1, batch_size))
    return idx.reshape(-1, n), scores.reshape(-1, n)


def _similar_checked(V, ids, n, batch_size, what: str):
    ids = np.asarray(ids)
    columns = what == "item"
    count = V.shape[1] if columns else V.shape[0]
    if ids.ndim == 0:
        ids = ids[None]
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"{what}s must be a 1-D integer array (or one int), got shape {ids.shape} and dtype "
                         f"{ids.dtype}")
    if ids.size == 0:
        raise ValueError(f"{what}s is empty")
    if ids.min() < 0 or ids.max() >= count:
        raise ValueError(f"{what}s must be in [0, {count}), got values in [{ids.min()}, {ids.max()}]")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= count - 1:
        raise ValueError(f"n must be an int in [1, {count - 1}] (the other {what}s), got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    # Pad the queries to a power of two (and a whole number of batches): one program per size class.
    B = int(min(_next_pow2(batch_size), _next_pow2(ids.size, 8)))
    padded = np.zeros(-(-_next_pow2(ids.size, 8) // B) * B, np.int32)
    padded[: ids.size] = ids
    idx, scores = _similar(V, device_array(padded), int(n), B, columns)
    return np.asarray(idx)[: ids.size], np.asarray(scores)[: ids.size]


def similar_items(factors: Factors, items, n: int = 10, batch_size: int = 1024):
    """The ``n`` items most similar to each of ``items``: cosine similarity of the columns of ``H``.

    Parameters
    ----------
    factors : Factors
        A fitted model; item ``j`` is the vector ``H[:, j]`` (biases are not used).
    items : int or 1-D int array, shape (Q,)
        Item indices in ``[0, n_items)``.
    n : int, default 10
        Neighbours per item, ``1 <= n <= n_items - 1``; the item itself is excluded.
    batch_size : int, default 1024
        Items compared at a time (memory ``batch_size x n_items``).

    Returns
    -------
    ids : int32 ndarray, shape (Q, n)
        Most similar first.
    scores : ndarray, shape (Q, n)
        Cosine similarities in ``[-1, 1]`` (0 against an all-zero vector).

    Notes
    -----
    One compiled program per (number of items, ``n``, size class of ``Q``):
    the queries are padded to a power of two, so repeated calls do not
    recompile.  ``O(Q n_items k)`` work.
    """
    return _similar_checked(factors.H, items, n, batch_size, "item")


def similar_users(factors: Factors, users, n: int = 10, batch_size: int = 1024):
    """The ``n`` users most similar to each of ``users``: cosine similarity of the rows of ``W``.

    Same parameters and results as :func:`similar_items`, for rows of ``W``.
    """
    return _similar_checked(factors.W, users, n, batch_size, "user")


# -- fold-in ---------------------------------------------------------------------------------------


def _exact_solver(solver):
    """The exact (Cholesky) half-step solver of a fold-in, and whether ``solver`` is SVD++.

    SVD++ folds in through the ridge regression of :func:`jmf.solvers.als`
    with its ``l2`` and ``bias_l2`` (see :func:`fold_in`).  A ValueError when
    fold-in does not apply.
    """
    from .solvers.als import als
    from .solvers.base import Solver
    from .solvers.implicit import implicit_als
    from .solvers.svdpp import svdpp

    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a jmf solver (e.g. jmf.solvers.als(...)), got {type(solver).__name__}")
    if solver.grid is not None:
        raise ValueError("solver carries a hyperparameter grid; build it at the chosen point "
                         "(e.g. jmf.solvers.als(l2=0.1)) to fold in")
    factories = {getattr(f, "__wrapped__", f): f for f in (als, implicit_als)}
    made_by = None if solver.factory is None else solver.factory[0]
    if made_by is getattr(svdpp, "__wrapped__", svdpp):
        named = dict(solver.factory[1])
        l2 = named["l2"]
        bias_l2 = l2 if named["bias_l2"] is None else named["bias_l2"]
        return als(l2=l2, biases=named["biases"], bias_l2=bias_l2, solve="cholesky"), True
    factory = factories.get(made_by)
    if factory is None:
        raise ValueError(f"fold_in solves the exact half-step of als, ratings_als (ALS-WR), implicit_als or svdpp; "
                         f"solver {solver.name!r} has none (fold in with its update_w steps yourself)")
    return factory(**{**dict(solver.factory[1]), "solve": "cholesky"}), False


def _implicit_items(state, is_svdpp: bool, H_shape) -> Optional[np.ndarray]:
    """SVD++'s implicit item factors ``Y`` (n_items, k) from a fit's state (None for the other solvers)."""
    from .solvers.svdpp import SVDppState

    if not is_svdpp:
        if state is not None:
            raise ValueError("state is used by the fold-in of svdpp models only; leave it out for this solver")
        return None
    if not isinstance(state, SVDppState):
        raise TypeError(f"fold_in of an svdpp model needs state=result.state (an SVDppState holding the implicit "
                        f"item factors Y), got {type(state).__name__}")
    Y = np.asarray(state.Y)
    k, n_items = H_shape
    if Y.shape != (n_items, k):
        raise ValueError(f"state.Y has shape {Y.shape}, the model's items need ({n_items}, {k}): "
                         "pass the state of the fit these factors come from")
    return Y


@partial(jax.jit, static_argnums=0)
def _fold(solver, f: Factors, data: Sparse):
    state = solver.init(f, data)
    f, _ = solver.update_w(f, state, data, None)
    return f


def fold_in(factors: Factors, solver, entries, *, state=None) -> Factors:
    """Factors of new (or changed) users from their entries, without refitting: one exact ALS half-step.

    Each user's row of ``W`` (and row bias) solves the same system as the
    solver's update of ``W`` with ``H`` (and the column biases and offset)
    fixed -- the ridge / ALS-WR regression of :func:`jmf.solvers.als` or the
    implicit-feedback system of :func:`jmf.solvers.implicit_als` (with its
    confidence, unobserved weight and frequency-scaled penalty), solved
    exactly (Cholesky, whatever the solver's ``solve``).  For a user who was
    in the training data, the result is that user's row after one more
    (exact) half-step: implicit's ``recalculate_user``.

    SVD++ (:func:`jmf.solvers.svdpp`): a user's effective factors are
    ``p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j`` with ``N(u)`` the items of
    the given entries (positive weight); with ``H``, ``Y``, the column
    biases and the offset fixed, ``p_u`` and ``b_u`` minimize the SVD++
    objective by the ridge regression of :func:`jmf.solvers.als` with the
    solver's ``l2`` and ``bias_l2``.  Pass the fit's state (``Y``).

    Parameters
    ----------
    factors : Factors
        The fitted model (``H`` of shape (k, n_items)).
    solver : Solver
        The solver it was fitted with (its hyperparameters define the system):
        :func:`jmf.solvers.als`, :func:`jmf.solvers.ratings_als`,
        :func:`jmf.solvers.implicit_als` or :func:`jmf.solvers.svdpp`, without a grid.
    entries : Sparse of shape (U, n_items), or (cols, vals)
        The users' entries (ratings, or interactions for implicit feedback);
        a pair of 1-D arrays is one user.  Weights of a :class:`jmf.Sparse` count.
    state : SVDppState, optional
        For :func:`jmf.solvers.svdpp` only, and required there: the fit's
        ``result.state`` (its implicit item factors ``Y``).

    Returns
    -------
    Factors
        ``W`` of shape (U, k) (and ``row_bias`` (U,) for a model with biases; NumPy arrays),
        with the model's ``H``, ``col_bias`` and ``offset``: pass it to
        :func:`predict` / :func:`recommend` with user indices ``0..U-1``.
        Users without entries get zero rows.

    Notes
    -----
    The entries are padded (weight 0) to power-of-two sizes, so repeated
    calls compile one program per size class, not per user.
    """
    if not isinstance(factors, Factors):
        raise TypeError(f"factors must be a jmf.Factors, got {type(factors).__name__}")
    exact, is_svdpp = _exact_solver(solver)
    Y = _implicit_items(state, is_svdpp, factors.H.shape)
    if exact.biases != factors.has_biases:
        raise ValueError(f"the solver {'fits' if exact.biases else 'has no'} biases but the factors "
                         f"{'have' if factors.has_biases else 'have none'}: pass the solver the model was fitted with")
    k, n_items = factors.H.shape
    dtype = jnp.asarray(factors.H).dtype
    if isinstance(entries, Sparse):
        if entries.batch_shape or entries.shape[1] != n_items or entries.absent != "missing":
            raise ValueError(f"entries must be a single jmf.Sparse of shape (U, {n_items}) with absent='missing', "
                             f"got shape {entries.shape}")
        rows, cols = np.asarray(entries.rows), np.asarray(entries.cols)
        vals = np.asarray(entries.vals)
        w = np.ones(vals.shape, vals.dtype) if entries.weights is None else np.asarray(entries.weights)
        U = entries.shape[0]
    else:
        try:
            cols, vals = entries
        except (TypeError, ValueError):
            raise TypeError("entries must be a jmf.Sparse or a (cols, vals) pair of one user") from None
        cols, vals = np.asarray(cols), np.asarray(vals, dtype=np.float64)
        if cols.ndim != 1 or cols.shape != vals.shape or (cols.size and cols.dtype.kind not in "iu"):
            raise ValueError(f"cols and vals must be 1-D of the same length (cols integers), got {cols.shape} "
                             f"{cols.dtype} and {vals.shape}")
        if cols.size and (cols.min() < 0 or cols.max() >= n_items):
            raise ValueError(f"cols must be in [0, {n_items}), got values in [{cols.min()}, {cols.max()}]")
        if np.unique(cols).size != cols.size:
            raise ValueError("cols has duplicates: give each item once")
        if not np.all(np.isfinite(vals)):
            raise ValueError("vals must be finite")
        order = np.argsort(cols, kind="stable")
        cols, vals = cols[order], vals[order]
        rows, w, U = np.zeros(cols.size, np.int64), np.ones(cols.size), 1
    implicit = None
    if is_svdpp:  # the users' implicit term, then the explicit part is a ridge regression on what it leaves
        keep = w > 0
        counts = np.bincount(rows[keep], minlength=U)
        implicit = np.zeros((U, k), np.result_type(Y.dtype, np.float32))
        np.add.at(implicit, rows[keep], Y[cols[keep]])
        implicit *= np.where(counts > 0, 1 / np.sqrt(np.maximum(counts, 1)), 0)[:, None]
        vals = vals - np.einsum("ek,ke->e", implicit[rows], np.asarray(factors.H)[:, cols])
    nnz = rows.size
    U_pad, nnz_pad = _next_pow2(U), _next_pow2(nnz + 1, 8)  # at least one padding entry: weights are always given
    pad = nnz_pad - nnz
    rows_p = np.concatenate([rows, np.full(pad, U_pad - 1)]).astype(np.int32)
    cols_p = np.concatenate([cols, np.full(pad, n_items - 1)]).astype(np.int32)
    vals_p = np.concatenate([vals, np.zeros(pad)]).astype(dtype)
    w_p = np.concatenate([w, np.zeros(pad)]).astype(dtype)
    data = _rebuild(Sparse, tuple(device_array(x) for x in (rows_p, cols_p, vals_p, w_p)), (U_pad, n_items))
    f0 = Factors(device_array(np.zeros((U_pad, k), dtype)), device_array(factors.H))
    if exact.biases:
        f0 = f0._replace(row_bias=device_array(np.zeros((U_pad,), dtype)), col_bias=device_array(factors.col_bias),
                         offset=device_array(factors.offset))
    out = _fold(exact, f0, data)
    W = np.asarray(out.W)[:U]  # host-side slices: no program per U
    out = out._replace(W=W if implicit is None else (W + implicit).astype(W.dtype), H=factors.H)
    return out._replace(row_bias=np.asarray(out.row_bias)[:U]) if exact.biases else out
