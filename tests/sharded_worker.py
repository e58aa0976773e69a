"""Worker for tests/test_sharded.py::test_two_processes_dense (run as a subprocess, 2 CPU devices per process).

usage: python sharded_worker.py PORT PROCESS_ID OUT.npz
Each process passes only its rows of a dense matrix (jmf.sharding.process_rows), fits HALS with H column-sharded,
and gathers the factors (an all-gather) into OUT.npz.
"""

import sys

port, pid, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_enable_x64", True)
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)

import numpy as np  # noqa: E402

import jmf  # noqa: E402

A = np.random.default_rng(7).random((30, 22))  # the same matrix as the test's single-device fit
mesh = jmf.sharding.model_mesh()
start, stop = jmf.sharding.process_rows(A.shape, mesh)
data = jmf.sharding.shard_dense(A[start:stop], mesh, shape=A.shape)  # this process's rows only
res = jmf.fit(data, jmf.solvers.hals(), 3, key=0, max_iter=20, tol=1e-6, mesh=mesh, progress=False)
f = jmf.sharding.gather_factors(res.factors, A.shape)
if pid == 0:  # both processes gathered the same factors
    np.savez(out, W=f.W, H=f.H, loss=float(res.loss), n_iter=int(res.n_iter), rows=[start, stop],
             local_shapes=[s.data.shape for s in res.factors.W.addressable_shards])
jax.distributed.shutdown()
