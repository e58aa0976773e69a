"""The execution plan: layouts, device splits and chunks give the results of one plain call, and never hang.

Batches of small matrices are split over CPU devices, which run at once on
XLA's CPU worker pool; LAPACK-backed custom calls block on that pool, so a
split is planned only for programs without them.  The subprocess tests run
every solver and data kind with the device counts users have (1 and 2 CPU
devices, and 4), each under a timeout so that a deadlock fails the test.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmf
from jmf._src.run.executor import blocking_custom_calls

from .conftest import low_rank

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "execution_worker.py")


def _run_worker(n_devices, *flags, timeout=900):
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "xla_force_host_platform_device_count" not in f)
    env["JMF_CPU_DEVICES"] = str(n_devices)
    # The worker uses jmf's persistent compilation cache like any user process (JMF_CACHE_DIR is passed
    # through): a cached program runs exactly as a freshly compiled one, so a deadlock would still show,
    # and a warm run does not recompile ~150 programs (227 s of the suite's time with a private cache).
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, WORKER, str(n_devices), str(timeout - 30), *flags], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 and "ALL DONE" in proc.stdout, (
        f"worker on {n_devices} CPU device(s) failed (rc {proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(960)
def test_every_solver_and_data_kind_on_two_cpu_devices():
    cases = _run_worker(2)
    solvers = {c["solver"] for c in cases}
    assert {"adam", "als", "hals", "mu", "svd", "ratings_als-cholesky", "implicit_als", "bpmf", "bpr",
            "svdpp"} <= solvers
    assert {(c["solver"], c["kind"]) for c in cases} >= {("als", "weighted"), ("als", "sparse"), ("adam", "dense")}


@pytest.mark.multiprocess
@pytest.mark.timeout(400)
@pytest.mark.parametrize("n_devices", [1, 4])
def test_batched_als_that_deadlocked_finishes(n_devices):
    _run_worker(n_devices, "--quick", timeout=380)


# -- in-process: the plan changes nothing but speed --------------------------------------


def _assert_same(a, b, rtol, atol=1e-12):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_lapack_solvers_are_not_split_but_gradient_solvers_are():
    A = low_rank(np.random.default_rng(0), 6, 5, 2)
    from jmf._src.fit import fit_many  # noqa: F401  (the public path builds the same job)

    seen = {}
    import jmf._src.fit as fit_module

    real = fit_module.make_plan

    def spy(job, args, **kw):
        plan = real(job, args, **kw)
        seen[job.solver.name] = plan
        return plan

    fit_module.make_plan = spy
    try:
        jmf.fit_many(A, jmf.solvers.adam(1e-2), rank=2, n_restarts=4, key=0, max_iter=10, progress=False,
                     plan={"devices": 2})
        jmf.fit_many(A, jmf.solvers.als(l2=0.1), rank=2, n_restarts=4, key=0, max_iter=10, progress=False,
                     plan={"devices": 2})
    finally:
        fit_module.make_plan = real
    assert seen["adam"].n_devices == 2
    assert seen["als"].n_devices == 1 and "custom calls" in seen["als"].reason


def test_blocking_custom_calls_found_in_lowered_member_program():
    from jmf._src.init import get_initializer
    from jmf._src.run.driver import Args, Job
    from jmf._src.run.loop import iteration_schedule, run_config

    data = jmf.Dense(np.ones((5, 4)))
    key = jax.random.split(jax.random.key(0), 2)

    def calls(solver):
        job = Job(solver, run_config(10, 5, 2, False), get_initializer("random"), ("restart",))
        return blocking_custom_calls(job, Args(key, None, None, data, None, schedule=iteration_schedule(10, 5)))

    assert calls(jmf.solvers.adam(1e-2)) == frozenset()
    assert calls(jmf.solvers.hals()) == frozenset()
    assert any("potrf" in c or "cholesky" in c.lower() for c in calls(jmf.solvers.als(l2=0.1)))


@pytest.mark.parametrize("solver", ["adam", "hals"])
def test_device_split_equals_one_device(rng, solver):
    assert len(jax.devices()) >= 4, "conftest sets 4 simulated CPU devices"
    A = np.abs(low_rank(rng, 7, 5, 2, noise=0.1))
    s = jmf.solvers.adam(1e-2) if solver == "adam" else jmf.solvers.hals()
    kw = dict(ranks=[1, 2], n_restarts=5, key=3, max_iter=200, tol=1e-4, progress=False)
    split = jmf.fit_many(A, s, plan={"devices": 3}, **kw)  # the rank axis (2) padded to 3 devices
    one = jmf.fit_many(A, s, plan={"devices": 1}, **kw)
    _assert_same(split.result, one.result, rtol=1e-12)
    assert len(np.unique(np.asarray(one.n_iter))) > 1  # members froze at different times


@pytest.mark.parametrize("kind", ["dense", "sparse", "lanes"])
def test_members_split_evenly_along_another_axis_come_back_in_order(rng, monkeypatch, kind):
    """3 matrices x 4 restarts on 2 devices: the matrix axis (3) would pad a device with a repeat, so the
    restarts (4) are split instead; every member equals its one-device result, in the job's axis order."""
    import jmf._src.fit as fit_module

    chosen = []
    real = fit_module.balanced_job
    monkeypatch.setattr(fit_module, "balanced_job", lambda *a: chosen.append(real(*a)) or chosen[-1])
    As = np.stack([np.abs(low_rank(rng, 9, 7, 2, noise=0.1)) for _ in range(3)])
    layout = {}
    if kind == "sparse":
        rows, cols = np.nonzero(rng.random(As.shape[1:]) < 0.7)
        data = jmf.stack([jmf.Sparse(rows, cols, A[rows, cols], A.shape) for A in As])
        s = jmf.solvers.ratings_als(l2=0.1)  # CG solves: no LAPACK call, so members may split over devices
    elif kind == "lanes":
        data, s, layout = As, jmf.solvers.adam(1e-2), {"layout": "lanes"}
    else:
        data, s = As, jmf.solvers.hals()
    kw = dict(rank=2, n_restarts=4, key=3, max_iter=60, tol=1e-4, progress=False)
    split = jmf.fit_many(data, s, plan={"devices": 2, **layout}, **kw)
    assert chosen[-1] is not None and chosen[-1].axes == ("restart", "matrix")
    one = jmf.fit_many(data, s, plan={"devices": 1, **layout}, **kw)
    assert chosen[-1] is None and split.axes == one.axes == ("matrix", "restart")
    assert split.result.loss.shape == (3, 4)
    _assert_same(split.result, one.result, rtol=1e-5, atol=1e-6)
    # a callback sees the members as they run: the job's own order, padded
    seen = []
    jmf.fit_many(data, s, plan={"devices": 2, **layout}, callback=lambda info: seen.append(np.shape(info.loss)),
                 **kw)
    assert chosen[-1] is None and seen[0] == (3, 4)


