"""ONE matrix with its factors sharded over devices and hosts (ALX-style): layouts, per-device solvers, the run.

``layout`` (host-side: entries by row and by column, send lists, multi-host
routing) <- ``linalg`` (a LAPACK-free SPD solve) <- ``solvers`` (per-device
math of each supported solver) <- ``program`` (the ``shard_map``-ed start and
check-loop programs) <- ``accounting`` (memory and bytes communicated, measured
and by formula).  Imported by :mod:`jmf._src.fit` (``fit(..., mesh=)``), so
the package sits below ``fit`` in the layers; ``io`` (per-shard files,
gathering) builds on :mod:`jmf._src.io` and is imported only from above
(:mod:`jmf.sharding`), never by this ``__init__``.
"""

from .layout import Exchange, ShardedDense, ShardedSparse, process_rows, shard_dense, shard_sparse
from .program import run_sharded

__all__ = ["Exchange", "ShardedSparse", "ShardedDense", "shard_sparse", "shard_dense", "process_rows",
           "run_sharded"]
