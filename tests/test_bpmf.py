"""Bayesian PMF by Gibbs sampling: exact conditional draws, conjugate hyperparameters, the posterior mean."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmf
from jmf._src.init import _mix32
from jmf._src.solvers import bpmf as B

# float64: the sampler's conditional moments and posterior means against NumPy linear algebra, to 1e-8..1e-12.
pytestmark = pytest.mark.x64

KW = dict(init="normal", max_iter=12, tol=None, check_every=12, progress=False)
SOLVER = dict(burn_in=4, n_keep=8)


@pytest.fixture(scope="module")
def synth():
    return jmf.datasets.synthetic_ratings(0, n_users=60, n_items=40, n_ratings=900, rank=3, noise=0.3, step=None,
                                          dtype=np.float64)


def test_row_draws_have_the_conditional_mean_and_covariance(rng):
    S, D = 5, 4
    X = rng.standard_normal((S, D, 9))
    P = X @ X.transpose(0, 2, 1) + np.eye(D)
    b = rng.standard_normal((S, D))
    mean = np.asarray(B._sample(jnp.asarray(P), jnp.asarray(b), None))
    np.testing.assert_allclose(mean, np.linalg.solve(P, b[..., None])[..., 0], rtol=1e-10)
    # x = P^-1 b + L^-T z: feeding the unit vectors as z gives columns whose outer products sum to P^-1
    cols = np.stack([np.asarray(B._sample(jnp.asarray(P), jnp.zeros((S, D)), jnp.asarray(np.tile(e, (S, 1)))))
                     for e in np.eye(D)], axis=-1)  # (S, D, D)
    np.testing.assert_allclose(cols @ cols.transpose(0, 2, 1), np.linalg.inv(P), rtol=1e-9, atol=1e-12)


def test_wishart_draws_have_mean_nu_v(rng):
    D, nu = 3, 7.0
    A = rng.standard_normal((D, D))
    V = A @ A.T + np.eye(D)
    seeds = _mix32(jnp.arange(20000, dtype=jnp.uint32))
    draws = jax.vmap(lambda s: B._sample_wishart(s, 10, jnp.asarray(np.linalg.inv(V)), nu, jnp.float64))(seeds)
    np.testing.assert_allclose(np.mean(np.asarray(draws), axis=0), nu * V, rtol=0.05, atol=0.05 * np.abs(V).max())


def test_gamma_draws_have_the_gamma_mean_and_variance():
    """Marsaglia-Tsang on hashed streams, boosted below shape 1: mean a and variance a for every shape."""
    a = jnp.asarray([0.3, 1.0, 4.5, 300.0])
    seeds = _mix32(jnp.arange(40000, dtype=jnp.uint32) + jnp.uint32(7))
    g = np.asarray(jax.vmap(lambda s: B._gamma(s, 40, a, jnp.float64))(seeds))
    assert np.all(g > 0)
    np.testing.assert_allclose(g.mean(axis=0), a, rtol=0.03)
    np.testing.assert_allclose(g.var(axis=0), a, rtol=0.06)
    # The streams differ: the proposals of stream 40 are not those of stream 41.
    assert not np.allclose(np.asarray(B._gamma(seeds[0], 40, a, jnp.float64)),
                           np.asarray(B._gamma(seeds[0], 43, a, jnp.float64)))


def test_update_w_is_the_conditional_posterior_mean(synth):
    data = synth.data
    s = jmf.solvers.bpmf(**SOLVER)
    res = jmf.fit(data, s, rank=3, key=1, **KW)
    f, st = res.factors, res.state
    new, _ = s.update_w(f, st, data)
    r, c, v = (np.asarray(x) for x in (data.rows, data.cols, data.vals))
    H, cb, mu = np.asarray(f.H), np.asarray(f.col_bias), float(f.offset)
    lam, m0, alpha = np.asarray(st.lam_u), np.asarray(st.mu_u), float(st.alpha)
    for i in (0, 7, 33):
        js = c[r == i]
        F = np.c_[H[:, js].T, np.ones(js.size)]
        t = v[r == i] - mu - cb[js]
        x = np.linalg.solve(lam + alpha * F.T @ F, lam @ m0 + alpha * F.T @ t)
        np.testing.assert_allclose(np.r_[np.asarray(new.W)[i], float(new.row_bias[i])], x, rtol=1e-8, atol=1e-10)


def test_posterior_mean_averages_the_kept_samples_and_beats_the_last_one(synth):
    data = synth.data
    train, test = jmf.model_selection.train_test_split(data, 0.2, key=0)
    res = jmf.fit(train, jmf.solvers.bpmf(**SOLVER), rank=3, key=2, **KW)
    st = res.state
    assert int(st.sweeps) == 12 and int(st.kept) == 8 and float(st.alpha) > 0
    pm = jmf.solvers.posterior_mean(res)
    assert pm.W.shape == (60, 8 * 3)
    r, c = np.asarray(test.rows), np.asarray(test.cols)
    Wb, Hb = np.asarray(st.W_buf), np.asarray(st.H_buf)
    by_sample = [float(res.factors.offset) + Wb[t, r, 3] + Hb[t, c, 3] + np.sum(Wb[t, r, :3] * Hb[t, c, :3], 1)
                 for t in range(8)]
    np.testing.assert_allclose(np.asarray(pm.predict(r, c)), np.mean(by_sample, axis=0), rtol=1e-9)
    truth = np.asarray(synth.truth.predict(r, c))
    err_mean = np.sqrt(np.mean((np.asarray(pm.predict(r, c)) - truth) ** 2))
    err_last = np.sqrt(np.mean((np.asarray(res.factors.predict(r, c)) - truth) ** 2))
    err_bias = np.sqrt(np.mean((np.mean(np.asarray(train.vals)) - truth) ** 2))
    assert err_mean < err_last < err_bias


def test_chains_and_ranks_batch(synth):
    data = synth.data
    many = jmf.fit_many(data, jmf.solvers.bpmf(**SOLVER), ranks=[2, 3], n_restarts=2, key=3, **KW)
    W_buf = np.asarray(many.result.state.W_buf)  # (R, S, T, m, D)
    assert W_buf.shape == (2, 2, 8, 60, 4)
    assert np.all(W_buf[0, :, :, :, 2] == 0) and np.all(np.asarray(many.factors.W)[0, :, :, 2] == 0)
    one = jmf.solvers.posterior_mean(many.member(1, 0))
    two = jmf.solvers.posterior_mean(many.member(1, 1))
    both = jmf.solvers.posterior_mean(jax.tree_util.tree_map(lambda x: x[1], many.result._replace(iterations=None)))
    every = jmf.solvers.posterior_mean(many)  # all 4 chains (ranks 2 and 3): width 4 x 8 x 3
    assert every.W.shape == (60, 4 * 8 * 3)
    r, c = np.asarray(data.rows), np.asarray(data.cols)
    np.testing.assert_allclose(np.asarray(both.predict(r, c)),
                               (np.asarray(one.predict(r, c)) + np.asarray(two.predict(r, c))) / 2, rtol=1e-9)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_keep"):
        jmf.solvers.bpmf(n_keep=0)
    with pytest.raises(ValueError, match="beta0"):
        jmf.solvers.bpmf(beta0=0.0)
    with pytest.raises(TypeError, match="bpmf"):
        jmf.solvers.posterior_mean(jmf.fit(np.ones((4, 3)), jmf.solvers.als(), rank=1, key=0, max_iter=1))


@pytest.mark.parametrize("q", [1, 4, 11, 16, 17])
def test_lapack_free_kernels_match_numpy(rng, q):
    """spd_draw (straight-line code up to width 16, loops above) = P^-1 b + L^-T z with L = cholesky(P)."""
    from jmf._src.solvers._normal import cholesky_loop, spd_draw, triangular_solve_loop

    S = 6
    X = rng.standard_normal((S, q, q + 3))
    P = X @ X.transpose(0, 2, 1) + 0.1 * np.eye(q)
    b, z = rng.standard_normal((2, S, q))
    L = np.linalg.cholesky(P)
    want = np.linalg.solve(P, b[..., None])[..., 0] + np.linalg.solve(L.transpose(0, 2, 1), z[..., None])[..., 0]
    np.testing.assert_allclose(np.asarray(spd_draw(jnp.asarray(P), jnp.asarray(b), jnp.asarray(z))), want,
                               rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(np.asarray(spd_draw(jnp.asarray(P), jnp.asarray(b))),
                               np.linalg.solve(P, b[..., None])[..., 0], rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(np.asarray(cholesky_loop(jnp.asarray(P))), L, rtol=1e-10, atol=1e-12)
    B = rng.standard_normal((S, q, 2))
    np.testing.assert_allclose(np.asarray(triangular_solve_loop(jnp.asarray(L), jnp.asarray(B), transpose=True)),
                               np.linalg.solve(L.transpose(0, 2, 1), B), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("q", [1, 4, 11, 16])
def test_packed_draw_equals_the_draw_of_the_unpacked_blocks(rng, q):
    """packed_spd_draw(triangles of G, scale, shift, ...) = spd_draw(scale G + shift, ...), batch-last."""
    from jmf._src.solvers._normal import packed_spd_draw, spd_draw

    S = 5
    X = rng.standard_normal((S, q, q + 2))
    G = X @ X.transpose(0, 2, 1)
    shift = np.eye(q) + 0.2 * np.ones((q, q))
    b, z = rng.standard_normal((2, S, q))
    iu, ju = np.triu_indices(q)
    Gt = jnp.asarray(G[:, iu, ju].T)  # (Q, S)
    for noise in (z, None):
        want = spd_draw(jnp.asarray(1.7 * G + shift), jnp.asarray(b), None if noise is None else jnp.asarray(noise))
        got = packed_spd_draw(Gt, 1.7, jnp.asarray(shift), jnp.asarray(b.T), None if noise is None else
                              jnp.asarray(noise.T))
        np.testing.assert_allclose(np.asarray(got).T, np.asarray(want), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="UNROLLED_MAX"):
        packed_spd_draw(jnp.zeros((153, 2)), 1.0, jnp.eye(17), jnp.zeros((17, 2)))
