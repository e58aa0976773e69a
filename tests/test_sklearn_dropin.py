"""jmf.sklearn as a drop-in for scikit-learn (issue 15): same results at default settings, sparse stays
sparse, the function form, online NMF with one compiled step, and the completing transformer.

scikit-learn's own test files run against these classes in ``test_sklearn_upstream_*.py``; the tests
here pin what those files do not: agreement with scikit-learn at its *default* settings on real data,
the ``absent`` parameter, memory on matrices that could not be densified, and compilation counts.
"""

import contextlib
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

sklearn = pytest.importorskip("sklearn")

from sklearn import decomposition as skd  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import Ridge  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

import jmf  # noqa: E402
from jmf._src.compilation import compilations  # noqa: E402
from jmf.sklearn import (  # noqa: E402
    NMF,
    MatrixCompletion,
    MatrixFactorization,
    MiniBatchNMF,
    TruncatedSVD,
    non_negative_factorization,
)

from .conftest import low_rank  # noqa: E402


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@pytest.fixture(scope="module")
def digits():
    return load_digits().data


@pytest.fixture(scope="module")
def small_sparse():
    """A 60 x 25 nonnegative CSR matrix with about 30% stored entries (a few of them explicit zeros)."""
    rng = np.random.default_rng(3)
    A = low_rank(rng, 60, 25, 3, nonnegative=True)
    keep = rng.random(A.shape) < 0.3
    X = sp.csr_matrix(np.where(keep, A, 0))
    X.data[:3] = 0.0  # stored zeros are zeros too
    return X


# -- the same results as scikit-learn at its default settings --------------------------------


