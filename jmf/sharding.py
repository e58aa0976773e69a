"""Meshes and helpers for many devices and hosts.

* a batch of fits: :func:`jmf.fit_many` with ``mesh=batch_mesh()`` (:func:`distribute`, :func:`gather`);
* ONE huge matrix: :func:`jmf.fit` with ``mesh=model_mesh()``, data laid out by :func:`shard_sparse` /
  :func:`shard_dense`, factors saved per shard (:func:`save_sharded`) or gathered (:func:`gather_factors`).
"""

from jmf._src.sharded import (
    ShardedDense,
    ShardedSparse,
    process_rows,
    shard_dense,
    shard_sparse,
)
from jmf._src.sharded.io import gather_factors, load_sharded, save_sharded
from jmf._src.sharding import (
    BATCH_AXIS,
    MODEL_AXIS,
    batch_mesh,
    default_memory_budget,
    distribute,
    gather,
    is_global,
    model_mesh,
)

__all__ = ["BATCH_AXIS", "batch_mesh", "distribute", "gather", "default_memory_budget", "is_global",
           "MODEL_AXIS", "model_mesh", "shard_sparse", "shard_dense", "process_rows", "ShardedSparse", "ShardedDense",
           "gather_factors", "save_sharded", "load_sharded"]
