"""SVD solver, randomized/truncated SVD helpers and the NNDSVD initializers."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmf
from tests.conftest import low_rank

# float64: SVDs, initializations and the SVD solver against NumPy and scikit-learn, to 1e-8..1e-12.
pytestmark = pytest.mark.x64


def _jit_init(name):
    return jax.jit(jmf.init.INITIALIZERS[name], static_argnums=(2, 3))


def _opt(A, k):
    s = np.linalg.svd(A, compute_uv=False)
    return np.sum(s[k:] ** 2) / A.size


def _sparse_of(A, density, seed):
    rng = np.random.default_rng(seed)
    M = rng.random(A.shape) < density
    r, c = np.nonzero(M)
    return jmf.Sparse(r, c, A[r, c], A.shape), np.where(M, A, 0)


# -- helpers ------------------------------------------------------------------------------------


def test_truncated_svd_matches_numpy():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((30, 20))
    U, s, Vt = jmf.truncated_svd(A, 5)
    Un, sn, Vtn = np.linalg.svd(A, full_matrices=False)
    np.testing.assert_allclose(np.asarray(s), sn[:5], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(U * s[None, :]) @ np.asarray(Vt), (Un[:, :5] * sn[:5]) @ Vtn[:5], atol=1e-12)
    # sklearn's svd_flip convention: the largest |entry| of each column of U is positive.
    Un = np.asarray(U)
    assert np.all(Un[np.argmax(np.abs(Un), axis=0), np.arange(5)] > 0)


def test_randomized_svd_dense_and_sparse():
    rng = np.random.default_rng(1)
    A = low_rank(rng, 80, 60, 6, noise=1e-3)
    sn = np.linalg.svd(A, compute_uv=False)
    U, s, Vt = jmf.randomized_svd(A, 6, key=jax.random.key(0))
    np.testing.assert_allclose(np.asarray(s), sn[:6], rtol=1e-6)
    assert np.asarray(U).shape == (80, 6) and np.asarray(Vt).shape == (6, 60)
    np.testing.assert_allclose(np.asarray(U).T @ np.asarray(U), np.eye(6), atol=1e-10)
    # Sparse input: the matrix of its observed entries (missing = 0), never densified by jmf.
    sp, Z = _sparse_of(A, 0.5, 2)
    sz = np.linalg.svd(Z, compute_uv=False)
    _, s2, _ = jmf.randomized_svd(sp, 3, key=jax.random.key(1), n_power_iter=8)
    np.testing.assert_allclose(np.asarray(s2), sz[:3], rtol=1e-4)
    # scipy.sparse input goes through jmf.Sparse.from_scipy.
    import scipy.sparse

    _, s3, _ = jmf.randomized_svd(scipy.sparse.csr_matrix(Z), 3, key=1, n_power_iter=8)
    np.testing.assert_allclose(np.asarray(s3), sz[:3], rtol=1e-4)


def test_randomized_svd_under_jit():
    A = jnp.asarray(np.random.default_rng(3).standard_normal((20, 15)))
    f = jax.jit(lambda X: jmf.randomized_svd(X, 4, key=jax.random.key(0), n_power_iter=10).s)
    np.testing.assert_allclose(np.asarray(f(A)), np.linalg.svd(np.asarray(A), compute_uv=False)[:4], rtol=1e-6)


def test_svd_helper_errors():
    A = np.ones((5, 4))
    with pytest.raises(ValueError, match="rank"):
        jmf.randomized_svd(A, 5, key=0)
    with pytest.raises(ValueError, match="rank"):
        jmf.truncated_svd(A, 0)
    with pytest.raises(TypeError, match="key"):
        jmf.randomized_svd(A, 2, key=None)
    with pytest.raises(ValueError, match="n_power_iter"):
        jmf.randomized_svd(A, 2, key=0, n_power_iter=-1)
    with pytest.raises(ValueError, match="batch"):
        jmf.truncated_svd(np.ones((2, 5, 4)), 2)
    with pytest.raises(ValueError, match="dense"):
        jmf.truncated_svd(jmf.Sparse([0, 1], [0, 1], [1.0, 2.0], (3, 3)), 1)


# -- the solver ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_svd_solver_reaches_optimum(method):
    rng = np.random.default_rng(4)
    A = low_rank(rng, 40, 30, 3, noise=0.1)
    res = jmf.fit(A, jmf.solvers.svd(method=method, n_power_iter=8), rank=3, key=0, check_every=1, progress=False)
    np.testing.assert_allclose(float(res.loss), _opt(A, 3), rtol=1e-6)
    # A direct method: computed once, reported as one iteration after the initial factors' loss.
    assert res.status_name == "CONVERGED" and int(res.n_iter) == 1
    np.testing.assert_allclose(float(res.loss_history[1]), _opt(A, 3), rtol=1e-6)
    assert float(res.loss_history[0]) > float(res.loss_history[1]) and np.isnan(np.asarray(res.loss_history[2:])).all()
    solver = jmf.solvers.svd(method=method)
    assert solver.step is None and solver.direct is not None


def test_svd_solver_fit_many_over_ranks():
    rng = np.random.default_rng(5)
    A = low_rank(rng, 40, 30, 5, noise=0.1)
    many = jmf.fit_many(A, jmf.solvers.svd(), ranks=[1, 2, 5], n_restarts=2, key=0, progress=False)
    np.testing.assert_allclose(np.asarray(many.loss), np.array([[_opt(A, r)] * 2 for r in (1, 2, 5)]), rtol=1e-8)
    assert np.all(np.asarray(many.factors.W)[0, :, :, 1:] == 0)
    alone = jmf.fit(A, jmf.solvers.svd(), rank=2, key=0, progress=False)
    np.testing.assert_allclose(np.asarray(many.member(1, 0).factors.W), np.asarray(alone.factors.W), atol=1e-10)


def test_svd_solver_sparse_is_pure_svd_of_zero_filled():
    rng = np.random.default_rng(6)
    A = low_rank(rng, 40, 30, 3)
    sp, Z = _sparse_of(A, 0.6, 7)
    res = jmf.fit(sp, jmf.solvers.svd(n_power_iter=10), rank=2, key=0, progress=False)
    U, s, Vt = np.linalg.svd(Z)
    np.testing.assert_allclose(np.asarray(res.factors.predict()), (U[:, :2] * s[:2]) @ Vt[:2], atol=1e-6)


def test_svd_solver_errors():
    A = np.random.default_rng(8).random((10, 8))
    M = np.ones_like(A)
    M[0, 0] = 0
    with pytest.raises(ValueError, match="weighted"):
        jmf.fit(jmf.Dense(A, M), jmf.solvers.svd(), rank=2, key=0, progress=False)
    r, c = np.nonzero(M)
    with pytest.raises(ValueError, match="dense"):
        jmf.fit(jmf.Sparse(r, c, A[r, c], A.shape), jmf.solvers.svd(method="exact"), rank=2, key=0, progress=False)
    with pytest.raises(ValueError, match="method"):
        jmf.solvers.svd(method="lanczos")
    with pytest.raises(ValueError, match="n_oversamples"):
        jmf.solvers.svd(n_oversamples=-2)


# -- NNDSVD initializers --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["nndsvd", "nndsvda", "nndsvdar"])
def test_nndsvd_matches_sklearn(variant):
    pytest.importorskip("sklearn")
    from sklearn.decomposition._nmf import _initialize_nmf

    rng = np.random.default_rng(9)
    A = low_rank(rng, 30, 25, 4, noise=0.1, nonnegative=True)
    f = _jit_init(variant)(jax.random.key(0), jmf.Dense(A), 4)
    W, H = np.asarray(f.W), np.asarray(f.H)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Ws, Hs = _initialize_nmf(A, 4, init=variant, random_state=0)
    assert np.all(W >= 0) and np.all(H >= 0)
    if variant == "nndsvdar":
        # The NNDSVD part is the same; its zeros become |N(0, 1)| mean / 100 (our own random stream).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Wn, Hn = _initialize_nmf(A, 4, init="nndsvd")
        for X, Xn in ((W, Wn), (H, Hn)):
            np.testing.assert_allclose(X[Xn > 0], Xn[Xn > 0], rtol=1e-8)
            assert np.all(X[Xn == 0] > 0) and np.all(X[Xn == 0] < A.mean() * 6 / 100)
        return
    np.testing.assert_allclose(W, Ws, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(H, Hs, rtol=1e-8, atol=1e-10)


def test_nndsvd_rank_prefix_and_sparse():
    rng = np.random.default_rng(10)
    A = low_rank(rng, 30, 25, 4, noise=0.1, nonnegative=True)
    data = jmf.Dense(A)
    for name in ("nndsvd", "nndsvda", "nndsvdar"):
        init = _jit_init(name)
        padded = init(jax.random.key(1), data, 5, rank=3)
        alone = init(jax.random.key(1), data, 3)
        np.testing.assert_allclose(np.asarray(padded.W[:, :3]), np.asarray(alone.W), rtol=1e-9, atol=1e-12)
        assert np.all(np.asarray(padded.W[:, 3:]) == 0) and np.all(np.asarray(padded.H[3:]) == 0)
    sp, _ = _sparse_of(A, 0.7, 11)
    f = _jit_init("nndsvda")(jax.random.key(2), sp, 3)
    assert np.all(np.asarray(f.W) > 0) and np.all(np.isfinite(np.asarray(f.H)))
    with pytest.raises(ValueError, match="rank"):
        jmf.init.nndsvd(jax.random.key(0), data, 26)
