"""Batch fitting: mixed shapes, memory chunking, sharding over devices and processes, restart alignment."""

import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmf

from .conftest import low_rank

KW = dict(max_iter=150, tol=1e-4, progress=False)


def _assert_same(a, b, rtol=1e-9, atol=1e-12):
    np.testing.assert_allclose(a.factors.W, b.factors.W, rtol=rtol, atol=atol)
    np.testing.assert_allclose(a.factors.H, b.factors.H, rtol=rtol, atol=atol)
    np.testing.assert_allclose(a.loss, b.loss, rtol=rtol)
    np.testing.assert_array_equal(a.n_iter, b.n_iter)
    np.testing.assert_array_equal(a.status, b.status)


def test_mixed_shapes_dense_equal_fitting_each_alone(rng):
    mats = [low_rank(rng, 8, 6, 2), low_rank(rng, 10, 5, 2), low_rank(rng, 8, 6, 2), low_rank(rng, 7, 9, 2)]
    solver = jmf.solvers.adam(1e-2)
    out = jmf.fit_many(mats, solver, rank=2, key=3, max_buckets=2, **KW)
    assert isinstance(out, list) and len(out) == 4
    for A, res in zip(mats, out):
        alone = jmf.fit(A, solver, rank=2, key=3, **KW)
        assert res.factors.W.shape == (A.shape[0], 2) and res.factors.H.shape == (2, A.shape[1])
        # Padded to a common shape, the float32 sums run in another order: the fits are apart by rounding.
        _assert_same(res.result, alone, rtol=2e-5, atol=1e-6)


def test_mixed_shapes_sparse_with_restarts(rng):
    mats = []
    for m, n in [(9, 7), (6, 8)]:
        A = low_rank(rng, m, n, 2)
        mats.append(jmf.Sparse.from_dense(A, mask=rng.random((m, n)) < 0.7))
    keys = jax.random.split(jax.random.key(0), 3)
    solver = jmf.solvers.adam(1e-2)
    out = jmf.fit_many(mats, solver, rank=2, keys=keys, **KW)
    for d, res in zip(mats, out):
        assert res.axes == ("restart",)
        alone = jmf.fit_many(d, solver, rank=2, keys=keys, **KW)
        # Padded to a common shape, the float32 sums run in another order: 150 Adam steps apart by rounding.
        _assert_same(res.result, alone.result, rtol=2e-5, atol=1e-6)


def test_mixed_shapes_errors(rng):
    with pytest.raises(ValueError, match="out of range for data\\[1\\]"):
        jmf.fit_many([np.ones((5, 5)), np.ones((2, 6))], jmf.solvers.adam(1e-2), rank=3, key=0)
    with pytest.raises(TypeError, match="mixes Dense and Sparse"):
        jmf.fit_many([np.ones((3, 3)), jmf.Sparse([0], [0], [1.0], (3, 3))], jmf.solvers.adam(1e-2), rank=1, key=0)
    with pytest.raises(ValueError, match="empty list"):
        jmf.fit_many([], jmf.solvers.adam(1e-2), rank=1, key=0)


def test_bucket_shapes_limit():
    from jmf._src.fit import _bucket_shapes

    shapes = [(m, n) for m in range(10, 40, 3) for n in (5, 17, 33)]
    padded = _bucket_shapes(shapes, 4)
    assert len(set(padded)) <= 4
    assert all(pm >= m and pn >= n for (m, n), (pm, pn) in zip(shapes, padded))
    assert _bucket_shapes([(3, 4), (5, 6)], 8) == [(3, 4), (5, 6)]


