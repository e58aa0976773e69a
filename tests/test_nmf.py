"""NMF solvers (multiplicative updates, HALS) against scikit-learn and float64 NumPy references."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jmf
from tests.conftest import low_rank
from tests.solver_helpers import run

sklearn = pytest.importorskip("sklearn")
from sklearn.decomposition import NMF  # noqa: E402

# float64: multiplicative and HALS updates against NumPy references and scikit-learn, to 1e-6..1e-12.
pytestmark = pytest.mark.x64

M_, N_, K_ = 40, 30, 4


def _problem(seed, masked=False, density=0.6):
    rng = np.random.default_rng(seed)
    A = low_rank(rng, M_, N_, K_, noise=0.05, nonnegative=True)
    M = (rng.random(A.shape) < density).astype(np.float64) if masked else None
    if M is not None:
        M[np.arange(M_), rng.integers(0, N_, M_)] = 1  # no empty row
        M[rng.integers(0, M_, N_), np.arange(N_)] = 1  # no empty column
    return A, M


def _start(A, k=K_, seed=0):
    rng = np.random.default_rng(seed + 100)
    scale = np.sqrt(A.mean() / k)
    return scale * rng.random((A.shape[0], k)) + 0.01, scale * rng.random((k, A.shape[1])) + 0.01


def _fixed_count_mask(rng, density, shape=(M_, N_)):
    M = np.zeros(shape[0] * shape[1])
    M[rng.permutation(M.size)[: int(density * M.size)]] = 1
    return M.reshape(shape)


def _sparse(A, M):
    r, c = np.nonzero(M)
    return jmf.Sparse(r, c, A[r, c], A.shape)


def _fit(data, solver, W0, H0, n_iter):
    """``n_iter`` steps from ``(W0, H0)``: ``(W, H, loss history)`` as NumPy arrays."""
    f, hist = run(solver, data, (W0, H0), n_iter)
    return np.asarray(f.W), np.asarray(f.H), hist


def _sklearn(A, W0, H0, n_iter, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = NMF(W0.shape[1], init="custom", max_iter=n_iter, tol=0.0, **kw)
        W = model.fit_transform(A, W=W0.copy(), H=H0.copy())
    return W, model.components_, model.n_iter_


def _frob(A, W, H):
    return float(np.sqrt(np.sum((A - W @ H) ** 2)))


def _kl(A, W, H):
    Y = W @ H
    pos = A > 0
    return float(np.sqrt(2 * (np.sum(A[pos] * np.log(A[pos] / Y[pos])) - A.sum() + Y.sum())))


# -- scikit-learn: same start, same iteration count -> same error (within 1%) ---------


@pytest.mark.parametrize(
    "solver,kw,err",
    [
        (jmf.solvers.hals(), dict(solver="cd"), _frob),
        (jmf.solvers.mu(beta=2), dict(solver="mu"), _frob),
        (jmf.solvers.mu(beta="kullback-leibler"), dict(solver="mu", beta_loss="kullback-leibler"), _kl),
        (jmf.solvers.mu(beta=1), dict(solver="mu", beta_loss=1), _kl),
    ],
    ids=["hals-cd", "mu-frobenius", "mu-kl-name", "mu-kl"],
)
def test_matches_sklearn(solver, kw, err):
    A, _ = _problem(0)
    W0, H0 = _start(A)
    n_iter = 40
    Ws, Hs, it = _sklearn(A, W0, H0, n_iter, **kw)
    assert it == n_iter
    W, H, _ = _fit(jmf.Dense(A), solver, W0, H0, n_iter)
    e_jmf, e_sk, e0 = err(A, W, H), err(A, Ws, Hs), err(A, W0, H0)
    assert e_jmf < 0.9 * e0  # it did something
    assert abs(e_jmf - e_sk) <= 0.01 * e_sk
    # The algorithms are the same, so the paths agree far beyond 1%.
    np.testing.assert_allclose(W, Ws, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(H, Hs, rtol=1e-6, atol=1e-9)


def test_itakura_saito_matches_sklearn():
    A, _ = _problem(1)
    A = A + 0.1  # IS needs positive data
    W0, H0 = _start(A)
    Ws, Hs, _ = _sklearn(A, W0, H0, 40, solver="mu", beta_loss="itakura-saito")
    W, H, _ = _fit(jmf.Dense(A), jmf.solvers.mu(beta=0), W0, H0, 40)
    np.testing.assert_allclose(W, Ws, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(H, Hs, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("solver_name,beta_loss",
                         [("cd", "frobenius"), ("mu", "frobenius"), ("mu", "kullback-leibler")])
def test_penalties_match_sklearn_units(solver_name, beta_loss):
    """scikit-learn's (alpha, l1_ratio) map onto jmf's sum-unit (l1, l2) pairs."""
    A, _ = _problem(2)
    W0, H0 = _start(A)
    m, n = A.shape
    alpha_W, alpha_H, l1_ratio = 0.02, 0.05, 0.3
    l1_reg = (n * alpha_W * l1_ratio, m * alpha_H * l1_ratio)
    l2_reg = (n * alpha_W * (1 - l1_ratio), m * alpha_H * (1 - l1_ratio))
    # scikit-learn minimizes 0.5 * data + l1_reg |.|_1 + 0.5 l2_reg |.|^2 (data = squared error or 2 d_KL).
    if beta_loss == "frobenius":
        l1, l2 = (2 * l1_reg[0], 2 * l1_reg[1]), l2_reg
        solver = jmf.solvers.hals(l1=l1, l2=l2) if solver_name == "cd" else jmf.solvers.mu(2, l1=l1, l2=l2)
    else:
        l1, l2 = l1_reg, (l2_reg[0] / 2, l2_reg[1] / 2)
        solver = jmf.solvers.mu(1, l1=l1, l2=l2)
    Ws, Hs, _ = _sklearn(A, W0, H0, 40, solver=solver_name, beta_loss=beta_loss, alpha_W=alpha_W,
                         alpha_H=alpha_H, l1_ratio=l1_ratio)
    W, H, _ = _fit(jmf.Dense(A), solver, W0, H0, 40)
    np.testing.assert_allclose(W, Ws, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(H, Hs, rtol=1e-6, atol=1e-9)


# -- masked NMF against float64 NumPy references ------------------------------------------


def _ref_mu(A, M, W, H, beta, n_iter, l1=0.0, l2=0.0, eps=np.finfo(np.float32).eps):
    """Masked multiplicative updates in plain NumPy (beta 2 with Frobenius penalties, 1 with KL penalties)."""
    W, H = W.copy(), H.copy()
    for _ in range(n_iter):
        for side in (0, 1):
            Y = W @ H
            if beta == 2:
                num_e, den_e = M * A, M * Y
                lam2, lam1 = l2, l1 / 2
            else:
                num_e, den_e = M * A / np.maximum(Y, eps), M
                lam2, lam1 = 2 * l2, l1
            if side == 0:
                num, den = num_e @ H.T, den_e @ H.T + lam2 * W + lam1
                W = W * num / np.where(den == 0, eps, den)
            else:
                num, den = W.T @ num_e, W.T @ den_e + lam2 * H + lam1
                H = H * num / np.where(den == 0, eps, den)
                if beta <= 1:
                    H[H < np.finfo(np.float64).eps] = 0
    return W, H


def _ref_hals(A, M, W, H, n_iter, l1=0.0, l2=0.0):
    """Masked HALS: exact cyclic coordinate minimization, one entry at a time, in NumPy."""
    W, H = W.copy(), H.copy()
    m, n = A.shape
    k = W.shape[1]
    for _ in range(n_iter):
        for t in range(k):
            for i in range(m):
                r = A[i] - W[i] @ H + W[i, t] * H[t]  # residual without component t
                num = np.sum(M[i] * r * H[t]) - l1 / 2
                den = np.sum(M[i] * H[t] ** 2) + l2
                if den > 0:
                    W[i, t] = max(num / den, 0.0)
        for t in range(k):
            for j in range(n):
                r = A[:, j] - W @ H[:, j] + W[:, t] * H[t, j]
                num = np.sum(M[:, j] * r * W[:, t]) - l1 / 2
                den = np.sum(M[:, j] * W[:, t] ** 2) + l2
                if den > 0:
                    H[t, j] = max(num / den, 0.0)
    return W, H


@pytest.mark.parametrize("beta,l1,l2", [(2, 0.0, 0.0), (2, 0.01, 0.1), (1, 0.0, 0.0), (1, 0.02, 0.05)])
def test_masked_mu_matches_numpy(beta, l1, l2):
    A, M = _problem(3, masked=True)
    W0, H0 = _start(A)
    Wr, Hr = _ref_mu(A, M, W0, H0, beta, 40, l1, l2)
    solver = jmf.solvers.mu(beta=beta, l1=l1, l2=l2)
    for data in (jmf.Dense(A, M), _sparse(A, M)):
        W, H, _ = _fit(data, solver, W0, H0, 40)
        np.testing.assert_allclose(W, Wr, rtol=1e-8, atol=1e-11)
        np.testing.assert_allclose(H, Hr, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.05, 0.2)])
def test_masked_hals_matches_numpy(l1, l2):
    A, M = _problem(4, masked=True)
    A, M = A[:20, :15], M[:20, :15]
    W0, H0 = _start(A, k=3)
    Wr, Hr = _ref_hals(A, M, W0, H0, 8, l1, l2)
    solver = jmf.solvers.hals(l1=l1, l2=l2)
    for data in (jmf.Dense(A, M), _sparse(A, M)):
        W, H, _ = _fit(data, solver, W0, H0, 8)
        np.testing.assert_allclose(W, Wr, rtol=1e-8, atol=1e-11)
        np.testing.assert_allclose(H, Hr, rtol=1e-8, atol=1e-11)


def test_hals_unmasked_matches_numpy_reference():
    """The shared-Gram path equals the entrywise reference with an all-ones mask."""
    A, _ = _problem(5)
    A = A[:20, :15]
    W0, H0 = _start(A, k=3)
    Wr, Hr = _ref_hals(A, np.ones_like(A), W0, H0, 8, 0.03, 0.1)
    W, H, _ = _fit(jmf.Dense(A), jmf.solvers.hals(l1=0.03, l2=0.1), W0, H0, 8)
    np.testing.assert_allclose(W, Wr, rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(H, Hr, rtol=1e-8, atol=1e-11)


# -- monotonicity -------------------------------------------------------------------------

_MONOTONE_SOLVERS = [
    jmf.solvers.hals(l1=0.1, l2=(0.5, 0.0)),
    jmf.solvers.hals(l1=0.1, l2=(0.5, 0.0), inner="auto"),
    jmf.solvers.hals(inner=3, inner_tol=0.0),
    jmf.solvers.mu(2, l1=0.05, l2=0.3),
    jmf.solvers.mu(2, l1=0.05, l2=0.3, inner="auto"),
    jmf.solvers.mu(1, l2=(0.0, 0.2)),
    jmf.solvers.mu(0),
]


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_loss_never_increases(seed):
    """Random (not low-rank) data and random starts: every step decreases the solver's loss, all kinds of data."""
    rng = np.random.default_rng(seed)
    A = rng.random((M_, N_)) ** 2 + 0.01
    M = _fixed_count_mask(rng, 0.7)  # same nnz for every example: one compilation
    W0, H0 = _start(A, seed=seed)
    for kind, data in (("dense", jmf.Dense(A)), ("weighted", jmf.Dense(A, M)), ("sparse", _sparse(A, M))):
        for solver in _MONOTONE_SOLVERS:
            W, H, h = _fit(data, solver, W0, H0, 40)
            assert np.all(np.isfinite(h)), solver.name
            assert np.all(np.diff(h) <= 1e-12 * h[:-1]), (solver.name, kind, np.diff(h).max())
            assert h[-1] < h[0]
            assert np.all(W >= 0) and np.all(H >= 0)


