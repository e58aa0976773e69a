"""One Adam step on a dense 2000x2000 rank-32 float32 problem: jmf vs PyTorch, at 1 and 2 threads.

    python benchmarks/dense_adam.py [--m 2000] [--n 2000] [--k 32] [--steps 20]

Each thread count runs in its own process (1 thread: pinned with taskset to one core,
XLA single-threaded, torch.set_num_threads(1), OPENBLAS_NUM_THREADS=1).  In the same process
the float32 matmul rate is measured (numpy/BLAS and jnp, square 2000^3 and the skinny
(m x n) @ (n x k) shape of the step), so FLOP rates compare against the machine's limit.
A step is counted as 6 m n k FLOPs (forward WH, R H^T, W^T R); jmf's Gram-form gradient
actually performs 4 m n k + O((m+n) k^2).
Goals (issue 2): >= 1.5x PyTorch at the same thread count; >= 50% of the matmul rate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import machine_info, run_python, table  # noqa: E402

WORKER = r"""
import json, sys, time, os
sys.path.insert(0, %(here)r)
import numpy as np
from _common import median_time
m, n, k, steps, threads = %(m)d, %(n)d, %(k)d, %(steps)d, %(threads)d
import jax, jax.numpy as jnp, optax, torch
import jmf
torch.set_num_threads(threads)
rng = np.random.default_rng(0)
A = (rng.standard_normal((m, k)) @ rng.standard_normal((k, n)) + 0.1 * rng.standard_normal((m, n))).astype(np.float32)
W0 = (0.1 * rng.standard_normal((m, k))).astype(np.float32)
H0 = (0.1 * rng.standard_normal((k, n))).astype(np.float32)

# machine limit, same process and threads
a = rng.random((2000, 2000)).astype(np.float32); b = rng.random((2000, 2000)).astype(np.float32)
np_square = 2 * 2000**3 / median_time(lambda: a @ b)
sk = rng.random((n, k)).astype(np.float32)
np_skinny = 2 * m * n * k / median_time(lambda: A @ sk, repeats=20)
ja, jb = jnp.asarray(a), jnp.asarray(b)
mm = jax.jit(jnp.matmul)
jnp_square = 2 * 2000**3 / median_time(lambda: mm(ja, jb).block_until_ready())

# jmf: the solver step inside a compiled loop (as jmf.fit runs it)
data = jmf.Dense(A)
solver = jmf.solvers.adam(1e-3)
f0 = jmf.Factors(jnp.asarray(W0), jnp.asarray(H0))
state0 = solver.init(f0, data, None)
@jax.jit
def run(f, s, d):
    return jax.lax.fori_loop(0, steps, lambda i, fs: solver.step(fs[0], fs[1], d, None), (f, s))
jax.block_until_ready(run(f0, state0, data))
t_jmf = median_time(lambda: jax.block_until_ready(run(f0, state0, data)), repeats=5) / steps
# through the public driver: fit with one loss check per `steps` iterations
res = jmf.fit(data, solver, init=f0, max_iter=steps, tol=None, check_every=steps, progress=False)
t_fit = median_time(lambda: jax.block_until_ready(jmf.fit(data, solver, init=f0, max_iter=steps, tol=None,
                    check_every=steps, progress=False).factors.W), repeats=3) / steps

# PyTorch eager
At = torch.from_numpy(A)
W = torch.from_numpy(W0.copy()).requires_grad_(True)
H = torch.from_numpy(H0.copy()).requires_grad_(True)
opt = torch.optim.Adam([W, H], lr=1e-3)
def torch_steps():
    for _ in range(steps):
        opt.zero_grad()
        loss = ((At - W @ H) ** 2).mean()
        loss.backward()
        opt.step()
t_torch = median_time(torch_steps, repeats=5) / steps
print(json.dumps(dict(threads=threads, jmf_step=t_jmf, jmf_fit_iter=t_fit, torch_step=t_torch,
                      np_square=np_square, np_skinny=np_skinny, jnp_square=jnp_square)))
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, default=2000)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    rows = []
    flops = 6 * args.m * args.n * args.k
    for threads in (1, 2):
        env = {"OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        if threads == 1:
            env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        code = WORKER % dict(here=HERE, m=args.m, n=args.n, k=args.k, steps=args.steps, threads=threads)
        r = json.loads(run_python(code, is_path=False, env=env, cpus="0" if threads == 1 else None)[1])
        rows.append({
            "threads": threads,
            "jmf step ms": 1e3 * r["jmf_step"],
            "jmf via fit ms/it": 1e3 * r["jmf_fit_iter"],
            "PyTorch step ms": 1e3 * r["torch_step"],
            "speed-up": r["torch_step"] / r["jmf_step"],
            "jmf GFLOP/s (6mnk)": flops / r["jmf_step"] / 1e9,
            "matmul GFLOP/s numpy 2000^3": r["np_square"] / 1e9,
            "jnp 2000^3": r["jnp_square"] / 1e9,
            "numpy skinny": r["np_skinny"] / 1e9,
            "% of numpy 2000^3": 100 * flops / r["jmf_step"] / r["np_square"],
        })
    print(f"# Dense {args.m}x{args.n}, rank {args.k}, float32, one Adam step ({machine_info()})")
    print(table(rows))


if __name__ == "__main__":
    main()
