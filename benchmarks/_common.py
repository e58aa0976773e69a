"""Shared helpers for the benchmark scripts: timing, tables, machine limits."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence

import numpy as np


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds (``fn`` must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def table(rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = ".4g") -> str:
    """A GitHub-markdown table from a list of dicts."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())

    def fmt(v):
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def matmul_rate(dtype=np.float32, n: int = 2000, repeats: int = 5) -> float:
    """Measured numpy (BLAS) matmul rate in FLOP/s for square n x n products."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n)).astype(dtype)
    b = rng.random((n, n)).astype(dtype)
    t = median_time(lambda: a @ b, repeats=repeats)
    return 2 * n**3 / t


def jax_matmul_rate(dtype="float32", n: int = 2000, repeats: int = 5) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.uniform(jax.random.key(0), (n, n), dtype=dtype)
    b = jax.random.uniform(jax.random.key(1), (n, n), dtype=dtype)
    f = jax.jit(jnp.matmul)
    t = median_time(lambda: f(a, b).block_until_ready(), repeats=repeats)
    return 2 * n**3 / t


def copy_bandwidth(nbytes: int = 1 << 28, repeats: int = 5) -> float:
    """Measured memory copy bandwidth in bytes/s (read + write counted)."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    t = median_time(lambda: np.copyto(dst, src), repeats=repeats)
    return 2 * nbytes / t


def machine_info() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    import jax

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"python {platform.python_version()}, "
            f"jax {jax.__version__}, load average {load[0]:.2f}")


def run_python(code_or_path: str, args: Sequence[str] = (), env: dict | None = None, cpus: str | None = None,
               is_path: bool = True) -> tuple[float, str]:
    """Run a Python script in a fresh process; return (wall seconds, stdout)."""
    cmd = [sys.executable, code_or_path, *args] if is_path else [sys.executable, "-c", code_or_path, *args]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    full_env = dict(os.environ)
    full_env.update(env or {})
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=full_env, check=True)
    return time.perf_counter() - t0, out.stdout
