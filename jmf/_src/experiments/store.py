"""The results file: JSON lines appended crash-safely, read back tolerating a torn last line.

Rows are appended with ``O_APPEND``, one ``os.write`` of one complete line
followed by ``fsync``; a process killed at any moment (even ``SIGKILL``)
can leave at most a torn *last* line, which opening the file for a run
truncates and readers ignore.  An exclusive ``flock`` stops two runs from
writing to one file at once.
"""

from __future__ import annotations

import errno
import json
import math
import os
import warnings
from typing import Optional

import numpy as np


def _clean(x):
    """JSON-safe value: numpy scalars to Python, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _jsonable(d):
    return json.loads(json.dumps(_clean(d), sort_keys=True))


def read_rows(path, *, strict: bool = False) -> list[dict]:
    """Rows of a results file, tolerating a torn last line.

    Everything after the last newline (a line cut by a crash) is ignored.
    A complete line that is not valid JSON (which jmf never writes) is
    skipped with a warning, or raises with ``strict=True``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    with open(path, "rb") as fh:
        raw = fh.read()
    return _parse(raw, path, strict)[0]


def _parse(raw: bytes, path: str, strict: bool):
    end = raw.rfind(b"\n") + 1  # bytes after the last newline are a torn tail
    rows = []
    for lineno, line in enumerate(raw[:end].split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            if strict:
                raise ValueError(f"{path}:{lineno}: invalid results line: {exc}") from None
            warnings.warn(f"{path}:{lineno}: skipping an invalid results line", RuntimeWarning, stacklevel=3)
            continue
        rows.append(row)
    return rows, end


class ResultsWriter:
    """Append-only, crash-safe JSON-lines writer (one ``os.write`` + ``fsync`` per row).

    Opening takes an exclusive lock, truncates a torn last line left by a
    killed run, and loads the ids already present.  Use as a context manager.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.fd: Optional[int] = None
        self.ids: set = set()

    def __enter__(self) -> "ResultsWriter":
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        created = not os.path.exists(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _lock(fd, self.path)
            raw = _read_all(fd)
            rows, end = _parse(raw, self.path, strict=False)
            if end < len(raw):  # a torn line from a killed run: cut it off before appending
                os.ftruncate(fd, end)
                os.fsync(fd)
            self.ids = {r.get("id") for r in rows}
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        if created:
            from ..io import _fsync_dir

            _fsync_dir(directory)
        return self

    def append(self, row: dict) -> None:
        if self.fd is None:
            raise RuntimeError("ResultsWriter is not open")
        rid = row.get("id")
        if rid in self.ids:
            return
        data = (json.dumps(_clean(row), sort_keys=True, allow_nan=False) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        os.fsync(self.fd)
        self.ids.add(rid)

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # also releases the lock
            self.fd = None


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, min(1 << 24, size - offset), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _lock(fd: int, path: str) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise RuntimeError(f"{path!r} is being written by another running experiment") from None
        raise
