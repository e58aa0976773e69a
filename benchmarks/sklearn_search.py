"""A scikit-learn user's hyperparameter search: ``GridSearchCV`` over ``NMF(alpha_W=...)``, jmf vs scikit-learn.

``GridSearchCV(NMF(n_components=6, init="nndsvda", max_iter=100, solver=...),
{"alpha_W": [0.001, 0.01, 0.1, 0.3]}, cv=3)`` on a 120 x 90 nonnegative
matrix (rank 8 plus noise), scored by the reconstruction error of held-out
rows through ``transform``.  Each (library, solver) runs in a fresh
subprocess: jmf first with an empty compilation cache folder (``cold``),
then again with it filled (``warm``).  The table gives the programs jmf
compiled (or loaded) during the search, the search's seconds, the whole
process's seconds and the best ``alpha_W``.

Usage::

    python benchmarks/sklearn_search.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time, warnings
t0 = time.perf_counter()
import numpy as np
from sklearn.model_selection import GridSearchCV
lib, solver = sys.argv[1], sys.argv[2]
if lib == "jmf":
    import jmf.sklearn
    from jmf._src.compilation import compilations
    NMF = jmf.sklearn.NMF
else:
    from sklearn.decomposition import NMF
    compilations = None
rng = np.random.default_rng(0)
X = np.abs(rng.normal(size=(120, 8)) @ rng.normal(size=(8, 90))) + 0.1 * rng.random((120, 90))


def score(est, X, y=None):
    return -float(np.linalg.norm(X - est.inverse_transform(est.transform(X))))


search = GridSearchCV(NMF(n_components=6, solver=solver, init="nndsvda", max_iter=100, random_state=0),
                      {"alpha_W": [0.001, 0.01, 0.1, 0.3]}, cv=3, scoring=score)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    t = time.perf_counter()
    if compilations is None:
        search.fit(X)
        programs = None
    else:
        with compilations() as log:
            search.fit(X)
        programs = log.programs
    seconds = time.perf_counter() - t
print(json.dumps({"programs": programs, "search": seconds, "process": time.perf_counter() - t0,
                  "best": search.best_params_["alpha_W"]}))
"""


def _run(args, env):
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, *args], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["wall"] = time.perf_counter() - t
    return row


def main():
    rows = []
    for solver in ("cd", "mu"):
        cache = tempfile.mkdtemp(prefix="jmf-search-cache-")
        for run in ("cold", "warm"):
            r = _run(["jmf", solver], {"JMF_CACHE_DIR": cache})
            rows.append(("jmf", solver, run, r))
        rows.append(("sklearn", solver, "-", _run(["sklearn", solver], {})))
    print("GridSearchCV(NMF(n_components=6, init='nndsvda', max_iter=100), alpha_W x 4, cv=3), 120 x 90")
    print(f"machine: {os.cpu_count()} CPUs; command: python benchmarks/sklearn_search.py\n")
    print("| library | solver | run | programs | search s | whole process s | best alpha_W |")
    print("|---|---|---|---|---|---|---|")
    for lib, solver, run, r in rows:
        programs = "" if r["programs"] is None else r["programs"]
        print(f"| {lib} | {solver} | {run} | {programs} | {r['search']:.2f} | {r['wall']:.2f} | {r['best']} |")


if __name__ == "__main__":
    main()
