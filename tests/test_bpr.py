"""BPR: sampled pairwise ranking for implicit feedback under the normal driver, with any Optax transform."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmf
from jmf._src.compilation import compilations
from jmf._src.solvers._blocked import segment_counts
from jmf._src.solvers.bpr import _negatives, is_observed
from jmf.solvers import bpr

KW = dict(rank=4, init="normal", tol=None, progress=False)


def _groups(rng, m=60, n=40, p=0.5):
    """Users in two taste groups; each interacts with about half of its group's items."""
    like = (np.arange(m) % 2)[:, None] == (np.arange(n) % 2)[None, :]
    r, c = np.nonzero(like & (rng.random((m, n)) < p))
    return jmf.Sparse(r, c, np.ones(r.size), (m, n))


def test_bpr_learns_the_groups(rng):
    data = _groups(rng)
    train, test = jmf.model_selection.leave_k_out(data, k=3, key=0)
    res = jmf.fit(train, bpr(optax.adam(0.05), batch_size=64), key=0, max_iter=30, **KW)
    h = np.asarray(res.loss_history)
    assert h[-1] < 0.6 * h[0]
    out = jmf.metrics.ranking_metrics(res.factors, test, k=10, train=train)
    m, n = data.shape
    rand = jmf.metrics.ranking_metrics(jmf.Factors(rng.standard_normal((m, 4)), rng.standard_normal((4, n))), test,
                                       k=10, train=train)
    assert out["auc"] > 0.75 and out["auc"] > rand["auc"] + 0.2
    assert out["ndcg"] > rand["ndcg"] + 0.1
    # the row biases and offset that fit adds do not move; the item biases do
    assert np.all(np.asarray(res.factors.row_bias) == 0)
    assert np.any(np.asarray(res.factors.col_bias) != 0)


def test_negatives_are_never_positives(rng):
    data = _groups(rng, p=0.9)  # dense rows: many first draws hit positives
    m, n = data.shape
    counts, indptr = segment_counts(data.rows, m)
    users = jnp.asarray(rng.integers(0, m, 500), jnp.int32)
    pos = np.zeros((m, n), bool)
    pos[np.asarray(data.rows), np.asarray(data.cols)] = True
    js = jnp.asarray(rng.integers(0, n, 500), jnp.int32)
    got = np.asarray(is_observed(data.cols, indptr, counts, users, js, n))
    np.testing.assert_array_equal(got, pos[np.asarray(users), np.asarray(js)])
    j, ok = _negatives(jax.random.key(1), data, users, indptr, counts, 3)
    j, ok = np.asarray(j), np.asarray(ok)
    assert not np.any(pos[np.asarray(users)[ok], j[ok]])
    assert ok.mean() > 0.9


def test_reproducible_from_the_key_and_restarts_differ(rng):
    data = _groups(rng)
    s = bpr(optax.sgd(0.05), batch_size=50)
    a = jmf.fit(data, s, key=3, max_iter=3, **KW)
    b = jmf.fit(data, s, key=3, max_iter=3, **KW)
    np.testing.assert_array_equal(np.asarray(a.factors.W), np.asarray(b.factors.W))
    many = jmf.fit_many(data, s, keys=jax.random.split(jax.random.key(3), 2), max_iter=3, **KW)
    assert not np.allclose(np.asarray(many.factors.W[0]), np.asarray(many.factors.W[1]))
    with compilations() as log:  # the same shapes: no new program
        jmf.fit(data, s, key=4, max_iter=3, **KW)
    assert log.programs == 0


def test_l2_grid_equals_single_fits(rng):
    data = _groups(rng)
    opt = optax.adam(0.02)
    grid = bpr(opt, l2=np.array([0.0, 0.1]), batch_size=64)
    res = jmf.fit_many(data, grid, key=0, max_iter=4, **KW)
    for p, l2 in enumerate([0.0, 0.1]):
        one = jmf.fit(data, bpr(opt, l2=l2, batch_size=64), key=0, max_iter=4, **KW)
        # atol: float32 rounding (entries of order 1; grid and single fit sum in another order)
        np.testing.assert_allclose(np.asarray(res.member(p).factors.W), np.asarray(one.factors.W), rtol=1e-6,
                                   atol=1e-7)


def test_any_optax_transform_and_rank_masks(rng):
    data = _groups(rng)
    chain = optax.chain(optax.clip_by_global_norm(1.0), optax.adagrad(0.1))
    res = jmf.fit_many(data, bpr(chain, item_bias=False), ranks=[2, 4], key=0, max_iter=3, init="normal",
                       tol=None, progress=False)
    assert np.all(np.asarray(res.factors.W[0])[:, 2:] == 0)
    assert res.member(1).factors.col_bias is None
    assert np.all(np.isfinite(np.asarray(res.loss)))


def test_registry_builds_bpr():
    s = jmf._src.registry.make_solver("bpr", optimizer="sgd", learning_rate=0.1, l2=0.001)
    assert s.name == "bpr" and s is jmf._src.registry.make_solver("bpr", optimizer="sgd", learning_rate=0.1, l2=0.001)


def test_bad_input(rng):
    with pytest.raises(TypeError, match="optax"):
        bpr("adam")
    with pytest.raises(ValueError, match="loss value"):
        bpr(optax.lbfgs())
    with pytest.raises(ValueError, match="l2"):
        bpr(l2=-1.0)
    with pytest.raises(ValueError, match="resample"):
        bpr(resample=-1)
    with pytest.raises(ValueError, match="sparse|Sparse"):
        jmf.fit(jmf.Dense(np.ones((4, 3))), bpr(), rank=2, key=0, max_iter=2)
