"""What users of implicit and Surprise expect: similar items/users, fold-in, baseline and item-kNN models."""

import numpy as np
import pytest

import jmf
from jmf._src.compilation import compilations
from jmf.cf import fold_in, similar_items, similar_users


def _ratings(m=60, n=40, nnz=900, key=0):
    return jmf.datasets.synthetic_ratings(key=key, n_users=m, n_items=n, n_ratings=nnz, rank=3,
                                          dtype=np.float64).data


def _cosine_ref(V, q, n):
    Vn = V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-300)
    s = Vn[q] @ Vn.T
    s[q] = -np.inf
    top = np.argsort(-s, kind="stable")[:n]
    return top, s[top]


@pytest.mark.x64  # against a float64 NumPy reference to 1e-12
def test_similar_items_and_users_match_reference(rng):
    m, n, k = 30, 25, 4
    f = jmf.Factors(rng.standard_normal((m, k)), rng.standard_normal((k, n)))
    items = np.array([0, 7, 24, 7])
    ids, scores = similar_items(f, items, n=5, batch_size=3)
    assert ids.shape == scores.shape == (4, 5)
    for row, q in enumerate(items):
        top, s = _cosine_ref(np.asarray(f.H).T, q, 5)
        np.testing.assert_array_equal(np.asarray(ids[row]), top)
        np.testing.assert_allclose(np.asarray(scores[row]), s, rtol=1e-12)
        assert q not in np.asarray(ids[row])
    uids, uscores = similar_users(f, 3, n=m - 1)
    top, s = _cosine_ref(np.asarray(f.W), 3, m - 1)
    np.testing.assert_array_equal(np.asarray(uids[0]), top)
    assert np.all(np.diff(np.asarray(uscores[0])) <= 0)


def test_similar_items_compiles_once_per_size_class(rng):
    f = jmf.Factors(rng.standard_normal((20, 3)), rng.standard_normal((3, 50)))
    similar_items(f, np.arange(5), n=4)
    with compilations() as log:
        for q in ([1, 2, 3], [4], np.arange(8), [9, 10]):
            similar_items(f, np.asarray(q), n=4)
    assert log.programs == 0


def test_similar_bad_input(rng):
    f = jmf.Factors(rng.standard_normal((5, 2)), rng.standard_normal((2, 6)))
    with pytest.raises(ValueError, match="items must be in"):
        similar_items(f, [6])
    with pytest.raises(ValueError, match="n must be"):
        similar_items(f, [0], n=6)
    with pytest.raises(ValueError, match="integer"):
        similar_users(f, [0.5])
    with pytest.raises(ValueError, match="empty"):
        similar_users(f, np.array([], np.int64))


def _users(data, users):
    """The entries of ``users`` as a Sparse of shape (len(users), n)."""
    rows, cols, vals = (np.asarray(x) for x in (data.rows, data.cols, data.vals))
    keep = np.isin(rows, users)
    new_row = np.searchsorted(users, rows[keep])
    return jmf.Sparse(new_row, cols[keep], vals[keep], (len(users), data.shape[1]))


@pytest.mark.parametrize("make", [
    lambda: jmf.solvers.ratings_als(l2=0.5),
    lambda: jmf.solvers.als(l2=0.3, biases=True, count_scaled=True, solve="cg"),
    lambda: jmf.solvers.als(l2=0.2),
    lambda: jmf.solvers.implicit_als(l2=0.5, alpha=2.0),
    lambda: jmf.solvers.implicit_als(l2=0.05, alpha=0.0, unobserved_weight=0.3, nu=1.0),
])
@pytest.mark.x64  # the fold-in equals the half-step to 1e-8: float64 (chunks round differently in float32)
def test_fold_in_reproduces_the_als_half_step(make):
    data = _ratings()
    solver = make()
    res = jmf.fit(data, solver, rank=3, key=0, init="normal", max_iter=5, tol=None)
    f = res.factors
    # reference: one exact half-step of W over all users, H fixed
    kw = {**dict(solver.factory[1]), "solve": "cholesky"}
    exact = solver.factory[0](**kw)
    ref, _ = exact.update_w(f, exact.init(f, data), data)
    users = np.array([0, 5, 17, 59])
    new = fold_in(f, solver, _users(data, users))
    np.testing.assert_allclose(np.asarray(new.W), np.asarray(ref.W)[users], rtol=1e-8, atol=1e-10)
    if solver.biases:
        np.testing.assert_allclose(np.asarray(new.row_bias), np.asarray(ref.row_bias)[users], rtol=1e-8, atol=1e-10)
        assert new.offset == f.offset
    np.testing.assert_array_equal(np.asarray(new.H), np.asarray(f.H))
    # one user given as (cols, vals), in any order
    u = 17
    sel = np.asarray(data.rows) == u
    cols, vals = np.asarray(data.cols)[sel][::-1], np.asarray(data.vals)[sel][::-1]
    one = fold_in(f, solver, (cols, vals))
    np.testing.assert_allclose(np.asarray(one.W)[0], np.asarray(ref.W)[u], rtol=1e-8, atol=1e-10)


