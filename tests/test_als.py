"""Alternating least squares: SVD optimum, NumPy references, sparse = dense masked, batching, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jmf
from jmf._src.solvers import _blocked, _normal
from tests.conftest import low_rank
from tests.solver_helpers import run

# float64: ALS steps against NumPy ridge solves and the SVD optimum, to 1e-9..1e-12.
pytestmark = pytest.mark.x64

M_, N_, K_ = 30, 24, 3


def _masked(seed, density=0.5, nonneg=False):
    rng = np.random.default_rng(seed)
    A = low_rank(rng, M_, N_, K_, noise=0.1, nonnegative=nonneg) + 3.0
    M = (rng.random(A.shape) < density).astype(np.float64)
    M[np.arange(M_), rng.integers(0, N_, M_)] = 1
    M[rng.integers(0, M_, N_), np.arange(N_)] = 1
    return A, M


def _sparse(A, M, weights=None):
    r, c = np.nonzero(M)
    return jmf.Sparse(r, c, A[r, c], A.shape, weights=None if weights is None else weights[r, c])


def _start(seed, k=K_, biases=False, m=M_, n=N_):
    rng = np.random.default_rng(seed + 50)
    f = jmf.Factors(jnp.asarray(rng.standard_normal((m, k))), jnp.asarray(rng.standard_normal((k, n))))
    if biases:
        f = f._replace(row_bias=jnp.asarray(0.1 * rng.standard_normal(m)),
                       col_bias=jnp.asarray(0.1 * rng.standard_normal(n)), offset=jnp.asarray(3.0))
    return f


# -- the Eckart-Young optimum ---------------------------------------------------------------


def test_dense_als_reaches_svd_optimum():
    """Every rank of one fit_many call converges to its Eckart-Young optimum, the loss never increasing."""
    rng = np.random.default_rng(0)
    A = low_rank(rng, 50, 40, 4, noise=0.3)
    s = np.linalg.svd(A, compute_uv=False)
    many = jmf.fit_many(A, jmf.solvers.als(), ranks=[1, 4], n_restarts=2, key=0, max_iter=300, tol=1e-12,
                        progress=False)
    assert np.all(np.asarray(many.status) == int(jmf.Status.CONVERGED))
    opt = np.array([[np.sum(s[k:] ** 2) / A.size] * 2 for k in (1, 4)])
    np.testing.assert_allclose(np.asarray(many.loss), opt, rtol=1e-7)
    for h in np.asarray(many.loss_history).reshape(4, -1):
        h = h[np.isfinite(h)]
        assert np.all(np.diff(h) <= 1e-12 * h[:-1])


def test_dense_ridge_fixed_point_matches_closed_form():
    """At convergence W = A H^T (H H^T + l2 I)^-1 and H = (W^T W + l2 I)^-1 W^T A, the gradient vanishes."""
    rng = np.random.default_rng(1)
    A = low_rank(rng, 30, 20, 3, noise=0.2)
    l2 = (0.7, 2.0)
    f, h = run(jmf.solvers.als(l2=l2), jmf.Dense(A), _start(0, 3, m=30, n=20), 150)
    W, H = np.asarray(f.W), np.asarray(f.H)
    np.testing.assert_allclose(W, A @ H.T @ np.linalg.inv(H @ H.T + l2[0] * np.eye(3)), atol=1e-8)
    np.testing.assert_allclose(H, np.linalg.inv(W.T @ W + l2[1] * np.eye(3)) @ W.T @ A, atol=1e-10)
    g = jmf.losses.frobenius(l2=l2).grad(f, jmf.Dense(A))
    assert float(jnp.max(jnp.abs(g.W))) < 1e-8 and float(jnp.max(jnp.abs(g.H))) < 1e-8


# -- one step against a float64 NumPy reference ---------------------------------------------


def _ref_step(A, M, f, l2, bias_l2, row_scaled):
    """Per-row augmented ridge solves in NumPy: the definition of (biased, weighted) ALS."""
    W, H = np.asarray(f.W).copy(), np.asarray(f.H).copy()
    biased = f.row_bias is not None
    rb = np.asarray(f.row_bias).copy() if biased else None
    cb = np.asarray(f.col_bias).copy() if biased else None
    off = float(f.offset) if biased else 0.0
    k = W.shape[1]
    for i in range(A.shape[0]):
        F = H.T if not biased else np.c_[H.T, np.ones(A.shape[1])]
        t = A[i] - (off + cb if biased else 0)
        pen = np.r_[np.full(k, l2), [bias_l2]] if biased else np.full(k, l2)
        if row_scaled:
            pen = pen * M[i].sum()
        x = np.linalg.solve(F.T @ (M[i][:, None] * F) + np.diag(pen), F.T @ (M[i] * t))
        W[i] = x[:k]
        if biased:
            rb[i] = x[k]
    for j in range(A.shape[1]):
        F = W if not biased else np.c_[W, np.ones(A.shape[0])]
        t = A[:, j] - (off + rb if biased else 0)
        pen = np.r_[np.full(k, l2), [bias_l2]] if biased else np.full(k, l2)
        if row_scaled:
            pen = pen * M[:, j].sum()
        x = np.linalg.solve(F.T @ (M[:, j][:, None] * F) + np.diag(pen), F.T @ (M[:, j] * t))
        H[:, j] = x[:k]
        if biased:
            cb[j] = x[k]
    return W, H, rb, cb


@pytest.mark.parametrize("biases,row_scaled", [(False, False), (True, False), (True, True)])
def test_one_step_matches_numpy(biases, row_scaled):
    A, M = _masked(2)
    Wt = M * np.random.default_rng(3).uniform(0.5, 2.0, M.shape)  # real weights, not just a mask
    f0 = _start(1, biases=biases)
    solver = jmf.solvers.als(l2=0.3, bias_l2=0.05, biases=biases, count_scaled=row_scaled)
    W, H, rb, cb = _ref_step(A, Wt, f0, 0.3, 0.05, row_scaled)
    for data in (jmf.Dense(A, Wt), _sparse(A, M, Wt)):
        f, _ = run(solver, data, f0, 1)
        np.testing.assert_allclose(np.asarray(f.W), W, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(np.asarray(f.H), H, rtol=1e-9, atol=1e-10)
        if biases:
            np.testing.assert_allclose(np.asarray(f.row_bias), rb, rtol=1e-9, atol=1e-10)
            np.testing.assert_allclose(np.asarray(f.col_bias), cb, rtol=1e-9, atol=1e-10)
            assert float(f.offset) == 3.0


@pytest.mark.parametrize("row_scaled", [False, True])
def test_unweighted_dense_biases_match_numpy(row_scaled):
    A, _ = _masked(4)
    f0 = _start(2, biases=True)
    W, H, rb, cb = _ref_step(A, np.ones_like(A), f0, 0.2, 0.1, row_scaled)
    f, _ = run(jmf.solvers.als(l2=0.2, bias_l2=0.1, biases=True, count_scaled=row_scaled), jmf.Dense(A), f0, 1)
    np.testing.assert_allclose(np.asarray(f.W), W, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(np.asarray(f.col_bias), cb, rtol=1e-9, atol=1e-10)


# -- sparse = dense masked --------------------------------------------------------------------


@pytest.mark.parametrize("biases,row_scaled", [(False, False), (True, True)])
def test_sparse_equals_dense_masked(biases, row_scaled):
    A, M = _masked(5)
    solver = jmf.solvers.als(l2=0.1, biases=biases, count_scaled=row_scaled)
    f0 = _start(3, biases=biases)
    fd, hd = run(solver, jmf.Dense(A, M), f0, 20)
    fs, hs = run(solver, _sparse(A, M), f0, 20)
    np.testing.assert_allclose(hs, hd, rtol=1e-10)
    for leaf_d, leaf_s in zip(fd, fs):
        if leaf_d is not None:
            np.testing.assert_allclose(np.asarray(leaf_s), np.asarray(leaf_d), rtol=1e-8, atol=1e-10)


def test_sparse_engine_against_the_definition(monkeypatch):
    """Packed Gram blocks + batched Cholesky give every row's ridge solution, whatever the entry order."""
    A, M = _masked(6)
    data = _sparse(A, M)
    f0 = _start(4, biases=True)
    F = jnp.c_[f0.H.T, jnp.ones((N_, 1))]
    shift = f0.col_bias + 3.0
    ridge = 0.5

    def solve(data):
        lay = _blocked.sparse_layout(data)

        def contrib(ent, valid):
            o = jnp.where(valid, data.cols[ent], N_)
            feats = jnp.concatenate([F, jnp.zeros((1, K_ + 1))])
            t = data.vals[ent] - jnp.concatenate([shift, jnp.zeros(1)])[o]
            w = jnp.where(valid, data.effective_weights()[ent], 0)
            return feats[o], w, w * t

        def system(G, R, seg, x0):
            return _normal.solve_spd(G, R, jnp.full(R.shape, ridge))

        return _blocked.packed_solve(lay.rows, jnp.zeros((M_, K_ + 1)), contrib, system, N_, data.nnz), lay

    x, lay = jax.jit(solve)(data)
    Fn, t = np.asarray(F), A - np.asarray(shift)[None, :]
    G_ref = np.einsum("ij,ja,jb->iab", M, Fn, Fn) + ridge * np.eye(K_ + 1)
    x_ref = np.linalg.solve(G_ref, np.einsum("ij,ja->ia", M * t, Fn)[..., None])[..., 0]
    np.testing.assert_allclose(np.asarray(x), x_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(lay.row_weight), M.sum(axis=1))
    # Weight-0 padding in the last row, as in a stacked batch: same solution.
    pad = 5
    padded = jmf._src.data._rebuild(jmf.Sparse, jmf._src.data.pad_entries(
        data.rows, data.cols, data.vals, data.effective_weights(), data.nnz + pad, M_ - 1), data.shape)
    x2, _ = jax.jit(solve)(padded)
    np.testing.assert_allclose(np.asarray(x2), x_ref, rtol=1e-9, atol=1e-12)
    # The batched Cholesky in slices of SOLVE_BATCH systems (the last slice overlapping) gives the same.
    monkeypatch.setattr(_normal, "SOLVE_BATCH", 7)
    G = jnp.asarray(G_ref - ridge * np.eye(K_ + 1))
    b = jnp.asarray(np.einsum("ij,ja->ia", M * t, Fn))
    x3 = jax.jit(_normal.solve_spd)(G, b, jnp.full((M_, K_ + 1), ridge))
    np.testing.assert_allclose(np.asarray(x3), x_ref, rtol=1e-9, atol=1e-12)


