"""Saving and loading factors and fit results -- without pickle.

Files written here are ``.npz`` archives of plain numeric arrays plus one
JSON string (``__meta__``) for metadata, so :func:`numpy.load` reads them with
``allow_pickle=False`` and a file from an untrusted source cannot run code.

Writes are atomic: the archive is written to a temporary file in the target
directory, flushed to disk (``fsync``) and moved over the target with
:func:`os.replace`.  A crash or an exception at any moment leaves either the
old file or the new one, never a truncated mix; an existing file is never
touched unless the new one is complete.

Reading input files (matrices and ratings tables) lives in
:mod:`jmf._src.datasets.readers`.
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

from .factors import Factors

__all__ = [
    "save_factors",
    "load_factors",
    "save_result",
    "load_result",
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
    from .fit_results import FitManyResult, FitResult

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
