"""Compilation: the persistent cache jmf turns on, and programs shared between fits."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
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
    # the running total of the folder's bytes (no scan per write) is the folder's size
    entries = sum(f.stat().st_size for f in cache.iterdir() if f.name.endswith("-cache"))
    assert int((cache / ".jmf-bytes").read_text().split()[0]) == entries > 0
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


@pytest.mark.parametrize("layout, solver", [
    ("vmap", jmf.solvers.hals()),
    ("lanes", jmf.solvers.hals()),
    ("sparse", jmf.solvers.ratings_als(l2=0.1, solve="cholesky")),
])
def test_other_iteration_budgets_reuse_the_compiled_programs(rng, layout, solver):
    """max_iter and check_every are traced: budgets whose history fits the same bucket share programs."""
    A = np.abs(low_rank(rng, 13, 10, 2, noise=0.1)).astype(np.float32)
    rows, cols = np.nonzero(rng.random(A.shape) < 0.8)
    data = jmf.Sparse(rows, cols, A[rows, cols], A.shape) if layout == "sparse" else jmf.Dense(A)
    fit = jmf.fit if layout != "lanes" else (lambda d, s, **kw: jmf.fit_many(np.stack([A, A]), s, **kw).result)
    kw = dict(rank=2, key=0, tol=None, progress=False)
    short = fit(data, solver, max_iter=20, check_every=10, **kw)  # 2 checks: 3 history entries (4 slots)
    with compilations() as log:
        longer = fit(data, solver, max_iter=25, check_every=10, **kw)  # 3 checks: 4 entries
        every = fit(data, solver, max_iter=9, check_every=3, **kw)  # 3 checks of 3 iterations
    assert log.programs == 0
    np.testing.assert_array_equal(short.iterations, [0, 10, 20])
    np.testing.assert_array_equal(longer.iterations, [0, 10, 20, 25])
    np.testing.assert_array_equal(every.iterations, [0, 3, 6, 9])
    assert np.shape(longer.loss_history)[-1] == 4 and np.all(np.isfinite(longer.loss_history))
    assert np.all(np.asarray(longer.n_iter) == 25) and np.all(np.asarray(every.n_iter) == 9)
    # the first 20 iterations are the same iterations, whatever the budget
    np.testing.assert_allclose(np.asarray(longer.loss_history)[..., :3], short.loss_history, rtol=1e-6)
    ref = fit(data, solver, max_iter=6, check_every=6, **kw)  # 1 check: another history length
    np.testing.assert_allclose(np.asarray(every.loss_history)[..., 2], np.asarray(ref.loss_history)[..., 1], rtol=1e-5)


@pytest.mark.parametrize("make, values, kind", [
    (lambda v: jmf.solvers.als(l2=v), (0.1, 0.7), "weighted"),
    (lambda v: jmf.solvers.ratings_als(l2=v, solve="cholesky"), (0.05, 0.3), "sparse"),
    (lambda v: jmf.solvers.adam(v), (1e-2, 3e-3), "dense"),
    (lambda v: jmf.solvers.hals(l1=v), (0.01, 0.2), "dense"),
    (lambda v: jmf.solvers.mu(l2=(v, 2 * v)), (0.01, 0.2), "weighted"),  # a (W, H) pair
    (lambda v: jmf.solvers.als(l2=(v, 3 * v)), (0.1, 0.7), "dense"),
])
def test_other_hyperparameter_values_reuse_the_compiled_programs_and_change_nothing(rng, make, values, kind):
    """A searchable factory's nonzero hyperparameters are traced values of a single fit, as a grid's are."""
    A = np.abs(low_rank(rng, 14, 11, 2, noise=0.1)).astype(np.float32)
    M = (rng.random(A.shape) < 0.7).astype(np.float32)
    rows, cols = np.nonzero(M)
    data = {"dense": jmf.Dense(A), "weighted": jmf.Dense(A, M),
            "sparse": jmf.Sparse(rows, cols, A[rows, cols], A.shape)}[kind]
    kw = dict(rank=3, key=0, max_iter=15, tol=None, progress=False)
    jmf.fit(data, make(values[0]), **kw)
    with compilations() as log:
        res = jmf.fit(data, make(values[1]), **kw)
    assert log.programs == 0
    # The same fit with the value compiled in (a solver that is not the factory's product stays static).
    baked = make(values[1])._replace()
    with compilations() as log:
        ref = jmf.fit(data, baked, **kw)
    assert log.programs > 0
    np.testing.assert_allclose(np.asarray(res.factors.W), np.asarray(ref.factors.W), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(res.loss_history), np.asarray(ref.loss_history), rtol=2e-5)


def test_zero_hyperparameters_stay_constants_of_the_program(rng):
    """A zero may let a factory skip a term: ``als()`` (l2 = 0) compiles its own programs, as before."""
    A = low_rank(rng, 13, 10, 2, noise=0.1).astype(np.float32)
    kw = dict(rank=2, key=0, max_iter=10, tol=None, progress=False)
    jmf.fit(A, jmf.solvers.als(l2=0.4), **kw)
    with compilations() as log:
        jmf.fit(A, jmf.solvers.als(), **kw)
    assert log.programs > 0
    from jmf._src.solvers.base import traced_point

    assert traced_point(jmf.solvers.als()) is None
    (factory, static), point = traced_point(jmf.solvers.als(l2=0.4, bias_l2=0.0, biases=True))
    assert point == {"l2": 0.4} and dict(static)["bias_l2"] == 0.0 and factory.__name__ == "als"


def test_a_copy_of_a_factory_solver_is_never_rebuilt_from_the_factory(rng):
    """A solver changed by ``_replace`` keeps its factory: rebuilding that factory at a point would drop the
    change (here another loss), so its values stay constants."""
    from jmf._src.solvers.base import traced_point

    inner = jmf.solvers.mu(l2=(0.1, 0.2))
    copy = inner._replace(loss=jmf.losses.beta_divergence(1.0))
    assert copy.factory is not None and traced_point(copy) is None and traced_point(inner) is not None


@pytest.mark.parametrize("wrap", ["error_loss", "half_step", "stop_each_step", "its_own_tol"])
def test_a_wrapper_of_a_factory_solver_traces_its_inner_values_and_keeps_its_parts(rng, wrap):
    """A derived() wrapper (the scikit-learn layer's error loss, half step, stopping rule) takes its inner
    solver's penalties as traced values: another value compiles nothing, and every member rebuilds the
    wrapper around the inner solver, so the result equals the wrapper with the values compiled in."""
    from jmf._src.sklearn._run import half_step, stop_each_step
    from jmf._src.sklearn.nmf import mu_with_error_loss
    from jmf._src.solvers.base import recipe_of, traced_point

    make = {"error_loss": lambda v: mu_with_error_loss(2.0, (v, v), (2 * v, 2 * v)),
            "half_step": lambda v: half_step(jmf.solvers.hals(l2=v)),
            "stop_each_step": lambda v: stop_each_step(jmf.solvers.hals(l1=v, stop="violation"), 1e-4),
            # the wrapper's own searchable number, around a solver with nothing to trace
            "its_own_tol": lambda v: stop_each_step(jmf.solvers.hals(stop="violation"), v * 1e-2)}[wrap]
    A = np.abs(low_rank(rng, 16, 12, 3, noise=0.1)).astype(np.float32)
    kw = dict(rank=3, key=0, max_iter=30, tol=None, progress=False)
    (factory, static), point = traced_point(make(0.1))
    assert point and recipe_of(make(0.1)._replace(factory=(factory, static), init=None, step=None, loss=None,
                                                  progress=None, objective=None, update_w=None)) is not None
    jmf.fit(A, make(0.1), **kw)
    with compilations() as log:
        traced = jmf.fit(A, make(0.3), **kw)
    assert log.programs == 0
    constant = jmf.fit(A, make(0.3)._replace(), **kw)  # a copy: not a factory's product, values compiled in
    np.testing.assert_allclose(np.asarray(traced.loss_history), np.asarray(constant.loss_history), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(traced.factors.W), np.asarray(constant.factors.W), rtol=1e-4,
                               atol=1e-6)


def test_jobs_with_traced_hyperparameters_keep_a_recipe():
    """The programs of a traced-hyperparameter job are found without tracing in a warm process (a recipe),
    also for a solver that declares a progress rule (HALS stopping on the violation)."""
    from jmf._src.fit import _STRIPPED
    from jmf._src.solvers.base import recipe_of, traced_point

    for solver in (jmf.solvers.hals(l1=0.1, stop="violation"), jmf.solvers.als(l2=0.2), jmf.solvers.adam(1e-2),
                   jmf.solvers.implicit_als(l2=0.5)):
        static, point = traced_point(solver)
        assert point and recipe_of(solver._replace(**_STRIPPED, factory=static)) is not None, solver.name
    assert jmf.solvers.hals(l1=0.1, stop="violation").progress is not None


def test_a_loss_written_twice_is_one_loss_and_its_solver_compiles_once(rng):
    """``adam(1e-2, loss=huber(0.5))`` twice: the same solver, no second compilation, and a recipe."""
    from jmf._src.solvers.base import recipe_of

    A = low_rank(rng, 15, 12, 2, noise=0.1).astype(np.float32)
    assert jmf.losses.huber(0.5) is jmf.losses.huber(delta=0.5) is not jmf.losses.huber(0.6)
    assert jmf.losses.frobenius(l2=0.1) is jmf.losses.frobenius(0.1)
    kw = dict(rank=2, key=0, max_iter=10, progress=False)
    first = jmf.fit(A, jmf.solvers.adam(1e-2, loss=jmf.losses.huber(0.5)), **kw)
    with compilations() as log:
        again = jmf.fit(A, jmf.solvers.adam(1e-2, loss=jmf.losses.huber(0.5)), **kw)
    assert log.programs == 0
    np.testing.assert_array_equal(np.asarray(again.factors.W), np.asarray(first.factors.W))
    recipe = recipe_of(jmf.solvers.adam(1e-2, loss=jmf.losses.huber(0.5)))
    assert recipe is not None and recipe != recipe_of(jmf.solvers.adam(1e-2, loss=jmf.losses.huber(0.6)))
    # a loss from a function of the user's has no recipe: its solver is traced, as before
    custom = jmf.losses.custom(lambda f, d: jnp.sum((f.W @ f.H - d.A) ** 2))
    assert recipe_of(jmf.solvers.adam(1e-2, loss=custom)) is None


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


# -- the cache folder's running total ---------------------------------------------------------


def _tallied_cache(folder, max_size):
    from jax._src.lru_cache import LRUCache

    return compilation._tallied(LRUCache)(str(folder), max_size=max_size)


def _on_disk(folder):
    return {f.name[:-6]: f.stat().st_size for f in folder.iterdir() if f.name.endswith("-cache")}


def test_cache_writes_count_bytes_and_scan_only_near_the_limit(tmp_path, monkeypatch):
    scans = []
    real = compilation._scan_and_evict
    monkeypatch.setattr(compilation, "_scan_and_evict", lambda *a: scans.append(a) or real(*a))
    cache = _tallied_cache(tmp_path, max_size=1000)
    for i in range(5):  # entries another process wrote earlier, oldest first
        cache.put(f"old{i}", b"x" * 100)
        os.utime(tmp_path / f"old{i}-atime", ns=(i * 10**9, i * 10**9))
    assert len(scans) == 1  # the first write counts the folder
    cache.get("old0")  # read now: the most recently used
    for i in range(5):
        cache.put(f"new{i}", b"y" * 100)
    assert len(scans) == 1 and len(_on_disk(tmp_path)) == 10  # 1000 bytes: at the limit, no scan
    cache.put("last", b"z" * 100)  # would pass the limit: scan, evict the least recently used
    assert len(scans) == 2
    left = _on_disk(tmp_path)
    # down to 0.8 x 1000 with the new entry: the three least recently used go, old0 (just read) stays
    assert set(left) == {"old0", "old4", "new0", "new1", "new2", "new3", "new4", "last"}
    assert int((tmp_path / ".jmf-bytes").read_text().split()[0]) == sum(left.values()) == 800
    assert cache.get("old1") is None and cache.get("old0") == b"x" * 100


def test_cache_total_is_counted_again_when_torn_or_stale(tmp_path, monkeypatch):
    cache = _tallied_cache(tmp_path, max_size=10**6)
    cache.put("a", b"x" * 300)
    (tmp_path / ".jmf-bytes").write_text("garbage")
    (tmp_path / "b-cache").write_bytes(b"y" * 200)  # written by something else
    (tmp_path / "b-atime").write_bytes(b"")
    cache.put("c", b"z" * 100)
    assert (tmp_path / ".jmf-bytes").read_text().split()[0] == "600"
    (tmp_path / "d-cache").write_bytes(b"w" * 50)
    (tmp_path / "d-atime").write_bytes(b"")
    monkeypatch.setattr(compilation, "_RESCAN_SECONDS", -1)  # the last count is too old: count again
    cache.put("e", b"v" * 10)
    assert (tmp_path / ".jmf-bytes").read_text().split()[0] == "660"


# -- programs found without tracing -----------------------------------------------------------

_STORE_SCRIPT = r"""
import json, sys, numpy as np, jax, jmf
traced = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: traced.append(kw.get("fun_name", "")) if event.endswith("jaxpr_trace_duration")
    else None)
