"""Reading input files: matrix files (dense tables, ``.npy``, ``.npz``, ``.mtx``) and ratings tables.

Text files are recognized by one sniffer, :func:`sniff`, which reads the
first line that is not blank or a ``#`` comment: its separator (``::``,
tab, comma, semicolon, else whitespace) and its fields.  A dense table's
header is a first line with a non-numeric field; a ratings table's header
is a first line whose third field (the rating) is not a number; a text file
is a ratings table when its header names user/item/rating columns or its
suffix is a ratings suffix (``.data``, ``.dat``, ``.base``, ``.test``).
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import numpy as np

from ..data import Dense, Sparse
from ..data.checks import _check_fits
from ..io import _CORRUPT, _META, MATRIX_SUFFIXES, _load_npz
from .ratings import RATING_COLUMNS, index_ratings

__all__ = ["TextLayout", "sniff", "load_matrix", "read_ratings", "MATRIX_SUFFIXES"]

_SEPARATORS = ("::", "\t", ",", ";")
_RATING_HEADERS = {"user", "userid", "user_id", "item", "itemid", "item_id", "movie", "movieid", "movie_id",
                   "rating", "score", "value"}


class TextLayout(NamedTuple):
    """What :func:`sniff` reads off a text file's first row."""

    sep: Optional[str]  # "::", "\t", ",", ";", or None for whitespace
    tokens: tuple  # the row's fields, stripped and unquoted
    first_line: int  # 1-based number of that row (blank and comment lines come before it)

    @property
    def names_ratings(self) -> bool:
        """The row is a header naming at least two of the user / item / rating columns."""
        return len(_RATING_HEADERS.intersection(t.lower() for t in self.tokens)) >= 2


def sniff(path) -> TextLayout:
    """The separator and first row of a text file (``ValueError`` if it holds no row)."""
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            text = line.strip()
            if text and not text.startswith("#"):
                break
        else:
            raise ValueError(f"{os.fspath(path)!r} is empty")
    sep = next((s for s in _SEPARATORS if s in text), None)
    fields = text.split(sep) if sep else text.split()
    return TextLayout(sep, tuple(f.strip().strip('"') for f in fields), number)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def load_matrix(path, *, format: str = "auto", dtype=np.float32):
    """Read a matrix file into :class:`~jmf.Dense` or :class:`~jmf.Sparse`.

    Parameters
    ----------
    path : str
        ``.npy`` (one 2-D array), ``.npz`` (one 2-D array, or a
        ``scipy.sparse.save_npz`` file), ``.mtx`` (Matrix Market, sparse or
        dense), ``.csv``/``.tsv``/``.txt`` (a dense numeric table; NaN or an
        empty field marks a missing entry; a non-numeric first row is a
        header and is skipped), or a ratings table
        (``user, item, rating[, timestamp]`` rows; ``.data``/``.dat``/``.base``/
        ``.test`` files such as MovieLens' ``u.data`` and ``ratings.dat``).
    format : {"auto", "dense", "ratings"}
        How to read text files.  "auto" treats a text file as ratings when
        its header names user/item/rating columns or its suffix is a ratings
        suffix, else as a dense table.
    dtype : numpy dtype, default float32

    Returns
    -------
    data : Dense or Sparse
        Ratings become a :class:`Sparse` with raw user/item ids re-indexed to
        ``0..m-1`` / ``0..n-1`` in order of first appearance of the sorted ids.
    info : dict
        ``{"path", "kind", "shape", "nnz", ...}``; ratings add ``"user_ids"``
        and ``"item_ids"`` (the raw id of each row/column) and ``"duplicates"``
        (repeated user/item pairs, merged keeping the last rating); a dense
        table with a header adds ``"header"``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the suffix is unknown, the file is empty, truncated or corrupted,
        or the content is not a numeric matrix.
    """
    path = os.fspath(path)
    if format not in ("auto", "dense", "ratings"):
        raise ValueError(f"format must be 'auto', 'dense' or 'ratings', got {format!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory; give a matrix file ({', '.join(MATRIX_SUFFIXES)})")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in MATRIX_SUFFIXES:
        raise ValueError(f"unknown file type {suffix!r} for {path!r}; supported: {', '.join(MATRIX_SUFFIXES)}")
    info: dict = {"path": path}
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:
            if "pickle" in str(exc):
                raise ValueError(f"{path!r} is not a pickle-free numeric .npy file: {exc}") from None
            raise ValueError(f"{path!r} is not a readable .npy file (truncated or corrupted?): {exc}") from None
        except (EOFError, OSError) as exc:  # a zero-byte file raises EOFError
            raise ValueError(f"{path!r} is not a readable .npy file (empty, truncated or corrupted?): "
                             f"{type(exc).__name__}: {exc}") from None
        return _dense_from_array(arr, path, dtype, info)
    if suffix == ".npz":
        return _load_npz_matrix(path, dtype, info)
    if suffix == ".mtx":
        import scipy.io
        import scipy.sparse as sp

        try:
            m = scipy.io.mmread(path)
        except Exception as exc:
            raise ValueError(f"{path!r} is not a readable Matrix Market file: {exc}") from None
        if sp.issparse(m):
            coo = m.tocoo()
            _check_fits(coo.data, dtype, repr(path), _RANGE_HINT)
            info.update(kind="sparse", shape=tuple(coo.shape), nnz=int(coo.nnz))
            data = Sparse(coo.row, coo.col, coo.data.astype(dtype), coo.shape, duplicates="sum")
            return data, info
        return _dense_from_array(np.asarray(m), path, dtype, info)
    # text
    layout = sniff(path)
    is_ratings = format == "ratings" or (format == "auto" and (
        layout.names_ratings or suffix in (".data", ".dat", ".base", ".test")))
    if is_ratings:
        return _load_ratings(path, dtype, info)
    # A non-numeric first row of a dense table is a header (column names): skip it.
    has_header = not all(_is_number(t) or t.lower() in ("", "nan") for t in layout.tokens)
    if has_header:
        info["header"] = list(layout.tokens)
    delim = layout.sep
    try:
        arr = np.genfromtxt(path, delimiter=delim if delim != "::" else None, dtype=np.float64, comments="#",
                            filling_values=np.nan, invalid_raise=True,
                            skip_header=layout.first_line if has_header else 0)
    except ValueError as exc:
        raise ValueError(f"{path!r} is not a rectangular numeric table: {exc}") from None
    arr = np.atleast_2d(arr)
    return _dense_from_array(arr, path, dtype, info)


