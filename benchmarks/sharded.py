"""ONE matrix sharded over devices: equality with one device, memory per device, bytes per sweep, per-device rates.

    python benchmarks/sharded.py            # 4 simulated CPU devices (set here), full sizes
    python benchmarks/sharded.py --quick    # small sizes (checks that everything runs)

Parts
-----
sharded
    Synthetic power-law ratings (``jmf.datasets.synthetic_ratings``), float32, rank 32, on a mesh of
    4 simulated CPU devices (one process; speed is not the point there -- the 4 "devices" share 2
    cores).  Per solver: the predictions' largest relative difference to the single-device fit after
    the same sweeps; the exchange chosen per side (``T`` against the block size); bytes *sent per
    device per sweep* read off the compiled sweep's collectives, against the formula of
    :mod:`jmf._src.sharded.accounting`; memory per device: the result's factor shards against
    ``total / P``, the entries' two layouts, and the compiled sweep's ``memory_analysis``; seconds per
    sweep, sharded (4 simulated devices) and on one device.  Then a dense matrix split by rows.
memory
    Memory per device and bytes per sweep against the model of :mod:`jmf._src.sharded.accounting`
    (``project``: entries spread uniformly), for ``ratings_als`` and ``implicit_als`` at rank 32 on a
    synthetic table where the factors outweigh the entries (200,000 x 50,000, 500,000 ratings) and on
    ml-latest-small (if ``../shared/data/ml-latest-small`` exists): the result's factor shards per
    device against ``total / P`` (the issue's bound: <= 1.1), the entries' layouts per device, the rows
    fetched per pair (``T``), bytes sent per device per sweep (compiled HLO, layout formula, uniform
    model), and the peak of the compiled check-loop program per device (XLA's buffer assignment:
    arguments + outputs + temporaries - donated) on 4 devices, against the same program on 1 device / 4
    and the model's peak.
rates
    Per-device rates at rank 128 for ``docs/scaling.md``: seconds per sweep of one device's share,
    measured with the sharded sweep program on a 1-device mesh (the library Cholesky there), on two
    tables with the same rows and 5x more entries in the second; ``t = a nnz + b rows k^2`` solved
    from the two gives the seconds per entry (``a``) and per row and ``k^2`` (``b``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _common import machine_info, median_time, table  # noqa: E402

import jmf  # noqa: E402
from jmf._src.run.loop import run_config  # noqa: E402
from jmf._src.sharded.accounting import device_bytes, fit_memory, measure, project, sent_bytes  # noqa: E402
from jmf._src.sharded.program import _start_program, make_ctx, step_program  # noqa: E402
from jmf._src.sharded.solvers import make_impl  # noqa: E402


def sweep_seconds(data, solver, rank, repeats=3) -> float:
    """Median seconds of one compiled sweep (``step``) of the sharded program on ``data``'s mesh."""
    kind = "sparse" if isinstance(data, jmf.sharding.ShardedSparse) else "dense"
    impl, ctx = make_impl(solver, kind), make_ctx(data)
    cfg = run_config(1, 1, rank, bool(solver.biases))
    carry = _start_program(impl, ctx, cfg, "random", data.mesh, data, jax.random.key(0), None)
    prog = step_program(impl, ctx, cfg, data.mesh)
    f, s = carry.factors, carry.state
    jax.block_until_ready(prog(data, f, s))
    return median_time(lambda: jax.block_until_ready(prog(data, f, s)), repeats=repeats, warmup=0)


def _rel(one, sh, data, shape) -> float:
    f = jmf.sharding.gather_factors(sh.factors, shape)
    if isinstance(data, jmf.Sparse):
        r, c = np.asarray(data.rows), np.asarray(data.cols)
        p1, p2 = np.asarray(one.factors.predict(r, c)), f.predict(r, c)
    else:
        p1, p2 = np.asarray(one.factors.predict()), f.predict()
    return float(np.max(np.abs(p1 - p2)) / np.max(np.abs(p1)))


