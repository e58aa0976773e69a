r"""Memory per device and bytes communicated per sweep of a sharded fit: by formula, and read off the compiled program.

Per sweep (one ``step``: a W half-step and an H half-step), with ``P``
devices, rank ``k``, ``q = k + 1`` numbers per row with biases (else ``k``),
``b`` bytes per number, ``mb = ceil(m / P)``, ``nb = ceil(n / P)`` and ``T_h``,
``T_w`` the padded send-list lengths of :mod:`.layout`, each device *sends*:

=====================  =========================================================================
sparse, all_to_all     ``(P - 1) T_h q b`` (columns of H) + ``(P - 1) T_w q b`` (rows of W)
sparse, all_gather     ``(P - 1) nb q b`` + ``(P - 1) mb q b``
implicit ALS adds      two all-reduces of ``k x k`` (the Grams ``Y^T Y``)
gradient adds          one all-reduce of a scalar (the offset's gradient, with biases)
svdpp adds             a fetch of ``k`` numbers per row each way (``N^T G``, ``Y``) and the offset's
                       scalar all-reduce
bpmf adds              all-reduces of ``2 (q + 1) + 2 q^2 + 1`` numbers (both sides' Normal-Wishart
                       statistics, the residual; XLA may merge them)
dense ALS / HALS       all_gather of H ``(P - 1) nb k b`` + reduce-scatter of ``W^T A``
                       ``(P - 1) nb k b`` + two all-reduces of ``k x k``
=====================  =========================================================================

(an all-reduce of ``s`` bytes costs ``2 (P - 1) / P s`` sent per device on a
ring).  A loss evaluation (every ``check_every`` sweeps) adds one fetch of
``H`` (dense: an all_gather) and scalar all-reduces.  :func:`hlo_collectives`
parses ``compiled.as_text()`` for the collectives XLA actually emits and
:func:`expected_collectives` lists what the formula says, op by op; the tests
and ``benchmarks/sharded.py`` check they agree.

Memory per device: its rows of ``W`` and columns of ``H`` (``(mb + nb) q b``,
times the check loop's copies: iterate, accepted, kept), its entries twice
(row and column layout: ``(Er + Ec) (4 + 4 + 2 b)`` bytes with int32 indices)
and the send lists, plus per half-step the fetched table (``P T q b``) and
the engine's slab of gathered features (``2 max(L, 16384) q b`` with ``L``
the longest row or column: the engine's chunks hold whole segments).  :func:`device_bytes` measures
arrays per device from their shards; :func:`fit_memory` reads the compiled
check-loop program's ``memory_analysis()`` (per device: arguments, outputs,
temporaries).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import NamedTuple, Optional

import jax
import numpy as np

from ..run.loop import iteration_schedule, run_config
from .layout import ShardedDense, ShardedSparse
from .program import _advance_program, _start_program, loss_program, make_ctx, step_program
from .solvers import make_impl

__all__ = ["Collective", "hlo_collectives", "expected_collectives", "sent_bytes", "device_bytes", "measure",
           "fit_memory", "project"]

_ITEMSIZE = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "s64": 8, "u64": 8, "pred": 1, "s8": 1,
             "u8": 1}
_KINDS = ("all-to-all", "all-gather", "all-reduce", "reduce-scatter", "collective-permute")
_LINE = re.compile(r"=\s*(.+?)\s+(all-to-all|all-gather|all-reduce|reduce-scatter|collective-permute)(?:-start)?\(")
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")


class Collective(NamedTuple):
    """One collective: its kind and the bytes of its result on one device."""

    kind: str
    result_bytes: int


def hlo_collectives(text: str) -> list[Collective]:
    """The collectives of a compiled (SPMD, per-device) HLO module's text, with their result sizes."""
    out = []
    for line in text.splitlines():
        mt = _LINE.search(line)
        if not mt:
            continue
        total = 0
        for dtype, dims in _SHAPE.findall(mt.group(1)):
            if dtype not in _ITEMSIZE:
                continue
            total += _ITEMSIZE[dtype] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
        out.append(Collective(mt.group(2), total))
    return out


def sent_bytes(c: Collective, devices: int) -> float:
    """Bytes one device sends for collective ``c`` (ring algorithms for the reductions)."""
    P_ = devices
    if c.kind in ("all-to-all", "all-gather"):
        return c.result_bytes * (P_ - 1) / P_
    if c.kind == "all-reduce":
        return 2 * c.result_bytes * (P_ - 1) / P_
    if c.kind == "reduce-scatter":
        return c.result_bytes * (P_ - 1)
    return c.result_bytes