# -- batching -----------------------------------------------------------------------------


@pytest.mark.parametrize("solver,masked", [(jmf.solvers.hals(l2=0.01), True), (jmf.solvers.mu(1), False),
                                           (jmf.solvers.hals(inner="auto"), False),
                                           (jmf.solvers.mu(inner=3), False)],
                         ids=["hals-weighted", "mu-kl-dense", "accelerated-hals-dense", "accelerated-mu-dense"])
def test_fit_many_ranks_and_restarts(solver, masked):
    A, M = _problem(6, masked=masked)
    data = jmf.Dense(A, M)
    keys = jax.random.split(jax.random.key(0), 2)
    many = jmf.fit_many(data, solver, ranks=[2, 4], keys=keys, max_iter=30, tol=None, progress=False)
    assert many.loss.shape == (2, 2)
    assert np.all(np.asarray(many.status) == int(jmf.Status.MAX_ITER))
    W = np.asarray(many.factors.W)[0, 1]
    assert np.all(W[:, 2:] == 0)  # padded columns stay exactly zero
    # A rank-2 member equals a separate rank-2 run from the same start.
    f0 = jmf.init.random(keys[1], data, 2)
    Wr, Hr, h = _fit(data, solver, f0.W, f0.H, 30)
    member = many.member(0, 1)
    np.testing.assert_allclose(np.asarray(member.factors.W), Wr, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(member.loss), h[-1], rtol=1e-10)


