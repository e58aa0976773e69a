"""Worker for tests/test_execution.py: every solver x data kind through the execution plan (run as a subprocess).

argv: the number of CPU devices JAX should have (set through JMF_CPU_DEVICES by the parent), the
seconds after which to dump every thread's stack and exit, and optionally --quick.
Prints one JSON line per case and "ALL DONE"; a hang is caught by the parent's timeout, and
faulthandler dumps every thread's stack shortly before that.
"""

import faulthandler
import json
import sys
import time

faulthandler.dump_traceback_later(float(sys.argv[2]), exit=True)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")  # as the suite (tests/conftest.py)

import jmf  # noqa: E402

n_devices = int(sys.argv[1])
quick = "--quick" in sys.argv  # only the cases that once deadlocked
assert len(jax.local_devices(backend="cpu")) == n_devices, (jax.local_devices(), n_devices)
rng = np.random.default_rng(0)
B, m, n = 3, 12, 9


def kinds():
    A = np.abs(rng.standard_normal((B, m, n))).astype(np.float32) + 0.1
    M = (rng.random((B, m, n)) > 0.3).astype(np.float32)
    yield "dense", jmf.Dense(A)
    yield "weighted", jmf.Dense(A, M)
    sparse = []
    for b in range(B):
        r, c = np.nonzero(M[b])
        sparse.append(jmf.Sparse(r, c, A[b, r, c], (m, n)))
    yield "sparse", jmf.stack(sparse)


SOLVERS = {
    "adam": jmf.solvers.adam(1e-2),
    "adam-huber": jmf.solvers.adam(1e-2, loss=jmf.losses.huber(0.5)),
    "sgd": jmf.solvers.sgd(1e-2),
    "gradient-optax-chain": jmf.solvers.gradient(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))),
    "als": jmf.solvers.als(l2=0.01),
    "als-biases": jmf.solvers.als(l2=0.01, biases=True),
    "als-wr-cg": jmf.solvers.als(l2=0.01, biases=True, count_scaled=True, solve="cg"),
    "hals": jmf.solvers.hals(),
    "mu": jmf.solvers.mu(),
    "svd": jmf.solvers.svd(),
    "ratings_als-cg": jmf.solvers.ratings_als(),
    "ratings_als-cholesky": jmf.solvers.ratings_als(solve="cholesky"),
    "implicit_als": jmf.solvers.implicit_als(solve="cholesky"),
    "ratings_gradient": jmf.solvers.ratings_gradient(optax.adam(1e-2)),
    "bpmf": jmf.solvers.bpmf(burn_in=3, n_keep=4),
    "bpr": jmf.solvers.bpr(),
    "svdpp": jmf.solvers.svdpp(optax.adam(1e-2)),
}
KW = dict(ranks=[1, 2], n_restarts=2, key=0, max_iter=20, tol=1e-6, progress=False)


def leaves(res):
    f = res.factors
    return [np.asarray(x) for x in (res.loss, res.n_iter, res.status, f.W, f.H)]


for name, solver in ({} if quick else SOLVERS).items():
    for kind, data in kinds():
        if kind not in solver.data_kinds:
            continue
        t0 = time.perf_counter()
        auto = jmf.fit_many(data, solver, **KW)
        split = jmf.fit_many(data, solver, plan={"devices": n_devices}, **KW)
        one = jmf.fit_many(data, solver, plan={"devices": 1}, **KW)
        # A sampler's chains carry float32 rounding differences of the two programs through 20 sweeps.
        tol = dict(rtol=1e-4, atol=1e-5) if name == "bpmf" else dict(rtol=2e-5, atol=1e-6)
        for a, b, c in zip(leaves(auto), leaves(split), leaves(one)):
            np.testing.assert_allclose(a, c, **tol, err_msg=f"{name} {kind}: auto plan vs one device")
            np.testing.assert_allclose(b, c, **tol, err_msg=f"{name} {kind}: split vs one device")
        print(json.dumps({"solver": name, "kind": kind, "seconds": round(time.perf_counter() - t0, 2)}), flush=True)

# The batched ALS case that once deadlocked on 2 host threads: 12 matrices x 6 ranks x 2 restarts.
A = rng.standard_normal((12, 60, 40)).astype(np.float32)
M = (rng.random((12, 60, 40)) > 0.3).astype(np.float32)
res = jmf.fit_many(jmf.Dense(A, M), jmf.solvers.als(l2=0.01), ranks=[1, 2, 3, 4, 5, 6], n_restarts=2, key=0,
                   max_iter=100, tol=1e-6, init="normal", progress=False)
assert np.isfinite(np.asarray(res.loss)).all()
# A thousand small members of dense ALS (the size at which the old host threads split dense ALS).
A = rng.standard_normal((20, 8)).astype(np.float32)
res = jmf.fit_many(A, jmf.solvers.als(l2=0.01), rank=2, n_restarts=1000, key=0, max_iter=20, progress=False)
assert np.isfinite(np.asarray(res.loss)).all()
# Sparse data with svd-type inits (LAPACK in the start program) and many members.
r, c = np.nonzero(M[0])
sparse = jmf.Sparse(r, c, rng.standard_normal(r.size).astype(np.float32), (60, 40))
res = jmf.fit_many(sparse, jmf.solvers.als(l2=0.01), rank=3, n_restarts=256, key=0, init="svd", max_iter=5,
                   progress=False)
assert np.isfinite(np.asarray(res.loss)).all()
print("ALL DONE", flush=True)
