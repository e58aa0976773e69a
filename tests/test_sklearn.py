"""Tests of jmf.sklearn: scikit-learn's estimator checks, agreement with jmf and with scikit-learn.

Compilation dominates the run time (jmf compiles once per solver object,
fit setting and data shape), so the tests share data shapes and settings:
most NMF fits use ``X_NN`` (40 x 15) with rank 4, and the estimator checks
run ``MatrixFactorization(solver="hals", init="nndsvda")`` with the same
settings as ``NMF`` so that the two share their compiled fits.
"""

import re
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import nnls

sklearn = pytest.importorskip("sklearn")

from sklearn import decomposition as skd  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import Ridge  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.utils import estimator_checks  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import jmf  # noqa: E402
from jmf.sklearn import (  # noqa: E402
    NMF,
    MatrixFactorization,
    RatingsRegressor,
    TruncatedSVD,
    expected_failed_checks,
    reconstruction_scorer,
)

from .conftest import low_rank  # noqa: E402

# Settings of the estimator checks.  Rank 1 everywhere (several checks set n_components=1 anyway)
# and the same settings for NMF and MatrixFactorization(hals), so that the checks reuse a few
# compiled fits; 500 iterations and tol=1e-6 (scikit-learn runs its own NMF checks with
# max_iter=500) make fit_transform agree with transform to the checks' 1e-2.
_CHECK_NMF = dict(n_components=1, max_iter=500, tol=1e-6)
# One converged NMF setting shared by the tests below (one compiled fit per data shape and rank).
_C1 = dict(max_iter=300, tol=1e-8)


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.fixture(scope="module")
def X_nn():
    return low_rank(np.random.default_rng(1), 40, 15, 4, noise=0.05, nonnegative=True)


# -- scikit-learn's own estimator checks ----------------------------------------------------


@parametrize_with_checks(
    [
        NMF(**_CHECK_NMF),
        MatrixFactorization(solver="hals", init="nndsvda", **_CHECK_NMF),
        TruncatedSVD(n_components=1),
        RatingsRegressor(n_components=1, max_iter=20, solver="als"),
    ],
    expected_failed_checks=expected_failed_checks,
)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_expected_failed_checks_are_real_checks():
    assert expected_failed_checks(NMF()) == {}
    assert expected_failed_checks(RatingsRegressor()) == {}
    for est in (NMF(solver="mu"), MatrixFactorization(solver="mu")):
        failed = expected_failed_checks(est)
        assert set(failed) == {"check_transformer_general", "check_transformer_data_not_an_array"}
        for name, reason in failed.items():
            assert callable(getattr(estimator_checks, name)) and len(reason) > 40


def test_import_jmf_does_not_import_sklearn():
    code = "import sys, jmf; assert 'sklearn' not in sys.modules, 'jmf imported sklearn'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- NMF equals jmf called directly ---------------------------------------------------------


@pytest.mark.x64  # the estimator computes float64 input in float64: jmf called directly must too, to compare to 1e-10
def test_nmf_n_init_is_one_batched_fit_keeping_the_best(X_nn):
    est = NMF(4, n_init=3, random_state=0, max_iter=100).fit(X_nn)  # init=None: "random" for restarts
    # scikit-learn's stopping rule for "cd": the projected-gradient violation, checked every iteration.
    solver = jmf.solvers.hals(l1=(0.0, 0.0), l2=(0.0, 0.0), stop="violation")
    many = jmf.fit_many(jmf.Dense(X_nn), solver, 4, keys=jax.random.split(jax.random.key(0), 3), init="random",
                        max_iter=100, tol=1e-4, check_every=1, progress=False)
    losses = np.asarray(many.loss)
    assert losses.shape == (3,) and np.ptp(losses) > 0  # the restarts differ
    best = int(np.argmin(losses))
    np.testing.assert_allclose(est.components_, many.factors.H[best], rtol=1e-10, atol=1e-12)
    W = est.transform(X_nn)
    assert est.reconstruction_err_ == pytest.approx(np.linalg.norm(X_nn - many.factors.W[best] @ est.components_),
                                                    rel=1e-10)
    assert np.linalg.norm(X_nn - W @ est.components_) <= est.reconstruction_err_ * (1 + 1e-6)