def test_fit_many_sparse_stack():
    A1, M1 = _problem(7, masked=True)
    A2, M2 = _problem(8, masked=True, density=0.5)
    batch = jmf.stack([_sparse(A1, M1), _sparse(A2, M2)])
    solver = jmf.solvers.hals(l2=0.1)
    many = jmf.fit_many(batch, solver, rank=3, key=0, max_iter=30, tol=None, progress=False)
    for b in range(2):
        f0 = jmf.init.random(jax.random.key(0), batch[b], 3)
        # The padded member equals the same fit on its own (unpadded) entries, as a weighted dense matrix.
        A, M = [(A1, M1), (A2, M2)][b]
        _, _, h = _fit(jmf.Dense(A, M), solver, f0.W, f0.H, 30)
        np.testing.assert_allclose(float(many.loss[b]), h[-1], rtol=1e-9)


# -- float32 and init ----------------------------------------------------------------------


def test_float32_nndsvda_hals_and_mu():
    A, _ = _problem(9)
    data = jmf.Dense(A.astype(np.float32))
    for solver in (jmf.solvers.hals(), jmf.solvers.mu()):
        res = jmf.fit(data, solver, rank=K_, key=0, init="nndsvda", max_iter=200, tol=1e-6, progress=False)
        assert res.factors.W.dtype == jnp.float32
        rel = np.linalg.norm(A - np.asarray(res.factors.W) @ np.asarray(res.factors.H)) / np.linalg.norm(A)
        assert rel < 0.05, (solver.name, rel)