def test_memory_budget_chunks_give_identical_results_one_compile(rng):
    As = np.stack([low_rank(rng, 10, 8, 2) for _ in range(7)])
    data = jmf.Dense(As)
    solver = jmf.solvers.adam(2e-2)
    keys = jax.random.split(jax.random.key(1), 2)
    whole = jmf.fit_many(data, solver, rank=2, keys=keys, **KW)
    from jmf._src.compilation import compilations
    from jmf._src.run.driver import Args, Job
    from jmf._src.run.executor import member_bytes
    from jmf._src.run.loop import iteration_schedule, run_config

    # budget for about 3 matrices x 2 restarts -> chunks of 3, last chunk padded
    job_bytes = member_bytes(Job(solver, run_config(150, 10, 2, False), None, ("matrix", "restart")),
                             Args(keys, None, None, data, None, schedule=iteration_schedule(150, 10)))
    budget = int(3.5 * (2 * job_bytes + As[0].nbytes))
    with compilations() as log:
        chunked = jmf.fit_many(data, solver, rank=2, keys=keys, memory_budget=budget, **KW)
    # one start and one advance program for all three chunks (plus tiny slicing/concatenation kernels)
    assert log.count <= 8
    with compilations() as again:
        jmf.fit_many(data, solver, rank=2, keys=keys, memory_budget=budget, **KW)
    assert again.count == 0
    assert chunked.loss.shape == (7, 2)
    _assert_same(chunked.result, whole.result, rtol=1e-12)


def test_sharded_over_four_devices_equals_single_device(rng):
    assert len(jax.devices()) >= 4, "conftest sets 4 simulated CPU devices"
    mesh = jmf.sharding.batch_mesh(jax.devices()[:4])
    A = low_rank(rng, 12, 9, 3, noise=0.1)
    solver = jmf.solvers.adam(1e-2)
    # outer axis = restarts (6, padded to 8 for 4 devices)
    plain = jmf.fit_many(A, solver, rank=3, n_restarts=6, key=0, **KW)
    sharded = jmf.fit_many(A, solver, rank=3, n_restarts=6, key=0, mesh=mesh, **KW)
    _assert_same(sharded.result, plain.result, rtol=1e-12)
    # outer axis = matrices, with ranks inside
    As = jmf.Dense(np.stack([low_rank(rng, 10, 8, 2) for _ in range(4)]))
    plain = jmf.fit_many(As, solver, ranks=[1, 2], key=0, **KW)
    sharded = jmf.fit_many(As, solver, ranks=[1, 2], key=0, mesh=mesh, **KW)
    assert sharded.axes == ("matrix", "rank")
    _assert_same(sharded.result, plain.result, rtol=1e-12)
    # outer axis = ranks
    plain = jmf.fit_many(A, solver, ranks=[1, 2, 3], key=0, **KW)
    sharded = jmf.fit_many(A, solver, ranks=[1, 2, 3], key=0, mesh=mesh, **KW)
    _assert_same(sharded.result, plain.result, rtol=1e-12)


def test_mesh_errors():
    mesh = jmf.sharding.batch_mesh(jax.devices()[:2])
    with pytest.raises(ValueError, match="needs a batch"):
        jmf.fit_many(np.ones((4, 3)), jmf.solvers.adam(1e-2), rank=1, key=0, mesh=mesh)
    with pytest.raises(TypeError, match="Mesh"):
        jmf.fit_many(np.ones((4, 3)), jmf.solvers.adam(1e-2), rank=1, n_restarts=2, key=0, mesh="cpu")
    with pytest.raises(ValueError, match="not both"):
        jmf.fit_many(np.ones((4, 3)), jmf.solvers.adam(1e-2), rank=1, n_restarts=2, key=0, mesh=mesh,
                     plan={"devices": 2})


def test_callback_with_a_mesh_sees_every_member(rng):
    mesh = jmf.sharding.batch_mesh(jax.devices()[:2])
    A = low_rank(rng, 6, 5, 2)
    seen = []
    kw = dict(rank=2, n_restarts=5, key=0, max_iter=40, tol=None, progress=False)
    watched = jmf.fit_many(A, jmf.solvers.adam(1e-2), mesh=mesh, chunk_size=20,
                           callback=lambda info: seen.append((info.iteration, info.loss.shape)), **kw)
    plain = jmf.fit_many(A, jmf.solvers.adam(1e-2), **kw)
    assert seen == [(20, (5,)), (40, (5,))]
    _assert_same(watched.result, plain.result, rtol=1e-12)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.x64  # the worker processes run in float64; the single-process fit must too (1e-10)