@pytest.mark.x64  # the layouts agree to 1e-9 over 300 steps, stopping iterations included
@pytest.mark.parametrize("weighted", [False, True])
def test_lanes_layout_equals_vmapped_layout(rng, weighted):
    As = np.stack([low_rank(rng, 4, 3, 2, noise=0.1) for _ in range(3)])
    data = jmf.Dense(As, weights=(rng.random(As.shape) < 0.8).astype(float) if weighted else None)
    solver = jmf.solvers.adam(1e-2, loss=jmf.losses.frobenius(l2=(0.01, 0.02), l1=0.001))
    kw = dict(ranks=[1, 2], n_restarts=3, key=0, max_iter=300, tol=1e-5, progress=False)
    lanes = jmf.fit_many(data, solver, plan={"layout": "lanes", "lane_width": 4, "devices": 2}, **kw)
    vmapped = jmf.fit_many(data, solver, plan={"layout": "vmap", "devices": 1}, **kw)
    # Optax's step count is kept per lanes chunk, so a frozen member's count runs on (documented).
    _assert_same(lanes.result._replace(state=None), vmapped.result._replace(state=None), rtol=1e-9)
    floats = lambda s: [x for x in jax.tree_util.tree_leaves(s) if np.issubdtype(np.asarray(x).dtype, np.floating)]  # noqa: E731
    _assert_same(floats(lanes.result.state), floats(vmapped.result.state), rtol=1e-9)
    assert len(np.unique(np.asarray(vmapped.n_iter))) > 1  # members froze at different times