@pytest.mark.x64  # the objective's gradient at the fold-in is zero to float64 round-off
def test_fold_in_of_svdpp_minimizes_its_objective_over_the_users_row():
    import jax
    import jax.numpy as jnp
    import optax

    data = _ratings()
    l2, bias_l2, implicit_l2 = 0.7, 0.3, 1.1
    solver = jmf.solvers.svdpp(optax.adam(0.05), l2=l2, bias_l2=bias_l2, implicit_l2=implicit_l2)
    res = jmf.fit(data, solver, rank=3, key=0, max_iter=20, tol=None, progress=False)
    f, st = res.factors, res.state
    users = np.array([0, 5, 17, 59])
    new = fold_in(f, solver, _users(data, users), state=st)
    # The fold-in's explicit part p_u = W_u - |N(u)|^-1/2 sum_{j in N(u)} y_j, put in place of the fitted rows.
    r, c = np.asarray(data.rows), np.asarray(data.cols)
    norm = np.asarray(st.norm)
    s = np.stack([norm[u] * np.asarray(st.Y)[c[r == u]].sum(axis=0) for u in users])
    P = np.asarray(st.P).copy()
    b = np.asarray(f.row_bias).copy()
    P[users] = np.asarray(new.W) - s
    b[users] = np.asarray(new.row_bias)
    v, w = jnp.asarray(data.vals), jnp.asarray(data.effective_weights())
    Nmat = np.zeros(data.shape)
    Nmat[r, c] = norm[r]

    def objective(P, b):  # the SVD++ objective (module docstring of jmf._src.solvers.svdpp), as a reference
        W = P + Nmat @ st.Y
        pred = f.offset + b[r] + f.col_bias[c] + jnp.sum(W[r] * f.H[:, c].T, axis=1)
        pen = l2 * (jnp.sum(P ** 2) + jnp.sum(f.H ** 2)) + implicit_l2 * jnp.sum(st.Y ** 2)
        pen = pen + bias_l2 * (jnp.sum(b ** 2) + jnp.sum(f.col_bias ** 2))
        return (jnp.sum(w * (v - pred) ** 2) + pen) / jnp.sum(w)

    gP, gb = jax.grad(objective, argnums=(0, 1))(jnp.asarray(P), jnp.asarray(b))
    g_fitted = jax.grad(objective)(st.P, f.row_bias)
    assert np.abs(np.asarray(g_fitted)[users]).max() > 1e-4  # 20 Adam steps are not at the optimum: a real test
    np.testing.assert_allclose(np.asarray(gP)[users], 0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(gb)[users], 0, atol=1e-12)
    # one user as (cols, vals): the same row
    one = fold_in(f, solver, (c[r == 17][::-1], np.asarray(data.vals)[r == 17][::-1]), state=st)
    np.testing.assert_allclose(np.asarray(one.W)[0], np.asarray(new.W)[2], rtol=1e-10)
    np.testing.assert_allclose(np.asarray(jmf.cf.predict(new, np.array([2]), np.array([4]))),
                               np.asarray(jmf.cf.predict(one, np.array([0]), np.array([4]))), rtol=1e-10)