_RANGE_HINT = "rescale the data (or read it with load_matrix(..., dtype=np.float64) with JAX's x64 mode on)"


def _dense_from_array(arr: np.ndarray, path: str, dtype, info: dict):
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{path!r} holds a {arr.dtype} array; expected numbers")
    if arr.ndim != 2:
        raise ValueError(f"{path!r} holds an array of shape {arr.shape}; expected a 2-D matrix")
    _check_fits(arr, dtype, repr(path), _RANGE_HINT)
    arr = arr.astype(dtype)
    missing = int(np.isnan(arr).sum()) if arr.dtype.kind == "f" else 0
    info.update(kind="dense", shape=tuple(arr.shape), nnz=int(arr.size - missing), missing=missing)
    return (Dense.from_nan(arr) if missing else Dense(arr)), info


def _load_npz_matrix(path: str, dtype, info: dict):
    arrays = _load_npz(path)
    if {"format", "shape", "data"}.issubset(arrays):  # scipy.sparse.save_npz
        import scipy.sparse as sp

        try:
            m = sp.load_npz(path).tocoo()
        except _CORRUPT as exc:
            raise ValueError(f"{path!r} is not a readable scipy.sparse .npz file: "
                             f"{type(exc).__name__}: {exc}") from None
        _check_fits(m.data, dtype, repr(path), _RANGE_HINT)
        info.update(kind="sparse", shape=tuple(m.shape), nnz=int(m.nnz))
        return Sparse(m.row, m.col, m.data.astype(dtype), m.shape, duplicates="sum"), info
    names = [f for f in arrays if f != _META]
    if not names:
        raise ValueError(f"{path!r} holds no arrays")
    key = "A" if "A" in names else names[0] if len(names) == 1 else None
    if key is None:
        raise ValueError(f"{path!r} holds several arrays {names}; name the matrix 'A' or save only one")
    return _dense_from_array(arrays[key], path, dtype, info)


def _load_ratings(path: str, dtype, info: dict):
    try:
        df = read_ratings(path)
        # Repeated (user, item) pairs are merged keeping the last; count them so callers can say so.
        duplicates = int(df.duplicated(subset=["user", "item"]).sum())
        table = index_ratings(df, duplicates="last", dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path!r} is not a readable ratings table: {exc}") from None
    users, items = np.asarray(table.users), np.asarray(table.items)
    info.update(kind="ratings", shape=tuple(table.data.shape), nnz=int(table.data.nnz), duplicates=duplicates,
                user_ids=users.astype(str) if users.dtype == object else users,
                item_ids=items.astype(str) if items.dtype == object else items)
    return table.data, info


# -- ratings tables ----------------------------------------------------------------------

_FORMATS = ("csv", "tsv", "dat", "whitespace", "parquet")


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
    layout = sniff(path)
    if len(layout.tokens) < 3:
        raise ValueError(f"{path}: expected at least 3 fields (user, item, rating) per line, got {layout.tokens!r}")
    sep = layout.sep or r"\s+"
    if format is not None:
        sep = {"csv": ",", "tsv": "\t", "dat": "::", "whitespace": r"\s+"}[format]
    # A header names the columns: its third field (the rating) is not a number.
    header = not _is_number(layout.tokens[2])
    hdr = 0 if header else None
    skip = layout.first_line - 1  # blank or comment lines before the first row
    if sep == "::":
        # The fast C parser takes one-character separators: split on ':' and keep every other field.
        n_fields = len(layout.tokens)
        df = pd.read_csv(path, sep=":", header=hdr, usecols=list(range(0, 2 * n_fields, 2)), engine="c",
                         skiprows=skip)
    elif sep == r"\s+":
        df = pd.read_csv(path, sep=r"\s+", header=hdr, skiprows=skip)
    else:
        df = pd.read_csv(path, sep=sep, header=hdr, engine="c", skiprows=skip)
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