# -- errors -------------------------------------------------------------------------------


def test_negative_data_is_refused():
    A, _ = _problem(10)
    A[3, 4] = -0.5
    for solver in (jmf.solvers.hals(), jmf.solvers.mu(), jmf.solvers.mu(1)):
        assert solver.nonnegative
        with pytest.raises(ValueError, match="negative"):
            jmf.fit(A, solver, rank=2, key=0, progress=False)
    r, c = np.nonzero(np.ones_like(A))
    with pytest.raises(ValueError, match="nonnegative"):
        jmf.fit(jmf.Sparse(r, c, A[r, c], A.shape), jmf.solvers.hals(), rank=2, key=0, progress=False)


@pytest.mark.parametrize("name", ["hals", "mu"])
def test_accelerated_nmf_needs_fewer_iterations(name):
    """Extra sweeps on the same products reach a lower error per iteration than one sweep, at the same optimum."""
    factory = getattr(jmf.solvers, name)
    A, _ = _problem(12)
    W0, H0 = _start(A, seed=3)
    _, _, h1 = _fit(jmf.Dense(A), factory(), W0, H0, 10)
    _, _, h3 = _fit(jmf.Dense(A), factory(inner=3, inner_tol=0.0), W0, H0, 10)
    assert h3[-1] < h1[-1]
    n_long = 400 if name == "hals" else 3000
    _, _, h_long = _fit(jmf.Dense(A), factory(), W0, H0, n_long)
    _, _, h3_long = _fit(jmf.Dense(A), factory(inner=3), W0, H0, n_long)
    # Nonconvex: the two may settle in different local minima, both near the (unconstrained) SVD optimum.
    s = np.linalg.svd(A, compute_uv=False)
    optimum = np.sum(s[K_:] ** 2) / A.size
    assert optimum <= h_long[-1] < 1.05 * optimum and optimum <= h3_long[-1] < 1.05 * optimum, (
        h_long[-1], h3_long[-1], optimum)


def test_auto_inner_sweeps():
    """The "auto" rule: many sweeps when the products dominate, one on small matrices, capped, per member rank."""
    from jmf._src.solvers.nmf import _MAX_SWEEPS, _inner_sweeps

    assert int(_inner_sweeps("auto", 40, 30, 4)) == 1
    big = int(_inner_sweeps("auto", 2000, 1000, 20))
    assert 4 <= big < _MAX_SWEEPS
    assert int(_inner_sweeps("auto", 10**6, 10**6, 4)) == _MAX_SWEEPS
    mask = jnp.asarray([1.0] * 8 + [0.0] * 12)
    assert int(_inner_sweeps("auto", 2000, 1000, 20, mask)) == int(_inner_sweeps("auto", 2000, 1000, 8))
    assert _inner_sweeps(3, 40, 30, 4) == 3


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="beta"):
        jmf.solvers.mu(beta="euclid")
    with pytest.raises(TypeError, match="beta"):
        jmf.solvers.mu(beta=None)
    with pytest.raises(ValueError, match="l1"):
        jmf.solvers.hals(l1=-1.0)
    with pytest.raises(ValueError, match="l2"):
        jmf.solvers.mu(l2=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="eps"):
        jmf.solvers.mu(eps=0.0)
    with pytest.raises(ValueError, match="inner"):
        jmf.solvers.hals(inner=0)
    with pytest.raises(ValueError, match="inner_tol"):
        jmf.solvers.hals(inner_tol=1.5)
    with pytest.raises(ValueError, match="inner"):
        jmf.solvers.mu(inner="fast")


def test_biases_are_refused():
    A, _ = _problem(11)
    with pytest.raises(ValueError, match="biases"):
        jmf.fit(A, jmf.solvers.hals(), rank=2, key=0, biases=True, progress=False)


def test_factories_are_cached():
    assert jmf.solvers.hals(l2=0.1) is jmf.solvers.hals(l2=0.1)
    assert jmf.solvers.mu(beta=1) is jmf.solvers.mu(beta=1)