def test_fold_in_of_svdpp_needs_the_fits_state():
    import optax

    data = _ratings()
    solver = jmf.solvers.svdpp(optax.adam(0.05), l2=0.5)
    res = jmf.fit(data, solver, rank=2, key=0, max_iter=2, tol=None, progress=False)
    entry = (np.array([1]), np.array([3.0]))
    with pytest.raises(TypeError, match="state=result.state"):
        fold_in(res.factors, solver, entry)
    wrong = res.state._replace(Y=np.zeros((data.shape[1] + 1, 2)))
    with pytest.raises(ValueError, match="state.Y has shape"):
        fold_in(res.factors, solver, entry, state=wrong)
    als = jmf.solvers.ratings_als()
    with pytest.raises(ValueError, match="svdpp models only"):
        fold_in(res.factors, als, entry, state=res.state)


def test_fold_in_new_user_recommendations_and_compile_once():
    data = _ratings()
    solver = jmf.solvers.implicit_als(l2=0.5, alpha=2.0)
    f = jmf.fit(data, solver, rank=3, key=0, init="normal", max_iter=5, tol=None).factors
    new = fold_in(f, solver, (np.array([1, 2, 3]), np.ones(3)))
    jmf.cf.recommend(new, np.array([0]), n=3, exclude_seen=False)
    with compilations() as log:
        for cols in ([4, 5], [1, 2, 3, 7, 9], [0]):
            new = fold_in(f, solver, (np.array(cols), np.ones(len(cols))))
            items, _ = jmf.cf.recommend(new, np.array([0]), n=3, exclude_seen=False)
    assert log.programs == 0  # one size class of entries (padded to 8)
    assert items.shape == (1, 3)
    empty = fold_in(f, solver, (np.array([], np.int64), np.array([])))
    assert np.all(np.asarray(empty.W) == 0)


def test_fold_in_bad_input():
    data = _ratings()
    als = jmf.solvers.als(l2=0.1)
    f = jmf.fit(data, als, rank=2, key=0, max_iter=2, tol=None).factors
    with pytest.raises(ValueError, match="exact half-step"):
        fold_in(f, jmf.solvers.adam(0.01), (np.array([1]), np.array([3.0])))
    with pytest.raises(ValueError, match="grid"):
        fold_in(f, jmf.solvers.als(l2=np.array([0.1, 1.0])), (np.array([1]), np.array([3.0])))
    with pytest.raises(ValueError, match="biases"):
        fold_in(f, jmf.solvers.ratings_als(), (np.array([1]), np.array([3.0])))
    with pytest.raises(ValueError, match="cols must be in"):
        fold_in(f, als, (np.array([data.shape[1]]), np.array([3.0])))
    with pytest.raises(ValueError, match="duplicates"):
        fold_in(f, als, (np.array([1, 1]), np.array([3.0, 4.0])))
    with pytest.raises(ValueError, match="shape"):
        fold_in(f, als, jmf.Sparse([0], [0], [1.0], (1, 3)))
    with pytest.raises(TypeError, match="solver"):
        fold_in(f, "als", (np.array([1]), np.array([3.0])))


def _surprise_trainset(data):
    surprise = pytest.importorskip("surprise")
    import pandas as pd

    df = pd.DataFrame({"u": np.asarray(data.rows), "i": np.asarray(data.cols), "r": np.asarray(data.vals)})
    return surprise, surprise.Dataset.load_from_df(df, surprise.Reader(rating_scale=(1, 5))).build_full_trainset()


def _pairs(data, rng, p=40):
    """Random (user, item) pairs that are not training entries (as a test set's)."""
    m, n = data.shape
    seen = set(zip(np.asarray(data.rows).tolist(), np.asarray(data.cols).tolist()))
    rows, cols = rng.integers(0, m, 4 * p), rng.integers(0, n, 4 * p)
    keep = np.array([(u, i) not in seen for u, i in zip(rows.tolist(), cols.tolist())])
    return rows[keep][:p], cols[keep][:p]


@pytest.mark.x64  # against Surprise (float64) to 1e-10
def test_baseline_only_matches_surprise(rng):
    data = _ratings()
    surprise, ts = _surprise_trainset(data)
    algo = surprise.BaselineOnly(bsl_options={"method": "als", "reg_u": 15, "reg_i": 10, "n_epochs": 10},
                                 verbose=False).fit(ts)
    f = jmf.cf.baseline_only(data)
    assert f.W.shape == (data.shape[0], 0)
    rows, cols = _pairs(data, rng)
    ref = [algo.predict(int(u), int(i), clip=False).est for u, i in zip(rows, cols)]
    np.testing.assert_allclose(np.asarray(jmf.cf.predict(f, rows, cols)), ref, rtol=1e-10)
    # a rank-0 model works with the ranking and rating metrics
    assert jmf.metrics.rating_metrics(f, data)["rmse"] > 0
    items, _ = jmf.cf.recommend(f, np.array([0, 1]), n=3, seen=data)
    assert items.shape == (2, 3)