@pytest.mark.parametrize("case", ["grid", "bpmf", "stack"])
def test_sequential_layout_equals_vmapped_layout(case):
    """Members one after another ("map", each with its own loop) give the vmapped members' results."""
    table = jmf.datasets.synthetic_ratings(0, n_users=40, n_items=30, n_ratings=500).data
    kw = dict(ranks=[2, 3], key=1, progress=False, init="normal")
    if case == "grid":  # members stop at different iterations (tol), hyperparameters as an axis
        solver, kw = jmf.solvers.ratings_als(l2=np.array([0.05, 0.3]), solve="cholesky"), dict(kw, max_iter=40,
                                                                                               tol=1e-4)
    elif case == "bpmf":  # a sampler: state (keys, sample buffers) carried per member
        solver, kw = jmf.solvers.bpmf(burn_in=3, n_keep=4), dict(kw, max_iter=8, tol=None, check_every=4)
    else:  # a stack of matrices (the matrix axis outermost) and restarts
        solver = jmf.solvers.ratings_als(solve="cholesky")
        kw = dict(kw, n_restarts=2, max_iter=30, tol=1e-5)
        table = jmf.stack([table, table.take(np.arange(table.nnz - 40))])
    seq = jmf.fit_many(table, solver, plan={"layout": "map", "devices": 1}, **kw)
    vmapped = jmf.fit_many(table, solver, plan={"layout": "vmap", "devices": 1}, **kw)
    # float32 ratings: batched and unbatched kernels sum in different orders (same iterations, same statuses);
    # a sampler amplifies that rounding a little every sweep, while a mixed-up key would differ by O(1).
    rtol = 1e-3 if case == "bpmf" else 2e-5
    _assert_same(seq.result, vmapped.result, rtol=rtol, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(seq.n_iter), np.asarray(vmapped.n_iter))
    if case == "grid":
        assert len(np.unique(np.asarray(vmapped.n_iter))) > 1  # members stopped at different times


def test_large_sparse_members_run_one_after_another(rng, monkeypatch):
    import jmf._src.fit as fit_module

    seen = []
    real = fit_module.make_plan
    monkeypatch.setattr(fit_module, "make_plan", lambda job, args, **kw: seen.append(real(job, args, **kw)) or seen[-1])
    table = jmf.datasets.synthetic_ratings(0, n_users=400, n_items=300, n_ratings=20000).data
    jmf.fit_many(table, jmf.solvers.ratings_als(), ranks=[8, 16], key=0, max_iter=1, progress=False)
    jmf.fit_many(low_rank(rng, 6, 5, 2), jmf.solvers.als(), ranks=[1, 2], key=0, max_iter=1, progress=False)
    assert [p.layout for p in seen] == ["map", "vmap"]


def test_lanes_layout_refused_where_it_does_not_apply(rng):
    with pytest.raises(ValueError, match="lanes"):
        jmf.fit_many(low_rank(rng, 4, 3, 2), jmf.solvers.als(), rank=2, n_restarts=2, key=0,
                     plan={"layout": "lanes"})


@pytest.mark.parametrize("bad, match", [({"devices": 0}, "devices"), ({"layout": "rows"}, "layout"),
                                         ({"colour": 1}, "unknown"), ("vmap", "dict"), ({"devices": 64}, "CPU device")])
