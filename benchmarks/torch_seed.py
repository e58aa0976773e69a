"""The seed example as a plain PyTorch eager program (the peer for benchmarks/seed.py).

Prints one JSON line: {"run_seconds": ..., "loss": ...}.
"""

import json
import sys
import time

import torch

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)
torch.manual_seed(0)
A = torch.tensor([[5.0, 3.0], [3.0, 2.0], [2.0, 1.0], [1.0, 1.0]])
W = torch.rand(4, 2, requires_grad=True)
H = torch.rand(2, 2, requires_grad=True)
opt = torch.optim.Adam([W, H], lr=0.01)
t0 = time.perf_counter()
for i in range(5000):
    opt.zero_grad()
    loss = ((A - W @ H) ** 2).mean()
    if i % 500 == 0:
        print(f"iteration {i} loss {loss.item():.3e}", file=sys.stderr)
    loss.backward()
    opt.step()
run = time.perf_counter() - t0
print(json.dumps({"run_seconds": run, "loss": float(((A - W @ H) ** 2).mean())}))