@pytest.mark.x64  # against Surprise (float64) to 1e-7
def test_item_knn_pearson_baseline_matches_surprise_knnbaseline(rng):
    data = _ratings()
    surprise, ts = _surprise_trainset(data)
    algo = surprise.KNNBaseline(k=10, min_k=2, sim_options={"name": "pearson_baseline", "user_based": False,
                                                            "shrinkage": 20},
                                bsl_options={"method": "als"}, verbose=False).fit(ts)
    model = jmf.cf.item_knn(data, k=10, min_k=2, shrinkage=20.0, block=16)
    n = data.shape[1]
    S = np.array([[algo.sim[ts.to_inner_iid(i), ts.to_inner_iid(j)] if i != j else 0.0 for j in range(n)]
                  for i in range(n)])
    np.testing.assert_allclose(np.asarray(model.sim), S, atol=1e-10)
    rows, cols = _pairs(data, rng)
    ref = [algo.predict(int(u), int(i), clip=False).est for u, i in zip(rows, cols)]
    np.testing.assert_allclose(model.predict(rows, cols), ref, rtol=1e-8)
    # unknown users / items fall back to the baseline
    base = jmf.cf.baseline_only(data)
    got = model.predict(np.array([-1, 0]), np.array([3, -1]))
    np.testing.assert_allclose(got, np.asarray(jmf.cf.predict(base, np.array([-1, 0]), np.array([3, -1]))))


@pytest.mark.x64  # against a float64 NumPy reference to 1e-7
def test_item_knn_cosine_top_n_scores(rng):
    m, n = 30, 12
    A = (rng.random((m, n)) < 0.4).astype(np.float64)
    A[:, 0] = 1
    r, c = np.nonzero(A)
    data = jmf.Sparse(r, c, np.ones(r.size), (m, n))
    model = jmf.cf.item_knn(data, k=3, similarity="cosine")
    norms = np.linalg.norm(A, axis=0)
    S = (A.T @ A) / np.outer(norms, norms)
    np.fill_diagonal(S, 0)
    np.testing.assert_allclose(np.asarray(model.sim), S, atol=1e-12)
    f = model.factors()
    Sk = np.zeros_like(S)
    for j in range(n):
        top = np.argsort(-S[j], kind="stable")[:3]
        Sk[j, top] = S[j, top]
    np.testing.assert_allclose(np.asarray(f.W) @ np.asarray(f.H), A @ Sk, atol=1e-12)
    out = jmf.metrics.ranking_metrics(f, data, k=3)
    assert 0 <= out["ndcg"] <= 1


def test_baselines_bad_input():
    data = _ratings()
    with pytest.raises(ValueError, match="reg_user"):
        jmf.cf.baseline_only(data, reg_user=-1.0)
    with pytest.raises(TypeError, match="Sparse"):
        jmf.cf.baseline_only(np.ones((3, 3)))
    with pytest.raises(ValueError, match="similarity"):
        jmf.cf.item_knn(data, k=5, similarity="msd")
    with pytest.raises(ValueError, match="max_items"):
        jmf.cf.item_knn(data, k=5, max_items=10)
    with pytest.raises(ValueError, match="k must be"):
        jmf.cf.item_knn(data, k=data.shape[1])


def test_knn_predict_and_baseline_compile_once(rng):
    data = _ratings()
    model = jmf.cf.item_knn(data, k=5)
    model.predict(*_pairs(data, rng, 10))
    jmf.cf.baseline_only(data)
    with compilations() as log:
        for p in (3, 40, 100):
            rows, cols = _pairs(data, rng, p)
            assert model.predict(rows, cols).shape == rows.shape
        jmf.cf.baseline_only(data, reg_user=3.0, reg_item=1.0)
    assert log.programs == 0
