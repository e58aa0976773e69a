"""Worker for tests/test_batch.py::test_multihost_two_processes (run as a subprocess).

usage: python multihost_worker.py PORT PROCESS_ID OUT.npz
Each process owns half of a batch of 8 matrices, feeds only its half, and
writes the gathered result.
"""

import sys

port, pid, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")  # as the suite (tests/conftest.py)
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)

import numpy as np  # noqa: E402

import jmf  # noqa: E402

A = np.random.default_rng(42).random((8, 12, 9))  # the same batch as the test's single-process run
mesh = jmf.sharding.batch_mesh()
local = jmf.Dense(A[pid * 4:(pid + 1) * 4])  # this process's shard only
data = jmf.sharding.distribute(local, mesh)
res = jmf.fit_many(data, jmf.solvers.adam(1e-2), rank=3, key=0, max_iter=200, tol=1e-4, progress=False, mesh=mesh)
g = jmf.sharding.gather(res.result)
np.savez(out, W=g.factors.W, H=g.factors.H, loss=g.loss, n_iter=g.n_iter, status=g.status,
         n_devices=len(jax.devices()), n_processes=jax.process_count())
jax.distributed.shutdown()
