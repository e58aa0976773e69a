"""The driver: convergence to references, statuses, batching over restarts and ranks, reproducibility."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmf
from jmf._src.compilation import compilations

from .conftest import low_rank


def svd_optimum(A, k):
    s = np.linalg.svd(A, compute_uv=False)
    return np.sum(s[k:] ** 2) / A.size


def test_adam_reaches_svd_optimum(rng):
    A = low_rank(rng, 30, 20, 3, noise=0.1)
    schedule = optax.exponential_decay(3e-2, transition_steps=1000, decay_rate=0.3)
    res = jmf.fit(A, jmf.solvers.gradient(optax.adam(schedule)), rank=3, key=jax.random.key(0),
                  init="normal", max_iter=6000, tol=None, progress=False)
    opt = svd_optimum(A, 3)
    assert res.status_name == "MAX_ITER"
    assert float(res.loss) >= opt * (1 - 1e-9)
    assert (float(res.loss) - opt) / opt < 1e-3


def test_history_and_iterations_layout(rng):
    A = low_rank(rng, 8, 6, 2)
    res = jmf.fit(A, jmf.solvers.adam(1e-2), rank=2, key=0, max_iter=95, tol=None, check_every=10, progress=False)
    np.testing.assert_array_equal(res.iterations, [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95])
    assert res.loss_history.shape == (11,)
    assert int(res.n_iter) == 95
    np.testing.assert_allclose(res.loss_history[-1], res.loss)
    np.testing.assert_allclose(res.loss, jmf.losses.frobenius().value(res.factors, jmf.Dense(A)), rtol=1e-12)


def test_tol_rule_is_sklearn_convention(rng):
    A = low_rank(rng, 20, 15, 3, noise=0.05, nonnegative=True)
    tol = 1e-3
    res = jmf.fit(A, jmf.solvers.adam(1e-2), rank=3, key=1, max_iter=5000, tol=tol, progress=False)
    assert res.status_name == "CONVERGED"
    h = np.asarray(res.loss_history)
    j = int(res.n_iter) // 10
    assert np.all(np.isnan(h[j + 1:]))
    rel = np.abs(h[:-1] - h[1:]) / h[0]
    assert rel[j - 1] < tol  # the stopping check
    assert np.all(rel[: j - 1] >= tol)  # no earlier check would have stopped


def test_same_key_same_result_and_different_keys_differ(rng):
    A = low_rank(rng, 10, 8, 2)
    kw = dict(rank=2, max_iter=50, tol=None, progress=False)
    r1 = jmf.fit(A, jmf.solvers.adam(1e-2), key=jax.random.key(3), **kw)
    r2 = jmf.fit(A, jmf.solvers.adam(1e-2), key=jax.random.key(3), **kw)
    r3 = jmf.fit(A, jmf.solvers.adam(1e-2), key=jax.random.key(4), **kw)
    np.testing.assert_array_equal(r1.factors.W, r2.factors.W)
    np.testing.assert_array_equal(r1.loss_history, r2.loss_history)
    assert not np.allclose(r1.factors.W, r3.factors.W)


def test_diverged_keeps_last_finite_factors(rng):
    A = low_rank(rng, 10, 8, 2) * 10
    res = jmf.fit(A, jmf.solvers.sgd(50.0), rank=2, key=0, max_iter=500, tol=None, check_every=1, progress=False)
    assert res.status_name == "DIVERGED"
    assert int(res.n_iter) < 500
    assert np.isfinite(np.asarray(res.factors.W)).all() and np.isfinite(np.asarray(res.factors.H)).all()
    assert np.isfinite(float(res.loss))
    np.testing.assert_allclose(res.loss, jmf.losses.frobenius().value(res.factors, jmf.Dense(A)), rtol=1e-10)
    h = np.asarray(res.loss_history)
    bad = h[int(res.n_iter)]  # the failing check is recorded
    assert not np.isfinite(bad) or bad > 1e4 * h[0]


@pytest.mark.x64  # batched and looped fits agree to 1e-9, stopping iterations included
def test_fit_many_restarts_equals_loop_of_fit(rng):
    A = low_rank(rng, 12, 9, 3, noise=0.1)
    keys = jax.random.split(jax.random.key(0), 5)
    solver = jmf.solvers.adam(1e-2)
    kw = dict(max_iter=300, tol=1e-4, progress=False)
    many = jmf.fit_many(A, solver, rank=3, keys=keys, **kw)
    assert many.axes == ("restart",) and many.loss.shape == (5,)
    for i in range(5):
        single = jmf.fit(A, solver, rank=3, key=keys[i], **kw)
        np.testing.assert_allclose(many.factors.W[i], single.factors.W, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(many.loss_history[i], single.loss_history, rtol=1e-9, equal_nan=True)
        assert int(many.n_iter[i]) == int(single.n_iter)
        assert int(many.status[i]) == int(single.status)


def test_fit_many_ranks_masking_is_exact(rng):
    A = low_rank(rng, 12, 10, 4, noise=0.1)
    ranks = [1, 2, 4]
    keys = jax.random.split(jax.random.key(1), 3)
    solver = jmf.solvers.adam(1e-2)
    kw = dict(max_iter=200, tol=None, progress=False)
    many = jmf.fit_many(A, solver, ranks=ranks, keys=keys, **kw)
    assert many.axes == ("rank", "restart") and many.loss.shape == (3, 3)
    assert many.factors.W.shape == (3, 3, 12, 4)
    for i, r in enumerate(ranks):
        # padded columns exactly zero
        assert np.all(np.asarray(many.factors.W[i, :, :, r:]) == 0)
        assert np.all(np.asarray(many.factors.H[i, :, r:, :]) == 0)
        for j in range(3):
            single = jmf.fit(A, solver, rank=r, key=keys[j], **kw)
            member = many.member(i, j)
            assert member.factors.W.shape == (12, r)
            # float32: the padded batch sums in another order (the padding itself is checked exactly above)
            np.testing.assert_allclose(member.factors.W, single.factors.W, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(member.loss, single.loss, rtol=1e-5)


def test_fit_many_members_freeze_with_own_n_iter(rng):
    A = low_rank(rng, 15, 10, 3, noise=0.1)
    many = jmf.fit_many(A, jmf.solvers.adam(1e-2), ranks=[1, 3], n_restarts=4, key=0,
                        max_iter=3000, tol=1e-4, progress=False)
    n_iter = np.asarray(many.n_iter)
    assert len(np.unique(n_iter)) > 1  # members stop at different times
    for idx in np.ndindex(n_iter.shape):
        h = np.asarray(many.loss_history[idx])
        assert np.all(np.isnan(h[n_iter[idx] // 10 + 1:]))


def test_best_picks_lowest_loss_per_rank(rng):
    A = low_rank(rng, 10, 8, 3, noise=0.2)
    many = jmf.fit_many(A, jmf.solvers.adam(5e-2), ranks=[2, 3], n_restarts=6, key=2, max_iter=100,
                        tol=None, progress=False)
    best = many.best()
    assert best.axes == ("rank",) and best.loss.shape == (2,)
    np.testing.assert_allclose(best.loss, np.min(np.asarray(many.loss), axis=1))
    i = np.argmin(np.asarray(many.loss), axis=1)
    np.testing.assert_array_equal(best.factors.W[1], many.factors.W[1, i[1]])


def test_batch_of_matrices(rng):
    As = np.stack([low_rank(rng, 8, 6, 2) for _ in range(3)])
    many = jmf.fit_many(jmf.Dense(As), jmf.solvers.adam(1e-2), rank=2, key=0, max_iter=100, tol=None, progress=False)
    assert many.axes == ("matrix",) and many.loss.shape == (3,)
    for b in range(3):
        single = jmf.fit(As[b], jmf.solvers.adam(1e-2), rank=2, key=0, max_iter=100, tol=None, progress=False)
        # float32: batched and single programs round differently over 100 Adam steps
        np.testing.assert_allclose(many.factors.W[b], single.factors.W, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="fit_many"):
        jmf.fit(jmf.Dense(As), jmf.solvers.adam(1e-2), rank=2, key=0)


def test_sparse_equals_masked_dense(rng):
    A = low_rank(rng, 12, 9, 2, noise=0.1)
    mask = rng.random(A.shape) < 0.7
    kw = dict(rank=2, key=5, max_iter=100, tol=None, progress=False)
    rs = jmf.fit(jmf.Sparse.from_dense(A, mask=mask), jmf.solvers.adam(1e-2), **kw)
    rd = jmf.fit(jmf.Dense(A, weights=mask.astype(float)), jmf.solvers.adam(1e-2), **kw)
    # float32: the two paths sum in another order, 100 Adam steps apart by rounding
    np.testing.assert_allclose(rs.factors.W, rd.factors.W, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rs.loss_history, rd.loss_history, rtol=1e-5)


def test_biases_are_fitted(rng):
    A = low_rank(rng, 20, 15, 2, noise=0.01) + rng.standard_normal(20)[:, None] + 3.0
    res = jmf.fit(A, jmf.solvers.adam(3e-2, biases=True), rank=2, key=0, max_iter=2000, tol=None,
                  init="normal", progress=False)
    f = res.factors
    assert f.row_bias.shape == (20,) and f.col_bias.shape == (15,) and f.offset.shape == ()
    assert float(res.loss) < 1e-3


def test_minibatch_epochs_reduce_loss_and_are_reproducible(rng):
    A = low_rank(rng, 40, 30, 3, noise=0.05)
    mask = rng.random(A.shape) < 0.5
    data = jmf.Sparse.from_dense(A, mask=mask)
    solver = jmf.solvers.adam(3e-2, batch_size=64)
    kw = dict(rank=3, key=1, init="normal", max_iter=30, tol=None, check_every=1, progress=False)
    r1 = jmf.fit(data, solver, **kw)
    r2 = jmf.fit(data, solver, **kw)
    np.testing.assert_array_equal(r1.factors.W, r2.factors.W)
    h = np.asarray(r1.loss_history)
    assert h[-1] < 0.1 * h[0]
    with pytest.raises(ValueError, match="does not support dense"):
        jmf.fit(A, solver, rank=3, key=1)


def test_projected_gradient_stays_nonnegative(rng):
    A = low_rank(rng, 10, 8, 2, nonnegative=True)
    res = jmf.fit(A, jmf.solvers.adam(1e-2, projection="nonnegative"), rank=2, key=0, init="normal",
                  max_iter=200, progress=False)
    assert float(jnp.min(res.factors.W)) >= 0 and float(jnp.min(res.factors.H)) >= 0
    with pytest.raises(ValueError, match="negative observed entries"):
        jmf.fit(A - 1.0, jmf.solvers.adam(1e-2, projection="nonnegative"), rank=2, key=0)


def test_init_factors_and_warm_start(rng):
    A = low_rank(rng, 10, 8, 2)
    first = jmf.fit(A, jmf.solvers.adam(1e-2), rank=2, key=0, max_iter=100, tol=None, progress=False)
    again = jmf.fit(A, jmf.solvers.adam(1e-2), init=first.factors, max_iter=100, tol=None, progress=False)
    assert float(again.loss) < float(first.loss)
    np.testing.assert_allclose(again.loss_history[0], first.loss, rtol=1e-12)


def test_callback_chunks_match_single_call_without_recompiling(rng):
    A = low_rank(rng, 10, 8, 2)
    solver = jmf.solvers.adam(1e-2)
    kw = dict(rank=2, key=0, max_iter=200, tol=None, progress=False)
    plain = jmf.fit(A, solver, **kw)
    seen = []
    jmf.fit(A, solver, callback=lambda info: seen.append(info.iteration), chunk_size=50, **kw)  # warm up
    seen.clear()
    with compilations() as log:
        chunked = jmf.fit(A, solver, callback=lambda info: seen.append((info.iteration, float(info.loss))),
                          chunk_size=50, **kw)
    assert log.count == 0
    assert [s[0] for s in seen] == [50, 100, 150, 200]
    np.testing.assert_allclose(chunked.factors.W, plain.factors.W, rtol=1e-12)
    stopped = jmf.fit(A, solver, callback=lambda info: info.iteration >= 100, chunk_size=50, **kw)
    assert stopped.status_name == "STOPPED" and int(stopped.n_iter) == 100


def test_progress_bar_runs(rng, capsys):
    A = low_rank(rng, 6, 5, 2)
    res = jmf.fit(A, jmf.solvers.adam(1e-2), rank=2, key=0, max_iter=40, progress="always")
    assert int(res.n_iter) > 0


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(rank=0), ValueError, "rank must be >= 1"),
        (dict(rank=9), ValueError, "out of range"),
        (dict(rank=2.5), TypeError, "rank must be an int"),
        (dict(rank=2, key=None), TypeError, "key is required"),
        (dict(rank=2, key="seed"), TypeError, "key must be"),
        (dict(rank=2, key=1.5), TypeError, "key must be"),
        (dict(rank=2, key=np.array([1, 2, 3])), TypeError, r"key must be .* int64 array of shape \(3,\)"),
        (dict(rank=2, key=jnp.array([1.0, 2.0])), TypeError, "key must be"),  # failed inside JAX
        (dict(rank=2, key=jax.random.split(jax.random.key(0), 3)), TypeError, "single PRNG key"),
        (dict(rank=2, key=2**70), ValueError, "does not fit in 64 bits"),  # was an OverflowError
        (dict(rank=2, tol="abc"), TypeError, "tol must be"),
        (dict(rank=2, max_iter=0), ValueError, "max_iter"),
        (dict(rank=2, tol=-1.0), ValueError, "tol"),
        (dict(rank=2, check_every=0), ValueError, "check_every"),
        (dict(rank=2, init="bogus"), ValueError, "init must be one of"),
        (dict(init=jmf.Factors(jnp.ones((3, 2)), jnp.ones((2, 5)))), ValueError, "init factors"),
        (dict(ranks=[2, 0]), ValueError, r"ranks\[i\]"),
        (dict(rank=2, keys=jnp.ones((3,))), ValueError, "keys must be"),
        (dict(rank=2, keys=jnp.ones((3, 2))), TypeError, "keys must be"),  # float "keys" failed inside JAX
    ],
)
def test_fit_argument_errors(kwargs, exc, match):
    A = np.ones((6, 5))
    kwargs = {"key": 0, **kwargs}
    fn = jmf.fit_many if ("ranks" in kwargs or "keys" in kwargs) else jmf.fit
    if "keys" in kwargs:
        kwargs.pop("key")
    with pytest.raises(exc, match=match):
        fn(A, jmf.solvers.adam(1e-2), progress=False, **kwargs)


def test_numpy_tol_and_raw_uint32_key_are_accepted():
    A = low_rank(np.random.default_rng(0), 6, 5, 2)
    ref = jmf.fit(A, jmf.solvers.adam(1e-2), rank=2, key=3, max_iter=20, tol=1e-4, progress=False)
    res = jmf.fit(A, jmf.solvers.adam(1e-2), rank=2, key=np.array([0, 3], np.uint32), max_iter=20,
                  tol=np.float32(1e-4), progress=False)  # np.float32 tol was refused
    np.testing.assert_array_equal(np.asarray(res.factors.W), np.asarray(ref.factors.W))
    assert int(res.n_iter) == int(ref.n_iter)


def test_solver_type_and_hyperparameter_errors():
    with pytest.raises(TypeError, match="Solver"):
        jmf.fit(np.ones((3, 3)), optax.adam(1e-2), rank=1, key=0)
    with pytest.raises(TypeError, match="GradientTransformation"):
        jmf.solvers.gradient("adam")
    with pytest.raises(ValueError, match="learning_rate"):
        jmf.solvers.adam(-1.0)
    with pytest.raises(ValueError, match="projection"):
        jmf.solvers.adam(1e-2, projection="positive")
    with pytest.raises(ValueError, match="batch_size"):
        jmf.solvers.adam(1e-2, batch_size=0)


def test_factories_are_memoized():
    assert jmf.solvers.adam(1e-2) is jmf.solvers.adam(1e-2)
    assert jmf.solvers.adam(1e-2) is not jmf.solvers.adam(2e-2)


def test_finite_blow_up_with_tol_is_diverged_not_converged(rng):
    A = low_rank(rng, 10, 8, 2)
    res = jmf.fit(A, jmf.solvers.sgd(10.0), rank=2, key=0, max_iter=200, tol=1e-4, check_every=1, progress=False)
    h = np.asarray(res.loss_history)
    assert res.status_name == "DIVERGED"
    assert np.nanmax(h[np.isfinite(h)]) > 1e4 * h[0] or not np.isfinite(h[int(res.n_iter)])
    assert float(res.loss) <= 1e4 * h[0]


def test_int_seed_equals_explicit_key(rng):
    A = low_rank(rng, 6, 5, 2)
    kw = dict(rank=2, max_iter=20, tol=None, progress=False)
    a = jmf.fit(A, jmf.solvers.adam(1e-2), key=7, **kw)
    b = jmf.fit(A, jmf.solvers.adam(1e-2), key=jax.random.key(7), **kw)
    np.testing.assert_array_equal(a.factors.W, b.factors.W)


def test_biases_follow_the_solver_configuration(rng):
    A = low_rank(rng, 8, 6, 2)
    with pytest.raises(ValueError, match="configured without biases"):
        jmf.fit(A, jmf.solvers.adam(1e-2), rank=2, key=0, biases=True, progress=False)
    with pytest.raises(ValueError, match="configured to fit biases"):
        jmf.fit(A, jmf.solvers.als(biases=True), rank=2, key=0, biases=False, progress=False)
    with pytest.raises(TypeError, match="biases must be a bool"):
        jmf.fit(A, jmf.solvers.als(), rank=2, key=0, biases="yes", progress=False)
    f = jmf.Factors(jnp.ones((8, 2)), jnp.ones((2, 6)), jnp.zeros(8), jnp.zeros(6), jnp.asarray(0.0))
    with pytest.raises(ValueError, match="carry biases"):
        jmf.fit(A, jmf.solvers.als(), init=f, progress=False)
    res = jmf.fit(A, jmf.solvers.als(l2=0.1, biases=True), rank=2, key=0, biases=True, max_iter=5, progress=False)
    assert res.factors.row_bias.shape == (8,) and res.factors.offset is not None


def _direct_solver(value):
    """A toy direct method: W and H filled with ``value`` (rank-masked), the Frobenius loss."""

    def direct(key, data, width, mask):
        m, n = data.shape
        f = jmf.Factors(jnp.full((m, width), value, data.dtype), jnp.full((width, n), value, data.dtype))
        return f if mask is None else f._replace(W=f.W * mask[None, :], H=f.H * mask[:, None])

    return jmf.solvers.Solver(init=lambda f, d, k=None: jmf.solvers.EmptyState(), step=None,
                              loss=jmf.losses.frobenius(), name=f"direct({value})", direct=direct)


def test_direct_methods_run_once(rng):
    A = np.ones((6, 5))
    good = _direct_solver(1.0)  # W H = 2 everywhere at rank 2, exact at rank 1
    many = jmf.fit_many(A, good, ranks=[1, 2], n_restarts=3, key=0, max_iter=50, progress=False)
    assert np.all(np.asarray(many.status) == int(jmf.Status.CONVERGED)) and np.all(np.asarray(many.n_iter) == 1)
    np.testing.assert_allclose(np.asarray(many.loss), [[0.0] * 3, [1.0] * 3])
    h = np.asarray(many.loss_history)
    np.testing.assert_allclose(h[..., 1], np.asarray(many.loss))
    assert np.isfinite(h[..., 0]).all() and np.isnan(h[..., 2:]).all()
    assert np.all(np.asarray(many.factors.W)[0, :, :, 1] == 0)  # the rank mask reaches the direct method
    # A callback run (time chunks) sees the finished member and computes the same thing.
    seen = []
    res = jmf.fit(A, good, rank=1, key=0, max_iter=50, callback=lambda info: seen.append(info.iteration),
                  chunk_size=10, progress=False)
    assert int(res.n_iter) == 1 and float(res.loss) == 0.0 and len(seen) == 1
    # A non-finite solution is DIVERGED and keeps the start, as the loop would.
    bad = jmf.fit(A, _direct_solver(float("nan")), rank=2, key=0, init="uniform", progress=False)
    start = jmf.init.uniform(jax.random.key(0), jmf.Dense(A), 2)
    assert bad.status_name == "DIVERGED"
    np.testing.assert_allclose(np.asarray(bad.factors.W), np.asarray(start.W))
