"""Placement at the edge: device meshes for the member (batch) axis of :func:`jmf.fit_many` and for one huge matrix.

jmf never branches on the device kind inside a solver.  Placement is a
property of the call: ``fit_many(..., mesh=jmf.sharding.batch_mesh())``
splits the outermost member axis (matrices, else ranks, else restarts) over
a 1-D mesh with :func:`jax.shard_map`.  Each device then runs its own
compiled loop over its members -- members never communicate, so a device
whose members have all converged simply finishes early and results are
identical to a single-device run.

Multi-host (several processes, e.g. one per GPU node) uses the same
program: every process calls ``jax.distributed.initialize(...)``, builds the
global mesh from ``jax.devices()``, wraps its *own* shard of the batch with
:func:`distribute`, calls ``fit_many(..., mesh=mesh)``, and gathers the
result with :func:`gather`.  See ``docs/multihost.md``.

One matrix too large for one device is fitted with
``jmf.fit(data, solver, rank, mesh=model_mesh())``: its factors are sharded
over the mesh (``jmf._src.sharded``).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["BATCH_AXIS", "MODEL_AXIS", "batch_mesh", "model_mesh", "distribute", "gather", "default_memory_budget",
           "is_global", "configure_cpu_devices", "cpu_devices", "usable_cores"]

BATCH_AXIS = "batch"
MODEL_AXIS = "model"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. 1 under ``taskset -c 0``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def configure_cpu_devices() -> int:
    """Give JAX one CPU device per usable core, if nobody has chosen and JAX has not started.

    XLA spreads one large operation over cores, but a batch of small
    matrices runs mostly on one core; :func:`jmf.fit_many` splits such
    batches over CPU devices (see :mod:`jmf._src.run.executor`), which
    needs more than the single CPU device JAX creates by default.  ``import
    jmf`` therefore sets ``jax_num_cpu_devices`` to the number of usable
    cores unless the environment variable ``JMF_CPU_DEVICES`` says
    otherwise (``1`` keeps JAX's default), ``jax_num_cpu_devices`` or
    ``XLA_FLAGS=--xla_force_host_platform_device_count`` is already set, or
    JAX's backends are already running (then nothing changes).  Other code
    keeps running on the first device as before.

    Returns the number of CPU devices asked for (0 when nothing was changed).
    """
    raw = os.environ.get("JMF_CPU_DEVICES", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"JMF_CPU_DEVICES must be a positive integer, got {raw!r}")
        wanted = int(raw)
    else:
        wanted = usable_cores()
    if wanted <= 1 or jax.config.jax_num_cpu_devices > 0:
        return 0
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return 0
    try:
        jax.config.update("jax_num_cpu_devices", wanted)
    except RuntimeError:  # JAX already executed something: keep its devices
        return 0
    return wanted


def cpu_devices() -> list:
    """This process's CPU devices (empty if JAX has no CPU backend)."""
    try:
        return jax.local_devices(backend="cpu")
    except RuntimeError:  # pragma: no cover - no CPU backend
        return []


def batch_mesh(devices: Optional[Sequence] = None, axis_name: str = BATCH_AXIS) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices is empty")
    return Mesh(np.asarray(devices), (axis_name,))


def model_mesh(devices: Optional[Sequence] = None, axis_name: str = MODEL_AXIS) -> Mesh:
    """A 1-D mesh for ONE huge matrix: ``jmf.fit(data, solver, rank, mesh=model_mesh())``.

    The rows of ``W`` (with their entries) and the columns of ``H`` (with
    theirs) are split into contiguous blocks, one per device, in the order of
    ``devices`` (default: every device of every process).  See
    :func:`jmf.sharding.shard_sparse` and ``docs/multihost.md``.
    """
    return batch_mesh(devices, axis_name)


def _axis_name(mesh: Mesh) -> str:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (see jmf.sharding.batch_mesh), got {type(mesh).__name__}")
    if len(mesh.axis_names) != 1:
        raise ValueError(f"mesh must be 1-D, got axes {mesh.axis_names}")
    return mesh.axis_names[0]


def distribute(local_data, mesh: Mesh):
    """Build a global batch from this process's shard (multi-host).

    ``local_data`` is a batched :class:`jmf.Dense`/:class:`jmf.Sparse` (or
    any pytree of arrays) holding this process's members along the leading
    axis; every process must hold the same number.  The result is one
    pytree of global arrays sharded over ``mesh``'s axis, for
    ``fit_many(..., mesh=mesh)``.  Validate the local data *before*
    (constructing ``jmf.Dense``/``jmf.Sparse`` does); global arrays are not
    re-checked on the host.
    """
    name = _axis_name(mesh)
    sharding = NamedSharding(mesh, PartitionSpec(name))
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_data)


def gather(tree):
    """Bring every leaf of ``tree`` (e.g. a :class:`jmf.FitManyResult`) to host NumPy on every process."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x) if isinstance(x, jax.Array) else x

    return jax.tree_util.tree_map(get, tree)


def is_global(tree) -> bool:
    """True if some leaf is a jax.Array spanning devices of other processes."""
    return any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree_util.tree_leaves(tree))


def default_memory_budget(fraction: float = 0.5) -> int:
    """Bytes a batched fit may use: ``fraction`` of the device memory limit (GPU/TPU) or of available RAM (CPU)."""
    dev = jax.local_devices()[0]
    stats = None
    try:
        stats = dev.memory_stats()
    except Exception:  # pragma: no cover - backends without memory stats
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(fraction * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    available = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:  # pragma: no cover - non-Linux
        pass
    if available is None:  # pragma: no cover
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(fraction * available)