def test_random_state_derives_the_key(X_nn):
    kw = dict(n_components=4, init="random", n_init=3, max_iter=100)  # the compiled fit of the test above
    a = NMF(random_state=3, **kw).fit(X_nn).components_
    b = NMF(random_state=3, **kw).fit(X_nn).components_
    c = NMF(random_state=4, **kw).fit(X_nn).components_
    d = NMF(random_state=np.random.RandomState(3), **kw).fit(X_nn).components_
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, d)


# -- NMF against scikit-learn's NMF -------------------------------------------------------


@pytest.mark.parametrize(
    "solver, beta_loss, alpha_W, alpha_H, l1_ratio",
    [
        ("cd", "frobenius", 0.0, "same", 0.0),
        ("cd", "frobenius", 0.02, 0.01, 0.5),
        ("mu", "frobenius", 0.02, "same", 0.3),
        ("mu", "kullback-leibler", 0.01, "same", 0.5),
        ("mu", "itakura-saito", 0.0, "same", 0.0),
    ],
)
@pytest.mark.x64  # the estimator computes float64 input in float64: jmf called directly must too, to compare to 1e-10
def test_nmf_within_one_percent_of_sklearn(X_nn, solver, beta_loss, alpha_W, alpha_H, l1_ratio):
    X = X_nn + 0.1  # positive everywhere (Itakura-Saito needs it)
    rng = np.random.default_rng(5)
    W0, H0 = rng.random((X.shape[0], 4)) + 0.1, rng.random((4, X.shape[1])) + 0.1
    # n_components="auto": the rank of the custom H0 (4).
    kw = dict(n_components="auto", init="custom", solver=solver, beta_loss=beta_loss, tol=0, max_iter=60,
              alpha_W=alpha_W, alpha_H=alpha_H, l1_ratio=l1_ratio)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = skd.NMF(**kw)
        W_ref = ref.fit_transform(X, W=W0.copy(), H=H0.copy())
    est = NMF(**kw)
    W = est.fit_transform(X, W=W0, H=H0)
    assert _rel(W, W_ref) < 0.01
    assert _rel(est.components_, ref.components_) < 0.01
    assert est.reconstruction_err_ == pytest.approx(ref.reconstruction_err_, rel=0.01)
    assert est.n_iter_ == ref.n_iter_ == 60
    assert est.n_components_ == ref.n_components_ == 4

    # The same fit through jmf directly, with scikit-learn's penalties mapped to jmf's units by
    # hand: jmf's Frobenius loss is twice scikit-learn's data term, its beta-divergence loss equals it.
    m, n = X.shape
    aH = alpha_W if alpha_H == "same" else alpha_H
    l1 = np.array([alpha_W * l1_ratio * n, aH * l1_ratio * m])
    l2 = np.array([alpha_W * (1 - l1_ratio) * n, aH * (1 - l1_ratio) * m])
    if beta_loss == "frobenius":
        l1, l2 = 2 * l1, l2
    else:
        l1, l2 = l1, l2 / 2
    pen = dict(l1=tuple(map(float, l1)), l2=tuple(map(float, l2)))
    jsolver = jmf.solvers.hals(**pen) if solver == "cd" else jmf.solvers.mu(beta=beta_loss, **pen)
    res = jmf.fit(jmf.Dense(X), jsolver, init=jmf.Factors(W0, H0), max_iter=60, tol=None, progress=False)
    np.testing.assert_allclose(W, res.factors.W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(est.components_, res.factors.H, rtol=1e-10, atol=1e-12)

    # transform: scikit-learn runs max_iter sweeps of its solver on W from a fixed start; jmf runs
    # coordinate descent for the Frobenius loss and multiplicative updates otherwise.  They solve
    # the same problem with the same algorithm for "cd" and for "mu" with beta != 2 (scikit-learn's
    # mu/KL transform mis-applies L1 -- see jmf.sklearn.NMF -- hence no L1 there).
    if solver == "cd" or (beta_loss != "frobenius" and l1_ratio == 0):
        X_new = low_rank(np.random.default_rng(6), 12, 15, 4, noise=0.05, nonnegative=True) + 0.1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            T_ref = ref.transform(X_new)
        assert _rel(est.transform(X_new), T_ref) < 0.01
        np.testing.assert_allclose(est.inverse_transform(T_ref), T_ref @ ref.components_, rtol=1e-6)


def test_nmf_transform_is_the_nonnegative_least_squares_solution(X_nn):
    est = NMF(4, **_C1).fit(X_nn)
    X_new = low_rank(np.random.default_rng(7), 12, 15, 4, noise=0.05, nonnegative=True)
    W = est.transform(X_new)
    W_ref = np.stack([nnls(est.components_.T, x)[0] for x in X_new])
    np.testing.assert_allclose(W, W_ref, atol=1e-6)
    # Rows are solved independently: a subset gives the same rows.
    np.testing.assert_allclose(est.transform(X_new[3:5]), W[3:5], atol=1e-12)


# -- missing values ---------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["cd", "mu"])
def test_nmf_with_nan_recovers_held_out_entries(solver):
    rng = np.random.default_rng(8)
    V = rng.random((3, 40))
    A = rng.random((60, 3)) @ V
    hidden = rng.random(A.shape) < 0.2
    X = np.where(hidden, np.nan, A)
    max_iter = 400 if solver == "cd" else 2000
    est = NMF(3, solver=solver, max_iter=max_iter, tol=1e-7, random_state=0)
    W = est.fit_transform(X)
    assert np.isfinite(est.reconstruction_err_) and np.all(np.isfinite(est.components_))
    R = est.inverse_transform(W)
    col_mean = np.nanmean(X, axis=0)
    err = np.sqrt(np.mean((R - A)[hidden] ** 2))
    baseline = np.sqrt(np.mean((np.broadcast_to(col_mean, A.shape) - A)[hidden] ** 2))
    assert err < 0.2 * baseline
    # New rows with missing entries: transform uses the observed entries only.
    A_new = rng.random((10, 3)) @ V
    hide_new = rng.random(A_new.shape) < 0.2
    R_new = est.inverse_transform(est.transform(np.where(hide_new, np.nan, A_new)))
    err_new = np.sqrt(np.mean((R_new - A_new)[hide_new] ** 2))
    assert err_new < 0.2 * np.sqrt(np.mean((np.broadcast_to(col_mean, A_new.shape) - A_new)[hide_new] ** 2))


def test_transform_with_missing_entries_matches_masked_nnls(X_nn):
    est = NMF(4, **_C1).fit(X_nn)
    rng = np.random.default_rng(9)
    X_new = low_rank(rng, 6, 15, 4, noise=0.05, nonnegative=True)
    X_new[rng.random(X_new.shape) < 0.3] = np.nan
    W = est.transform(X_new)
    H = est.components_
    for i, x in enumerate(X_new):
        obs = ~np.isnan(x)
        np.testing.assert_allclose(W[i], nnls(H[:, obs].T, x[obs])[0], atol=1e-6)


# -- pipelines, grid search, pandas output --------------------------------------------------


def test_pipeline_gridsearch_scorer_and_pandas_output(X_nn):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(10)
    y = X_nn @ rng.random(15)
    grid, cv = {"n_components": [1, 4]}, KFold(2)
    pipe = Pipeline([("nmf", NMF(**_C1)), ("ridge", Ridge(alpha=1e-3))])
    gs = GridSearchCV(pipe, {"nmf__" + k: v for k, v in grid.items()}, cv=cv).fit(X_nn, y)
    assert gs.best_params_ == {"nmf__n_components": 4}  # y depends on all 4 components
    assert gs.best_estimator_.named_steps["nmf"].n_components_ == 4
    # Unsupervised: held-out reconstruction error picks the rank (same folds: no new compilation).
    gs = GridSearchCV(NMF(**_C1), grid, cv=cv, scoring=reconstruction_scorer).fit(X_nn)
    assert gs.best_params_ == {"n_components": 4}
    scores = gs.cv_results_["mean_test_score"]
    assert scores[1] > 10 * scores[0]  # negative errors: rank 4 is far closer to 0

    cols = [f"f{j}" for j in range(15)]
    df = pd.DataFrame(X_nn, columns=cols)
    est = NMF(4, **_C1).set_output(transform="pandas")
    out = est.fit_transform(df)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["nmf0", "nmf1", "nmf2", "nmf3"]
    assert list(est.feature_names_in_) == cols
    assert isinstance(est.transform(df), pd.DataFrame)
    np.testing.assert_array_equal(est.get_feature_names_out(), ["nmf0", "nmf1", "nmf2", "nmf3"])
    svd = TruncatedSVD(3, random_state=0).set_output(transform="pandas")
    assert list(svd.fit_transform(df).columns) == ["truncatedsvd0", "truncatedsvd1", "truncatedsvd2"]


# -- TruncatedSVD ---------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True])
def test_truncated_svd_matches_sklearn(sparse):
    rng = np.random.default_rng(11)
    X = low_rank(rng, 50, 20, 5, noise=0.01)
    if sparse:
        X = sp.random(50, 20, density=0.3, random_state=3, format="csr")
    ref = skd.TruncatedSVD(4, algorithm="arpack", random_state=0).fit(X)
    Z_ref = ref.transform(X)
    for algorithm in (["randomized"] if sparse else ["randomized", "exact"]):
        est = TruncatedSVD(4, algorithm=algorithm, n_iter=25, random_state=0)
        Z = est.fit_transform(X)
        np.testing.assert_allclose(est.singular_values_, ref.singular_values_, rtol=1e-6)
        np.testing.assert_allclose(est.components_, ref.components_, atol=1e-6)
        np.testing.assert_allclose(est.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-5)
        np.testing.assert_allclose(est.explained_variance_, ref.explained_variance_, rtol=1e-5)
        np.testing.assert_allclose(Z, Z_ref, atol=1e-6)
        np.testing.assert_allclose(est.transform(X), Z_ref, atol=1e-6)


# -- MatrixFactorization ----------------------------------------------------------------


@pytest.mark.x64  # the estimator computes float64 input in float64: jmf called directly must too, to compare to 1e-10
def test_matrix_factorization_als_equals_jmf_and_transform_is_masked_ridge():
    rng = np.random.default_rng(12)
    A = low_rank(rng, 40, 15, 3, noise=0.01)
    X = np.where(rng.random(A.shape) < 0.25, np.nan, A)
    est = MatrixFactorization(3, solver="als", l2=0.1, random_state=0, max_iter=50)
    W = est.fit_transform(X)
    res = jmf.fit(jmf.Dense.from_nan(X), jmf.solvers.als(l2=(0.1, 0.1)), 3, key=jax.random.key(0), init="random",
                  max_iter=50, tol=1e-4, progress=False)
    np.testing.assert_allclose(W, res.factors.W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(est.components_, res.factors.H, rtol=1e-10, atol=1e-12)
    # transform: per-row ridge regression on the observed entries (float64 NumPy reference).
    X_new = low_rank(rng, 7, 15, 3, noise=0.01)
    X_new[rng.random(X_new.shape) < 0.3] = np.nan
    H = est.components_
    T = est.transform(X_new)
    for i, x in enumerate(X_new):
        o = ~np.isnan(x)
        ref = np.linalg.solve(H[:, o] @ H[:, o].T + 0.1 * np.eye(3), H[:, o] @ x[o])
        np.testing.assert_allclose(T[i], ref, rtol=1e-8, atol=1e-10)
    # Missing training entries are filled in well.
    R = est.inverse_transform(W)
    hidden = np.isnan(X)
    assert np.sqrt(np.mean((R - A)[hidden] ** 2)) < 0.1 * np.std(A)


def test_matrix_factorization_with_a_solver_object_transforms_with_h_fixed():
    rng = np.random.default_rng(13)
    A = low_rank(rng, 40, 15, 3, noise=0.01)
    est = MatrixFactorization(3, solver=jmf.solvers.adam(0.05), init="normal", max_iter=300, tol=None,
                              transform_max_iter=1000, random_state=0)
    est.fit(A)
    X_new = low_rank(rng, 40, 15, 3, noise=0.01)
    T = est.transform(X_new)
    H = est.components_
    ref = X_new @ H.T @ np.linalg.inv(H @ H.T)  # least squares with H fixed
    assert _rel(T, ref) < 1e-2
    # The named solver path solves the same problem exactly.
    named = MatrixFactorization(3, solver="svd").fit(A)
    np.testing.assert_allclose(named.transform(X_new), X_new @ named.components_.T
                               @ np.linalg.inv(named.components_ @ named.components_.T), rtol=1e-8, atol=1e-10)


# -- RatingsRegressor -------------------------------------------------------------------


@pytest.fixture(scope="module")
def ratings():
    rng = np.random.default_rng(14)
    m, n, k, nnz = 50, 40, 2, 900
    U, V = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    bu, bi = 0.5 * rng.standard_normal(m), 0.5 * rng.standard_normal(n)
    flat = rng.choice(m * n, size=nnz, replace=False)
    u, i = flat // n, flat % n
    y = 3.0 + bu[u] + bi[i] + np.einsum("pk,kp->p", U[u], V[:, i]) + 0.1 * rng.standard_normal(nnz)
    X = np.column_stack([np.array([f"user{j}" for j in u], dtype=object), i])
    return X, y


@pytest.mark.x64  # the estimator computes float64 input in float64: jmf called directly must too, to compare to 1e-10
def test_ratings_regressor_equals_jmf_and_falls_back_to_biases(ratings):
    X, y = ratings
    est = RatingsRegressor(n_components=2, l2=1.0, solver="als", random_state=0, max_iter=20).fit(X, y)
    users, u = np.unique(X[:, 0].astype(str), return_inverse=True)
    items, i = np.unique(X[:, 1].astype(int), return_inverse=True)
    assert (len(users), len(items), len(y)) == (50, 40, 900)
    # The documented padding: 64 users, 64 items, 1024 entries; extra entries have weight 0.
    pad = 1024 - 900
    rows = np.concatenate([u, 50 + np.arange(pad) // 64])
    cols = np.concatenate([i, np.arange(pad) % 64])
    weights = np.concatenate([np.ones(900), np.zeros(pad)])
    data = jmf.Sparse(rows, cols, np.concatenate([y, np.zeros(pad)]), (64, 64), weights=weights)
    res = jmf.fit(data, jmf.solvers.als(l2=1.0, bias_l2=1.0, biases=True), 2, key=jax.random.key(0), init="normal",
                  max_iter=20, tol=1e-4, check_every=5, biases=True, progress=False)
    np.testing.assert_allclose(est.predict(X), res.factors.predict(u, i), rtol=1e-8, atol=1e-8)
    assert est.n_iter_ == int(res.n_iter)
    # Padding users and items end with zero factors and biases: they never met a rating.
    np.testing.assert_allclose(res.factors.W[50:], 0, atol=1e-12)
    np.testing.assert_allclose(res.factors.col_bias[40:], 0, atol=1e-12)

    item0 = X[0, 1]
    j0 = int(np.searchsorted(est.items_, item0))
    pred = est.predict(np.array([["nobody", item0], ["nobody", 10**6], [X[1, 0], 10**6]], dtype=object))
    assert pred[0] == pytest.approx(est.global_mean_ + est.item_bias_[j0])
    assert pred[1] == pytest.approx(est.global_mean_)
    u1 = int(np.searchsorted(est.users_, X[1, 0]))
    assert pred[2] == pytest.approx(est.global_mean_ + est.user_bias_[u1])


def test_ratings_regressor_cross_validation_and_grid_search(ratings):
    X, y = ratings
    # 3 folds: the training folds (600 ratings) pad to the size of the full data (900 -> 1024), so
    # with l2=1.0 they reuse the fit compiled by the test above.
    cv = KFold(3, shuffle=True, random_state=0)
    kw = dict(n_components=2, max_iter=20, random_state=0, solver="als")
    gs = GridSearchCV(RatingsRegressor(**kw), {"l2": [1.0, 300.0]}, cv=cv).fit(X, y)
    assert gs.best_params_ == {"l2": 1.0}
    scores = cross_val_score(RatingsRegressor(l2=1.0, **kw), X, y, cv=cv)
    np.testing.assert_allclose(scores, [gs.cv_results_[f"split{s}_test_score"][0] for s in range(3)])
    # Held-out R^2 well above the biases-free baseline of 0, and clipping keeps predictions in range.
    assert scores.min() > 0.5
    clipped = RatingsRegressor(l2=1.0, clip=True, **kw).fit(X, y).predict(X)
    assert clipped.min() >= y.min() and clipped.max() <= y.max()


def test_ratings_regressor_dataframe_columns(ratings):
    pd = pytest.importorskip("pandas")
    X, y = ratings
    df = pd.DataFrame({"ts": np.arange(len(y)), "item": X[:, 1].astype(int), "user": X[:, 0]})
    kw = dict(n_components=2, max_iter=20, random_state=0, solver="als")
    a = RatingsRegressor(user_col="user", item_col="item", **kw).fit(df, y)
    b = RatingsRegressor(**kw).fit(X, y)
    np.testing.assert_allclose(a.predict(df), b.predict(X), rtol=1e-10)


# -- bad parameters raise clear errors at fit ------------------------------------------------


@pytest.mark.parametrize(
    "est, error, match",
    [
        (NMF(n_components=0), ValueError, "n_components"),
        (NMF(n_components=100, init="nndsvda"), ValueError, r"init = 'nndsvda' can only be used when n_components"),
        (NMF(solver="als"), ValueError, "solver must be one of"),
        (NMF(beta_loss="kullback-leibler"), ValueError, "solver 'cd' does not handle beta_loss"),
        (NMF(beta_loss="euclid"), ValueError, "beta_loss must be"),
        (NMF(tol=-1.0), ValueError, "tol must be"),
        (NMF(max_iter=0), ValueError, "max_iter must be >= 1"),
        (NMF(max_iter=2.5), TypeError, "max_iter must be an int"),
        (NMF(alpha_W=-0.1), ValueError, "alpha_W"),
        (NMF(alpha_H="both"), ValueError, "alpha_H"),
        (NMF(l1_ratio=1.5), ValueError, "l1_ratio must be a finite number in"),
        (NMF(init="svd"), ValueError, "init must be None or one of"),
        (NMF(init="custom"), ValueError, "init='custom' needs both W and H"),
        (NMF(init="random", n_init=0), ValueError, "n_init"),
        (NMF(init="custom", n_init=2), ValueError, "n_init > 1"),
        (NMF(random_state="seed"), TypeError, "random_state"),
        (TruncatedSVD(algorithm="lanczos"), ValueError, "algorithm must be one of"),
        (TruncatedSVD(n_components=16), ValueError, r"n_components=16 must be <="),
        (MatrixFactorization(solver="lbfgs"), ValueError, "solver must be one of"),
        (MatrixFactorization(solver="als", l1=0.1), ValueError, "does not support l1"),
        (MatrixFactorization(l2=-1.0), ValueError, "l2 must be"),
        (MatrixFactorization(l2=(1.0, 2.0, 3.0)), ValueError, "pair"),
        (MatrixFactorization(init="zeros"), ValueError, "init must be one of"),
        (MatrixFactorization(solver="adam", learning_rate=0.0), ValueError, "learning_rate must be > 0"),
        (MatrixFactorization(solver=jmf.solvers.als(biases=True)), ValueError, "biases"),
    ],
    ids=lambda v: re.sub(r"\W+", "_", repr(v))[:60] if not isinstance(v, type) else v.__name__,
)
def test_bad_parameters_raise_at_fit(X_nn, est, error, match):
    with pytest.raises(error, match=match):
        est.fit(X_nn)


def test_bad_data_raises_at_fit(X_nn):
    with pytest.raises(ValueError, match="Negative values in data passed to NMF"):
        NMF(2).fit(X_nn - 1)
    with pytest.raises(ValueError, match="beta_loss <= 0 and X contains zeros"):
        NMF(2, solver="mu", beta_loss="itakura-saito").fit(np.where(X_nn > 0.5, X_nn, 0))
    with pytest.raises(ValueError, match="entirely NaN"):
        NMF(2).fit(np.full((5, 4), np.nan))
    with pytest.raises(ValueError, match=r"wrong first dimension passed to NMF \(input W\)"):
        NMF(2, init="custom").fit(X_nn, W=np.ones((3, 2)), H=np.ones((2, 15)))
    X, y = np.arange(20.0).reshape(10, 2), np.ones(10)
    with pytest.raises(ValueError, match="n_features = 1"):
        RatingsRegressor().fit(X[:, :1], y)
    with pytest.raises(ValueError, match="user_col='who' is not a column name"):
        RatingsRegressor(user_col="who").fit(X, y)
    with pytest.raises(ValueError, match="must be different columns"):
        RatingsRegressor(item_col=0).fit(X, y)
    with pytest.raises(ValueError, match="solver must be one of"):
        RatingsRegressor(solver="sgd").fit(X, y)
    with pytest.raises(ValueError, match="l2 must be"):
        RatingsRegressor(l2=-1.0).fit(X, y)
    with pytest.raises(ValueError, match="needs l2 > 0"):
        RatingsRegressor(l2=0.0, solver="als").fit(X, y)
