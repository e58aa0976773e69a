"""Sparse data whose absent entries are zeros (``jmf.Sparse(..., absent="zero")``) fits exactly like the dense matrix.

The Frobenius and beta-divergence losses, HALS, multiplicative updates (every beta), ALS, gradient
solvers and the SVD take sparse products and ``k x k`` Grams on this kind; each is compared with the
dense path on the same matrix, from the same start.  Also: HALS's violation rule (``stop="violation"``,
the solver's ``progress``) and the kinds the solvers refuse.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import jmf

# float64: the absent-zero sparse path must reproduce the dense path to 1e-10..1e-12, also after
# tens of solver iterations (an identity of two code paths, which float32 rounding would blur).
pytestmark = pytest.mark.x64


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    X = rng.random((30, 20))
    X[X < 0.6] = 0
    X[3] = 0  # an all-zero row: observed zeros, not missing
    return jmf.Dense(X), jmf.Sparse.from_scipy(sp.csr_matrix(X), absent="zero")


def test_kind_and_statistics(pair):
    dense, zero = pair
    assert zero.absent == "zero" and dense.shape == zero.shape
    from jmf._src.solvers.base import data_kind

    assert data_kind(zero) == "sparse-zero"
    assert data_kind(jmf.Sparse.from_scipy(zero.to_scipy())) == "sparse"
    np.testing.assert_allclose(float(zero.mean()), float(dense.mean()), rtol=1e-12)
    assert float(zero.n_observed()) == 30 * 20
    assert zero.min() == 0.0
    with pytest.raises(ValueError, match="weights are not allowed"):
        jmf.Sparse([0], [0], [1.0], (2, 2), weights=[1.0], absent="zero")
    with pytest.raises(ValueError, match="absent must be one of"):
        jmf.Sparse([0], [0], [1.0], (2, 2), absent="nan")
    # A pytree: absent survives jit and tree_map.
    leaves, tree = jax.tree_util.tree_flatten(zero)
    assert jax.tree_util.tree_unflatten(tree, leaves).absent == "zero"


@pytest.mark.parametrize("loss", [jmf.losses.frobenius(l2=0.1, l1=0.05), jmf.losses.beta_divergence(1.0),
                                  jmf.losses.beta_divergence(1.5, l1=0.1), jmf.losses.beta_divergence(0.5)],
                         ids=lambda loss: loss.name)
def test_losses_and_gradients_equal_dense(pair, loss):
    dense, zero = pair
    f = jmf.init.random(jax.random.key(1), dense, 4)
    np.testing.assert_allclose(float(loss.value(f, zero)), float(loss.value(f, dense)), rtol=1e-7)
    g1, g2 = loss.grad(f, dense), loss.grad(f, zero)
    np.testing.assert_allclose(g2.W, g1.W, atol=1e-12)
    np.testing.assert_allclose(g2.H, g1.H, atol=1e-12)


SOLVERS = {
    "hals": jmf.solvers.hals(l1=0.1, l2=0.2),
    "hals-violation": jmf.solvers.hals(stop="violation"),
    "mu": jmf.solvers.mu(l1=0.1),
    "mu-kl": jmf.solvers.mu(beta=1),
    "mu-1.5": jmf.solvers.mu(beta=1.5, l2=0.1),
    "mu-0.5": jmf.solvers.mu(beta=0.5),
    "mu-3": jmf.solvers.mu(beta=3.0),
    "als": jmf.solvers.als(l2=0.1),
    "als-wr": jmf.solvers.als(l2=0.1, count_scaled=True),
    "adam": jmf.solvers.adam(0.01),
}


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solvers_follow_the_dense_path(pair, name):
    dense, zero = pair
    solver = SOLVERS[name]
    f0 = jmf.init.random(jax.random.key(0), dense, 4)
    r1 = jmf.fit(dense, solver, init=f0, max_iter=30, tol=None, progress=False)
    r2 = jmf.fit(zero, solver, init=f0, max_iter=30, tol=None, progress=False)
    np.testing.assert_allclose(r2.factors.W, r1.factors.W, atol=1e-10)
    np.testing.assert_allclose(r2.factors.H, r1.factors.H, atol=1e-10)
    np.testing.assert_allclose(float(r2.loss), float(r1.loss), rtol=1e-6)


def test_update_w_follows_the_dense_path(pair):
    dense, zero = pair
    f0 = jmf.init.random(jax.random.key(0), dense, 4)
    for solver in (SOLVERS["hals"], SOLVERS["mu-kl"], SOLVERS["als"]):
        s1, s2 = solver.init(f0, dense), solver.init(f0, zero)
        a, _ = solver.update_w(f0, s1, dense)
        b, _ = solver.update_w(f0, s2, zero)
        np.testing.assert_allclose(b.W, a.W, atol=1e-12)
        np.testing.assert_array_equal(b.H, f0.H)


def test_initializers_and_svd(pair):
    dense, zero = pair
    for init in ("random", "nndsvda", "nndsvdar"):
        fn = jmf.init.get_initializer(init)
        a, b = fn(jax.random.key(0), dense, 4), fn(jax.random.key(0), zero, 4)
        # random: identical; nndsvd*: the sparse start takes a randomized SVD (power iterations), the dense one exact.
        np.testing.assert_allclose(b.W @ b.H, a.W @ a.H, atol=1e-12 if init == "random" else 1e-2)
    r1 = jmf.fit(dense, jmf.solvers.svd(), 3, key=0, progress=False)
    r2 = jmf.fit(zero, jmf.solvers.svd(), 3, key=0, progress=False)
    np.testing.assert_allclose(float(r2.loss), float(r1.loss), rtol=1e-5)


def test_violation_rule_is_scikit_learns(pair):
    """``stop="violation"``: the fit stops at the first iteration where violation / violation_init <= tol."""
    dense, _ = pair
    solver = jmf.solvers.hals(stop="violation")
    f0 = jmf.init.random(jax.random.key(0), dense, 4)
    res = jmf.fit(dense, solver, init=f0, max_iter=500, tol=1e-3, check_every=1, progress=False)
    assert res.status_name == "CONVERGED"
    n = int(res.n_iter)
    # Replay step by step: the ratio first falls to tol at iteration n.
    f, s = f0, solver.init(f0, dense)
    ratios = []
    for _ in range(n):
        f, s = solver.step(f, s, dense)
        ratios.append(float(s.violation / s.violation_init))
    assert ratios[-1] <= 1e-3 < min(ratios[:-1])
    np.testing.assert_allclose(res.factors.W, f.W, atol=1e-12)


def test_kinds_refused(pair):
    _, zero = pair
    with pytest.raises(ValueError, match="does not support sparse-zero data"):
        jmf.fit(zero, jmf.solvers.als(l2=1.0, biases=True), 3, key=0, progress=False)
    with pytest.raises(ValueError, match="does not support sparse data"):
        missing = jmf.Sparse.from_scipy(zero.to_scipy())
        jmf.fit(missing, jmf.solvers.hals(stop="violation"), 3, key=0, progress=False)


def test_sparse_zero_products_never_densify(pair):
    """The products and losses on a large sparse matrix stay O(nnz k): a 10^5 x 10^5 matrix with 1,000 entries."""
    rng = np.random.default_rng(0)
    m = n = 100_000
    r, c = rng.integers(0, m, 1000), rng.integers(0, n, 1000)
    data = jmf.Sparse(r, c, rng.random(1000), (m, n), duplicates="sum", absent="zero")
    res = jmf.fit(data, jmf.solvers.hals(), 2, key=0, max_iter=3, tol=None, progress=False)
    assert np.isfinite(float(res.loss)) and res.factors.W.shape == (m, 2)
    assert jnp.all(res.factors.W >= 0)
