"""The classic seed example: factorize a 4x2 matrix with Adam.

A = [[5, 3], [3, 2], [2, 1], [1, 1]], rank 2, W and H uniform on [0, 1),
Adam with learning rate 0.01 for 5000 iterations on the mean squared error.
The whole fit is one compiled call; the loss is printed every 500 iterations
from the recorded history.

    python experiments/seed_example.py [--seed 0] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

import jmf

A = np.array([[5.0, 3.0], [3.0, 2.0], [2.0, 1.0], [1.0, 1.0]], dtype=np.float32)


def run(seed: int = 0, max_iter: int = 5000, learning_rate: float = 0.01):
    """Fit the seed matrix; returns the :class:`jmf.FitResult`."""
    return jmf.fit(
        jmf.Dense(A),
        jmf.solvers.adam(learning_rate),
        rank=2,
        key=jax.random.key(seed),
        init="uniform",
        max_iter=max_iter,
        tol=None,
        check_every=500,
        progress=False,
    )


def main(argv=None) -> jmf.FitResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed for the initial W and H (default 0)")
    parser.add_argument("--quick", action="store_true", help="accepted for uniformity; the example is already quick")
    parser.add_argument("--out", default=None, help="directory for a JSON summary (optional)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    res = run(args.seed)
    jax.block_until_ready(res)
    seconds = time.perf_counter() - t0

    np.set_printoptions(precision=6, suppress=True)
    for it, loss in zip(np.asarray(res.iterations), np.asarray(res.loss_history)):
        print(f"iteration {int(it):5d}  loss {float(loss):.3e}")
    W, H = np.asarray(res.factors.W), np.asarray(res.factors.H)
    print("\nA =\n", A)
    print("W =\n", W)
    print("H =\n", H)
    print("WH =\n", W @ H)
    print(f"\nfinal loss {float(res.loss):.3e}, status {res.status_name}, {seconds:.3f} s including compilation")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "seed_example.json"), "w") as fh:
            json.dump({"loss": float(res.loss), "n_iter": int(res.n_iter), "seconds": seconds,
                       "W": W.tolist(), "H": H.tolist()}, fh, indent=1)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
