r"""Host-side layouts of ONE matrix sharded over a 1-D mesh: entries by row and by column, and the send lists.

With ``P`` devices the rows of ``W`` are split into ``P`` contiguous blocks
of ``mb = ceil(m / P)`` rows (device ``d`` owns rows ``[d mb, (d + 1) mb)``)
and the columns of ``H`` into blocks of ``nb = ceil(n / P)``; the factors are
padded to ``(P mb, k)`` and ``(k, P nb)`` (zero rows/columns, which never
change), because a ``NamedSharding`` splits an axis evenly.

The observed entries are stored twice, built once here with static padded
sizes:

* the **row layout** of device ``d``: every entry of its rows, sorted by
  (row, column) -- the W half-step and the loss read it;
* the **column layout** of device ``d``: every entry of its columns, sorted by
  (column, row) -- the H half-step reads it.

A half-step on device ``d`` needs the other side's rows its entries touch.
For the W half-step these are columns of ``H`` owned by every device ``o``;
the set ``S(o -> d)`` (columns of block ``o`` that occur in rows of block
``d``) is known to both: to ``d`` from its row layout and to ``o`` from its
column layout (the same entries).  Each list is padded to ``T``, the largest
over all pairs, and the exchange is

    gather own rows at send[d] (P, T) -> all_to_all -> table (P T, k) of needed rows

and every entry stores its *slot* in that table (``o T + position``).  When
``T >= nb`` (dense-ish data) an ``all_gather`` of the whole factor moves no
more bytes per device (``(P - 1) nb k`` against ``(P - 1) T k``), so the
layout uses it and the slot is the padded global index.  The choice is made
per side (:class:`Exchange`), by bytes.

Multi-host: every process passes *its* entries (any disjoint split, e.g. by
hashing user ids); :func:`shard_sparse` routes them to the devices that own
their rows and their columns with one ``all_to_all`` each, then builds the
layouts of this process's devices from what arrived.  Static sizes (padded
entry counts, ``T``) are agreed by a tiny cross-process maximum.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..data import Dense, Sparse, as_data
from ..sharding import _axis_name

__all__ = ["Exchange", "ShardedSparse", "ShardedDense", "shard_sparse", "shard_dense", "process_rows",
           "block_sizes", "choose_exchange"]

_EXCHANGES = ("auto", "all_to_all", "all_gather")


class Exchange(NamedTuple):
    """How a half-step fetches the other side's rows (static).

    ``mode`` "all_to_all": every device gathers ``per_pair`` of its own rows
    for each device and one ``all_to_all`` delivers them (table of ``P
    per_pair`` rows); "all_gather": the whole factor (table of ``P block``
    rows).
    """

    mode: str
    per_pair: int
    block: int
    devices: int

    @property
    def table(self) -> int:
        return self.devices * (self.per_pair if self.mode == "all_to_all" else self.block)

    def bytes_sent(self, width: int, itemsize: int) -> int:
        """Bytes one device sends (= receives) per exchange of rows of ``width`` numbers."""
        rows = self.per_pair if self.mode == "all_to_all" else self.block
        return (self.devices - 1) * rows * width * itemsize


def choose_exchange(per_pair: int, block: int, devices: int, exchange: str = "auto") -> Exchange:
    """``all_to_all`` when it moves fewer bytes than an ``all_gather`` (``per_pair < block``), unless forced."""
    if exchange == "auto":
        mode = "all_to_all" if per_pair < block and devices > 1 else "all_gather"
    else:
        mode = exchange
    return Exchange(mode, max(1, per_pair), block, devices)


def block_sizes(shape, devices: int) -> tuple[int, int]:
    """Rows of ``W`` and columns of ``H`` per device: ``(ceil(m / P), ceil(n / P))``."""
    m, n = shape
    return -(-m // devices), -(-n // devices)


class _OverMesh:
    """What a matrix laid out over a 1-D mesh derives from its ``shape`` and ``mesh``: axis, devices, blocks."""

    __slots__ = ()

    @property
    def axis(self) -> str:
        return self.mesh.axis_names[0]

    @property
    def devices(self) -> int:
        return self.mesh.devices.size

    @property
    def blocks(self) -> tuple[int, int]:
        return block_sizes(self.shape, self.devices)

    @property
    def padded_shape(self) -> tuple[int, int]:
        mb, nb = self.blocks
        return mb * self.devices, nb * self.devices


class ShardedSparse(_OverMesh):
    """Observed entries of one ``(m, n)`` matrix laid out over a 1-D mesh (see the module docstring).

    Build it with :func:`jmf.sharding.shard_sparse`.  Leaves are global
    arrays with a leading device axis of length ``P`` sharded over the mesh;
    inside ``shard_map`` each device sees its own slice (leading axis 1).

    Attributes
    ----------
    r_seg, r_slot, r_vals, r_w : (P, Er)
        Row layout: local row (padding entries, weight 0, are spread over the rows, one in row ``mb``),
        slot in the table of ``H`` columns, value, weight (0 for padding).
    h_send : (P, P, Th)
        Local columns of ``H`` each device sends each device (all_to_all mode).
    c_seg, c_slot, c_vals, c_w : (P, Ec)
        Column layout: local column (padding likewise, one in column ``nb``), slot in the table of ``W`` rows, value,
        weight.
    w_send : (P, P, Tw)
        Local rows of ``W`` each device sends each device.
    shape : (m, n)
    mesh : Mesh
    h_exchange, w_exchange : Exchange
        How the W half-step fetches columns of ``H`` and the H half-step rows of ``W``.
    max_counts : (int, int)
        Static bounds on the entries of one segment of the row layout and of the column layout
        (the longest row / column, or a device's padding segment if longer): the sparse engine
        sizes its chunks by them, not by the fetched table.
    """

    _LEAVES = ("r_seg", "r_slot", "r_vals", "r_w", "h_send", "c_seg", "c_slot", "c_vals", "c_w", "w_send")
    __slots__ = _LEAVES + ("shape", "mesh", "h_exchange", "w_exchange", "max_counts", "info")

    @property
    def dtype(self):
        return self.r_vals.dtype

    @property
    def nnz(self) -> int:
        """Observed entries (all processes)."""
        return int(self.info["nnz"])

    def __repr__(self) -> str:
        return (f"ShardedSparse(shape={self.shape}, nnz={self.info.get('nnz') if self.info else '?'}, "
                f"devices={self.devices}, H fetch={self.h_exchange.mode}, W fetch={self.w_exchange.mode})")


def _flatten_sparse(s: ShardedSparse):
    return (tuple(getattr(s, f) for f in ShardedSparse._LEAVES),
            (s.shape, s.mesh, s.h_exchange, s.w_exchange, s.max_counts))


def _unflatten_sparse(aux, leaves) -> ShardedSparse:
    obj = object.__new__(ShardedSparse)
    for f, x in zip(ShardedSparse._LEAVES, leaves):
        setattr(obj, f, x)
    obj.shape, obj.mesh, obj.h_exchange, obj.w_exchange, obj.max_counts = aux
    obj.info = None
    return obj


jax.tree_util.register_pytree_node(ShardedSparse, _flatten_sparse, _unflatten_sparse)


class ShardedDense(_OverMesh):
    """A dense ``(m, n)`` matrix split by rows over a 1-D mesh: ``A`` padded to ``(P mb, P nb)``, sharded by rows.

    Build it with :func:`jmf.sharding.shard_dense`.  Padding rows and columns
    are zero and their factor rows/columns stay zero, so they change neither
    the fit nor the loss (which divides by the real ``m n``).
    """

    __slots__ = ("A", "shape", "mesh", "info")

    @property
    def dtype(self):
        return self.A.dtype

    def __repr__(self) -> str:
        return f"ShardedDense(shape={self.shape}, devices={self.devices})"


def _unflatten_dense(aux, leaves) -> ShardedDense:
    obj = object.__new__(ShardedDense)
    (obj.A,) = leaves
    obj.shape, obj.mesh = aux
    obj.info = None
    return obj


jax.tree_util.register_pytree_node(ShardedDense, lambda d: ((d.A,), (d.shape, d.mesh)), _unflatten_dense)


# -- cross-process agreement ------------------------------------------------------------------------


def _global_max(values) -> np.ndarray:
    """Elementwise maximum of an int vector over all processes (this process's values in a 1-process run)."""
    values = np.asarray(values, np.int64)
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    return np.max(np.asarray(multihost_utils.process_allgather(values)), axis=0)


def _global_sum(values) -> np.ndarray:
    values = np.asarray(values, np.float64)
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    return np.sum(np.asarray(multihost_utils.process_allgather(values)), axis=0)


def _my_devices(mesh: Mesh) -> list[int]:
    """Positions in the mesh of this process's devices."""
    me = jax.process_index()
    return [i for i, dev in enumerate(mesh.devices.flat) if dev.process_index == me]


def process_rows(shape, mesh: Mesh) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``W`` (and of a dense ``A``) owned by this process's devices of ``mesh``.

    The process's devices must be contiguous in the mesh (they are in
    ``jax.devices()`` order, the default of :func:`model_mesh`).
    """
    _axis_name(mesh)
    mine = _my_devices(mesh)
    if not mine:
        raise ValueError("this process has no device in the mesh")
    if mine != list(range(mine[0], mine[-1] + 1)):
        raise ValueError("this process's devices are not contiguous in the mesh; build it from jax.devices() order")
    mb, _ = block_sizes(shape, mesh.devices.size)
    m = shape[0]
    return min(m, mine[0] * mb), min(m, (mine[-1] + 1) * mb)


def _global_array(mesh: Mesh, spec, global_shape, per_device: dict):
    """A global array from this process's per-device numpy blocks ``{mesh position: block}``."""
    sharding = NamedSharding(mesh, spec)
    devices = list(mesh.devices.flat)
    arrays = [jax.device_put(per_device[i], devices[i]) for i in sorted(per_device)]
    return jax.make_array_from_single_device_arrays(tuple(global_shape), sharding, arrays)


# -- entries to their owners ------------------------------------------------------------------------


class _Entries(NamedTuple):
    r: np.ndarray
    c: np.ndarray
    v: np.ndarray
    w: np.ndarray

    def take(self, idx) -> "_Entries":
        return _Entries(self.r[idx], self.c[idx], self.v[idx], self.w[idx])

    def sorted_by(self, major: str) -> "_Entries":
        a, b = (self.r, self.c) if major == "row" else (self.c, self.r)
        return self.take(np.lexsort((b, a)))


def _route(entries: _Entries, mesh: Mesh, mb: int, nb: int) -> dict:
    """``{device: (entries of its rows, entries of its columns)}`` for this process's devices.

    One process: a split of the given entries.  Several: this process's
    entries are spread over its devices, and one ``all_to_all`` per layout
    sends each entry to the device owning its row (its column).
    """
    P_ = mesh.devices.size
    mine = _my_devices(mesh)
    if jax.process_count() == 1 and len(mine) == P_:
        rown, coln = entries.r // mb, entries.c // nb
        return {d: (entries.take(rown == d), entries.take(coln == d)) for d in mine}
    if not mine:
        raise ValueError("this process has no device in the mesh")
    chunks = np.array_split(np.arange(len(entries.r)), len(mine))
    owners = {"row": entries.r // mb, "col": entries.c // nb}
    counts = [np.bincount(owners[k][ch], minlength=P_) for ch in chunks for k in ("row", "col")]
    E = int(_global_max([max(1, max(int(c.max(initial=0)) for c in counts))])[0])
    axis = mesh.axis_names[0]
    routed = {}
    for kind in ("row", "col"):
        bufs = {name: {} for name in ("r", "c", "v", "w")}
        for d, ch in zip(mine, chunks):
            own = owners[kind][ch]
            order = np.argsort(own, kind="stable")
            sub = entries.take(ch[order])
            own = own[order]
            pos = np.arange(len(own)) - np.searchsorted(own, own)  # rank within its destination
            for name, fill in (("r", -1), ("c", -1), ("v", 0), ("w", 0)):
                x = getattr(sub, name)
                buf = np.full((1, P_, E), fill, dtype=x.dtype)
                buf[0, own, pos] = x
                bufs[name][d] = buf
        arrays = [_global_array(mesh, P(axis), (P_, P_, E), bufs[name]) for name in ("r", "c", "v", "w")]

        def exchange(*xs):
            return tuple(jax.lax.all_to_all(x[0], axis, 0, 0, tiled=True)[None] for x in xs)

        out = jax.jit(jax.shard_map(exchange, mesh=mesh, in_specs=(P(axis),) * 4, out_specs=(P(axis),) * 4,
                                    check_vma=False))(*arrays)
        devices = list(mesh.devices.flat)
        for d in mine:
            got = [np.asarray(next(s.data for s in x.addressable_shards if s.device == devices[d])).reshape(-1)
                   for x in out]
            keep = got[0] >= 0
            routed.setdefault(d, {})[kind] = _Entries(*(g[keep] for g in got))
    return {d: (routed[d]["row"], routed[d]["col"]) for d in mine}


# -- the layouts --------------------------------------------------------------------------------------


def _pairs(other: np.ndarray, other_block: int, P_: int):
    """Sorted unique ``other`` indices grouped by their owner: ``(unique, counts per owner (P,))``."""
    u = np.unique(other)
    return u, np.bincount(u // other_block, minlength=P_)


def _send_lists(dest: np.ndarray, idx: np.ndarray, P_: int, stride: int):
    """For each destination device, the sorted unique ``idx`` among entries going there: list of arrays."""
    key = np.unique(dest.astype(np.int64) * stride + idx)
    d, i = key // stride, key % stride
    bounds = np.searchsorted(d, np.arange(P_ + 1))
    return [i[bounds[e]:bounds[e + 1]] for e in range(P_)]


def _slots(other: np.ndarray, uniq: np.ndarray, block: int, ex: Exchange) -> np.ndarray:
    """Slot of every entry's other-side index in the fetched table."""
    if ex.mode == "all_gather":
        return other.astype(np.int32)
    owner = other // block
    pos = np.searchsorted(uniq, other) - np.searchsorted(uniq, owner * block)
    return (owner * ex.per_pair + pos).astype(np.int32)


def _padded_layout(seg: np.ndarray, n_seg: int, size: int, fields):
    """Entries of one layout padded to ``size`` with weight-0 entries, sorted by segment.

    One padding entry goes to the dummy segment ``n_seg``; the others are
    spread evenly over the real segments (they add nothing: weight 0), so no
    segment is much longer than the longest real one however unequal the
    devices' entry counts (the engine sizes its chunks by the longest).
    ``fields``: ``[(array, fill)]`` aligned with ``seg``; returns
    ``(seg, [arrays])`` of length ``size``.
    """
    extra = size - len(seg) - 1
    per = np.full(n_seg, extra // n_seg, np.int64)
    per[:extra % n_seg] += 1
    pad_seg = np.concatenate([np.repeat(np.arange(n_seg), per), [n_seg]]).astype(seg.dtype)
    all_seg = np.concatenate([seg, pad_seg])
    order = np.argsort(all_seg, kind="stable")  # a segment's real entries first, then its padding
    out = [np.concatenate([x, np.full(len(pad_seg), fill, x.dtype)])[order] for x, fill in fields]
    return all_seg[order], out


def _pad(x: np.ndarray, size: int, fill) -> np.ndarray:
    out = np.full((size,), fill, dtype=x.dtype)
    out[:len(x)] = x
    return out


def shard_sparse(data, mesh: Mesh, *, exchange: str = "auto") -> ShardedSparse:
    """Lay out one sparse matrix over a 1-D mesh for ``jmf.fit(..., mesh=mesh)``.

    Parameters
    ----------
    data : jmf.Sparse (or anything :func:`jmf.as_data` turns into one)
        One process: every observed entry.  Several processes: *this
        process's* entries, any disjoint split of them (e.g. by hashing user
        ids), each with the global ``shape``; every process calls this
        function.  Entries are routed to the devices owning their row and
        their column with one ``all_to_all`` each.
    mesh : Mesh
        1-D (:func:`jmf.sharding.model_mesh`).
    exchange : {"auto", "all_to_all", "all_gather"}
        How half-steps fetch the other side's rows; "auto" picks, per side,
        the one that moves fewer bytes (module docstring).

    Returns
    -------
    ShardedSparse
    """
    _axis_name(mesh)
    if exchange not in _EXCHANGES:
        raise ValueError(f"exchange must be one of {_EXCHANGES}, got {exchange!r}")
    data = as_data(data)
    if not isinstance(data, Sparse):
        raise TypeError(f"shard_sparse needs jmf.Sparse data, got {type(data).__name__} (see shard_dense)")
    if data.batch_shape:
        raise ValueError("shard_sparse lays out ONE matrix; for a batch use fit_many(..., mesh=batch_mesh())")
    m, n = data.shape
    P_ = mesh.devices.size
    mb, nb = block_sizes(data.shape, P_)
    dtype = np.dtype(data.dtype)
    w = np.ones(data.nnz, dtype) if data.weights is None else np.asarray(data.weights)
    entries = _Entries(np.asarray(data.rows, np.int64), np.asarray(data.cols, np.int64), np.asarray(data.vals), w)
    routed = _route(entries, mesh, mb, nb)
    parts = {d: (rp.sorted_by("row"), cp.sorted_by("col")) for d, (rp, cp) in routed.items()}

    # Pass 1: sizes of this process's devices, then the global maxima.
    stats = {}
    for d, (rp, cp) in parts.items():
        uc, need_h = _pairs(rp.c, nb, P_)
        ur, need_w = _pairs(cp.r, mb, P_)
        h_send = _send_lists(cp.r // mb, cp.c - d * nb, P_, nb + 1)
        w_send = _send_lists(rp.c // nb, rp.r - d * mb, P_, mb + 1)
        dup = (np.any((np.diff(rp.r) == 0) & (np.diff(rp.c) == 0)) if len(rp.r) > 1 else False)
        stats[d] = dict(uc=uc, ur=ur, need_h=need_h, need_w=need_w, h_send=h_send, w_send=w_send, dup=bool(dup))
    local = np.full(9, np.iinfo(np.int64).min, np.int64)
    for d, (rp, cp) in parts.items():
        s = stats[d]
        rc = np.bincount(rp.r - d * mb, minlength=1) if len(rp.r) else np.zeros(1, np.int64)
        cc = np.bincount(cp.c - d * nb, minlength=1) if len(cp.c) else np.zeros(1, np.int64)
        local = np.maximum(local, [len(rp.r), len(cp.c),
                                   max(int(s["need_h"].max(initial=0)), max(len(x) for x in s["h_send"])),
                                   max(int(s["need_w"].max(initial=0)), max(len(x) for x in s["w_send"])),
                                   int(rc.max()), int(cc.max()), int(s["dup"]), -len(rp.r), -len(cp.c)])
    Er, Ec, Th, Tw, max_rc, max_cc, dup, neg_min_r, neg_min_c = (int(x) for x in _global_max(local))
    if dup:
        raise ValueError("duplicate coordinates: some (row, col) entry appears more than once (across processes)")
    nnz_local = sum(len(rp.r) for rp, _ in parts.values())
    nnz = int(_global_sum([nnz_local])[0])
    if nnz == 0:
        raise ValueError("no observed entries")
    Er, Ec = max(Er, 1) + 1, max(Ec, 1) + 1  # at least one padding entry: its segment is the dummy one
    # the longest segment of each layout: a row (column) with its share of the padding (_padded_layout)
    max_counts = (max_rc + -(-max(Er - 1 + neg_min_r, 0) // mb), max_cc + -(-max(Ec - 1 + neg_min_c, 0) // nb))
    h_ex = choose_exchange(Th, nb, P_, exchange)
    w_ex = choose_exchange(Tw, mb, P_, exchange)

    # Pass 2: the padded per-device arrays.
    blocks = {f: {} for f in ShardedSparse._LEAVES}
    for d, (rp, cp) in parts.items():
        s = stats[d]
        seg, (slot, v, w) = _padded_layout((rp.r - d * mb).astype(np.int32), mb, Er, [
            (_slots(rp.c, s["uc"], nb, h_ex), 0), (rp.v.astype(dtype), 0), (rp.w.astype(dtype), 0)])
        for name, x in zip(("r_seg", "r_slot", "r_vals", "r_w"), (seg, slot, v, w)):
            blocks[name][d] = x[None]
        seg, (slot, v, w) = _padded_layout((cp.c - d * nb).astype(np.int32), nb, Ec, [
            (_slots(cp.r, s["ur"], mb, w_ex), 0), (cp.v.astype(dtype), 0), (cp.w.astype(dtype), 0)])
        for name, x in zip(("c_seg", "c_slot", "c_vals", "c_w"), (seg, slot, v, w)):
            blocks[name][d] = x[None]
        blocks["h_send"][d] = np.stack([_pad(x.astype(np.int32), h_ex.per_pair, 0) for x in s["h_send"]])[None]
        blocks["w_send"][d] = np.stack([_pad(x.astype(np.int32), w_ex.per_pair, 0) for x in s["w_send"]])[None]
    axis = mesh.axis_names[0]
    sizes = {"r_seg": (Er,), "r_slot": (Er,), "r_vals": (Er,), "r_w": (Er,), "c_seg": (Ec,), "c_slot": (Ec,),
             "c_vals": (Ec,), "c_w": (Ec,), "h_send": (P_, h_ex.per_pair), "w_send": (P_, w_ex.per_pair)}
    obj = object.__new__(ShardedSparse)
    for f in ShardedSparse._LEAVES:
        setattr(obj, f, _global_array(mesh, P(axis), (P_,) + sizes[f], blocks[f]))
    obj.shape, obj.mesh, obj.h_exchange, obj.w_exchange = (m, n), mesh, h_ex, w_ex
    obj.max_counts = tuple(int(x) for x in max_counts)
    vmin = min((float(rp.v[rp.w > 0].min()) for rp, _ in parts.values() if np.any(rp.w > 0)), default=0.0)
    obj.info = {"nnz": nnz, "max_row_count": max_rc, "max_col_count": max_cc, "local_min": vmin,
                "padded_entries": (Er, Ec)}
    return obj


def shard_dense(data, mesh: Mesh, *, shape: Optional[tuple] = None) -> ShardedDense:
    """Split one dense matrix by rows over a 1-D mesh for ``jmf.fit(..., mesh=mesh)``.

    Parameters
    ----------
    data : jmf.Dense or array (m, n), unweighted
        One process: the whole matrix.  Several processes: this process's
        rows ``[start, stop)`` of :func:`process_rows` (give ``shape``).
    mesh : Mesh
    shape : (m, n), optional
        The global shape (required with several processes).
    """
    _axis_name(mesh)
    data = as_data(data)
    if not isinstance(data, Dense):
        raise TypeError(f"shard_dense needs dense data, got {type(data).__name__} (see shard_sparse)")
    if data.batch_shape:
        raise ValueError("shard_dense lays out ONE matrix; for a batch use fit_many(..., mesh=batch_mesh())")
    if data.weights is not None:
        raise ValueError("sharded dense fits take unweighted matrices; give matrices with missing entries as "
                         "jmf.Sparse (shard_sparse)")
    P_ = mesh.devices.size
    if shape is None:
        if jax.process_count() > 1:
            raise ValueError("with several processes give shape=(m, n), the global shape")
        shape = data.shape
    m, n = (int(x) for x in shape)
    mb, nb = block_sizes((m, n), P_)
    start, stop = process_rows((m, n), mesh)
    A = np.asarray(data.A)
    if A.shape != (stop - start, n):
        raise ValueError(f"this process holds rows [{start}, {stop}) of a ({m}, {n}) matrix: expected an array of "
                         f"shape {(stop - start, n)}, got {A.shape}")
    blocks = {}
    for d in _my_devices(mesh):
        lo, hi = min(m, d * mb), min(m, (d + 1) * mb)
        blk = np.zeros((mb, nb * P_), A.dtype)
        blk[:hi - lo, :n] = A[lo - start:hi - start]
        blocks[d] = blk
    obj = object.__new__(ShardedDense)
    obj.A = _global_array(mesh, P(mesh.axis_names[0]), (mb * P_, nb * P_), blocks)
    obj.shape, obj.mesh = (m, n), mesh
    obj.info = {"local_min": float(A.min()) if A.size else 0.0}
    return obj


def is_sharded(data) -> bool:
    return isinstance(data, (ShardedSparse, ShardedDense))


def local_view(data):
    """Inside ``shard_map``: this device's leaves without the leading device axis (dense ``A`` is already local)."""
    if isinstance(data, ShardedSparse):
        return jax.tree_util.tree_map(lambda x: x[0], data)
    return data
