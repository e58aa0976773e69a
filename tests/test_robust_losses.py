"""Robust losses (Huber, absolute error): gradients against finite differences, limits, and robustness to outliers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmf
from tests.conftest import low_rank


def _factors(rng, m, n, k, biases=False):
    f = jmf.Factors(jnp.asarray(rng.standard_normal((m, k))), jnp.asarray(rng.standard_normal((k, n))))
    if biases:
        f = f._replace(row_bias=jnp.asarray(rng.standard_normal(m)), col_bias=jnp.asarray(rng.standard_normal(n)),
                       offset=jnp.asarray(0.5))
    return f


def _data(rng, kind, m, n):
    A = 3 * rng.standard_normal((m, n))
    M = (rng.random((m, n)) < 0.6).astype(np.float64)
    if kind == "dense":
        return jmf.Dense(A)
    if kind == "weighted":
        return jmf.Dense(A, M * rng.uniform(0.5, 2.0, (m, n)))
    r, c = np.nonzero(M)
    return jmf.Sparse(r, c, A[r, c], (m, n), weights=rng.uniform(0.5, 2.0, r.size))


LOSSES = {
    "huber": lambda: jmf.losses.huber(0.7, l2=0.1, l1=(0.05, 0.02), bias_l2=0.3),
    "l1": lambda: jmf.losses.l1(l2=(0.1, 0.2), bias_l2=0.1),
}


@pytest.mark.x64  # central differences and autodiff to 1e-10
@pytest.mark.parametrize("kind", ["dense", "weighted", "sparse"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_matches_finite_differences(name, kind):
    rng = np.random.default_rng(0)
    m, n, k = 7, 6, 3
    loss = LOSSES[name]()
    data = _data(rng, kind, m, n)
    f = _factors(rng, m, n, k, biases=True)
    g = loss.grad(f, data)
    # Central differences along random directions (float64); the kinks (residual 0, factor 0) are
    # measure-zero for continuous random data and the step is far smaller than the distance to them.
    eps = 1e-6
    for seed in range(3):
        d = jax.tree_util.tree_map(lambda x: jnp.asarray(np.random.default_rng(seed).standard_normal(np.shape(x))), f)
        plus = jax.tree_util.tree_map(lambda x, y: x + eps * y, f, d)
        minus = jax.tree_util.tree_map(lambda x, y: x - eps * y, f, d)
        fd = (float(loss.value(plus, data)) - float(loss.value(minus, data))) / (2 * eps)
        an = sum(float(jnp.sum(a * b)) for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(d)))
        np.testing.assert_allclose(an, fd, rtol=1e-6, atol=1e-8)
    # and leaf by leaf against autodiff of the value
    auto = jax.grad(loss.value)(f, data)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(auto)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)


@pytest.mark.x64  # Huber with a huge delta equals Frobenius to 1e-12, sparse equals dense to 1e-12
def test_huber_limits_and_values():
    rng = np.random.default_rng(1)
    data = _data(rng, "sparse", 6, 5)
    f = _factors(rng, 6, 5, 2, biases=True)
    # delta above every residual: exactly the Frobenius loss (same units for the penalties)
    big, fro = jmf.losses.huber(1e6, l2=0.2), jmf.losses.frobenius(l2=0.2)
    np.testing.assert_allclose(float(big.value(f, data)), float(fro.value(f, data)), rtol=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(big.grad(f, data)), jax.tree_util.tree_leaves(fro.grad(f, data))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
    # the formulas on one entry each: r = 3 is beyond delta = 1 (linear part), r = 0.5 within it
    one = jmf.Factors(jnp.zeros((1, 1)), jnp.zeros((1, 2)))
    d = jmf.Dense(np.array([[3.0, -0.5]]))
    assert float(jmf.losses.huber(1.0).value(one, d)) == pytest.approx((2 * 1 * 3 - 1 + 0.25) / 2)
    assert float(jmf.losses.l1().value(one, d)) == pytest.approx((3 + 0.5) / 2)
    # sparse = dense with the same observed entries
    A = rng.standard_normal((5, 4))
    M = rng.random((5, 4)) < 0.5
    r, c = np.nonzero(M)
    f = _factors(rng, 5, 4, 2)
    for loss in (jmf.losses.huber(0.3, l2=0.1), jmf.losses.l1(l1=0.1)):
        dense, sparse = jmf.Dense(A, M.astype(float)), jmf.Sparse(r, c, A[r, c], A.shape)
        np.testing.assert_allclose(float(loss.value(f, dense)), float(loss.value(f, sparse)), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(loss.grad(f, dense).W), np.asarray(loss.grad(f, sparse).W),
                                   rtol=1e-10, atol=1e-12)


def test_parameter_errors():
    with pytest.raises(ValueError, match="huber: delta"):
        jmf.losses.huber(0.0)
    with pytest.raises(TypeError, match="huber: delta"):
        jmf.losses.huber("1")
    with pytest.raises(ValueError, match="l1: l2"):
        jmf.losses.l1(l2=-1.0)


def test_robust_losses_recover_the_clean_matrix_despite_outliers():
    """Gross outliers in 5% of the entries: Huber and L1 fits stay close to the clean matrix, Frobenius does not."""
    rng = np.random.default_rng(2)
    m, n, k = 60, 50, 3
    clean = low_rank(rng, m, n, k)  # entries of unit-ish scale (std about sqrt(3))
    A = clean + 0.05 * rng.standard_normal((m, n))
    bad = rng.random((m, n)) < 0.05
    A[bad] += rng.choice([-1.0, 1.0], bad.sum()) * rng.uniform(20, 40, bad.sum())
    data = jmf.Dense(A)

    def error(f):
        return float(np.linalg.norm(np.asarray(f.W @ f.H) - clean) / np.linalg.norm(clean))

    common = dict(rank=k, key=0, init="normal", tol=None, progress=False)
    # Frobenius at its best: the exact optimum (truncated SVD) of the corrupted matrix.
    fro = jmf.fit(data, jmf.solvers.svd(), **common)
    schedule = optax.exponential_decay(0.05, transition_steps=3000, decay_rate=0.01)
    hub = jmf.fit(data, jmf.solvers.gradient(optax.adam(schedule), loss=jmf.losses.huber(0.5)), max_iter=3000,
                  check_every=100, **common)
    lad = jmf.fit(data, jmf.solvers.gradient(optax.adam(schedule), loss=jmf.losses.l1()), max_iter=3000,
                  check_every=100, **common)
    e_fro, e_hub, e_lad = error(fro.factors), error(hub.factors), error(lad.factors)
    assert e_fro > 1.0, e_fro  # the outliers dominate the least-squares fit
    assert e_hub < 0.05 and e_lad < 0.05, (e_hub, e_lad)
    assert e_hub < e_fro / 10 and e_lad < e_fro / 10
