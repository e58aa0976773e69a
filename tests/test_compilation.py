"""Compilation: the persistent cache jmf turns on, and programs shared between fits."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jmf
from jmf._src import compilation
from jmf._src.compilation import compilations, memory_maps, release_programs_near_map_limit

from .conftest import low_rank

HERE = os.path.dirname(os.path.abspath(__file__))

_SCRIPT = r"""
import json, numpy as np, jax, jmf
from jmf._src.compilation import cache_dir, compilations
rng = np.random.default_rng(0)
A = rng.standard_normal((30, 20)).astype(np.float32)
with compilations() as log:
    res = jmf.fit(A, jmf.solvers.als(l2=0.1), rank=3, key=0, max_iter=40, progress=False)
    many = jmf.fit_many(A, jmf.solvers.adam(1e-2), rank=3, n_restarts=4, key=1, max_iter=40, progress=False)
print(json.dumps({"dir": cache_dir(), "programs": log.programs, "hits": log.cache_hits,
                  "W": np.asarray(res.factors.W).tolist(), "loss": np.asarray(many.loss).tolist()}))
"""


def _run(env_updates):
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.update(env_updates)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.multiprocess
def test_cache_is_on_by_default_reused_by_the_next_process_and_changes_nothing(tmp_path):
    cache = tmp_path / "cache"
    first = _run({"JMF_CACHE_DIR": str(cache)})
    second = _run({"JMF_CACHE_DIR": str(cache)})
    off = _run({"JMF_CACHE_DIR": "off"})
    assert first["dir"] == str(cache) and os.listdir(cache)
    assert first["hits"] == 0 and first["programs"] >= 2
    assert second["hits"] == second["programs"] == first["programs"]  # nothing compiled again
    assert off["dir"] is None and off["hits"] == 0
    for other in (second, off):
        np.testing.assert_array_equal(other["W"], first["W"])
        np.testing.assert_array_equal(other["loss"], first["loss"])


@pytest.mark.multiprocess
def test_jax_own_cache_setting_wins(tmp_path):
    theirs = tmp_path / "theirs"
    got = _run({"JAX_COMPILATION_CACHE_DIR": str(theirs), "JMF_CACHE_DIR": str(tmp_path / "ours")})
    assert got["dir"] == str(theirs) and not (tmp_path / "ours").exists()


def test_other_tolerances_and_keys_reuse_the_compiled_program(rng):
    A = low_rank(rng, 12, 9, 2, noise=0.1)
    solver = jmf.solvers.hals()
    jmf.fit(np.abs(A), solver, rank=2, key=0, tol=1e-4, max_iter=50, progress=False)
    with compilations() as log:
        a = jmf.fit(np.abs(A), solver, rank=2, key=1, tol=1e-2, max_iter=50, progress=False)
        b = jmf.fit(np.abs(A), solver, rank=2, key=2, tol=None, max_iter=50, progress=False)
    assert log.programs == 0
    assert int(b.n_iter) == 50 and b.status_name == "MAX_ITER" and int(a.n_iter) < 50


@pytest.mark.skipif(memory_maps() is None, reason="needs Linux's /proc (memory regions and vm.max_map_count)")
def test_compiled_programs_are_freed_before_the_process_runs_out_of_memory_regions(monkeypatch):
    """Loaded programs hold memory regions; near the kernel's limit jmf frees them before fitting more.

    Past vm.max_map_count XLA:CPU's JIT linker segfaulted while loading a program (a test worker holding
    ~4,000 programs, ~38,000 regions, crashed once or twice per full run).
    """
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda x: jnp.sin(x) * 2 + jnp.cos(x).sum())
    before = memory_maps()[0]
    for n in range(1, 60):
        f(jnp.ones(n)).block_until_ready()
    grown = memory_maps()[0]
    assert grown > before + 59  # each program maps regions of its own
    assert f._cache_size() == 59
    # Far from the limit nothing is freed (the worker running this test may itself be near it: simulated).
    monkeypatch.setattr(compilation, "memory_maps", lambda: (1_000, 65_530))
    assert not release_programs_near_map_limit(force_check=True)
    # The regions are looked at only every so many programs.
    monkeypatch.setattr(compilation, "_CHECK_EVERY", 10**9)
    monkeypatch.setattr(compilation, "memory_maps", lambda: (60_000, 65_530))
    assert not release_programs_near_map_limit()
    assert f._cache_size() == 59
    # Near it, fit_many frees every compiled program first, and still fits.
    monkeypatch.setattr(compilation, "_CHECK_EVERY", 0)
    A = low_rank(np.random.default_rng(0), 12, 9, 2).astype(np.float32)
    res = jmf.fit_many(A, jmf.solvers.als(l2=0.1), rank=2, n_restarts=2, key=0, max_iter=5, progress=False)
    assert np.isfinite(np.asarray(res.loss)).all()
    assert f._cache_size() == 0
    monkeypatch.undo()
    assert memory_maps()[0] < grown  # the freed programs' regions were unmapped
