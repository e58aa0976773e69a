"""Meshes and helpers for running :func:`jmf.fit_many` over several devices and hosts."""

from jmf._src.sharding import BATCH_AXIS, batch_mesh, default_memory_budget, distribute, gather, is_global

__all__ = ["BATCH_AXIS", "batch_mesh", "distribute", "gather", "default_memory_budget", "is_global"]
