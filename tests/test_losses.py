"""Losses: values against NumPy, gradients against autodiff and finite differences (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmf
from jmf._src.losses import squared_error

# Values to 1e-12 against float64 NumPy, gradients against autodiff and finite differences.
pytestmark = pytest.mark.x64


def _factors(rng, m, n, k, biases=False):
    f = jmf.Factors(jnp.asarray(rng.standard_normal((m, k))), jnp.asarray(rng.standard_normal((k, n))))
    if biases:
        f = f._replace(row_bias=jnp.asarray(rng.standard_normal(m)), col_bias=jnp.asarray(rng.standard_normal(n)),
                       offset=jnp.asarray(0.3))
    return f


def _datasets(rng, m, n):
    A = rng.standard_normal((m, n))
    mask = rng.random((m, n)) < 0.6
    weights = rng.random((m, n)) * mask
    return {
        "dense": jmf.Dense(A),
        "masked": jmf.Dense(A, weights=mask.astype(float)),
        "weighted": jmf.Dense(A, weights=weights),
        "sparse": jmf.Sparse.from_dense(A, mask=mask),
    }


def test_frobenius_value_is_mean_squared_error(rng):
    m, n, k = 7, 5, 3
    f = _factors(rng, m, n, k)
    data = _datasets(rng, m, n)
    W, H = np.asarray(f.W), np.asarray(f.H)
    A = np.asarray(data["dense"].A)
    loss = jmf.losses.frobenius()
    np.testing.assert_allclose(loss.value(f, data["dense"]), np.mean((A - W @ H) ** 2), rtol=1e-12)
    w = np.asarray(data["weighted"].weights)
    np.testing.assert_allclose(loss.value(f, data["weighted"]), np.sum(w * (A - W @ H) ** 2) / w.sum(), rtol=1e-12)
    # sparse over the observed entries equals the masked dense loss
    np.testing.assert_allclose(loss.value(f, data["sparse"]), loss.value(f, data["masked"]), rtol=1e-12)


def test_penalty_units(rng):
    f = _factors(rng, 4, 3, 2, biases=True)
    data = jmf.Dense(rng.standard_normal((4, 3)))
    l2, l1, bl2 = 0.3, 0.2, 0.1
    loss = jmf.losses.frobenius(l2=l2, l1=l1, bias_l2=bl2)
    W, H = np.asarray(f.W), np.asarray(f.H)
    pen = l2 * (np.sum(W**2) + np.sum(H**2)) + l1 * (np.abs(W).sum() + np.abs(H).sum())
    pen += bl2 * (np.sum(np.asarray(f.row_bias) ** 2) + np.sum(np.asarray(f.col_bias) ** 2))
    expected = (float(squared_error(f, data)) + pen) / 12
    np.testing.assert_allclose(loss.value(f, data), expected, rtol=1e-12)
    # per-factor pairs
    loss2 = jmf.losses.frobenius(l2=(0.1, 0.0), bias_l2=0.0)
    np.testing.assert_allclose(loss2.value(f, data) * 12 - squared_error(f, data), 0.1 * np.sum(W**2), rtol=1e-10)


@pytest.mark.parametrize("kind", ["dense", "masked", "weighted", "sparse"])
@pytest.mark.parametrize("biases", [False, True])
def test_hand_gradient_matches_autodiff_and_finite_differences(rng, kind, biases):
    m, n, k = 6, 5, 2
    f = _factors(rng, m, n, k, biases=biases)
    data = _datasets(rng, m, n)[kind]
    loss = jmf.losses.frobenius(l2=0.05, bias_l2=0.02)
    g = loss.grad(f, data)
    g_auto = jax.grad(loss.value)(f, data)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_auto)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # central finite differences along a random direction
    direction = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(np.shape(x))), f)
    eps = 1e-6
    plus = jax.tree_util.tree_map(lambda x, d: x + eps * d, f, direction)
    minus = jax.tree_util.tree_map(lambda x, d: x - eps * d, f, direction)
    fd = (loss.value(plus, data) - loss.value(minus, data)) / (2 * eps)
    analytic = sum(jnp.vdot(a, d) for a, d in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(direction)))
    np.testing.assert_allclose(fd, analytic, rtol=1e-7)


@pytest.mark.parametrize("m,n,k", [(40, 30, 8), (90, 50, 5), (500, 20, 1)], ids=["gram", "gram-small-rank", "rank-1"])
def test_gram_path_used_for_large_dense_matches_autodiff(rng, m, n, k):
    # big enough for the Gram-form gradient (m n k > 8192); k <= 7 takes the unrolled small-rank form
    from jmf._src.losses.frobenius import _SMALL_RANK

    assert m * n * k > 8192 and (k <= _SMALL_RANK) == (k < 8)
    f = _factors(rng, m, n, k)
    data = jmf.Dense(rng.standard_normal((m, n)))
    loss = jmf.losses.frobenius(l2=0.1, l1=0.01)
    g = loss.grad(f, data)
    g_auto = jax.grad(loss.value)(f, data)
    np.testing.assert_allclose(g.W, g_auto.W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.H, g_auto.H, rtol=1e-10, atol=1e-12)
    # and under vmap over restarts (the layout the small-rank form is written for)
    fs = jax.tree_util.tree_map(lambda x: jnp.stack([x, 2 * x]), f)
    gs = jax.vmap(loss.grad, in_axes=(0, None))(fs, data)
    np.testing.assert_allclose(gs.W[1], jax.grad(loss.value)(jax.tree_util.tree_map(lambda x: 2 * x, f), data).W,
                               rtol=1e-10, atol=1e-12)


def test_l1_subgradient(rng):
    f = _factors(rng, 3, 3, 2)
    data = jmf.Dense(rng.standard_normal((3, 3)))
    g = jmf.losses.frobenius(l1=0.5).grad(f, data)
    g0 = jmf.losses.frobenius().grad(f, data)
    np.testing.assert_allclose(g.W - g0.W, 0.5 * np.sign(f.W) / 9, rtol=1e-12)


def test_custom_loss_uses_autodiff(rng):
    f = _factors(rng, 3, 4, 2)
    data = jmf.Dense(rng.standard_normal((3, 4)))
    loss = jmf.losses.custom(lambda f, d: jnp.sum(jnp.abs(d.A - f.predict()) ** 3))
    g = loss.grad(f, data)
    assert g.W.shape == (3, 2) and np.isfinite(np.asarray(g.W)).all()
    with pytest.raises(TypeError, match="callable"):
        jmf.losses.custom(3.0)


def test_loss_parameter_errors():
    with pytest.raises(ValueError, match="l2"):
        jmf.losses.frobenius(l2=-1.0)
    with pytest.raises(ValueError, match="l1"):
        jmf.losses.frobenius(l1=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="l1"):
        jmf.losses.frobenius(l1=float("nan"))
