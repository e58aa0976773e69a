"""Saving and loading factors, fit results and input matrices -- without pickle.

Files written here are ``.npz`` archives of plain numeric arrays plus one
JSON string (``__meta__``) for metadata, so :func:`numpy.load` reads them with
``allow_pickle=False`` and a file from an untrusted source cannot run code.

Writes are atomic: the archive is written to a temporary file in the target
directory, flushed to disk (``fsync``) and moved over the target with
:func:`os.replace`.  A crash or an exception at any moment leaves either the
old file or the new one, never a truncated mix; an existing file is never
touched unless the new one is complete.

:func:`load_matrix` reads the input formats of the ``jmf`` command
(``.npy``, ``.npz``, Matrix Market ``.mtx``, numeric CSV/TSV and ratings
tables).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import zipfile
import zlib
from typing import Any, Optional

import numpy as np

from .data import Dense, Sparse, _check_fits
from .factors import Factors

__all__ = [
    "save_factors",
    "load_factors",
    "save_result",
    "load_result",
    "load_matrix",
    "atomic_write",
    "MATRIX_SUFFIXES",
]

_META = "__meta__"
_FACTOR_LEAVES = ("W", "H", "row_bias", "col_bias", "offset")
_FORMAT = "jmf-npz-1"

#: File suffixes :func:`load_matrix` understands.
MATRIX_SUFFIXES = (".npy", ".npz", ".mtx", ".csv", ".tsv", ".txt", ".data", ".dat", ".base", ".test")


# -- atomic writes ----------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb", overwrite: bool = True):
    """Open a temporary file that replaces ``path`` only if the block succeeds.

    The temporary file lives next to ``path`` (same file system, so
    :func:`os.replace` is atomic), is flushed and ``fsync``-ed before the
    rename, and is removed if the block raises.  With ``overwrite=False`` an
    existing ``path`` raises :class:`FileExistsError` before anything is
    written.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory {directory!r} does not exist (needed to write {path!r})")
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path!r} exists; pass overwrite=True to replace it")
    _remove_stale_temps(directory, os.path.basename(path))
    fd, tmp = _create_temp(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if not overwrite and os.path.exists(path):
            raise FileExistsError(f"{path!r} appeared while writing; not replacing it")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _temp_prefix(name: str) -> str:
    return f".{name}.tmp-"


def _create_temp(directory: str, name: str) -> tuple[int, str]:
    """A new temporary file ``.{name}.tmp-{pid}-{random}`` beside the target.

    Created with mode 0666 so the kernel applies the user's umask, as for any
    ordinary file (``tempfile.mkstemp`` forces 0600, which the rename then
    gave the saved model).  The pid in the name lets a later save recognize
    the leftovers of a process that was killed mid-write.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f"{_temp_prefix(name)}{os.getpid()}-{secrets.token_hex(4)}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file for {name!r} in {directory!r}")  # pragma: no cover


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError as exc:  # pragma: no cover - e.g. platforms without signals
        return exc.errno != errno.ESRCH
    return True


def _remove_stale_temps(directory: str, name: str) -> None:
    """Delete temporary files of the same target left by processes that no longer exist (a killed save).

    Files of live processes (a concurrent save) and of this process are left alone; so is
    anything whose name does not follow the pattern exactly.
    """
    prefix = _temp_prefix(name)
    try:
        entries = os.listdir(directory)
    except OSError:  # pragma: no cover
        return
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        pid, _, token = entry[len(prefix):].partition("-")
        if not (pid.isdigit() and len(token) == 8 and all(c in "0123456789abcdef" for c in token)):
            continue
        if int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            os.unlink(os.path.join(directory, entry))


def _fsync_dir(directory: str) -> None:
    """Make a rename durable (best effort; not every platform allows opening a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _npz_path(path) -> str:
    path = os.fspath(path)
    return path if path.endswith(".npz") else path + ".npz"


def _to_host(x) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"cannot save an object array (dtype {arr.dtype}) without pickle")
    return arr


def _jsonable(meta: Any, name: str = "metadata") -> str:
    try:
        return json.dumps(meta, sort_keys=True, default=_json_default)
    except TypeError as exc:
        raise TypeError(f"{name} must be JSON-serializable: {exc}") from None


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) and obj.size <= 10_000:
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def _write_npz(path: str, arrays: dict, meta: dict, overwrite: bool, compress: bool) -> str:
    path = _npz_path(path)
    payload = {k: _to_host(v) for k, v in arrays.items()}
    payload[_META] = np.asarray(_jsonable(meta))
    with atomic_write(path, "wb", overwrite=overwrite) as fh:
        (np.savez_compressed if compress else np.savez)(fh, **payload)
    return path