from jmf._src.compilation import compilations
l2 = float(sys.argv[1])
A = np.random.default_rng(0).standard_normal((30, 20)).astype(np.float32)
with compilations() as log:
    # exact solves: LAPACK kernels, which a loaded program needs initialized (it segfaulted without)
    res = jmf.fit_many(A, jmf.solvers.als(l2=l2), ranks=[2, 3], n_restarts=2, key=0, max_iter=8, progress=False)
print(json.dumps({"programs": log.programs, "hits": log.cache_hits,
                  "executor_traces": sum(n in ("_start_program", "_advance_program", "_finish_program", "program")
                                         for n in traced),
                  "loss": np.asarray(res.loss).tolist(), "W": np.asarray(res.factors.W).tolist()}))
"""


def _store_run(cache, l2):
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["JMF_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _STORE_SCRIPT, str(l2)], env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.multiprocess
def test_a_warm_process_finds_the_executors_programs_without_tracing_them(tmp_path):
    cache = tmp_path / "cache"
    first = _store_run(cache, 0.1)
    second = _store_run(cache, 0.1)
    assert first["executor_traces"] >= 2 and first["hits"] == 0
    assert second["executor_traces"] == 0  # neither the programs nor the pool-safety check traced
    assert second["hits"] == second["programs"] >= 2  # every program counted, all from the cache
    np.testing.assert_array_equal(second["loss"], first["loss"])
    np.testing.assert_array_equal(second["W"], first["W"])
    stored = [f.name for f in cache.iterdir() if f.name.startswith("jmfprog-") and f.name.endswith("-cache")]
    assert any("_advance_program" in n for n in stored)
    entries = sum(f.stat().st_size for f in cache.iterdir() if f.name.endswith("-cache"))
    assert int((cache / ".jmf-bytes").read_text().split()[0]) == entries  # counted with JAX's entries
    # Programs that JAX's cache held (traced, lowered and loaded from it) are stored from JAX's bytes: an
    # executable serialized a second time lost code ("Function ... not found" when called).
    for name in stored:
        (cache / name).unlink()
    third = _store_run(cache, 0.1)
    fourth = _store_run(cache, 0.1)
    assert third["executor_traces"] >= 2 and third["hits"] == third["programs"]
    assert fourth["executor_traces"] == 0
    np.testing.assert_array_equal(fourth["loss"], first["loss"])
    np.testing.assert_array_equal(fourth["W"], first["W"])


def test_recipes_describe_memoized_solvers_only():
    import optax

    from jmf._src.solvers.base import recipe_of

    als = jmf.solvers.als(l2=0.1, biases=True)
    assert recipe_of(als) == recipe_of(jmf.solvers.als(0.1, biases=True)) is not None
    assert recipe_of(als) != recipe_of(jmf.solvers.als(l2=0.2, biases=True))
    assert recipe_of(als._replace(name="changed")) is None  # not what the factory made
    assert recipe_of(jmf.solvers.gradient(optax.adam(1e-2))) is None  # holds an Optax transformation
    assert recipe_of(jmf.solvers.bpmf()) is not None
    grid = jmf.solvers.als(l2=np.array([0.1, 1.0]))
    job_solver = grid._replace(init=None, step=None, loss=None, spec=None, grid=None, update_w=None, direct=None,
                               name=grid.factory[0].__name__)  # as jmf.fit_many builds it
    assert recipe_of(job_solver)[0] == "grid"


def test_stored_programs_are_freed_with_jaxs_near_the_map_limit_and_by_clear_caches(monkeypatch, tmp_path):
    import jax

    monkeypatch.setitem(compilation._store, "folder", compilation.cache_dir())
    compilation._programs["x"] = object()
    monkeypatch.setattr(compilation, "memory_maps", lambda: (60000, 65530))
    assert release_programs_near_map_limit(force_check=True)
    assert "x" not in compilation._programs
    compilation._programs["y"] = object()
    jax.clear_caches()  # what a user calls to free compiled programs
    assert "y" not in compilation._programs


def test_a_torn_program_entry_is_built_again(tmp_path, monkeypatch):
    monkeypatch.setitem(compilation._store, "folder", str(tmp_path))
    monkeypatch.setattr(compilation, "cache_dir", lambda: str(tmp_path))
    monkeypatch.setattr(compilation, "_programs", {})
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda x: x * 2 + 1)
    x = jnp.arange(3.0)
    built = []
    description = ("test", "torn entry")

    def build():
        built.append(1)
        return f.lower(x).compile()

    compilation.stored_program("f", description, build)
    (entry,) = [p for p in tmp_path.iterdir() if p.name.startswith("jmfprog-f-") and p.name.endswith("-cache")]
    entry.write_bytes(entry.read_bytes()[:100])  # torn
    monkeypatch.setattr(compilation, "_programs", {})  # a new process
    program = compilation.stored_program("f", description, build)
    assert len(built) == 2
    np.testing.assert_array_equal(np.asarray(program(x)), [1.0, 3.0, 5.0])
    monkeypatch.setattr(compilation, "_programs", {})
    assert compilation.stored_program("f", description, build) is not None and len(built) == 2  # rewritten whole


def test_facts_about_programs_are_kept_like_programs(tmp_path, monkeypatch):
    monkeypatch.setitem(compilation._store, "folder", str(tmp_path))
    monkeypatch.setattr(compilation, "cache_dir", lambda: str(tmp_path))
    calls = []

    def check():
        calls.append(1)
        return ["lapack_spotrf_ffi"]

    assert compilation.stored_fact("custom_calls", ("job", 1), check) == ["lapack_spotrf_ffi"]
    assert compilation.stored_fact("custom_calls", ("job", 1), check) == ["lapack_spotrf_ffi"]
    assert compilation.stored_fact("custom_calls", ("job", 2), check) == ["lapack_spotrf_ffi"]
    assert len(calls) == 2  # the same description is answered from the folder
    monkeypatch.setattr(compilation, "STORE_PROGRAMS", False)
    compilation.stored_fact("custom_calls", ("job", 1), check)
    assert len(calls) == 3


def test_program_descriptions_tell_apart_what_changes_the_program():
    import jax

    from jmf._src.run.driver import Args, Job
    from jmf._src.run.executor import Plan, _description
    from jmf._src.run.loop import iteration_schedule, run_config

    cfg = run_config(10, 5, 3, True)
    plan = Plan("vmap", None, 2, 2)
    args = Args(np.zeros((2, 2), np.uint32), None, None, np.zeros((4, 3), np.float32), None,
                np.asarray(-1.0, np.float32), schedule=iteration_schedule(10, 5))
    job = Job(jmf.solvers.ratings_als(l2=0.1), cfg, None, ("restart",))
    base = _description(job, plan, (args,))
    assert base is not None and base == _description(job, plan, (args,))
    changed = [
        job._replace(solver=jmf.solvers.ratings_als(l2=0.2)),  # a penalty (a constant of the program)
        job._replace(cfg=cfg._replace(slots=32)),  # another history length
    ]
    for other in changed:
        assert _description(other, plan, (args,)) != base
    assert _description(job, plan._replace(chunk=1), (args,)) != base
    assert _description(job, plan, (args._replace(data=np.zeros((5, 3), np.float32)),)) != base
    assert _description(job, plan, (args._replace(data=np.zeros((4, 3), np.float64)),)) != base
    placed = jax.device_put(np.zeros((4, 3), np.float32), jax.devices()[-1])
    assert _description(job, plan, (args._replace(data=placed),)) != base
    # a solver that is not what a factory made, or holds a function: no description (traced as before)
    assert _description(job._replace(solver=job.solver._replace(name="x")), plan, (args,)) is None
    assert _description(job, plan, (args._replace(tol=lambda: 0),)) is None
    # max_iter and check_every are traced: another budget with the same history length is the same program
    assert run_config(12, 5, 3, True) == cfg
    assert _description(job, plan, (args._replace(schedule=iteration_schedule(12, 4)),)) == base


def test_the_tracing_context_is_part_of_a_programs_description():
    import jax

    base = compilation._tracing_context()
    assert base is not None and base == compilation._tracing_context()
    with jax.set_mesh(jax.make_mesh((1,), ("x",))):
        in_mesh = compilation._tracing_context()
    with jax.numpy_dtype_promotion("standard"):
        standard = compilation._tracing_context()
    assert len({base, in_mesh, standard}) == 3


def test_the_user_path_around_a_fit_compiles_one_program_per_call(rng):
    """Building data, splitting it and asking for predictions, lists, neighbours, metrics and a fold-in.

    Each compiles at most the one program that does its work: no per-shape copies of host arrays
    (``jnp.asarray``), dtype conversions, eager gathers or eager random permutations (a split compiled
    22 programs, a ranking evaluation 4).  The sizes are unusual so nothing is cached in this process.
    """
    m, n, nnz = 53, 41, 911
    flat = rng.choice(m * n, nnz, replace=False)
    with compilations() as log:
        data = jmf.Sparse(flat // n, flat % n, rng.integers(1, 6, nnz).astype(np.float64), (m, n))
        jmf.Dense(rng.random((m, 7)))
        batch = jmf.stack([data, jmf.model_selection.subset(data, np.arange(0, nnz, 2))])
        jmf.stack([jmf.Dense(rng.random((m, 5))), jmf.Dense(rng.random((m, 5)), weights=np.ones((m, 5)))])
    assert log.count == 0
    with compilations() as log:
        train, test = jmf.model_selection.train_test_split(data, 0.25, key=0)
    assert log.count <= 1
    res = jmf.fit(train, jmf.solvers.ratings_als(l2=0.1), rank=3, key=0, max_iter=3, progress=False)
    f = res.factors
    calls = {
        "predict": lambda: jmf.cf.predict(f, np.asarray(test.rows), np.asarray(test.cols)),
        "recommend": lambda: jmf.cf.recommend(f, [0, 1, 2], n=5, seen=train),
        "similar_items": lambda: jmf.cf.similar_items(f, [0, 3], n=4),
        "ranking_metrics": lambda: jmf.metrics.ranking_metrics(f, test, k=5, train=train),
        "fold_in": lambda: jmf.cf.fold_in(f, jmf.solvers.ratings_als(l2=0.1),
                                          jmf.Sparse([0, 0], [1, 2], [4.0, 3.0], (1, n))),
    }
    for name, call in calls.items():
        with compilations() as log:
            call()
        assert log.count <= 1, (name, log.count)
    # members split over CPU devices: placed from the host, no slicing program per leaf shape
    import jax

    mesh = jmf.sharding.batch_mesh(jax.devices()[:2])
    with compilations() as log:
        jmf.fit_many(batch, jmf.solvers.ratings_als(l2=0.1), rank=2, key=0, max_iter=2, mesh=mesh, progress=False)
    assert log.count == 2  # start and advance
    # a list of mixed shapes: per bucket its two programs and one that splits the members out
    mats = [np.abs(rng.standard_normal((m - i, 9 + i))) for i in range(2)]
    with compilations() as log:
        jmf.fit_many(mats, jmf.solvers.hals(), rank=2, key=0, max_iter=2, progress=False)
    assert log.count <= 2 * 3