def test_sparse_layout_groups_entries_and_empty_rows():
    rows = jnp.asarray([0, 0, 3, 3, 3, 3, 3], jnp.int32)  # rows 1, 2 empty (sorted: the Sparse invariant)
    cols = jnp.asarray([5, 1, 6, 0, 2, 3, 1], jnp.int32)  # columns in no particular order
    data = jmf._src.data._rebuild(jmf.Sparse, (rows, cols, jnp.arange(7.0) + 1, None), (4, 7))
    lay = _blocked.sparse_layout(data)
    np.testing.assert_array_equal(np.asarray(lay.rows.counts), [2, 0, 0, 5])
    np.testing.assert_array_equal(np.asarray(lay.row_weight), [2, 0, 0, 5])
    counts, start, order = (np.asarray(x) for x in (lay.cols.counts, lay.cols.indptr, lay.cols.order))
    got = {j: sorted(np.asarray(rows)[order[start[j]:start[j] + counts[j]]].tolist()) for j in range(7)}
    assert got == {0: [3], 1: [0, 3], 2: [3], 3: [3], 4: [], 5: [0], 6: [3]}
    np.testing.assert_array_equal(np.asarray(lay.col_weight), [1, 2, 1, 1, 0, 1, 1])


@pytest.mark.parametrize("n", [7, 2 ** 28])  # 2**28: n * nnz exceeds int32, the key-value argsort
def test_column_order_is_the_stable_argsort(n):
    cols = np.random.default_rng(0).integers(0, min(n, 7), 40).astype(np.int32)
    got = jax.jit(_blocked._column_order, static_argnums=1)(jnp.asarray(cols), n)
    np.testing.assert_array_equal(np.asarray(got), np.argsort(cols, kind="stable"))
    assert got.dtype == jnp.int32


