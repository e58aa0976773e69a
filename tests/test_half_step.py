"""Solver.update_w (the update of W with H fixed) and the solvers' ownership of rank masks.

Iterating ``update_w`` from any ``W`` must solve every row's own problem against the fixed ``H``:
a ridge regression for ALS and gradient solvers, a nonnegative least-squares problem for HALS and
MU (checked against scipy.optimize.nnls), the confidence-weighted ridge of implicit ALS.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import nnls

import jmf

# float64: half steps against exact ridge / NNLS solutions, to 1e-8..1e-14.
pytestmark = pytest.mark.x64

M_, N_, K_ = 9, 14, 3


@functools.lru_cache(maxsize=None)
def _iterate(solver, n):
    """jit: ``n`` applications of ``solver.update_w`` from ``f``; returns the factors."""

    def run(f, data, mask):
        state = solver.init(f, data, jax.random.key(0))

        def body(carry, _):
            return solver.update_w(*carry, data, mask), None

        (f, _), _ = jax.lax.scan(body, (f, state), None, length=n)
        return f

    return jax.jit(run)


def _problem(seed, nonnegative=False):
    rng = np.random.default_rng(seed)
    # Unstructured data against a random H: the unconstrained row solutions have negative entries.
    A = rng.random((M_, N_)) if nonnegative else rng.standard_normal((M_, N_))
    Wt = (rng.random((M_, N_)) < 0.7) * rng.uniform(0.5, 2.0, (M_, N_))
    Wt[:, 0] = Wt[0, :] = 1.0  # every row and column observed
    H = rng.random((K_, N_)) + 0.1 if nonnegative else rng.standard_normal((K_, N_))
    W0 = rng.random((M_, K_)) + 0.1
    return A, Wt, jnp.asarray(W0), jnp.asarray(H)


def _data(A, Wt, kind):
    if kind == "dense":
        return jmf.Dense(A)
    if kind == "weighted":
        return jmf.Dense(A, Wt)
    r, c = np.nonzero(Wt)
    return jmf.Sparse(r, c, A[r, c], A.shape, weights=Wt[r, c])


def _weights(Wt, kind):
    return np.ones_like(Wt) if kind == "dense" else Wt


def _ridge_rows(A, Wt, H, lam, shift=None, counts=None):
    """Each row's ridge solution ``argmin_x sum_j w_j (a_j - s_j - x.h_j)^2 + lam c_i |x|^2`` (NumPy)."""
    H = np.asarray(H)
    out = []
    for i in range(A.shape[0]):
        w = Wt[i]
        t = A[i] - (0 if shift is None else shift)
        c = 1.0 if counts is None else counts[i]
        out.append(np.linalg.solve((H * w) @ H.T + lam * c * np.eye(H.shape[0]), (H * w) @ t))
    return np.array(out)


@pytest.mark.parametrize("kind", ["dense", "weighted", "sparse"])
@pytest.mark.parametrize("solve", ["cholesky", "cg"])
def test_als_update_w_is_the_exact_ridge_solve(kind, solve):
    A, Wt, W0, H = _problem(0)
    data = _data(A, Wt, kind)
    w = _weights(Wt, kind)
    solver = jmf.solvers.als(l2=0.3, count_scaled=True, solve=solve, cg_steps=2)
    f0 = jmf.Factors(W0, H)
    f = _iterate(solver, 1 if solve == "cholesky" or kind != "sparse" else 40)(f0, data, None)
    np.testing.assert_allclose(np.asarray(f.W), _ridge_rows(A, w, H, 0.3, counts=w.sum(axis=1)), rtol=1e-8,
                               atol=1e-10)
    np.testing.assert_array_equal(np.asarray(f.H), np.asarray(H))
    # step is update_w followed by the update of H
    stepped, _ = solver.step(f0, solver.init(f0, data), data, None)
    once, _ = solver.update_w(f0, solver.init(f0, data), data, None)
    np.testing.assert_allclose(np.asarray(stepped.W), np.asarray(once.W), rtol=1e-12, atol=1e-14)
    assert not np.allclose(np.asarray(stepped.H), np.asarray(H))


def test_als_update_w_with_biases_keeps_the_column_side():
    A, Wt, W0, H = _problem(1)
    data = _data(A, Wt, "sparse")
    rng = np.random.default_rng(2)
    cb, off = jnp.asarray(rng.standard_normal(N_)), jnp.asarray(0.4)
    f0 = jmf.Factors(W0, H, jnp.zeros(M_), cb, off)
    f = _iterate(jmf.solvers.als(l2=0.2, biases=True, bias_l2=0.2), 1)(f0, data, None)
    Ha = np.r_[np.asarray(H), np.ones((1, N_))]  # the bias is the coefficient of a constant feature
    ref = _ridge_rows(A, Wt, Ha, 0.2, shift=np.asarray(cb) + 0.4)
    np.testing.assert_allclose(np.asarray(f.W), ref[:, :K_], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(f.row_bias), ref[:, K_], rtol=1e-8, atol=1e-10)
    for kept, orig in ((f.H, H), (f.col_bias, cb), (f.offset, off)):
        np.testing.assert_array_equal(np.asarray(kept), np.asarray(orig))