def _fetch(ex, q: int, b: int) -> Collective:
    rows = ex.per_pair if ex.mode == "all_to_all" else ex.block
    return Collective("all-to-all" if ex.mode == "all_to_all" else "all-gather", ex.devices * rows * q * b)


def expected_collectives(data, solver_name: str, rank: int, biases: bool, what: str = "step") -> list[Collective]:
    """The collectives the formula of the module docstring predicts for one ``step`` (or one ``loss``)."""
    b = np.dtype(data.dtype).itemsize
    k = rank
    q = k + 1 if biases else k
    kk = Collective("all-reduce", k * k * b)
    scalar = Collective("all-reduce", b)
    if isinstance(data, ShardedDense):
        P_, nb = data.devices, data.blocks[1]
        gather_h = Collective("all-gather", k * P_ * nb * b)
        if what == "loss":
            return [gather_h, scalar]
        return [kk, gather_h, kk, Collective("reduce-scatter", k * nb * b)]
    h, w = _fetch(data.h_exchange, q, b), _fetch(data.w_exchange, q, b)
    if what == "loss":
        if solver_name == "implicit-als":
            return [_fetch(data.h_exchange, k, b), kk, kk, scalar]
        if solver_name == "svdpp":  # the penalty of P and Y, summed apart from the data term
            return [h, scalar, scalar]
        return [h, scalar]
    if solver_name == "implicit-als":
        return [_fetch(data.h_exchange, k, b), kk, _fetch(data.w_exchange, k, b), kk]
    if solver_name == "gradient":
        return [h, w] + ([scalar] if biases else [])
    if solver_name == "svdpp":  # N^T G to the own columns and Y to the own rows: k numbers a row each
        return [h, w, _fetch(data.w_exchange, k, b), _fetch(data.h_exchange, k, b), scalar]
    if solver_name == "bpmf":  # each side's Normal-Wishart statistics (sum, count, scatter) and the residual
        return [h, w, Collective("all-reduce", (2 * (q + 1) + 2 * q * q + 1) * b)]
    return [h, w]


def _by_kind(cs) -> dict:
    out = defaultdict(int)
    for c in cs:
        out[c.kind] += c.result_bytes
    return dict(out)


def device_bytes(tree) -> dict:
    """Bytes of ``tree``'s arrays on each device (``{device id: bytes}``), from their addressable shards."""
    out = defaultdict(int)
    for x in jax.tree_util.tree_leaves(tree):
        if isinstance(x, jax.Array):
            for s in x.addressable_shards:
                out[s.device.id] += s.data.nbytes
    return dict(out)


def measure(data, solver, rank: int, *, key=0, init: str = "random") -> dict:
    """Compile one sweep and one loss evaluation of ``solver`` on sharded ``data`` and report traffic and memory.

    Returns a dict: ``step`` / ``loss`` (collectives parsed from the compiled
    HLO), ``step_formula`` / ``loss_formula`` (what the formula predicts),
    ``step_sent`` (bytes sent per device per sweep, from the HLO),
    ``memory`` (the compiled sweep's ``memory_analysis``), ``factor_bytes``
    (per device, of the starting factors) and ``data_bytes`` (per device).
    """
    if not isinstance(data, (ShardedSparse, ShardedDense)):
        raise TypeError("measure takes data from jmf.sharding.shard_sparse / shard_dense")
    kind = "sparse" if isinstance(data, ShardedSparse) else "dense"
    impl = make_impl(solver, kind)
    ctx = make_ctx(data)
    cfg = run_config(1, 1, int(rank), bool(solver.biases))
    carry = _start_program(impl, ctx, cfg, init, data.mesh, data, jax.random.key(key), None)
    step = step_program(impl, ctx, cfg, data.mesh).lower(data, carry.factors, carry.state).compile()
    loss = loss_program(impl, ctx, cfg, data.mesh).lower(data, carry.factors, carry.state).compile()
    got_step, got_loss = hlo_collectives(step.as_text()), hlo_collectives(loss.as_text())
    mem = step.memory_analysis()
    return {
        "step": got_step,
        "loss": got_loss,
        "step_formula": expected_collectives(data, impl.name, rank, solver.biases, "step"),
        "loss_formula": expected_collectives(data, impl.name, rank, solver.biases, "loss"),
        "step_by_kind": _by_kind(got_step),
        "step_formula_by_kind": _by_kind(expected_collectives(data, impl.name, rank, solver.biases, "step")),
        "step_sent": sum(sent_bytes(c, data.devices) for c in got_step),
        "memory": None if mem is None else {f: int(getattr(mem, f)) for f in (
            "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")},
        "factor_bytes": device_bytes(carry.factors),
        "data_bytes": device_bytes(data),
    }