def test_bad_plan_is_refused(rng, bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        jmf.fit_many(low_rank(rng, 4, 3, 2), jmf.solvers.adam(1e-2), rank=2, n_restarts=2, key=0, max_iter=10,
                     progress=False, plan=bad)


def test_progress_and_callbacks_follow_the_silent_plan(rng):
    """A live bar or a callback only cuts the iterations into calls of the same programs."""
    A = np.abs(low_rank(rng, 4, 2, 2))
    solver = jmf.solvers.adam(1e-2)
    kw = dict(rank=2, n_restarts=300, key=4, max_iter=200, tol=1e-3)
    silent = jmf.fit_many(A, solver, progress=False, **kw)
    seen = []
    watched = jmf.fit_many(A, solver, progress="always", callback=lambda info: seen.append(info.iteration),
                           chunk_size=50, **kw)
    _assert_same(silent.result, watched.result, rtol=0)
    assert seen[:2] == [50, 100]


def test_lapack_primitives_found_in_nested_jaxprs_without_lowering():
    from jmf._src.run.executor import _LAPACK_PRIMITIVES, _primitives

    def body(i, x):
        return jax.lax.cond(i > 0, lambda y: jnp.linalg.cholesky(y @ y.T + jnp.eye(3)), lambda y: y, x)

    traced = jax.jit(lambda a: jax.lax.fori_loop(0, 3, body, a)).trace(jnp.eye(3))
    assert "cholesky" in _primitives(traced.jaxpr) & _LAPACK_PRIMITIVES
    plain = jax.jit(lambda a: jax.lax.fori_loop(0, 3, lambda i, x: x @ x, a)).trace(jnp.eye(3))
    assert not _primitives(plain.jaxpr) & _LAPACK_PRIMITIVES


def test_custom_calls_settled_from_primitives_or_else_from_the_lowering(monkeypatch):
    """XLA-only programs and LAPACK ones are settled without lowering; a callback is found in the lowering."""
    from jmf._src.run.executor import _custom_calls

    xla_only = jax.jit(lambda a: jax.lax.fori_loop(0, 3, lambda i, x: jnp.sort(x @ x) + i, a)).trace(jnp.eye(3))
    lapack = jax.jit(lambda a: jnp.linalg.cholesky(a)).trace(jnp.eye(3))
    callback = jax.jit(lambda a: jax.pure_callback(np.sin, jax.ShapeDtypeStruct((3, 3), a.dtype), a)).trace(
        jnp.eye(3))
    assert _custom_calls(callback), "a host callback is a custom call"
    with monkeypatch.context() as patch:
        patch.setattr(jax.stages.Traced, "lower", lambda self, *a, **k: pytest.fail("lowered"))
        assert _custom_calls(xla_only) == frozenset()
        assert _custom_calls(lapack) == frozenset({"LAPACK (cholesky)"})


def test_sampler_members_run_on_several_devices():
    """Bayesian PMF at rank <= 15 factors with plain XLA code, so its chains may split over CPU devices."""
    data = jmf.datasets.synthetic_ratings(0, n_users=40, n_items=30, n_ratings=500).data
    seen = {}
    import jmf._src.fit as fit_module

    real = fit_module.make_plan

    def spy(job, args, **kw):
        seen[job.cfg.width] = plan = real(job, args, **kw)
        return plan

    kw = dict(n_restarts=2, key=0, max_iter=4, tol=None, progress=False, plan={"devices": 2})
    fit_module.make_plan = spy
    try:
        jmf.fit_many(data, jmf.solvers.bpmf(burn_in=1, n_keep=2), rank=15, **kw)
        jmf.fit_many(data, jmf.solvers.bpmf(burn_in=1, n_keep=2), rank=16, **kw)
    finally:
        fit_module.make_plan = real
    assert seen[15].n_devices == 2
    assert seen[16].n_devices == 1 and "custom calls" in seen[16].reason


def test_member_step_traced_once_when_members_split_over_devices(monkeypatch):
    """The pool-safety check traces the member program in the mesh's context, so the run reuses that trace.

    Traced outside ``shard_map``, the check's trace of the step missed JAX's tracing cache inside it and
    every device-split run traced the solver's step twice (a Gibbs sweep: 0.4 s of a warm CLI run).
    """
    data = jmf.datasets.synthetic_ratings(1, n_users=30, n_items=20, n_ratings=300).data
    base = jmf.solvers.bpmf(burn_in=1, n_keep=2)
    traced = []

    def step(f, s, d, mask=None):
        traced.append(1)  # runs once per trace, never per sweep
        return base.step(f, s, d, mask)

    solver = base._replace(step=step, name="bpmf-counted")
    import jmf._src.fit as fit_module

    plans = []
    real = fit_module.make_plan
    monkeypatch.setattr(fit_module, "make_plan", lambda job, args, **kw: plans.append(real(job, args, **kw))
                        or plans[-1])
    jmf.fit_many(data, solver, rank=3, n_restarts=2, key=0, max_iter=3, tol=None, progress=False,
                 plan={"devices": 2})
    assert [p.n_devices for p in plans] == [2]
    assert len(traced) == 1