@pytest.mark.multiprocess
def test_multihost_two_processes(tmp_path):
    worker = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, worker, str(port), str(pid), str(tmp_path / f"out{pid}.npz")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for pid in (0, 1)]
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outputs.append(out.decode(errors="replace"))
        assert p.returncode == 0, outputs[-1][-3000:]
    r0, r1 = (np.load(tmp_path / f"out{pid}.npz") for pid in (0, 1))
    assert int(r0["n_processes"]) == 2 and int(r0["n_devices"]) == 4
    np.testing.assert_array_equal(r0["W"], r1["W"])  # both processes gathered the same result
    # equal to the single-process run of the same program
    A = np.random.default_rng(42).random((8, 12, 9))  # as in the worker
    single = jmf.fit_many(jmf.Dense(A), jmf.solvers.adam(1e-2), rank=3, key=0, max_iter=200, tol=1e-4,
                          progress=False)
    np.testing.assert_allclose(r0["W"], single.factors.W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r0["loss"], single.loss, rtol=1e-10)
    np.testing.assert_array_equal(r0["n_iter"], single.n_iter)


def test_progress_over_memory_chunks(rng):
    As = jmf.Dense(np.stack([low_rank(rng, 6, 5, 2) for _ in range(4)]))
    res = jmf.fit_many(As, jmf.solvers.adam(1e-2), rank=2, key=0, max_iter=40, progress="always",
                       memory_budget=1, tol=None)
    assert res.loss.shape == (4,) and np.all(np.asarray(res.n_iter) == 40)


def _fake_restarts(rng, perms, noise=0.0, signs=None):
    m, n, k = 10, 8, len(perms[0])
    W0, H0 = rng.random((m, k)), rng.random((k, n))
    Ws, Hs = [], []
    for s, p in enumerate(perms):
        W, H = W0[:, p].copy(), H0[p].copy()
        if signs is not None:
            W, H = W * signs[s], H * signs[s][:, None]
        Ws.append(W + noise * rng.standard_normal(W.shape))
        Hs.append(H + noise * rng.standard_normal(H.shape))
    S = len(perms)
    result = jmf.FitResult(jmf.Factors(jnp.asarray(np.stack(Ws)), jnp.asarray(np.stack(Hs))),
                           loss=jnp.arange(S, dtype=jnp.float32), loss_history=jnp.zeros((S, 1)),
                           iterations=np.zeros(1, np.int32), n_iter=jnp.zeros(S, jnp.int32),
                           status=jnp.zeros(S, jnp.int32))
    return jmf.FitManyResult(result, ("restart",)), W0, H0


def test_align_restarts_recovers_permutations(rng):
    perms = [np.arange(4), np.array([2, 0, 3, 1]), np.array([3, 2, 1, 0])]
    many, W0, H0 = _fake_restarts(rng, perms)
    al = jmf.align_restarts(many)
    assert int(al.reference) == 0  # lowest loss
    for s in range(3):
        # permuted exactly: the float64 factors rounded to float32 (how the results store them)
        np.testing.assert_allclose(al.factors.H[s], H0.astype(np.float32), rtol=1e-12)
        np.testing.assert_allclose(al.factors.W[s], W0.astype(np.float32), rtol=1e-12)
    np.testing.assert_allclose(al.stability, 1.0)
    noisy, _, _ = _fake_restarts(rng, perms, noise=0.3)
    assert float(jmf.align_restarts(noisy).stability) < 0.99


def test_align_restarts_signed_and_errors(rng):
    perms = [np.arange(3), np.array([1, 2, 0])]
    many, W0, H0 = _fake_restarts(rng, perms, signs=[np.ones(3), np.array([1.0, -1.0, 1.0])])
    al = jmf.align_restarts(many)
    np.testing.assert_allclose(al.factors.H[1], H0.astype(np.float32), rtol=1e-12)  # signs and order are exact
    single = jmf.FitManyResult(many.result, ("matrix",))
    with pytest.raises(ValueError, match="no restart axis"):
        jmf.align_restarts(single)
    with pytest.raises(ValueError, match="on must be"):
        jmf.align_restarts(many, on="X")


def test_align_real_fit_with_ranks(rng):
    A = low_rank(rng, 20, 15, 3, nonnegative=True)
    many = jmf.fit_many(A, jmf.solvers.adam(1e-2, projection="nonnegative"), ranks=[2, 3], n_restarts=4, key=0,
                        max_iter=400, progress=False)
    al = jmf.align_restarts(many)
    assert al.stability.shape == (2,) and al.permutation.shape == (2, 4, 3)
    # padded component (rank 2 member) is not matched
    assert np.isnan(al.similarity[0, :, 2]).all()
    np.testing.assert_array_equal(al.permutation[0, :, 2], 2)