@pytest.mark.parametrize("solver", ["cd", "mu"])
def test_digits_at_default_settings_within_one_percent_of_sklearn(digits, solver):
    """``NMF(16, init="nndsvda")`` on digits: the same stopping rule, so the same number of iterations and
    a final error within 1% of scikit-learn's (issue 15: jmf used to stop after 20 iterations at 761)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = skd.NMF(16, init="nndsvda", solver=solver, random_state=0).fit(digits)
        est = NMF(16, init="nndsvda", solver=solver, random_state=0).fit(digits)
    assert est.reconstruction_err_ == pytest.approx(ref.reconstruction_err_, rel=0.01)
    assert abs(est.n_iter_ - ref.n_iter_) <= 0.1 * ref.n_iter_
    assert est.components_.dtype == np.float64 and est.components_.shape == (16, 64)


@pytest.mark.x64  # the estimator computes float64 input in float64: jmf called directly must too, to compare to 1e-12
@pytest.mark.parametrize("tol", [1e-2, 1e-3])
def test_cd_stops_at_the_iteration_a_check_after_every_step_finds(tol):
    """NMF(solver="cd") tests the violation rule inside the solver and lets the driver check every 10
    iterations: the same iteration and factors as checking after every step."""
    rng = np.random.default_rng(2)
    X = low_rank(rng, 50, 20, 3, noise=0.05, nonnegative=True)
    W0, H0 = rng.random((50, 3)) + 0.1, rng.random((3, 20)) + 0.1
    est = NMF(3, init="custom", tol=tol, max_iter=500)
    W = est.fit_transform(X, W=W0, H=H0)
    res = jmf.fit(jmf.Dense(X), jmf.solvers.hals(stop="violation"), init=jmf.Factors(W0, H0), max_iter=500,
                  tol=tol, check_every=1, progress=False)
    assert res.status_name == "CONVERGED" and est.n_iter_ == int(res.n_iter) < 500
    assert est.n_iter_ % 10 != 0  # not rounded to the driver's check interval (18 and 124 here)
    np.testing.assert_allclose(W, res.factors.W, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(est.components_, res.factors.H, rtol=1e-12, atol=1e-14)


# -- sparse stays sparse: absent entries are zeros, or missing when asked ---------------------


def test_sparse_nmf_equals_the_dense_fit_of_its_zero_filled_matrix(small_sparse):
    X = small_sparse
    kw = dict(n_components=3, init="nndsvda", random_state=0, max_iter=50, tol=0)
    with _quiet():
        a = NMF(**kw).fit(X)
        b = NMF(**kw).fit(X.toarray())
        ref = skd.NMF(**kw).fit(X)
    # The same start (scikit-learn's randomized SVD keeps sparse input sparse) and the same updates.
    np.testing.assert_allclose(a.components_, b.components_, rtol=1e-8, atol=1e-10)
    assert a.reconstruction_err_ == pytest.approx(b.reconstruction_err_, rel=1e-10)
    assert a.reconstruction_err_ == pytest.approx(ref.reconstruction_err_, rel=1e-6)
    np.testing.assert_allclose(a.transform(X), b.transform(X.toarray()), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("solver", ["cd", "mu"])
def test_absent_missing_equals_nan_in_dense_input(small_sparse, solver):
    """``absent="missing"``: the entries a sparse ``X`` does not store are left out, as ``NaN`` in dense input."""
    X = small_sparse
    dense = np.full(X.shape, np.nan)
    coo = X.tocoo()
    dense[coo.row, coo.col] = coo.data
    rng = np.random.default_rng(4)
    W0, H0 = rng.random((60, 3)) + 0.1, rng.random((3, 25)) + 0.1
    kw = dict(n_components=3, init="custom", solver=solver, max_iter=40, tol=0)
    with _quiet():
        a = NMF(absent="missing", **kw)
        Wa = a.fit_transform(X, W=W0, H=H0)
        b = NMF(**kw)
        Wb = b.fit_transform(dense, W=W0, H=H0)
        zero = NMF(**kw).fit(X, W=W0, H=H0)
    np.testing.assert_allclose(Wa, Wb, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(a.components_, b.components_, rtol=1e-8, atol=1e-10)
    assert a.reconstruction_err_ == pytest.approx(b.reconstruction_err_, rel=1e-10)
    # The default (scikit-learn's meaning) is a different problem: absent entries are zeros to fit.
    assert not np.allclose(zero.components_, a.components_, rtol=1e-3)


def test_sparse_never_densified_through_nmf_svd_and_matrix_factorization():
    """A 10^5 x 10^5 matrix with 3,000 entries (dense: 80 GB): fit, transform and errors in O(nnz k) memory."""
    rng = np.random.default_rng(5)
    m = n = 100_000
    rows, cols = rng.integers(0, m, 3000), rng.integers(0, n, 3000)
    X = sp.csr_matrix((rng.random(3000) + 0.1, (rows, cols)), shape=(m, n))
    with _quiet():
        nmf = NMF(2, max_iter=5, random_state=0)
        W = nmf.fit_transform(X)
        assert W.shape == (m, 2) and np.isfinite(nmf.reconstruction_err_)
        assert nmf.transform(X[:10]).shape == (10, 2)
        # |X - W H| with absent zeros: |X|^2 - 2 <X, W H> + <W^T W, H H^T> (never the m x n residual)
        assert nmf.reconstruction_err_ <= sp.linalg.norm(X) * (1 + 1e-9)
        svd = TruncatedSVD(2, random_state=0)
        Z = svd.fit_transform(X)
        assert Z.shape == (m, 2) and np.all(svd.singular_values_ > 0)
        mf = MatrixFactorization(2, solver="als", max_iter=3, random_state=0).fit(X)
        assert mf.components_.shape == (2, n) and np.isfinite(mf.reconstruction_err_)


def test_matrix_factorization_sparse_zero_equals_dense(small_sparse):
    X = small_sparse
    kw = dict(n_components=3, solver="als", l2=0.1, max_iter=20, tol=None, random_state=0)
    a = MatrixFactorization(**kw).fit(X)
    b = MatrixFactorization(**kw).fit(X.toarray())
    np.testing.assert_allclose(a.components_, b.components_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(a.transform(X), b.transform(X.toarray()), rtol=1e-8, atol=1e-10)
    assert a.reconstruction_err_ == pytest.approx(b.reconstruction_err_, rel=1e-10)


def test_bad_absent_is_named():
    with pytest.raises(ValueError, match="absent must be one of"):
        NMF(2, absent="nan").fit(np.ones((4, 3)))


# -- non_negative_factorization ---------------------------------------------------------


def test_non_negative_factorization_is_nmf_and_matches_sklearn():
    rng = np.random.default_rng(6)
    X = low_rank(rng, 40, 15, 4, noise=0.05, nonnegative=True)
    kw = dict(n_components=4, init="nndsvda", random_state=0, tol=1e-6, max_iter=300)
    with _quiet():
        W, H, n_iter = non_negative_factorization(X, **kw)
        est = NMF(**kw)
        W_est = est.fit_transform(X)
        W_ref, H_ref, n_ref = skd.non_negative_factorization(X, **kw)
    np.testing.assert_allclose(W, W_est, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(H, est.components_, rtol=1e-10, atol=1e-12)
    assert n_iter == est.n_iter_
    assert np.linalg.norm(X - W @ H) == pytest.approx(np.linalg.norm(X - W_ref @ H_ref), rel=0.01)
    assert abs(n_iter - n_ref) <= 0.1 * n_ref + 1
    # update_H=False solves for W against a fixed H: NMF.transform.
    X_new = low_rank(np.random.default_rng(7), 8, 15, 4, noise=0.05, nonnegative=True)
    with _quiet():
        W_new, H_same, _ = non_negative_factorization(X_new, H=H, n_components=4, update_H=False, tol=1e-6,
                                                      max_iter=300)
    assert H_same is not H and np.array_equal(H_same, H)
    np.testing.assert_allclose(W_new, est.transform(X_new), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="update_H=False needs H"):
        non_negative_factorization(X_new, n_components=4, update_H=False)


# -- MiniBatchNMF: online NMF, one compiled minibatch step ------------------------------------


@pytest.mark.parametrize("sparse", [False, True])
def test_minibatch_partial_fit_compiles_one_step_and_follows_sklearn(sparse):
    rng = np.random.default_rng(8)
    X = low_rank(rng, 120, 20, 4, noise=0.05, nonnegative=True)
    if sparse:
        X = sp.csr_matrix(np.where(rng.random(X.shape) < 0.5, X, 0))
    H0 = rng.random((4, 20)) + 0.1
    W0 = np.ones((20, 4))
    est = MiniBatchNMF(4, init="custom", random_state=0)
    ref = skd.MiniBatchNMF(4, init="custom", random_state=0)
    programs = []
    for i in range(6):
        Xb = X[20 * i: 20 * (i + 1)]
        with compilations() as log:
            est.partial_fit(Xb, W=W0, H=H0)
        programs.append(log.programs)
        ref.partial_fit(Xb, W=W0, H=H0.copy())
        np.testing.assert_allclose(est.components_, ref.components_, rtol=1e-8, atol=1e-10)
    # The first call compiles the step; every later batch of that shape reuses it (sparse batches with any
    # number of stored entries up to the same power of two included).
    assert programs[1:] == [0] * 5, programs
    assert est.n_steps_ == ref.n_steps_ == 6
    assert est.transform(X[:5]).shape == (5, 4)


def test_minibatch_fit_matches_sklearn_loosely():
    rng = np.random.default_rng(9)
    X = low_rank(rng, 300, 30, 5, noise=0.05, nonnegative=True)
    kw = dict(n_components=5, batch_size=50, random_state=0, max_iter=50)
    with _quiet():
        ref = skd.MiniBatchNMF(**kw).fit(X)
        est = MiniBatchNMF(**kw).fit(X)
    assert est.reconstruction_err_ == pytest.approx(ref.reconstruction_err_, rel=0.05)


# -- MatrixCompletion: fit_transform returns the completed matrix -----------------------------


@pytest.mark.parametrize("sparse", [False, True])
def test_matrix_completion_fills_missing_entries(sparse):
    rng = np.random.default_rng(10)
    A = low_rank(rng, 80, 30, 3)
    hidden = rng.random(A.shape) < 0.3
    if sparse:  # absent entries are missing (MatrixCompletion's default)
        X = sp.csr_matrix(np.where(hidden, 0.0, A))
        X.eliminate_zeros()
    else:
        X = np.where(hidden, np.nan, A)
    est = MatrixCompletion(3, l2=1e-3, max_iter=200, tol=1e-8, random_state=0)
    out = est.fit_transform(X)
    assert isinstance(out, np.ndarray) and out.shape == A.shape and not np.isnan(out).any()
    # Observed entries are returned as they are; missing ones are the low-rank model's.
    np.testing.assert_array_equal(out[~hidden], A[~hidden])
    assert np.sqrt(np.mean((out - A)[hidden] ** 2)) < 1e-2 * np.std(A)
    # transform completes new rows from their observed entries with components_ fixed.
    A_new = A[:6]
    new_hidden = rng.random(A_new.shape) < 0.3
    if sparse:
        X_new = sp.csr_matrix(np.where(new_hidden, 0.0, A_new))
        X_new.eliminate_zeros()
    else:
        X_new = np.where(new_hidden, np.nan, A_new)
    filled = est.transform(X_new)
    np.testing.assert_array_equal(filled[~new_hidden], A_new[~new_hidden])
    assert np.sqrt(np.mean((filled - A_new)[new_hidden] ** 2)) < 1e-2 * np.std(A)


def test_matrix_completion_in_a_pipeline():
    rng = np.random.default_rng(12)
    A = low_rank(rng, 100, 12, 2)
    y = A @ rng.standard_normal(12)
    X = np.where(rng.random(A.shape) < 0.2, np.nan, A)
    pipe = make_pipeline(MatrixCompletion(2, l2=1e-3, max_iter=200, tol=1e-8, random_state=0), Ridge(alpha=1e-6))
    assert pipe.fit(X, y).score(X, y) > 0.99
