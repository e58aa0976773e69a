"""Seed example: jmf (one compiled call) vs the same program in PyTorch eager on CPU.

    python benchmarks/seed.py [--repeats 7]

Reports, with medians over repeats:
* run time of 5000 Adam steps excluding compilation (jmf: warm compiled call incl. Python
  overhead of jmf.fit; PyTorch: the training loop),
* jmf compile time (first call minus a warm call, in a fresh process),
* whole-process time of `python experiments/seed_example.py` vs `python benchmarks/torch_seed.py`
  (imports, compilation and printing included).
Goals (issue 2): run time >= 300x faster, compile < 1 s, whole process faster than PyTorch's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _common import machine_info, run_python, table  # noqa: E402

JMF_TIMING = r"""
import json, time, sys
sys.path.insert(0, %r)
t0 = time.perf_counter()
import jax, jmf
import seed_example as se
t_import = time.perf_counter() - t0
t0 = time.perf_counter(); r = se.run(seed=0); jax.block_until_ready(r); first = time.perf_counter() - t0
warm = []
for s in range(1, %d + 1):
    t0 = time.perf_counter(); r = se.run(seed=s); jax.block_until_ready(r); warm.append(time.perf_counter() - t0)
warm.sort()
print(json.dumps({"first": first, "warm": warm[len(warm) // 2], "loss": float(r.loss), "import": t_import}))
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    exp = os.path.join(ROOT, "experiments")
    rows = []
    one_thread = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
    jmf_runs = [json.loads(run_python(JMF_TIMING % (exp, 20), is_path=False, env=one_thread, cpus="0")[1])
                for _ in range(3)]
    jmf_run = statistics.median(r["warm"] for r in jmf_runs)
    jmf_compile = statistics.median(r["first"] - r["warm"] for r in jmf_runs)
    # XLA compiles kernels in parallel: also measure the first call with both cores available
    free_runs = [json.loads(run_python(JMF_TIMING % (exp, 5), is_path=False)[1]) for _ in range(3)]
    jmf_compile_free = statistics.median(r["first"] - r["warm"] for r in free_runs)
    for threads in (1, 2):
        cpus = "0" if threads == 1 else None
        torch_runs = [json.loads(run_python(os.path.join(HERE, "torch_seed.py"), [str(threads)], cpus=cpus)[1])
                      for _ in range(args.repeats)]
        t_run = statistics.median(r["run_seconds"] for r in torch_runs)
        rows.append({"peer": f"PyTorch {threads} thread(s)", "peer run s": t_run, "jmf run s": jmf_run,
                     "speed-up": t_run / jmf_run})
    proc_jmf = statistics.median(run_python(os.path.join(exp, "seed_example.py"), env=one_thread, cpus="0")[0]
                                 for _ in range(args.repeats))
    proc_torch = statistics.median(run_python(os.path.join(HERE, "torch_seed.py"), ["1"], cpus="0")[0]
                                   for _ in range(args.repeats))
    print(f"# Seed example: 5000 Adam steps on 4x2, rank 2 ({machine_info()})")
    print("jmf pinned to one core (taskset -c 0, single-threaded XLA); medians")
    print(table(rows))
    print()
    print(table([{"jmf compile s (1 core)": jmf_compile, "jmf compile s (2 cores)": jmf_compile_free,
                  "jmf final loss": jmf_runs[0]["loss"],
                  "jmf process s": proc_jmf, "PyTorch process s": proc_torch,
                  "process ratio": proc_torch / proc_jmf}]))


if __name__ == "__main__":
    main()
