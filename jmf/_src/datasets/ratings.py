"""Ratings tables: reading files, re-indexing raw ids, building :class:`jmf.Sparse`.

A ratings table has one row per observed (user, item, rating) triple, with
arbitrary raw ids (MovieLens movie ids are sparse integers, other sources use
strings).  :func:`index_ratings` maps the raw ids to contiguous ``0..m-1`` /
``0..n-1`` and keeps the mapping back in a :class:`Ratings`;
:meth:`Ratings.encode` maps another table (a test split) onto the same index,
giving ``-1`` to users or items it has never seen (predictions for those fall
back to the biases, see :func:`jmf.cf.predict`).
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import numpy as np

from ..data import Sparse

__all__ = ["Ratings", "index_ratings", "read_ratings", "ratings_from_scipy", "RATING_COLUMNS"]

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


# -- reading files ------------------------------------------------------------------------

_FORMATS = ("csv", "tsv", "dat", "whitespace", "parquet")


def _sniff(path: str):
    """Guess ``(sep, has_header)`` from the first line of a text ratings file."""
    with open(path, "rb") as fh:
        head = fh.readline().decode("utf-8", errors="replace").strip("\r\n")
    if not head.strip():
        raise ValueError(f"{path}: the first line is empty; cannot tell the format")
    if "::" in head:
        sep = "::"
    elif "\t" in head:
        sep = "\t"
    elif "," in head:
        sep = ","
    elif ";" in head:
        sep = ";"
    else:
        sep = r"\s+"
    fields = [f for f in (head.split() if sep == r"\s+" else head.split(sep)) if f != ""]
    if len(fields) < 3:
        raise ValueError(f"{path}: expected at least 3 fields (user, item, rating) per line, got {fields!r}")

    def numeric(s):
        try:
            float(s)
            return True
        except ValueError:
            return False

    has_header = not numeric(fields[2])
    return sep, has_header


def read_ratings(path, format: Optional[str] = None, names=None):
    """Read a ratings file into a DataFrame with columns user, item, rating[, timestamp].

    Parameters
    ----------
    path : str or path-like
        A file in one of the MovieLens layouts or a generic table:
        ``ratings.csv`` (comma, header ``userId,movieId,rating,timestamp``),
        ``ratings.dat`` (``::``-separated, ml-1m / ml-10m), ``u.data`` /
        ``u1.base`` / ``u1.test`` (tab-separated, ml-100k), any other
        comma / tab / semicolon / whitespace separated text with or without a
        header, or ``.parquet``.  The separator and header are sniffed from
        the first line.
    format : {"csv", "tsv", "dat", "whitespace", "parquet"}, optional
        Force the layout instead of sniffing.
    names : sequence of str, optional
        Column names for headerless files (default user, item, rating, timestamp).

    Returns
    -------
    pandas.DataFrame
        The first three columns renamed ``user``, ``item``, ``rating`` (a
        fourth one, if present, ``timestamp``); extra columns are dropped.
    """
    import pandas as pd

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ratings file not found: {path}")
    if format is not None and format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    if format == "parquet" or (format is None and path.endswith(".parquet")):
        df = pd.read_parquet(path)
        return _normalize(df)
    if format is None:
        sep, header = _sniff(path)
    else:
        sep = {"csv": ",", "tsv": "\t", "dat": "::", "whitespace": r"\s+"}[format]
        header = _sniff(path)[1]
    hdr = 0 if header else None
    if sep == "::":
        # The fast C parser takes one-character separators: split on ':' and keep every other field.
        with open(path, "rb") as fh:
            n_fields = fh.readline().decode("utf-8", errors="replace").count("::") + 1
        df = pd.read_csv(path, sep=":", header=hdr, usecols=list(range(0, 2 * n_fields, 2)), engine="c")
    elif sep == r"\s+":
        df = pd.read_csv(path, sep=r"\s+", header=hdr)
    else:
        df = pd.read_csv(path, sep=sep, header=hdr, engine="c")
    if not header:
        cols = list(names) if names is not None else list(RATING_COLUMNS)
        df.columns = (cols + [f"c{i}" for i in range(len(cols), df.shape[1])])[: df.shape[1]]
    return _normalize(df)


def _normalize(df):
    if df.shape[1] < 3:
        raise ValueError(f"a ratings table needs at least 3 columns (user, item, rating), got {list(df.columns)}")
    cols = list(df.columns)
    lower = {str(c).lower(): c for c in cols}
    pick = []
    for want, aliases in (
        ("user", ("user", "userid", "user_id", "uid")),
        ("item", ("item", "itemid", "item_id", "movieid", "movie_id", "iid")),
        ("rating", ("rating", "ratings", "score", "value")),
        ("timestamp", ("timestamp", "time", "ts")),
    ):
        found = next((lower[a] for a in aliases if a in lower), None)
        pick.append(found)
    if all(p is not None for p in pick[:3]):
        chosen = [p for p in pick if p is not None]
        out = df[chosen].copy()
        out.columns = list(RATING_COLUMNS[: len(chosen)])
    else:
        out = df.iloc[:, : min(4, df.shape[1])].copy()
        out.columns = list(RATING_COLUMNS[: out.shape[1]])
    if out["rating"].dtype == object:
        raise TypeError("the rating column is not numeric")
    return out
