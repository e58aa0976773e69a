"""Sharded factors on disk and on the host: one pickle-free ``.npz`` per shard plus a JSON index, or gathered.

:func:`save_sharded` is called by every process: each writes the shards of
its own devices (``shard-00003.npz``: device 3's rows of ``W`` and columns of
``H`` with their biases, trimmed to the real ``(m, n)``, via
:func:`jmf.io.save_factors`, atomically), then -- after a barrier, so that the
index never names a file that is not complete -- process 0 writes
``index.json`` (atomically) listing every shard and its row and column
ranges.  :func:`load_sharded` assembles the whole factors (or one shard) on
any machine.  :func:`gather_factors` brings sharded factors to host NumPy on
every process (an all-gather), trimmed.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import jax
import numpy as np

from ..factors import Factors
from ..io import atomic_write, load_factors, save_factors
from ..sharding import gather

__all__ = ["save_sharded", "load_sharded", "gather_factors"]

_INDEX = "index.json"
_FORMAT = "jmf-sharded-1"


def _shape_of(factors: Factors, shape) -> tuple[int, int]:
    if shape is None:
        return int(factors.W.shape[0]), int(factors.H.shape[1])
    m, n = (int(x) for x in shape)
    if m > factors.W.shape[0] or n > factors.H.shape[1]:
        raise ValueError(f"shape {(m, n)} is larger than the factors ({factors.W.shape[0]}, {factors.H.shape[1]})")
    return m, n


def gather_factors(factors: Factors, shape: Optional[tuple] = None) -> Factors:
    """Sharded factors as host NumPy on every process, trimmed to ``shape = (m, n)`` (drops the padding)."""
    m, n = _shape_of(factors, shape)
    f = gather(factors)
    return Factors(f.W[:m], f.H[:, :n], None if f.row_bias is None else f.row_bias[:m],
                   None if f.col_bias is None else f.col_bias[:n], f.offset)


def _shard_of(x, device):
    for s in x.addressable_shards:
        if s.device == device:
            return np.asarray(s.data)
    raise ValueError(f"no shard of an array on {device}")  # pragma: no cover


def save_sharded(directory, factors: Factors, shape: Optional[tuple] = None, metadata: Optional[dict] = None) -> str:
    """Write sharded factors (e.g. ``jmf.fit(..., mesh=mesh).factors``) as one ``.npz`` per device plus an index.

    Every process must call it (with the same ``directory`` on a shared
    file system, or each on its own disk: then only process 0's has the
    index).  ``shape`` is the real ``(m, n)`` (default: the padded shape).
    Returns the index path.
    """
    if not isinstance(factors, Factors):
        raise TypeError(f"factors must be a jmf.Factors, got {type(factors).__name__}")
    W, H = factors.W, factors.H
    if not isinstance(W, jax.Array) or not hasattr(W.sharding, "mesh"):
        raise TypeError("save_sharded writes factors sharded over a mesh (jmf.fit(..., mesh=mesh)); for host "
                        "factors use jmf.io.save_factors")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    m, n = _shape_of(factors, shape)
    mesh = W.sharding.mesh
    devices = list(mesh.devices.flat)
    P_ = len(devices)
    mb, nb = W.shape[0] // P_, H.shape[1] // P_
    entries = []
    for d, dev in enumerate(devices):
        rows = [min(m, d * mb), min(m, (d + 1) * mb)]
        cols = [min(n, d * nb), min(n, (d + 1) * nb)]
        name = f"shard-{d:05d}.npz"
        entries.append({"file": name, "device": d, "process": int(dev.process_index), "rows": rows, "cols": cols})
        if dev.process_index != jax.process_index():
            continue
        a, b = rows[1] - rows[0], cols[1] - cols[0]
        blk = Factors(_shard_of(W, dev)[:a], _shard_of(H, dev)[:, :b])
        if factors.row_bias is not None:
            blk = blk._replace(row_bias=_shard_of(factors.row_bias, dev)[:a],
                               col_bias=_shard_of(factors.col_bias, dev)[:b],
                               offset=_shard_of(factors.offset, dev))
        save_factors(os.path.join(directory, name), blk, {"rows": rows, "cols": cols, "device": d, "shape": [m, n]})
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jmf.save_sharded")  # every shard is complete before the index
    path = os.path.join(directory, _INDEX)
    if jax.process_index() == 0:
        index = {"format": _FORMAT, "shape": [m, n], "rank": int(W.shape[1]), "devices": P_,
                 "biases": factors.row_bias is not None, "shards": entries, "metadata": metadata or {}}
        with atomic_write(path, "w") as fh:
            json.dump(index, fh, indent=1, sort_keys=True)
    return path


def load_sharded(directory, *, with_metadata: bool = False):
    """Assemble factors written by :func:`save_sharded` as host NumPy ``(m, k)``, ``(k, n)`` (and biases)."""
    directory = os.fspath(directory)
    path = os.path.join(directory, _INDEX)
    with open(path) as fh:
        try:
            index = json.load(fh)
        except ValueError as exc:
            raise ValueError(f"{path!r} is not a valid index: {exc}") from None
    if not isinstance(index, dict) or index.get("format") != _FORMAT:
        raise ValueError(f"{path!r} is not a jmf sharded-factors index")
    m, n = index["shape"]
    k = index["rank"]
    parts = [load_factors(os.path.join(directory, e["file"])) for e in index["shards"]]
    dtype = parts[0].W.dtype
    W, H = np.zeros((m, k), dtype), np.zeros((k, n), dtype)
    rb = cb = off = None
    if index["biases"]:
        rb, cb = np.zeros((m,), dtype), np.zeros((n,), dtype)
    for e, p in zip(index["shards"], parts):
        (r0, r1), (c0, c1) = e["rows"], e["cols"]
        if p.W.shape != (r1 - r0, k) or p.H.shape != (k, c1 - c0):
            raise ValueError(f"{e['file']!r} does not hold rows {e['rows']} and columns {e['cols']} at rank {k}")
        W[r0:r1], H[:, c0:c1] = p.W, p.H
        if rb is not None:
            rb[r0:r1], cb[c0:c1], off = p.row_bias, p.col_bias, p.offset
    f = Factors(W, H, rb, cb, off)
    return (f, index.get("metadata", {})) if with_metadata else f
