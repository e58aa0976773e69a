"""Implicit-feedback ALS against a dense float64 NumPy reference on a tiny matrix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmf
from jmf.losses import implicit_loss
from jmf.solvers import implicit_als

# float64: implicit ALS against dense float64 references and autodiff, to 1e-8..1e-12.
pytestmark = pytest.mark.x64


def _problem(rng, m=25, n=18):
    mask = rng.random((m, n)) < 0.3
    mask[5] = False  # a user with no interactions
    r, c = np.nonzero(mask)
    v = rng.integers(1, 6, r.size).astype(np.float64)
    R = np.zeros((m, n))
    R[r, c] = v
    return jmf.Sparse(r, c, v, (m, n)), R


def _dense_loss(W, H, R, alpha, l2):
    C = 1 + alpha * R
    P = (R > 0).astype(float)
    m, n = R.shape
    return (np.sum(C * (P - W @ H) ** 2) + l2 * (np.sum(W ** 2) + np.sum(H ** 2))) / (m * n)


def test_implicit_als_matches_dense_reference(rng):
    data, R = _problem(rng)
    m, n = R.shape
    k, alpha, l2 = 3, 0.7, 0.3
    s = implicit_als(l2=l2, alpha=alpha, solve="cholesky")
    seen = []
    res = jmf.fit(data, s, rank=k, key=0, init="normal", max_iter=10, tol=None, check_every=1, chunk_size=1,
                  callback=lambda info: seen.append((jax.tree_util.tree_map(np.array, info.factors), float(info.loss))))
    h = np.asarray(res.loss_history)
    assert np.all(np.diff(h) <= 1e-12)
    (f, loss), (f2, _) = seen[-2], seen[-1]
    W, H = np.asarray(f.W), np.asarray(f.H)
    assert loss == pytest.approx(_dense_loss(W, H, R, alpha, l2), rel=1e-12)
    # the next sweep equals the textbook per-user / per-item solves with full confidence matrices
    C = 1 + alpha * R
    P = (R > 0).astype(float)
    Wn = np.stack([np.linalg.solve(H @ np.diag(C[u]) @ H.T + l2 * np.eye(k), H @ (C[u] * P[u])) for u in range(m)])
    Hn = np.stack([np.linalg.solve(Wn.T @ np.diag(C[:, i]) @ Wn + l2 * np.eye(k), Wn.T @ (C[:, i] * P[:, i]))
                   for i in range(n)]).T
    np.testing.assert_allclose(np.asarray(f2.W), Wn, atol=1e-10)
    np.testing.assert_allclose(np.asarray(f2.H), Hn, atol=1e-10)
    assert np.all(np.asarray(f2.W)[5] == 0)


def test_implicit_loss_grad_matches_autodiff(rng):
    data, R = _problem(rng)
    m, n = R.shape
    alpha, l2 = 1.3, 0.2
    W, H = jnp.asarray(rng.standard_normal((m, 4))), jnp.asarray(rng.standard_normal((4, n)))
    f = jmf.Factors(W, H)
    L = implicit_loss(alpha, l2, chunk_size=11)
    assert float(L.value(f, data)) == pytest.approx(_dense_loss(np.asarray(W), np.asarray(H), R, alpha, l2))
    C, P = 1 + alpha * R, (R > 0).astype(float)
    ref = jax.grad(lambda W, H: (jnp.sum(C * (P - W @ H) ** 2) + l2 * (jnp.sum(W ** 2) + jnp.sum(H ** 2))) / (m * n),
                   argnums=(0, 1))(W, H)
    g = L.grad(f, data)
    np.testing.assert_allclose(np.asarray(g.W), np.asarray(ref[0]), atol=1e-12)
    np.testing.assert_allclose(np.asarray(g.H), np.asarray(ref[1]), atol=1e-12)


def test_cg_variant_decreases_and_reaches_cholesky_loss(rng):
    data, _ = _problem(rng)
    common = dict(rank=3, key=0, tol=None, check_every=1)
    cg = jmf.fit(data, implicit_als(l2=0.3, alpha=0.7, cg_steps=3), init="normal", max_iter=40, **common)
    ex = jmf.fit(data, implicit_als(l2=0.3, alpha=0.7, solve="cholesky"), init="normal", max_iter=40, **common)
    assert np.all(np.diff(np.asarray(cg.loss_history)) <= 1e-12)
    assert float(cg.loss) == pytest.approx(float(ex.loss), rel=2e-2)
    # started at the (nearly converged) exact solution, matrix-free CG sweeps only creep down
    stay = jmf.fit(data, implicit_als(l2=0.3, alpha=0.7, cg_steps=3), init=ex.factors, max_iter=5, **common)
    assert (1 - 1e-3) * float(ex.loss) <= float(stay.loss) <= float(ex.loss) * (1 + 1e-12)


def test_implicit_als_ranks_held_out_items(rng):
    """Users in two taste groups: held-out items of the own group are ranked first."""
    m, n = 80, 60
    group_u = np.arange(m) % 2
    group_i = np.arange(n) % 2
    like = group_u[:, None] == group_i[None, :]
    mask = like & (rng.random((m, n)) < 0.5)
    r, c = np.nonzero(mask)
    data = jmf.Sparse(r, c, np.ones(r.size), (m, n))
    train, test = jmf.model_selection.leave_k_out(data, k=3, key=0)
    res = jmf.fit(train, implicit_als(l2=0.1, alpha=5.0), rank=4, key=0, init="normal", max_iter=10, tol=None)
    out = jmf.metrics.ranking_metrics(res.factors, test, k=10, train=train)
    rand = jmf.metrics.ranking_metrics(jmf.Factors(jnp.asarray(rng.standard_normal((m, 4))),
                                                   jnp.asarray(rng.standard_normal((4, n)))), test, k=10, train=train)
    assert out["ndcg"] > 0.35 and out["ndcg"] > rand["ndcg"] + 0.15


def test_rank_mask_keeps_padding_zero(rng):
    data, _ = _problem(rng)
    many = jmf.fit_many(data, implicit_als(l2=0.3, solve="cholesky"), ranks=[2, 3], key=0, init="normal",
                        max_iter=4, tol=None)
    one = jmf.fit(data, implicit_als(l2=0.3, solve="cholesky"), rank=2, key=0, init="normal", max_iter=4, tol=None)
    np.testing.assert_allclose(np.asarray(many.member(0).factors.W), np.asarray(one.factors.W), atol=1e-8)
    assert np.all(np.asarray(many.factors.W[0])[:, 2] == 0)


def test_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        implicit_als(alpha=-1.0)
    with pytest.raises(ValueError, match="l2 must be a finite number > 0"):
        implicit_als(l2=0.0)
    with pytest.raises(ValueError, match="solve"):
        implicit_als(solve="qr")
    with pytest.raises(TypeError, match="Sparse"):
        implicit_loss().value(jmf.Factors(jnp.ones((2, 1)), jnp.ones((1, 2))), jmf.Dense(np.ones((2, 2))))


def _dense_loss_general(W, H, R, alpha, l2, w0, nu):
    """Rendle et al.'s frequency-scaled objective with an unobserved weight, by brute force."""
    obs = R > 0
    S = W @ H
    m, n = R.shape
    C = np.where(obs, 1 + alpha * R, w0)
    P = obs.astype(float)
    d = (obs.sum(1) + w0 * n) ** nu
    e = (obs.sum(0) + w0 * m) ** nu
    return (np.sum(C * (P - S) ** 2) + l2 * (np.sum(d[:, None] * W ** 2) + np.sum(e[None, :] * H ** 2))) / (m * n)