def _nnls_rows(A, Wt, H):
    H = np.asarray(H)
    out = []
    for i in range(A.shape[0]):
        s = np.sqrt(Wt[i])
        out.append(nnls((H * s).T, A[i] * s)[0])
    return np.array(out)


@pytest.mark.parametrize("kind", ["dense", "weighted", "sparse"])
@pytest.mark.parametrize("name", ["hals", "mu"])
def test_nmf_update_w_converges_to_nnls(name, kind):
    A, Wt, W0, H = _problem(3, nonnegative=True)
    data = _data(A, Wt, kind)
    solver = jmf.solvers.hals() if name == "hals" else jmf.solvers.mu()
    f = _iterate(solver, 300 if name == "hals" else 20000)(jmf.Factors(W0, H), data, None)
    ref = _nnls_rows(A, _weights(Wt, kind), H)
    assert (ref == 0).any()  # some constraints are active: NNLS, not least squares
    np.testing.assert_allclose(np.asarray(f.W), ref, atol=1e-6 if name == "hals" else 1e-3)
    np.testing.assert_array_equal(np.asarray(f.H), np.asarray(H))


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_gradient_update_w_converges_to_the_ridge_solution(kind):
    A, Wt, W0, H = _problem(4)
    data = _data(A, Wt, kind)
    w = _weights(Wt, kind)
    # Adam's momentum state for H is nonzero after a full step; update_w must still leave H exactly.
    sched = optax.exponential_decay(0.05, 4000, 1e-3)
    solver = jmf.solvers.gradient(optax.adam(sched), loss=jmf.losses.frobenius(l2=0.5))
    f = _iterate(solver, 4000)(jmf.Factors(W0, H), data, None)
    np.testing.assert_allclose(np.asarray(f.W), _ridge_rows(A, w, H, 0.5), atol=2e-4)
    np.testing.assert_array_equal(np.asarray(f.H), np.asarray(H))


def test_implicit_update_w_is_the_weighted_ridge_solve():
    rng = np.random.default_rng(5)
    R = (rng.random((M_, N_)) < 0.3) * rng.integers(1, 5, (M_, N_)).astype(float)
    R[:, 0] = R[0, :] = 1.0
    r, c = np.nonzero(R)
    data = jmf.Sparse(r, c, R[r, c], R.shape)
    H = jnp.asarray(rng.standard_normal((K_, N_)))
    alpha, l2 = 0.7, 0.4
    f = _iterate(jmf.solvers.implicit_als(l2=l2, alpha=alpha, solve="cholesky"), 1)(
        jmf.Factors(jnp.asarray(rng.standard_normal((M_, K_))), H), data, None)
    conf, pref = 1 + alpha * R, (R > 0).astype(float)
    ref = _ridge_rows(pref, conf, H, l2)
    np.testing.assert_allclose(np.asarray(f.W), ref, rtol=1e-8, atol=1e-10)


def test_solvers_without_a_half_step():
    assert jmf.solvers.svd().update_w is None
    for solver in (jmf.solvers.als(), jmf.solvers.hals(), jmf.solvers.mu(beta=1), jmf.solvers.adam(0.1),
                   jmf.solvers.implicit_als(), jmf.solvers.ratings_gradient(optax.adam(0.1))):
        assert callable(solver.update_w), solver.name


# -- rank masks belong to the solvers -----------------------------------------------------------


MASKED = {
    "als": jmf.solvers.als(l2=0.1),
    "als-biases-cg": jmf.solvers.als(l2=0.1, biases=True, count_scaled=True, solve="cg"),
    "hals": jmf.solvers.hals(l1=0.1, l2=0.1),
    "hals-auto": jmf.solvers.hals(inner="auto"),
    "mu": jmf.solvers.mu(),
    "mu-kl": jmf.solvers.mu(beta=1),
    "adam": jmf.solvers.adam(1e-2),
    # an update that is nonzero everywhere, whatever the gradient: only masking the result keeps zeros
    "noisy-sgd": jmf.solvers.gradient(optax.chain(optax.sgd(1e-2), optax.add_noise(0.1, 0.55, 0))),
    "minibatch": jmf.solvers.adam(1e-2, batch_size=16),
    "implicit": jmf.solvers.implicit_als(),
    "ratings-gradient": jmf.solvers.ratings_gradient(optax.adam(1e-2)),
}


@pytest.mark.parametrize("name", sorted(MASKED))
def test_step_and_update_w_keep_inactive_columns_zero(name):
    solver = MASKED[name]
    A, Wt, W0, H = _problem(6, nonnegative=True)
    mask = jnp.asarray([1.0, 1.0, 0.0])
    kinds = [k for k in ("dense", "weighted", "sparse") if k in solver.data_kinds]
    for kind in kinds:
        data = _data(A, Wt, kind)
        f = jmf.Factors(W0 * mask[None, :], jnp.abs(H) * mask[:, None])
        if solver.biases:
            f = f._replace(row_bias=jnp.zeros(M_), col_bias=jnp.zeros(N_), offset=jnp.asarray(1.0))
        state = solver.init(f, data, jax.random.key(0))
        for fn in (solver.step, solver.update_w):
            out, _ = jax.jit(fn)(f, state, data, mask)
            assert np.all(np.asarray(out.W)[:, 2] == 0) and np.all(np.asarray(out.H)[2] == 0), (name, kind)
            assert np.all(np.isfinite(np.asarray(out.W))), (name, kind)