def part_sharded(quick: bool) -> None:
    mesh = jmf.sharding.model_mesh()
    one_mesh = jmf.sharding.model_mesh(jax.devices()[:1])
    P_ = mesh.devices.size
    users, items, n_ratings = (2000, 500, 40_000) if quick else (20_000, 5_000, 500_000)
    k = 32
    t0 = time.perf_counter()
    ratings = jmf.datasets.synthetic_ratings(0, n_users=users, n_items=items, n_ratings=n_ratings).data
    print(f"data: {users} x {items}, {ratings.nnz} ratings (generated in {time.perf_counter() - t0:.1f} s), "
          f"rank {k}, float32, {P_} simulated CPU devices\n")
    sharded = jmf.sharding.shard_sparse(ratings, mesh)
    single = jmf.sharding.shard_sparse(ratings, one_mesh)
    mb, nb = sharded.blocks
    print(f"blocks: {mb} rows of W, {nb} columns of H per device; padded entries per device "
          f"(row, column layout) {sharded.info['padded_entries']}")
    for side, ex in (("H columns (W half-step)", sharded.h_exchange), ("W rows (H half-step)", sharded.w_exchange)):
        print(f"fetch of {side}: {ex.mode}, T = {ex.per_pair} per pair against a block of {ex.block}")
    solvers = {
        "ratings_als (CG)": jmf.solvers.ratings_als(0.1),
        "als biases exact (XLA Cholesky)": jmf.solvers.als(0.1, biases=True),
        "implicit_als (CG)": jmf.solvers.implicit_als(),
        "adam (ratings loss)": jmf.solvers.adam(1e-2, loss=jmf.losses.ratings_loss(0.1), biases=True),
        "svdpp (adam)": jmf.solvers.svdpp(optax.adam(1e-2), elementwise=True),
        "bpmf (Gibbs)": jmf.solvers.bpmf(burn_in=2, n_keep=4),
    }
    rows, mem_rows = [], []
    sweeps = 5
    for name, solver in solvers.items():
        kw = dict(key=0, max_iter=sweeps, tol=None, check_every=sweeps, progress=False)
        one = jmf.fit(ratings, solver, k, **kw)
        sh = jmf.fit(sharded, solver, k, mesh=mesh, **kw)
        rep = measure(sharded, solver, k)
        formula = sum(sent_bytes(c, P_) for c in rep["step_formula"])
        q = k + 1 if solver.biases else k
        total = (users + items) * q * 4 + (4 if solver.biases else 0)
        fb = device_bytes(sh.factors)
        rows.append({"solver": name, "max rel. diff of predictions": _rel(one, sh, ratings, ratings.shape),
                     "sent/device/sweep (HLO)": f"{rep['step_sent'] / 1e3:.1f} kB",
                     "formula": f"{formula / 1e3:.1f} kB",
                     "HLO = formula": rep["step_by_kind"] == rep["step_formula_by_kind"],
                     "s/sweep, 4 sim. devices": sweep_seconds(sharded, solver, k),
                     "s/sweep, 1 device": sweep_seconds(single, solver, k)})
        mem = rep["memory"] or {}
        mem_rows.append({"solver": name, "factors/device (max)": f"{max(fb.values()) / 1e3:.1f} kB",
                         "total/P": f"{total / P_ / 1e3:.1f} kB",
                         "ratio": max(fb.values()) / (total / P_),
                         "entries+lists/device": f"{max(rep['data_bytes'].values()) / 1e3:.1f} kB",
                         "sweep args (compiled)": f"{mem.get('argument_size_in_bytes', 0) / 1e3:.1f} kB",
                         "sweep temps (compiled)": f"{mem.get('temp_size_in_bytes', 0) / 1e3:.1f} kB"})
    print("\n" + table(rows, floatfmt=".3g"))
    print("\nmemory per device\n\n" + table(mem_rows, floatfmt=".4g"))

    m, n = (800, 200) if quick else (4000, 1000)
    rng = np.random.default_rng(0)
    A = (np.abs(rng.standard_normal((m, k)) @ rng.standard_normal((k, n))) + 0.1 * rng.random((m, n)))
    A = A.astype(np.float32)
    dense, dense1 = jmf.sharding.shard_dense(A, mesh), jmf.sharding.shard_dense(A, one_mesh)
    rows = []
    for name, solver in {"als (dense)": jmf.solvers.als(0.1), "hals (dense)": jmf.solvers.hals()}.items():
        kw = dict(key=0, max_iter=sweeps, tol=None, check_every=sweeps, progress=False)
        one = jmf.fit(A, solver, k, **kw)
        sh = jmf.fit(dense, solver, k, mesh=mesh, **kw)
        rep = measure(dense, solver, k)
        fb = device_bytes(sh.factors)
        rows.append({"solver": name, "max rel. diff": _rel(one, sh, jmf.Dense(A), (m, n)),
                     "sent/device/sweep (HLO)": f"{rep['step_sent'] / 1e3:.1f} kB",
                     "formula": f"{sum(sent_bytes(c, P_) for c in rep['step_formula']) / 1e3:.1f} kB",
                     "factors/device / (total/P)": max(fb.values()) / ((m + n) * k * 4 / P_),
                     "A rows/device": f"{max(device_bytes(dense).values()) / 1e6:.2f} MB",
                     "s/sweep, 4 sim.": sweep_seconds(dense, solver, k),
                     "s/sweep, 1 device": sweep_seconds(dense1, solver, k)})
    print(f"\ndense {m} x {n}, rank {k}\n\n" + table(rows, floatfmt=".3g"))


