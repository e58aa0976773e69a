"""Beta-divergence losses: values against NumPy and scikit-learn, gradients against autodiff and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmf
from jmf.losses import beta_divergence, elementwise_beta_divergence

# Values to 1e-12 against float64 NumPy and scikit-learn, gradients against autodiff and finite differences.
pytestmark = pytest.mark.x64

BETAS = [2.0, 1.0, 0.0, 1.5, 3.0, -0.5]


def _ref_d(a, y, beta):
    """d_beta(a | y) in float64 NumPy, straight from the definitions (a, y > 0)."""
    if beta == 2:
        return 0.5 * (a - y) ** 2
    if beta == 1:
        return a * np.log(a / y) - a + y
    if beta == 0:
        return a / y - np.log(a / y) - 1
    return (a**beta + (beta - 1) * y**beta - beta * a * y ** (beta - 1)) / (beta * (beta - 1))


def _problem(seed=0, m=12, n=9, k=3):
    rng = np.random.default_rng(seed)
    A = rng.random((m, n)) + 0.2
    W, H = rng.random((m, k)) + 0.1, rng.random((k, n)) + 0.1
    M = (rng.random((m, n)) < 0.6).astype(np.float64) * rng.uniform(0.5, 2.0, (m, n))
    return A, M, jmf.Factors(jnp.asarray(W), jnp.asarray(H))


def _sparse(A, M):
    r, c = np.nonzero(M)
    return jmf.Sparse(r, c, A[r, c], A.shape, weights=M[r, c])


@pytest.mark.parametrize("beta", BETAS)
def test_values_dense_weighted_sparse(beta):
    A, M, f = _problem()
    Y = np.asarray(f.W) @ np.asarray(f.H)
    D = _ref_d(A, Y, beta)
    loss = beta_divergence(beta)
    np.testing.assert_allclose(float(loss.value(f, jmf.Dense(A))), D.mean(), rtol=1e-12)
    expected = np.sum(M * D) / M.sum()
    np.testing.assert_allclose(float(loss.value(f, jmf.Dense(A, M))), expected, rtol=1e-12)
    np.testing.assert_allclose(float(loss.value(f, _sparse(A, M))), expected, rtol=1e-12)


def test_beta_two_is_half_frobenius_and_penalties_add():
    A, M, f = _problem(1)
    d = jmf.Dense(A, M)
    half = 0.5 * float(jmf.losses.frobenius().value(f, d))
    np.testing.assert_allclose(float(beta_divergence(2).value(f, d)), half, rtol=1e-12)
    W, H = np.asarray(f.W), np.asarray(f.H)
    pen = 0.3 * np.sum(W**2) + 0.7 * np.sum(H**2) + 0.1 * np.abs(W).sum() + 0.2 * np.abs(H).sum()
    got = float(beta_divergence(1, l1=(0.1, 0.2), l2=(0.3, 0.7)).value(f, d))
    base = float(beta_divergence(1).value(f, d))
    np.testing.assert_allclose(got, base + pen / M.sum(), rtol=1e-12)


@pytest.mark.parametrize("beta_loss,beta", [("frobenius", 2), ("kullback-leibler", 1), ("itakura-saito", 0)])
def test_matches_sklearn_beta_divergence(beta_loss, beta):
    pytest.importorskip("sklearn")
    from sklearn.decomposition._nmf import _beta_divergence

    A, _, f = _problem(2)
    W, H = np.asarray(f.W), np.asarray(f.H)
    ref = _beta_divergence(A, W, H, beta_loss)  # a sum over all entries
    got = float(beta_divergence(beta_loss).value(f, jmf.Dense(A))) * A.size
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    assert beta_divergence(beta_loss).name == beta_divergence(beta).name


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("kind", ["dense", "weighted", "sparse"])
def test_gradient_matches_autodiff(beta, kind):
    A, M, f = _problem(3)
    data = {"dense": jmf.Dense(A), "weighted": jmf.Dense(A, M), "sparse": _sparse(A, M)}[kind]
    f = f._replace(row_bias=jnp.linspace(0.0, 0.1, 12), col_bias=jnp.linspace(0.1, 0.0, 9), offset=jnp.asarray(0.05))
    loss = beta_divergence(beta, l1=0.01, l2=(0.2, 0.1))
    g = loss.grad(f, data)
    g_ad = jax.grad(loss.value)(f, data)
    for a, b in zip(g, g_ad):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


def test_gradient_finite_differences():
    A, M, f = _problem(4)
    data = jmf.Dense(A, M)
    loss = beta_divergence(1)
    g = loss.grad(f, data)
    h = 1e-6
    for i, j in [(0, 0), (5, 2), (11, 1)]:
        fp = f._replace(W=f.W.at[i, j].add(h))
        fm = f._replace(W=f.W.at[i, j].add(-h))
        fd = (float(loss.value(fp, data)) - float(loss.value(fm, data))) / (2 * h)
        np.testing.assert_allclose(float(g.W[i, j]), fd, rtol=1e-6)


def test_safeguards_zero_data_and_predictions():
    a = jnp.asarray([0.0, 1.0, 0.0, 2.0])
    y = jnp.asarray([0.5, 0.0, 0.0, 2.0])
    kl = np.asarray(elementwise_beta_divergence(a, y, 1.0))
    assert np.all(np.isfinite(kl))
    np.testing.assert_allclose(kl[0], 0.5)  # 0 log 0 = 0: d = y
    np.testing.assert_allclose(kl[3], 0.0, atol=1e-15)
    is_ = np.asarray(elementwise_beta_divergence(a, y, 0.0))
    assert np.all(np.isfinite(is_)) and np.all(is_ >= 0)
    # beta_divergence works under jit and with float32
    A, _, f = _problem(5)
    f32 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), f)
    v = jax.jit(beta_divergence("kl").value)(f32, jmf.Dense(A.astype(np.float32)))
    assert v.dtype == jnp.float32 and np.isfinite(float(v))


def test_bad_arguments():
    with pytest.raises(ValueError, match="beta"):
        beta_divergence("hellinger")
    with pytest.raises(TypeError, match="beta"):
        beta_divergence([1.0])
    with pytest.raises(ValueError, match="beta"):
        beta_divergence(float("inf"))
    with pytest.raises(ValueError, match="l1"):
        beta_divergence(1, l1=-1.0)
    with pytest.raises(ValueError, match="eps"):
        beta_divergence(1, eps=2.0)
