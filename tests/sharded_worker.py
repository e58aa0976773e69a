"""Worker for tests/test_sharded.py::test_two_processes_* (run as a subprocess, 2 CPU devices per process, float64).

usage: python sharded_worker.py PORT PROCESS_ID OUT.npz [dense|sparse]
dense: each process passes only its rows of a dense matrix (jmf.sharding.process_rows) and fits HALS with H
column-sharded.  sparse: each process passes only its partition of the observed entries (users hashed to
processes) and fits ratings_als (CG, biases) and implicit_als.  The factors are gathered (an all-gather) into
OUT.npz, with the shapes of this process's shards.
"""

import sys

port, pid, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
mode = sys.argv[4] if len(sys.argv) > 4 else "dense"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")  # as the suite (tests/conftest.py)
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)

import numpy as np  # noqa: E402

import jmf  # noqa: E402

mesh = jmf.sharding.model_mesh()
if mode == "dense":
    A = np.random.default_rng(7).random((30, 22))  # the same matrix as the test's single-device fit
    start, stop = jmf.sharding.process_rows(A.shape, mesh)
    data = jmf.sharding.shard_dense(A[start:stop], mesh, shape=A.shape)  # this process's rows only
    res = jmf.fit(data, jmf.solvers.hals(), 3, key=0, max_iter=20, tol=1e-6, mesh=mesh, progress=False)
    f = jmf.sharding.gather_factors(res.factors, A.shape)
    if pid == 0:  # both processes gathered the same factors
        np.savez(out, W=f.W, H=f.H, loss=float(res.loss), n_iter=int(res.n_iter), rows=[start, stop],
                 local_shapes=[s.data.shape for s in res.factors.W.addressable_shards])
else:
    table = jmf.datasets.synthetic_ratings(0, n_users=300, n_items=200, n_ratings=6000).data  # as in the test
    users, items = np.asarray(table.rows), np.asarray(table.cols)
    vals = np.asarray(table.vals, np.float64)
    mine = (users.astype(np.uint64) * 2654435761 % 2**32) % 2 == pid  # this process's partition only
    local = jmf.Sparse(users[mine], items[mine], vals[mine], table.shape)
    data = jmf.sharding.shard_sparse(local, mesh)
    out_arrays = {"nnz_local": int(mine.sum())}
    for name, solver in (("ratings_als", jmf.solvers.ratings_als(l2=0.1)),
                         ("implicit_als", jmf.solvers.implicit_als())):
        res = jmf.fit(data, solver, 8, key=0, max_iter=20, tol=None, mesh=mesh, progress=False)
        f = jmf.sharding.gather_factors(res.factors, table.shape)
        out_arrays[name] = f.predict(users, items)
        out_arrays[name + "_loss"] = float(res.loss)
        out_arrays[name + "_W_shards"] = [s.data.shape for s in res.factors.W.addressable_shards]
        out_arrays[name + "_H_shards"] = [s.data.shape for s in res.factors.H.addressable_shards]
    np.savez(f"{out}.{pid}.npz", **out_arrays)
jax.distributed.shutdown()
