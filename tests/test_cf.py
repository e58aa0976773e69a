"""Explicit ratings: blocked ALS with biases (and ALS-WR), the chunked ratings loss, gradient solvers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmf
from jmf.losses import ratings_loss
from jmf.solvers import ratings_als


def _ratings(rng, m=30, n=20, density=0.35):
    mask = rng.random((m, n)) < density
    mask[np.arange(m), rng.integers(0, n, m)] = True
    mask[3] = False  # an empty row: must get zero factors and bias, no NaN
    r, c = np.nonzero(mask)
    v = rng.integers(1, 6, r.size).astype(np.float64)
    return jmf.Sparse(r, c, v, (m, n)), r, c, v


def _dense_loss(f, r, c, v, m, n, l2, count_scaled):
    pred = f.offset + f.row_bias[r] + f.col_bias[c] + jnp.sum(f.W[r] * f.H.T[c], 1)
    cr = np.bincount(r, minlength=m).astype(float) if count_scaled else np.ones(m)
    cc = np.bincount(c, minlength=n).astype(float) if count_scaled else np.ones(n)
    pen = l2 * (jnp.sum(cr * jnp.sum(f.W ** 2, 1)) + jnp.sum(cc * jnp.sum(f.H ** 2, 0))
                + jnp.sum(cr * f.row_bias ** 2) + jnp.sum(cc * f.col_bias ** 2))
    return (jnp.sum((v - pred) ** 2) + pen) / len(v)


@pytest.mark.x64  # against a float64 NumPy ridge solve
@pytest.mark.parametrize("count_scaled", [False, True])
def test_als_step_matches_numpy_ridge_and_loss_decreases(rng, count_scaled):
    data, r, c, v = _ratings(rng)
    m, n = data.shape
    k, l2 = 3, 0.5
    s = ratings_als(l2=l2, count_scaled=count_scaled, solve="cholesky")
    seen = []
    res = jmf.fit(data, s, rank=k, key=0, init="normal", max_iter=8, tol=None, check_every=1, chunk_size=1,
                  callback=lambda info: seen.append(jax.tree_util.tree_map(np.array, info.factors)))
    h = np.asarray(res.loss_history)
    assert np.all(np.diff(h) <= 1e-12) and h[-1] < 0.5 * h[0]
    f, f2 = seen[-2], seen[-1]  # two consecutive sweeps
    W, H = np.asarray(f.W), np.asarray(f.H)
    cb, mu = np.asarray(f.col_bias), float(f.offset)
    Wn, bn = np.zeros_like(W), np.zeros(m)
    for i in range(m):
        js = c[r == i]
        if js.size == 0:
            continue
        Y = np.c_[H[:, js].T, np.ones(js.size)]
        t = v[r == i] - mu - cb[js]
        scale = js.size if count_scaled else 1
        x = np.linalg.solve(Y.T @ Y + scale * l2 * np.eye(k + 1), Y.T @ t)
        Wn[i], bn[i] = x[:k], x[k]
    np.testing.assert_allclose(np.asarray(f2.W), Wn, atol=1e-10)
    np.testing.assert_allclose(np.asarray(f2.row_bias), bn, atol=1e-10)
    assert np.all(np.asarray(f2.W)[3] == 0) and float(f2.row_bias[3]) == 0
    # the loss the driver records is the objective, computed in chunks
    ref = float(_dense_loss(f, r, c, v, m, n, l2, count_scaled))
    assert float(s.loss.value(f, data)) == pytest.approx(ref, rel=1e-12)


@pytest.mark.x64  # the hand gradient against autodiff to 1e-7
@pytest.mark.parametrize("count_scaled", [False, True])
def test_ratings_loss_grad_matches_autodiff(rng, count_scaled):
    data, r, c, v = _ratings(rng)
    m, n = data.shape
    f = jmf.Factors(rng.standard_normal((m, 4)), rng.standard_normal((4, n)), rng.standard_normal(m),
                    rng.standard_normal(n), np.float64(3.0))
    f = jax.tree_util.tree_map(jnp.asarray, f)
    L = ratings_loss(0.3, count_scaled=count_scaled, chunk_size=7)  # odd chunk: the last one overlaps
    assert float(L.value(f, data)) == pytest.approx(float(_dense_loss(f, r, c, v, m, n, 0.3, count_scaled)),
                                                    rel=1e-12)
    g = L.grad(f, data)
    ref = jax.grad(lambda f: _dense_loss(f, r, c, v, m, n, 0.3, count_scaled))(f)
    for a, b in zip(g, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-12)


@pytest.mark.x64  # "CG never increases the objective" is checked to 1e-12, below float32 rounding
def test_cg_als_converges_to_cholesky_fixed_point(rng):
    data, *_ = _ratings(rng)
    common = dict(rank=3, key=1, tol=None, check_every=5)
    exact = jmf.fit(data, ratings_als(l2=0.5, solve="cholesky"), init="normal", max_iter=60, **common)
    cg = jmf.fit(data, ratings_als(l2=0.5, cg_steps=3), init="normal", max_iter=60, **common)
    assert np.all(np.diff(np.asarray(cg.loss_history)) <= 1e-12)
    # started at the (nearly converged) exact solution, CG sweeps only creep down and stay close
    stay = jmf.fit(data, ratings_als(l2=0.5, cg_steps=3), init=exact.factors, max_iter=10, **common)
    assert (1 - 1e-4) * float(exact.loss) <= float(stay.loss) <= float(exact.loss) * (1 + 1e-12)
    np.testing.assert_allclose(np.asarray(stay.factors.W), np.asarray(exact.factors.W), atol=2e-2)


@pytest.mark.x64  # a rank-masked fit equals a separate fit to float64 rounding
def test_ratings_als_rank_mask_matches_separate_fit(rng):
    data, *_ = _ratings(rng)
    s = ratings_als(l2=0.5, solve="cholesky")
    many = jmf.fit_many(data, s, ranks=[2, 4], key=0, init="normal", max_iter=5, tol=None)
    one = jmf.fit(data, s, rank=2, key=0, init="normal", max_iter=5, tol=None)
    m2 = many.member(0)
    np.testing.assert_allclose(np.asarray(m2.factors.W), np.asarray(one.factors.W), atol=1e-8)
    W4 = np.asarray(many.factors.W[0])
    assert np.all(W4[:, 2:] == 0) and np.all(np.isfinite(W4))


def test_ratings_als_recovers_synthetic_truth():
    s = jmf.datasets.synthetic_ratings(0, n_users=300, n_items=150, n_ratings=9000, rank=3, noise=0.3, step=None)
    train, test = jmf.model_selection.train_test_split(s.data, 0.2, key=0)
    res = jmf.fit(train, ratings_als(l2=0.05, count_scaled=True), rank=3, key=0, init="normal", max_iter=25,
                  tol=None)
    got = jmf.metrics.rating_metrics(res.factors, test)["rmse"]
    mean_only = jmf.metrics.rmse(np.asarray(test.vals), np.full(test.nnz, float(np.mean(np.asarray(train.vals)))))
    assert got < 0.55 * mean_only and got < 0.45


def test_gradient_solvers_with_ratings_loss(rng):
    data, *_ = _ratings(rng, 60, 40)
    common = dict(rank=3, key=0, init="normal", max_iter=200, tol=None, check_every=20)
    res = jmf.fit(data, jmf.solvers.gradient(optax.adam(0.05), loss=ratings_loss(0.1), biases=True), **common)
    h = np.asarray(res.loss_history)
    assert np.isfinite(h).all() and h[-1] < 0.3 * h[0]
    # the same problem with the core Frobenius loss follows the same path
    core = jmf.fit(data, jmf.solvers.gradient(optax.adam(0.05), loss=jmf.losses.frobenius(0.1), biases=True),
                   **common)
    np.testing.assert_allclose(h, np.asarray(core.loss_history), rtol=1e-6)
    # minibatch epochs (one solver step = one epoch over shuffled entries)
    mb = jmf.fit(data, jmf.solvers.gradient(optax.adam(0.02), loss=ratings_loss(0.1), biases=True, batch_size=128),
                 rank=3, key=0, init="normal", max_iter=30, tol=None, check_every=10)
    hm = np.asarray(mb.loss_history)
    assert np.isfinite(hm).all() and hm[-1] < 0.3 * hm[0]


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="l2"):
        ratings_als(l2=-1.0)
    with pytest.raises(ValueError, match="l2 must be a finite number > 0"):
        ratings_als(l2=0.0)
    with pytest.raises(ValueError, match="solve"):
        ratings_als(solve="lu")
    with pytest.raises(ValueError, match="cg_steps"):
        ratings_als(cg_steps=0)
    with pytest.raises(ValueError, match="chunk_size"):
        ratings_loss(0.1, chunk_size=0)
    with pytest.raises(ValueError, match="does not support dense"):
        jmf.fit(np.ones((4, 4)), jmf.solvers.ratings_gradient(optax.adam(0.1)), rank=2, key=0)


@pytest.mark.x64  # the hand gradient against autodiff to 1e-7
@pytest.mark.parametrize("count_scaled", [False, True])
def test_packed_gradient_matches_autodiff(rng, count_scaled):
    from jmf._src.solvers._blocked import sparse_layout
    from jmf._src.solvers.ratings import _packed_grad

    data, r, c, v = _ratings(rng, 50, 70, density=0.3)  # columns with more entries than the smallest bucket
    m, n = data.shape
    f = jmf.Factors(rng.standard_normal((m, 4)), rng.standard_normal((4, n)), rng.standard_normal(m),
                    rng.standard_normal(n), np.float64(3.0))
    f = jax.tree_util.tree_map(jnp.asarray, f)
    g = jax.jit(lambda f, d: _packed_grad(f, sparse_layout(d), d, 0.3, 0.3, count_scaled))(f, data)
    ref = jax.grad(lambda f: _dense_loss(f, r, c, v, m, n, 0.3, count_scaled))(f)
    for a, b in zip(g, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-12)
    res = jmf.fit(data, jmf.solvers.ratings_gradient(optax.adam(0.05), l2=0.3, count_scaled=count_scaled),
                  rank=4, key=0, init="normal", max_iter=100, tol=None, check_every=50)
    h = np.asarray(res.loss_history)
    assert np.isfinite(h).all() and h[-1] < 0.5 * h[0]