def test_tilings_give_the_same_solutions_and_a_mismatched_layout_is_refused():
    A, M = _masked(13)
    data = _sparse(A, M)
    # Cholesky ALS builds its layout with gram_tiling(width) >= 8 (here 8 slots per tile against 16).
    assert [_blocked.gram_tiling(w).min_tile for w in (4, 65, 1000)] == [8, 16, 32]
    assert _blocked.tile_width(data.nnz, M_, 4) != _blocked.tile_width(data.nnz, M_, 16)
    t4, t16 = _blocked.Tiling(4), _blocked.Tiling(16, 1 << 10)
    lay4 = _blocked.sparse_layout(data, t4)
    F = jnp.asarray(np.random.default_rng(0).standard_normal((N_ + 1, 3))).at[N_].set(0)

    def contrib(ent, valid):
        return F[jnp.where(valid, data.cols[ent], N_)], None, jnp.where(valid, data.vals[ent], 0)

    def system(G, R, seg, x0):
        return _normal.solve_spd(G, R, jnp.ones_like(R))

    x4 = _blocked.packed_solve(lay4.rows, jnp.zeros((M_, 3)), contrib, system, N_, data.nnz, t4)
    lay16 = _blocked.sparse_layout(data, t16)
    x16 = _blocked.packed_solve(lay16.rows, jnp.zeros((M_, 3)), contrib, system, N_, data.nnz, t16)
    np.testing.assert_allclose(np.asarray(x16), np.asarray(x4), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="min_tile=16"):
        _blocked.packed_solve(lay4.rows, jnp.zeros((M_, 3)), contrib, system, N_, data.nnz, t16)


