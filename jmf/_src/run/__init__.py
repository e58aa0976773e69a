"""The run layer: the one check loop, its layouts, and the execution plan.

``loop`` (status, config, carry, the check loop) <- ``driver`` (the vmapped
member-first layout) <- ``lanes`` (the batch-last layout for tiny dense
matrices) <- ``executor`` (the plan: layout, devices, chunks, progress).
Solvers never import this package; the executor chooses a layout from what
a solver declares.
"""
