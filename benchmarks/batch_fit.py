"""Batch fitting throughput: jmf.fit_many vs PyTorch (loop and batched) and scikit-learn loops.

    python benchmarks/batch_fit.py [--quick] [--max-batch 100000] [--threads 1 2]

Three workloads, each side by side in the same run, reporting fits per second (medians)
and the arithmetic rate against the float32 matmul rate measured in the same run:

1. seed: 4x2 matrix, rank 2, Adam lr 0.01, 5000 steps, for B = 1 ... 100,000 independent fits
   (random initializations of the seed matrix).  Peers: a Python loop over the PyTorch seed
   program (measured for small B, per-fit time extrapolated beyond) and batched PyTorch
   (3-D tensors, ``bmm``, one Adam over the batch) at 1 and 2 threads.
   Goal (issue 4): >= 10,000 fits/s at every B >= 1,000, >= 12x batched PyTorch.
2. 100x50 matrices, rank 5, 1000 Adam steps, B = 1,000.  Goal: >= 250 fits/s, >= 10x batched PyTorch.
3. 8 ranks x 16 restarts of HALS on a 500x300 nonnegative matrix vs a loop of
   ``sklearn.decomposition.NMF(solver='cd')`` fits (same iterations, tol=0).

FLOP counts per step (useful work): seed ~ 6mnk + 3mn + 12 p (p = (m+n)k parameters, Adam);
100x50: 4mnk (Gram-form gradient) + 12 p; HALS: 4mnk + 2(m+n)k^2 per iteration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
from _common import machine_info, median_time, run_python, table  # noqa: E402

SEED_A = [[5.0, 3.0], [3.0, 2.0], [2.0, 1.0], [1.0, 1.0]]

TORCH_WORKER = r"""
import json, sys, time
import torch
B, m, n, k, steps, threads, loop = %(B)d, %(m)d, %(n)d, %(k)d, %(steps)d, %(threads)d, %(loop)d
torch.set_num_threads(threads)
torch.manual_seed(0)
A = torch.rand(m, n) if m * n > 8 else torch.tensor(%(A)s)
def batched():
    W = torch.rand(B, m, k, requires_grad=True)
    H = torch.rand(B, k, n, requires_grad=True)
    opt = torch.optim.Adam([W, H], lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        # sum of per-member means: each member gets exactly its own gradient
        loss = ((A - torch.bmm(W, H)) ** 2).mean(dim=(1, 2)).sum()
        loss.backward()
        opt.step()
def looped():
    for _ in range(B):
        W = torch.rand(m, k, requires_grad=True)
        H = torch.rand(k, n, requires_grad=True)
        opt = torch.optim.Adam([W, H], lr=0.01)
        for _ in range(steps):
            opt.zero_grad()
            loss = ((A - W @ H) ** 2).mean()
            loss.backward()
            opt.step()
fn = looped if loop else batched
fn() if B * steps <= 200000 else None  # warm-up for small runs
t0 = time.perf_counter(); fn(); t = time.perf_counter() - t0
print(json.dumps({"seconds": t}))
"""

JMF_WORKER = r"""
import json, sys, time
sys.path.insert(0, %(here)r)
import numpy as np, jax, jax.numpy as jnp
import jmf
from _common import median_time
B, m, n, k, steps = %(B)d, %(m)d, %(n)d, %(k)d, %(steps)d
rng = np.random.default_rng(0)
A = np.asarray(%(A)s, np.float32) if m * n == 8 else rng.random((m, n)).astype(np.float32)
data = jmf.Dense(A)
solver = jmf.solvers.adam(0.01)
kw = dict(rank=k, init="uniform", max_iter=steps, tol=None, check_every=steps, progress=False)
t0 = time.perf_counter()
r = jmf.fit_many(data, solver, keys=jax.random.split(jax.random.key(0), B), **kw); jax.block_until_ready(r.loss)
first = time.perf_counter() - t0
keys = jax.random.split(jax.random.key(1), B)
t = median_time(lambda: jax.block_until_ready(jmf.fit_many(data, solver, keys=keys, **kw).loss),
                repeats=%(repeats)d, warmup=0)
print(json.dumps({"seconds": t, "compile": first - t, "max_loss": float(jnp.max(r.loss))}))
"""


def _threads_env(threads):
    env = {"OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env


def _jmf(B, m, n, k, steps, threads, repeats):
    code = JMF_WORKER % dict(here=HERE, B=B, m=m, n=n, k=k, steps=steps, A=SEED_A, repeats=repeats)
    out = run_python(code, is_path=False, env=_threads_env(threads), cpus="0" if threads == 1 else None)[1]
    return json.loads(out.strip().splitlines()[-1])


def _torch(B, m, n, k, steps, threads, loop):
    code = TORCH_WORKER % dict(B=B, m=m, n=n, k=k, steps=steps, threads=threads, loop=int(loop), A=SEED_A)
    out = run_python(code, is_path=False, env=_threads_env(threads), cpus="0" if threads == 1 else None)[1]
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def seed_flops(m=4, n=2, k=2):
    p = (m + n) * k
    return 6 * m * n * k + 3 * m * n + 12 * p


def bench_seed(batches, threads_list, torch_budget_s, repeats):
    rows = []
    loop_per_fit = {t: _torch(2, 4, 2, 2, 5000, t, loop=True) / 2 for t in threads_list}
    for B in batches:
        for t in threads_list:
            j = _jmf(B, 4, 2, 2, 5000, t, repeats)
            fits = B / j["seconds"]
            row = {"B": B, "threads": t, "jmf fits/s": fits, "jmf compile s": j["compile"],
                   "GFLOP/s": fits * 5000 * seed_flops() / 1e9,
                   "loop PyTorch fits/s (extrap.)": 1 / loop_per_fit[t],
                   "vs loop": fits * loop_per_fit[t]}
            est = B * 5000 * 2e-6  # rough batched-torch cost
            if est < torch_budget_s:
                tb = _torch(B, 4, 2, 2, 5000, t, loop=False)
                row["batched PyTorch fits/s"] = B / tb
                row["vs batched"] = fits / (B / tb)
            rows.append(row)
            print(table([row]), flush=True)
    return rows


def bench_medium(B, threads_list, repeats):
    m, n, k, steps = 100, 50, 5, 1000
    rows = []
    for t in threads_list:
        j = _jmf(B, m, n, k, steps, t, repeats)
        tb = _torch(B, m, n, k, steps, t, loop=False)
        fits = B / j["seconds"]
        flops = 4 * m * n * k + 12 * (m + n) * k
        rows.append({"B": B, "threads": t, "jmf fits/s": fits, "batched PyTorch fits/s": B / tb,
                     "ratio": fits / (B / tb), "GFLOP/s": fits * steps * flops / 1e9})
        print(table(rows[-1:]), flush=True)
    return rows


def bench_hals(ranks, n_restarts, max_iter):
    import jax
    from sklearn.decomposition import NMF

    import jmf

    rng = np.random.default_rng(0)
    m, n = 500, 300
    A = (rng.random((m, 20)) @ rng.random((20, n)) + 0.01 * rng.random((m, n))).astype(np.float32)
    solver = jmf.solvers.hals()
    kw = dict(ranks=ranks, keys=jax.random.split(jax.random.key(0), n_restarts), max_iter=max_iter, tol=None,
              check_every=max_iter, progress=False)
    t0 = time.perf_counter()
    jax.block_until_ready(jmf.fit_many(A, solver, **kw).loss)
    first = time.perf_counter() - t0
    t_jmf = median_time(lambda: jax.block_until_ready(jmf.fit_many(A, solver, **kw).loss), repeats=3, warmup=0)

    def sk_loop():
        for r in ranks:
            for s in range(n_restarts):
                NMF(n_components=r, init="random", solver="cd", max_iter=max_iter, tol=0.0, random_state=s).fit(A)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_sk = median_time(sk_loop, repeats=1, warmup=0)
    fits = len(ranks) * n_restarts
    flops = sum(4 * m * n * r + 2 * (m + n) * r * r for r in ranks) * n_restarts * max_iter
    return [{"fits": fits, "iterations": max_iter, "jmf s": t_jmf, "jmf compile s": first - t_jmf,
             "sklearn loop s": t_sk, "speed-up": t_sk / t_jmf, "jmf GFLOP/s": flops / t_jmf / 1e9}]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small batches only (a smoke test)")
    p.add_argument("--max-batch", type=int, default=100_000)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch-budget", type=float, default=120.0,
                   help="skip batched PyTorch runs estimated above this (s)")
    args = p.parse_args(argv)
    from _common import matmul_rate

    rate = matmul_rate(np.float32)
    print(f"# Batch fitting ({machine_info()}); numpy float32 matmul rate {rate / 1e9:.0f} GFLOP/s (2 threads)\n")
    batches = [b for b in (1, 10, 100, 1000, 10_000, 100_000) if b <= (100 if args.quick else args.max_batch)]
    print("## Seed example (4x2, rank 2, Adam 0.01, 5000 steps)")
    seed = bench_seed(batches, args.threads, 2.0 if args.quick else args.torch_budget,
                      1 if args.quick else args.repeats)
    print(table(seed))
    print("\n## 100x50, rank 5, 1000 Adam steps")
    med = bench_medium(10 if args.quick else 1000, args.threads, 1 if args.quick else args.repeats)
    print(table(med))
    print("\n## HALS: ranks x restarts on 500x300 vs a loop of scikit-learn NMF(cd)")
    ranks = [2, 4] if args.quick else [2, 4, 6, 8, 10, 12, 14, 16]
    hals = bench_hals(ranks, 2 if args.quick else 16, 20 if args.quick else 200)
    print(table(hals))
    print(f"\nmatmul reference: numpy float32 2000^3 = {rate / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
