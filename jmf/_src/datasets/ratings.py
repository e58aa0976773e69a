"""Ratings tables: re-indexing raw ids, building :class:`jmf.Sparse` (files: :mod:`.readers`).

A ratings table has one row per observed (user, item, rating) triple, with
arbitrary raw ids (MovieLens movie ids are sparse integers, other sources use
strings).  :func:`index_ratings` maps the raw ids to contiguous ``0..m-1`` /
``0..n-1`` and keeps the mapping back in a :class:`Ratings`;
:meth:`Ratings.encode` maps another table (a test split) onto the same index,
giving ``-1`` to users or items it has never seen (predictions for those fall
back to the biases, see :func:`jmf.cf.predict`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..data import Sparse

__all__ = ["Ratings", "index_ratings", "ratings_from_scipy", "RATING_COLUMNS"]

RATING_COLUMNS = ("user", "item", "rating", "timestamp")


class Ratings(NamedTuple):
    """Observed ratings with the mapping between matrix indices and raw ids.

    Attributes
    ----------
    data : Sparse, shape (m, n)
        Row ``i`` is user ``users[i]``, column ``j`` is item ``items[j]``.
    users : ndarray, shape (m,)
        Raw user id of each row (sorted ascending).
    items : ndarray, shape (n,)
        Raw item id of each column (sorted ascending).
    """

    data: Sparse
    users: np.ndarray
    items: np.ndarray

    @property
    def shape(self):
        return self.data.shape

    @property
    def nnz(self) -> int:
        return self.data.nnz

    def user_index(self, raw_ids) -> np.ndarray:
        """Row index of each raw user id (``-1`` for ids not in this table)."""
        return _lookup(self.users, raw_ids)

    def item_index(self, raw_ids) -> np.ndarray:
        """Column index of each raw item id (``-1`` for ids not in this table)."""
        return _lookup(self.items, raw_ids)

    def encode(self, df, user=None, item=None, rating=None):
        """Map another table onto this index.

        Returns
        -------
        rows, cols : int32 ndarray, shape (p,)
            Indices, ``-1`` for unknown users / items.
        vals : ndarray, shape (p,)
            The ratings (float).
        """
        user, item, rating = _columns(df, user, item, rating)
        return (
            self.user_index(df[user].to_numpy()).astype(np.int32),
            self.item_index(df[item].to_numpy()).astype(np.int32),
            df[rating].to_numpy().astype(np.float64),
        )

    def to_sparse(self, df, user=None, item=None, rating=None, drop_unknown=True) -> Sparse:
        """Entries of ``df`` whose user and item are both known, as a Sparse of this shape."""
        r, c, v = self.encode(df, user, item, rating)
        keep = (r >= 0) & (c >= 0)
        if not drop_unknown and not keep.all():
            raise ValueError(f"{int((~keep).sum())} rows of df have a user or item unknown to this index")
        return Sparse(r[keep], c[keep], v[keep].astype(np.asarray(self.data.vals).dtype), self.shape)


def _lookup(known: np.ndarray, raw) -> np.ndarray:
    raw = np.asarray(raw)
    if known.size == 0:
        return np.full(raw.shape, -1, np.int64)
    try:
        pos = np.searchsorted(known, raw)
    except TypeError as exc:
        raise TypeError(f"ids of type {raw.dtype} cannot be compared with the index ids ({known.dtype}): "
                        f"{exc}") from None
    pos = np.clip(pos, 0, known.size - 1)
    found = known[pos] == raw
    return np.where(found, pos, -1).astype(np.int64)


def _columns(df, user, item, rating):
    try:
        columns = list(df.columns)
    except AttributeError:
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}") from None
    defaults = {}
    for name, want in (("user", user), ("item", item), ("rating", rating)):
        if want is None:
            if name in columns:
                want = name
            else:
                i = ("user", "item", "rating").index(name)
                if len(columns) < 3:
                    raise ValueError(f"df needs columns user, item, rating (or at least 3 columns), got {columns}")
                want = columns[i]
        elif want not in columns:
            raise ValueError(f"{name} column {want!r} is not in the DataFrame (columns: {columns})")
        defaults[name] = want
    return defaults["user"], defaults["item"], defaults["rating"]


def index_ratings(df, user=None, item=None, rating=None, duplicates: str = "error", dtype=np.float32) -> Ratings:
    """Re-index raw user / item ids to contiguous integers.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per rating.  Columns are named by ``user``, ``item``,
        ``rating``; by default the columns called "user", "item", "rating"
        or else the first three columns.
    duplicates : {"error", "sum", "mean", "last"}
        What to do with repeated (user, item) pairs (see :class:`jmf.Sparse`).
    dtype : float dtype, default float32
        Dtype of the values.

    Returns
    -------
    Ratings
        ``data`` (a :class:`jmf.Sparse` of shape ``(number of distinct users,
        number of distinct items)``), ``users`` and ``items`` (the raw id of
        each row / column, sorted).

    Examples
    --------
    >>> import pandas as pd
    >>> r = index_ratings(pd.DataFrame({"user": ["b", "a"], "item": [10, 30], "rating": [4.0, 3.5]}))
    >>> r.users.tolist(), r.items.tolist()
    (['a', 'b'], [10, 30])
    >>> r.data.shape, r.data.nnz
    ((2, 2), 2)
    """
    user, item, rating = _columns(df, user, item, rating)
    if len(df) == 0:
        raise ValueError("df is empty: no ratings")
    vals = df[rating].to_numpy()
    if vals.dtype == object or vals.dtype.kind not in "fiub":
        raise TypeError(f"rating column {rating!r} must be numeric, got dtype {vals.dtype}")
    u_raw, i_raw = df[user].to_numpy(), df[item].to_numpy()
    if _has_missing(u_raw) or _has_missing(i_raw):
        raise ValueError("user and item ids must not be missing (NaN/None)")
    users, rows = np.unique(u_raw, return_inverse=True)
    items, cols = np.unique(i_raw, return_inverse=True)
    data = Sparse(rows.ravel(), cols.ravel(), vals.astype(dtype), (users.size, items.size), duplicates=duplicates)
    return Ratings(data, users, items)


def _has_missing(a: np.ndarray) -> bool:
    if a.dtype.kind == "f":
        return bool(np.isnan(a).any())
    if a.dtype == object:
        import pandas as pd

        return bool(pd.isna(a).any())
    return False


def ratings_from_scipy(matrix) -> Ratings:
    """A :class:`Ratings` from a ``scipy.sparse`` user x item matrix (stored entries are the ratings).

    Rows and columns keep their indices (``users = arange(m)``, ``items = arange(n)``).
    """
    data = Sparse.from_scipy(matrix)
    m, n = data.shape
    return Ratings(data, np.arange(m), np.arange(n))