@pytest.mark.parametrize("w0, nu", [(0.1, 1.0), (0.4, 0.5), (2.0, 0.0)])
def test_ials_frequency_scaled_matches_dense_reference(rng, w0, nu):
    data, R = _problem(rng)
    m, n = R.shape
    k, alpha, l2 = 3, 0.7, 0.05
    obs = R > 0
    s = implicit_als(l2=l2, alpha=alpha, solve="cholesky", unobserved_weight=w0, nu=nu)
    seen = []
    res = jmf.fit(data, s, rank=k, key=0, init="normal", max_iter=6, tol=None, check_every=1,
                  callback=lambda info: seen.append((jax.tree_util.tree_map(np.array, info.factors), float(info.loss))))
    assert np.all(np.diff(np.asarray(res.loss_history)) <= 1e-12)
    (f, loss), (f2, _) = seen[-2], seen[-1]
    W, H = np.asarray(f.W), np.asarray(f.H)
    assert loss == pytest.approx(_dense_loss_general(W, H, R, alpha, l2, w0, nu), rel=1e-12)
    C = np.where(obs, 1 + alpha * R, w0)
    P = obs.astype(float)
    d = (obs.sum(1) + w0 * n) ** nu
    e = (obs.sum(0) + w0 * m) ** nu
    Wn = np.stack([np.linalg.solve(H @ np.diag(C[u]) @ H.T + l2 * d[u] * np.eye(k), H @ (C[u] * P[u]))
                   for u in range(m)])
    Hn = np.stack([np.linalg.solve(Wn.T @ np.diag(C[:, i]) @ Wn + l2 * e[i] * np.eye(k), Wn.T @ (C[:, i] * P[:, i]))
                   for i in range(n)]).T
    np.testing.assert_allclose(np.asarray(f2.W), Wn, atol=1e-10)
    np.testing.assert_allclose(np.asarray(f2.H), Hn, atol=1e-10)
    # the loss gradient agrees with autodiff of the brute-force objective
    g = s.loss.grad(f2, data)
    ref = jax.grad(lambda W, H: (jnp.sum(jnp.asarray(C) * (P - W @ H) ** 2)
                                 + l2 * (jnp.sum(d[:, None] * W ** 2) + jnp.sum(e[None, :] * H ** 2))) / (m * n),
                   argnums=(0, 1))(jnp.asarray(f2.W), jnp.asarray(f2.H))
    np.testing.assert_allclose(np.asarray(g.W), np.asarray(ref[0]), atol=1e-12)
    np.testing.assert_allclose(np.asarray(g.H), np.asarray(ref[1]), atol=1e-12)


def test_ials_grid_of_unobserved_weight_and_nu_in_one_call(rng):
    data, _ = _problem(rng)
    solver = implicit_als(l2=0.1, unobserved_weight=np.array([0.05, 0.5]), nu=np.array([0.0, 1.0]))
    assert solver.grid.size == 4
    kw = dict(rank=3, max_iter=5, tol=None, init="normal")
    res = jmf.fit_many(data, solver, key=0, **kw)
    for p in range(4):
        point = {k: float(v[p]) for k, v in res.params.items()}
        single = jmf.fit(data, implicit_als(l2=0.1, **point), key=0, **kw)
        np.testing.assert_allclose(res.member(p).factors.W, single.factors.W, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="unobserved_weight"):
        implicit_als(unobserved_weight=-0.1)
    with pytest.raises(ValueError, match="nu"):
        implicit_als(nu=np.array([0.5, -1.0]))


def test_sharded_fit_refuses_the_frequency_scaled_penalty(rng):
    data, _ = _problem(rng, m=24, n=16)
    mesh = jmf.sharding.model_mesh()
    with pytest.raises(ValueError, match="nu=0"):
        jmf.fit(data, implicit_als(l2=0.5, nu=1.0), rank=2, key=0, max_iter=2, mesh=mesh, progress=False)