# What numpy/zipfile raise for a truncated or tampered file: reported as a ValueError naming it.
_CORRUPT = (ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, OSError)


def _load_npz(path: str) -> dict:
    """All arrays of an ``.npz`` archive (no pickle), or a ValueError saying what is wrong with the file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("it is a single .npy array, not an .npz archive")
            return {k: z[k] for k in z.files}
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ValueError(f"{path!r} is not a pickle-free .npz archive: {exc}") from None
        raise ValueError(f"{path!r} is not a readable .npz archive (truncated or corrupted?): {exc}") from None
    except _CORRUPT as exc:
        raise ValueError(f"{path!r} is not a readable .npz archive (truncated or corrupted?): "
                         f"{type(exc).__name__}: {exc}") from None


def _existing_npz(path) -> str:
    """``path``, or ``path + ".npz"`` when only that exists (``save_factors("x")`` writes ``x.npz``)."""
    path = os.fspath(path)
    if not os.path.exists(path) and not path.endswith(".npz") and os.path.exists(path + ".npz"):
        return path + ".npz"
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    return path


def _read_npz(path) -> tuple[dict, dict]:
    path = _existing_npz(path)
    arrays = _load_npz(path)
    meta = {}
    if _META in arrays:
        try:
            meta = json.loads(str(arrays.pop(_META)))
        except ValueError as exc:
            raise ValueError(f"{path!r}: its metadata is not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{path!r}: its metadata is not a JSON object")
    return arrays, meta


def _check_factor_arrays(arrays: dict, path: str) -> None:
    """Shapes of loaded factors: W (..., m, k), H (..., k, n), row_bias (..., m), col_bias (..., n), offset (...)."""
    for name in _FACTOR_LEAVES:
        a = arrays.get(name)
        if a is not None and a.dtype.kind not in "fiu":
            raise ValueError(f"{path!r}: {name} has dtype {a.dtype}; expected numbers")
    W, H = arrays["W"], arrays["H"]
    if W.ndim < 2 or H.ndim != W.ndim or W.shape[:-2] != H.shape[:-2] or W.shape[-1] != H.shape[-2]:
        raise ValueError(f"{path!r}: W {W.shape} and H {H.shape} do not form a factorization "
                         "(expected W (m, k) and H (k, n), with the same leading axes if batched)")
    lead, (m, n) = W.shape[:-2], (W.shape[-2], H.shape[-1])
    expect = {"row_bias": lead + (m,), "col_bias": lead + (n,), "offset": lead}
    for name, shape in expect.items():
        a = arrays.get(name)
        if a is not None and a.shape != shape:
            raise ValueError(f"{path!r}: {name} has shape {a.shape}; expected {shape} for W {W.shape} and H {H.shape}")


# -- factors and results ----------------------------------------------------------------


def save_factors(path, factors: Factors, metadata: Optional[dict] = None, *, arrays: Optional[dict] = None,
                 overwrite: bool = True, compress: bool = False) -> str:
    """Save :class:`~jmf.Factors` to ``path`` (``.npz`` is appended if missing).

    Parameters
    ----------
    path : str or path-like
    factors : Factors
        ``W (..., m, k)``, ``H (..., k, n)`` and the optional biases; batched
        factors (from :func:`jmf.fit_many`) are saved with their leading axes.
    metadata : dict, optional
        JSON-serializable information stored alongside (solver, rank, ...).
    arrays : dict of str to array, optional
        Extra numeric or string arrays (e.g. the raw user and item ids of
        the rows and columns); returned by ``load_factors(...,
        with_metadata=True)`` as ``metadata["arrays"]``.
    overwrite : bool, default True
        If False, refuse to replace an existing file (:class:`FileExistsError`).
    compress : bool, default False
        Use ``np.savez_compressed``.

    Returns
    -------
    str
        The path written.
    """
    if not isinstance(factors, Factors):
        raise TypeError(f"factors must be a jmf.Factors, got {type(factors).__name__}")
    payload = {name: getattr(factors, name) for name in _FACTOR_LEAVES if getattr(factors, name) is not None}
    extra = {}
    for name, value in (arrays or {}).items():
        if name in _FACTOR_LEAVES or name == _META or name.startswith("extra."):
            raise ValueError(f"arrays: name {name!r} is reserved")
        extra["extra." + name] = value
    meta = {"format": _FORMAT, "kind": "factors", "metadata": metadata or {}}
    return _write_npz(path, {**payload, **extra}, meta, overwrite, compress)


def load_factors(path, *, with_metadata: bool = False):
    """Load factors written by :func:`save_factors` (or :func:`save_result`).

    Returns
    -------
    Factors, or (Factors, dict) with ``with_metadata=True``
        NumPy arrays (wrap with ``jnp.asarray`` as needed).
    """
    arrays, meta = _read_npz(path)
    if "W" not in arrays or "H" not in arrays:
        raise ValueError(f"{os.fspath(path)!r} holds no factors (arrays: {sorted(arrays)}); expected W and H")
    _check_factor_arrays(arrays, os.fspath(path))
    factors = Factors(*(arrays.get(name) for name in _FACTOR_LEAVES))
    if with_metadata:
        md = dict(meta.get("metadata", {}))
        extra = {k[len("extra."):]: v for k, v in arrays.items() if k.startswith("extra.")}
        if extra:
            md["arrays"] = extra
        return factors, md
    return factors


def save_result(path, result, metadata: Optional[dict] = None, *, overwrite: bool = True,
                compress: bool = False) -> str:
    """Save a :class:`~jmf.FitResult` (factors, loss, history, n_iter, status).

    The solver ``state`` is not saved (it may hold arbitrary optimizer
    pytrees); :func:`load_result` returns ``state=None``.  A
    :class:`~jmf.FitManyResult` is saved with its member axes and ranks.
    """
    axes, ranks = None, None
    if hasattr(result, "axes") and hasattr(result, "result"):
        axes, ranks = list(result.axes), None if result.ranks is None else np.asarray(result.ranks).tolist()
        result = result.result
    for attr in ("factors", "loss", "loss_history", "iterations", "n_iter", "status"):
        if not hasattr(result, attr):
            raise TypeError(f"result must be a jmf.FitResult or FitManyResult, got {type(result).__name__}")
    arrays = {name: getattr(result.factors, name) for name in _FACTOR_LEAVES
              if getattr(result.factors, name) is not None}
    for attr in ("loss", "loss_history", "iterations", "n_iter", "status"):
        arrays[attr] = getattr(result, attr)
    meta = {"format": _FORMAT, "kind": "result", "axes": axes, "ranks": ranks, "metadata": metadata or {}}
    return _write_npz(path, arrays, meta, overwrite, compress)


def load_result(path, *, with_metadata: bool = False):
    """Load a result written by :func:`save_result`.

    Returns
    -------
    FitResult (or FitManyResult when a fit_many result was saved), optionally with its metadata dict.
    """
    from .fit import FitManyResult, FitResult

    arrays, meta = _read_npz(path)
    missing = [k for k in ("W", "H", "loss", "loss_history", "iterations", "n_iter", "status") if k not in arrays]
    if missing:
        raise ValueError(f"{os.fspath(path)!r} is not a saved jmf result (missing {missing})")
    _check_factor_arrays(arrays, os.fspath(path))
    factors = Factors(*(arrays.get(name) for name in _FACTOR_LEAVES))
    res = FitResult(factors, arrays["loss"], arrays["loss_history"], arrays["iterations"], arrays["n_iter"],
                    arrays["status"], None)
    if meta.get("axes") is not None:
        ranks = meta.get("ranks")
        res = FitManyResult(res, tuple(meta["axes"]), None if ranks is None else np.asarray(ranks, np.int32))
    if with_metadata:
        return res, meta.get("metadata", {})
    return res


# -- input matrices ---------------------------------------------------------------------

_RATING_HEADERS = {"user", "userid", "user_id", "item", "itemid", "item_id", "movie", "movieid", "movie_id",
                   "rating", "score", "value"}


def _sniff_delimiter(line: str) -> Optional[str]:
    for delim in ("::", "\t", ",", ";"):
        if delim in line:
            return delim
    return None  # whitespace


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
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        first, first_line = "", 0
        for first_line, line in enumerate(fh, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                first = line.strip()
                break
    if not first:
        raise ValueError(f"{path!r} is empty")
    delim = _sniff_delimiter(first)
    tokens = [t.strip().strip('"').lower() for t in (first.split(delim) if delim else first.split())]
    has_header = not all(_is_number(t) or t in ("", "nan") for t in tokens)
    ratings_header = has_header and len(_RATING_HEADERS.intersection(tokens)) >= 2
    is_ratings = format == "ratings" or (format == "auto" and (
        ratings_header or suffix in (".data", ".dat", ".base", ".test")))
    if is_ratings:
        return _load_ratings(path, dtype, info)
    # A non-numeric first row of a dense table is a header (column names): skip it.
    if has_header:
        info["header"] = [t.strip().strip('"') for t in (first.split(delim) if delim else first.split())]
    try:
        arr = np.genfromtxt(path, delimiter=delim if delim != "::" else None, dtype=np.float64, comments="#",
                            filling_values=np.nan, invalid_raise=True, skip_header=first_line if has_header else 0)
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
    from .datasets import index_ratings, read_ratings

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