def fit_memory(data, solver, rank: int, *, key=0, init: str = "random", max_iter: int = 10,
               check_every: int = 5) -> dict:
    """Bytes per device of the compiled check-loop program of a sharded fit (``memory_analysis``).

    The program ``fit`` runs (:func:`.program._advance_program`: the check
    loop with its sweeps and loss evaluations) is compiled for ``data``'s mesh;
    XLA's buffer assignment gives, per device, its arguments (the entries'
    layouts, the carry: factors, kept factors, solver state), outputs, aliased
    (donated) bytes and temporaries.  ``peak`` = arguments + outputs + temps -
    aliased: what one device holds while the program runs (an upper bound:
    the temporaries' arena is assigned for the whole program).
    """
    if not isinstance(data, (ShardedSparse, ShardedDense)):
        raise TypeError("fit_memory takes data from jmf.sharding.shard_sparse / shard_dense")
    kind = "sparse" if isinstance(data, ShardedSparse) else "dense"
    impl, ctx = make_impl(solver, kind), make_ctx(data)
    cfg = run_config(int(max_iter), int(check_every), int(rank), bool(solver.biases))
    carry = _start_program(impl, ctx, cfg, init, data.mesh, data, jax.random.key(key), None)
    tol = np.asarray(-1.0, np.dtype(data.dtype))
    compiled = _advance_program.lower(impl, ctx, cfg, data.mesh, data, carry, np.int32(max_iter), tol,
                                      iteration_schedule(int(max_iter), int(check_every))).compile()
    mem = compiled.memory_analysis()
    if mem is None:
        return {}
    out = {f: int(getattr(mem, f + "_size_in_bytes")) for f in ("argument", "output", "alias", "temp")}
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    out["factor_bytes"] = device_bytes(carry.factors)
    return out


def project(nnz: float, m: float, n: float, k: int, devices: int, *, itemsize: int = 4, index_bytes: int = 4,
            biases: bool = True, copies: int = 3, longest: Optional[float] = None) -> dict:
    """The memory and traffic model of the module docstring, for entries spread uniformly at random.

    ``T`` (rows one device needs from one other) is the expected number of
    distinct rows of a block of ``b`` rows hit by the ``e = nnz / P^2``
    entries a pair of devices shares: ``b (1 - exp(-e / b))``.  Skewed data
    have a larger maximum over pairs; relabel rows and columns at random
    (hash the ids) to spread heavy ones.  ``copies``: factor copies the check
    loop holds at peak (iterate, accepted, kept).  ``engine_slab``: the sparse
    engine's chunk of gathered features, ``2 max(longest, 16384)`` entries of
    ``q`` numbers, with ``longest`` the longest row or column (default: 4 x
    the mean count of the shorter side; give the real one for skewed data:
    ``ShardedSparse.max_counts``).  Returns bytes per device.
    """
    P_ = devices
    q = k + 1 if biases else k
    mb, nb = math.ceil(m / P_), math.ceil(n / P_)
    e = nnz / P_ ** 2
    T_h, T_w = nb * -math.expm1(-e / nb), mb * -math.expm1(-e / mb)
    rows_h = T_h if T_h < nb else nb  # the exchange that moves fewer bytes
    rows_w = T_w if T_w < mb else mb
    factors = (mb + nb) * q * itemsize
    if longest is None:
        longest = 4 * nnz / min(m, n)
    slab = 2 * max(longest, 16384) * q * itemsize
    entries = 2 * (nnz / P_) * (2 * index_bytes + 2 * itemsize)
    lists = P_ * (T_h + T_w) * index_bytes
    table_h, table_w = P_ * rows_h * q * itemsize, P_ * rows_w * q * itemsize
    return {"rows_per_device": mb, "cols_per_device": nb, "T_h": T_h, "T_w": T_w,
            "h_mode": "all_to_all" if T_h < nb else "all_gather", "w_mode": "all_to_all" if T_w < mb else "all_gather",
            "factors": factors, "entries": entries, "send_lists": lists, "table_h": table_h, "table_w": table_w,
            "engine_slab": slab,
            "peak": copies * factors + entries + lists + max(table_h, table_w) + slab,
            "sent_per_sweep": (P_ - 1) * (rows_h + rows_w) * q * itemsize,
            "sent_per_check": (P_ - 1) * rows_h * q * itemsize}