ML_SMALL = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data", "ml-latest-small")


def _mb(x) -> str:
    return f"{x / 1e6:.2f}"


def part_memory(quick: bool) -> None:
    mesh = jmf.sharding.model_mesh()
    one_mesh = jmf.sharding.model_mesh(jax.devices()[:1])
    P_ = mesh.devices.size
    k = 32
    users, items, n_ratings = (20_000, 5_000, 50_000) if quick else (200_000, 50_000, 500_000)
    tables = {f"synthetic {users} x {items}, {n_ratings} ratings":
              jmf.datasets.synthetic_ratings(0, n_users=users, n_items=items, n_ratings=n_ratings).data}
    if os.path.exists(os.path.join(ML_SMALL, "ratings.csv")):
        tables["ml-latest-small"] = jmf.datasets.movielens("latest-small", path=ML_SMALL).data
    else:
        print("(ml-latest-small absent: skipped)")
    solvers = {"ratings_als": jmf.solvers.ratings_als(0.1), "implicit_als": jmf.solvers.implicit_als()}
    mem_rows, traffic_rows = [], []
    for tname, ratings in tables.items():
        m, n = ratings.shape
        sharded = jmf.sharding.shard_sparse(ratings, mesh)
        single = jmf.sharding.shard_sparse(ratings, one_mesh)
        for sname, solver in solvers.items():
            biases = bool(solver.biases)
            q = k + 1 if biases else k
            model = project(ratings.nnz, m, n, k, P_, itemsize=4, biases=biases)
            res = jmf.fit(sharded, solver, k, key=0, max_iter=2, progress=False, mesh=mesh)
            fb = max(device_bytes(res.factors).values())
            total = (m + n) * q * 4 + (4 if biases else 0)
            mem4, mem1 = fit_memory(sharded, solver, k), fit_memory(single, solver, k)
            entries = max(device_bytes(sharded).values())
            mem_rows.append({
                "data, solver": f"{tname}, {sname}",
                "factors/device MB": _mb(fb), "total/P MB": _mb(total / P_), "ratio": fb / (total / P_),
                "entries+lists/device MB": _mb(entries),
                "model MB": _mb(model["entries"] + model["send_lists"]),
                "fit peak/device MB (P=4)": _mb(mem4.get("peak", 0)),
                "1-device peak / P MB": _mb(mem1.get("peak", 0) / P_),
                "model peak MB": _mb(model["peak"])})
            rep = measure(sharded, solver, k)
            formula = sum(sent_bytes(c, P_) for c in rep["step_formula"])
            traffic_rows.append({
                "data, solver": f"{tname}, {sname}",
                "T_h (model)": f"{sharded.h_exchange.per_pair} ({model['T_h']:.0f})",
                "T_w (model)": f"{sharded.w_exchange.per_pair} ({model['T_w']:.0f})",
                "fetch H / W": f"{sharded.h_exchange.mode} / {sharded.w_exchange.mode}",
                "sent/device/sweep, HLO MB": _mb(rep["step_sent"]),
                "layout formula MB": _mb(formula),
                "HLO = formula": rep["step_by_kind"] == rep["step_formula_by_kind"],
                "uniform model MB": _mb(model["sent_per_sweep"])})
    print(f"\nmemory per device, rank {k}, float32, {P_} simulated devices (MB = 1e6 bytes)\n\n"
          + table(mem_rows, floatfmt=".4f"))
    print(f"\nbytes sent per device per sweep, rank {k}, float32, {P_} devices\n\n" + table(traffic_rows))