def test_stacked_sparse_batch_equals_each_matrix_alone():
    """Stacking pads the shorter matrix; the padding must not disturb any row's entries."""
    A, M = _masked(11)
    M2 = M.copy()
    M2[:, : N_ // 2] = 0
    M2[np.arange(M_), np.random.default_rng(1).integers(N_ // 2, N_, M_)] = 1
    M2[0, :] = 1  # every column keeps an entry
    a, b = _sparse(A, M), _sparse(A + 1, M2)
    assert a.nnz != b.nnz
    solver = jmf.solvers.ratings_als(l2=0.2, count_scaled=True, cg_steps=2)
    kw = dict(rank=2, key=0, init="normal", max_iter=15, tol=None, progress=False)
    many = jmf.fit_many(jmf.stack([a, b]), solver, **kw)
    for i, d in enumerate((a, b)):
        alone = jmf.fit(d, solver, **kw)
        np.testing.assert_allclose(np.asarray(many.factors.W[i]), np.asarray(alone.factors.W), rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(float(many.loss[i]), float(alone.loss), rtol=1e-9)


def test_cg_sweeps_converge_to_the_exact_fixed_point():
    A, M = _masked(10)
    data = _sparse(A, M)
    f0 = _start(5, biases=True)
    exact, _ = run(jmf.solvers.als(l2=0.3, biases=True, count_scaled=True), data, f0, 60)
    cg, h = run(jmf.solvers.als(l2=0.3, biases=True, count_scaled=True, solve="cg", cg_steps=2), data, f0, 60)
    assert np.all(np.diff(h) <= 1e-12 * h[:-1])
    np.testing.assert_allclose(np.asarray(cg.predict()), np.asarray(exact.predict()), rtol=1e-5, atol=1e-6)
    # ratings_als is this solver with biases on and CG solves
    assert jmf.solvers.ratings_als(l2=0.3, count_scaled=True, cg_steps=2) is \
        jmf.solvers.als(l2=0.3, biases=True, count_scaled=True, solve="cg", cg_steps=2)


# -- monotonicity -------------------------------------------------------------------------------


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_loss_never_increases(seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((M_, N_))  # full rank: ALS stays away from an exact fit
    M = np.zeros(M_ * N_)
    M[rng.permutation(M.size)[: M.size * 6 // 10]] = 1  # same nnz for every example: one compilation
    M = M.reshape(M_, N_)
    f0 = _start(seed)
    fb = _start(seed, biases=True)
    cases = [
        (jmf.solvers.als(), jmf.Dense(A), f0),
        (jmf.solvers.als(l2=(0.5, 0.1)), jmf.Dense(A, M), f0),
        (jmf.solvers.als(l2=0.2, biases=True), _sparse(A, M), fb),
        (jmf.solvers.als(l2=0.05, biases=True, count_scaled=True), _sparse(A, M), fb),
        (jmf.solvers.als(l2=0.05, biases=True, count_scaled=True, solve="cg"), _sparse(A, M), fb),
    ]
    for solver, data, f in cases:
        _, h = run(solver, data, f, 15)
        assert np.all(np.isfinite(h))
        assert np.all(np.diff(h) <= 1e-12 * h[:-1]), (solver.name, np.diff(h).max())
        assert h[-1] < h[0]


# -- batching -----------------------------------------------------------------------------------


def test_fit_many_ranks_and_restarts():
    A, M = _masked(7)
    data = _sparse(A, M)
    solver = jmf.solvers.als(l2=0.1)
    keys = jax.random.split(jax.random.key(1), 2)
    many = jmf.fit_many(data, solver, ranks=[1, 3], keys=keys, init="normal", max_iter=20, tol=None, progress=False)
    assert many.loss.shape == (2, 2)
    assert np.all(np.isfinite(np.asarray(many.loss)))
    assert np.all(np.asarray(many.factors.W)[0, :, :, 1:] == 0)  # rank-1 members: padded columns exactly 0
    f0 = jmf.init.normal(keys[0], data, 1)
    f, h = run(solver, data, f0, 20)
    member = many.member(0, 0)
    np.testing.assert_allclose(np.asarray(member.factors.W), np.asarray(f.W), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(float(member.loss), h[-1], rtol=1e-9)


def test_rank_masked_members_stay_finite_without_ridge():
    """l2 = 0 with padded ranks: the masked columns get 1 on the Gram diagonal, no NaN."""
    A, M = _masked(8)
    many = jmf.fit_many(jmf.Dense(A, M), jmf.solvers.als(), ranks=[1, 2], key=0, max_iter=10, tol=None,
                        progress=False)
    assert np.all(np.isfinite(np.asarray(many.factors.W))) and np.all(np.isfinite(np.asarray(many.loss)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("noise", [1e-4, 0.0])
def test_rank_above_the_data_rank_does_not_diverge(dtype, noise):
    """Rank 6 on rank-3 data and l2 = 0: the Gram matrices are numerically singular.

    With the old floor (eps * trace / q) Cholesky broke down (NaN) and the fit stopped DIVERGED with its
    initial factors (relative error ~1.1): float32 for 10 of 10 seeds, float64 on exactly low-rank data.
    """
    for seed in range(10):
        rng = np.random.default_rng(seed)
        clean = low_rank(rng, 30, 20, 3)
        A = (clean + noise * rng.standard_normal(clean.shape)).astype(dtype)
        res = jmf.fit(A, jmf.solvers.als(), rank=6, key=seed, max_iter=50, progress=False)
        W, H = np.asarray(res.factors.W, np.float64), np.asarray(res.factors.H, np.float64)
        rel = np.linalg.norm(A - W @ H) / np.linalg.norm(A)
        noise_level = np.linalg.norm(A - clean) / np.linalg.norm(A)  # includes the cast to dtype
        assert res.status_name != "DIVERGED", seed
        # A breakdown leaves the initial factors (rel ~1.1).  The floor itself moves the solution by about
        # eps * q * cond, and how much depends on the host CPU's code: on exactly low-rank float64 data rel
        # stayed under 100 eps until a machine of 2026-12-01 gave 124 eps (seed 3).  Hence 1000 eps.
        assert rel < 1.5 * noise_level + 1000 * np.finfo(dtype).eps, (seed, rel)


def test_cholesky_solve_survives_a_singular_system():
    y = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 3)), jnp.float32)
    y = y.at[:, :, 2].set(y[:, :, 0] + y[:, :, 1])  # rank 2: a 3 x 3 Gram that is exactly singular
    x = _normal.solve_spd(jnp.einsum("vlk,vlj->vkj", y, y), jnp.einsum("vlk,vl->vk", y, jnp.ones((1, 4), jnp.float32)))
    assert np.all(np.isfinite(np.asarray(x)))


def test_biases_fit_through_fit():
    """fit adds biases and the offset for als(biases=True); the mean rating becomes the offset."""
    A, M = _masked(9)
    data = _sparse(A, M)
    res = jmf.fit(data, jmf.solvers.als(l2=0.1, biases=True), rank=2, key=0, max_iter=30, tol=1e-8,
                  progress=False)
    assert res.factors.row_bias.shape == (M_,) and res.factors.col_bias.shape == (N_,)
    np.testing.assert_allclose(float(res.factors.offset), A[M > 0].mean(), rtol=1e-12)
    assert res.status_name in ("CONVERGED", "MAX_ITER")
    pred = np.asarray(res.factors.predict())
    rmse = np.sqrt(np.mean((pred - A)[M > 0] ** 2))
    assert rmse < 0.5 * A[M > 0].std()


# -- errors -------------------------------------------------------------------------------------


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="l2"):
        jmf.solvers.als(l2=-0.1)
    with pytest.raises(ValueError, match="l2"):
        jmf.solvers.als(l2=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="bias_l2"):
        jmf.solvers.als(bias_l2=float("nan"))
    with pytest.raises(TypeError, match="biases"):
        jmf.solvers.als(biases="yes")
    with pytest.raises(TypeError, match="row_scaled_l2"):
        jmf.solvers.als(row_scaled_l2=1)
    with pytest.raises(ValueError, match="solve"):
        jmf.solvers.als(solve="lu")
    assert jmf.solvers.als(l2=0.1) is jmf.solvers.als(l2=0.1) is jmf.solvers.als(0.1)


def test_row_scaled_l2_is_a_deprecated_spelling_of_count_scaled():
    with pytest.warns(DeprecationWarning, match="count_scaled"):
        old = jmf.solvers.als(l2=0.1, biases=True, row_scaled_l2=True)
    assert old is jmf.solvers.als(l2=0.1, biases=True, count_scaled=True)
    with pytest.warns(DeprecationWarning, match="ratings_loss"):
        loss = jmf.solvers.row_scaled_frobenius(0.1)
    assert loss.name == "ratings-wr"
