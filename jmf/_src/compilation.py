"""Counting XLA compilations (how many programs a job builds, and the seconds spent building them).

JAX reports every backend compilation through :mod:`jax.monitoring`; one
listener, registered on first use, keeps running totals, and
:func:`compilations` reads the difference over a block::

    with compilations() as log:
        jmf.fit(...)
    log.count, log.seconds   # after the block
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import jax

__all__ = ["CompileLog", "compilations", "totals"]

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_lock = threading.Lock()
_totals = {"count": 0, "seconds": 0.0}
_registered = False


def _listen(event: str, duration: float, **_) -> None:
    if event == _BACKEND_COMPILE:
        with _lock:
            _totals["count"] += 1
            _totals["seconds"] += duration


def _ensure_listener() -> None:
    global _registered
    with _lock:
        if not _registered:
            jax.monitoring.register_event_duration_secs_listener(_listen)
            _registered = True


def totals() -> tuple[int, float]:
    """(compilations, seconds) since the listener started."""
    _ensure_listener()
    with _lock:
        return _totals["count"], _totals["seconds"]


@dataclass
class CompileLog:
    """Compilations of a :func:`compilations` block (filled in when the block ends)."""

    count: int = 0
    seconds: float = 0.0


@contextlib.contextmanager
def compilations():
    """Count the XLA compilations (and their seconds) of the enclosed block."""
    count0, seconds0 = totals()
    log = CompileLog()
    try:
        yield log
    finally:
        count1, seconds1 = totals()
        log.count, log.seconds = count1 - count0, seconds1 - seconds0