def part_rates(quick: bool) -> None:
    one_mesh = jmf.sharding.model_mesh(jax.devices()[:1])
    users, items = (2000, 500) if quick else (20_000, 5_000)
    sizes = (8_000, 40_000) if quick else (100_000, 500_000)
    k = 128
    solvers = {"ratings_als (CG, 3 steps)": jmf.solvers.ratings_als(0.1),
               "als biases exact (LAPACK Cholesky)": jmf.solvers.als(0.1, biases=True),
               "implicit_als (CG, 3 steps)": jmf.solvers.implicit_als(),
               "adam (ratings loss)": jmf.solvers.adam(1e-2, loss=jmf.losses.ratings_loss(0.1), biases=True)}
    data = [jmf.sharding.shard_sparse(jmf.datasets.synthetic_ratings(1, n_users=users, n_items=items,
                                                                      n_ratings=nr).data, one_mesh) for nr in sizes]
    rows = []
    rows_k2 = (users + items) * k * k
    for name, solver in solvers.items():
        t = [sweep_seconds(d, solver, k) for d in data]
        A = np.array([[d.nnz, rows_k2] for d in data], float)
        a, b = np.linalg.solve(A, np.array(t))
        rows.append({"solver (one device, rank 128)": name,
                     **{f"s/sweep, {d.nnz} entries": x for d, x in zip(data, t)},
                     "ns per entry (a)": a * 1e9, "ns per row k^2 (b)": b * 1e9,
                     "ns per entry, all in a": t[1] / data[1].nnz * 1e9})
    print(f"\nper-device rates: {users} x {items}, rank {k}, float32, one CPU device (the machine's 2 cores); "
          "t = a nnz + b (m + n) k^2 fitted to the two tables\n\n" + table(rows, floatfmt=".4g"))
    part_projection({r["solver (one device, rank 128)"]: (r["ns per entry (a)"] * 1e-9, r["ns per row k^2 (b)"] * 1e-9)
                     for r in rows})


#: Projection scenarios: (name, nnz, m, n, k, P); stated assumptions of docs/scaling.md.
SCENARIOS = [("internet: 10B entries, 1B x 100M, k 128, P 256", 10e9, 1e9, 100e6, 128, 256),
             ("WebGraph-sparse: 30B entries, 365.4M x 365.4M, k 128, P 256", 30e9, 365.4e6, 365.4e6, 128, 256)]
SPEEDUP = 50.0  # assumed: one accelerator runs a device's share of the sweep 50x faster than this 2-core CPU
BANDWIDTH = 50e9  # assumed: bytes/s one device sends during an all_to_all (one 400 Gb/s NIC per device)


def part_projection(rates: dict) -> None:
    """The model of ``accounting.project`` at internet scale, with the rates measured above (docs/scaling.md)."""
    rows = []
    for name, nnz, m, n, k, P_ in SCENARIOS:
        pr = project(nnz, m, n, k, P_)
        row = {"scenario": name, "factors x3 GB": 3 * pr["factors"] / 1e9, "entries GB": pr["entries"] / 1e9,
               "table GB": max(pr["table_h"], pr["table_w"]) / 1e9, "peak GB": pr["peak"] / 1e9,
               "sent/sweep GB": pr["sent_per_sweep"] / 1e9,
               f"comm s at {BANDWIDTH / 1e9:.0f} GB/s": pr["sent_per_sweep"] / BANDWIDTH}
        for solver, (a, b) in rates.items():
            if "CG" in solver:
                cpu = max(a, 0) * nnz / P_ + max(b, 0) * (m + n) / P_ * k * k
                row[f"{solver.split(' ')[0]}: compute s, this CPU / {SPEEDUP:.0f}x"] = \
                    f"{cpu:.0f} / {cpu / SPEEDUP:.1f}"
        rows.append(row)
    print(f"\nprojection (per device, per sweep; float32, biases, uniform entries; speed-up {SPEEDUP:.0f}x and "
          f"{BANDWIDTH / 1e9:.0f} GB/s assumed)\n\n" + table(rows, floatfmt=".3g"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=("sharded", "memory", "rates", "all"), default="all")
    args = ap.parse_args()
    print(machine_info())
    if args.part in ("sharded", "all"):
        part_sharded(args.quick)
    if args.part in ("memory", "all"):
        part_memory(args.quick)
    if args.part in ("rates", "all"):
        part_rates(args.quick)


if __name__ == "__main__":
    main()
