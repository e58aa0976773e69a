"""SVD++ (jmf.solvers.svdpp): gradients, the biased-MF special case, predictions from the state, fit_many."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmf
from jmf._src.registry import make_solver
from jmf.solvers import SVDppParams

KW = dict(tol=None, check_every=5, progress=False)


@pytest.fixture(scope="module")
def synth():
    return jmf.datasets.synthetic_ratings(0, n_users=50, n_items=30, n_ratings=700, rank=3, noise=0.3, step=None)


def _numpy_terms(data):
    r, c, v = (np.asarray(x) for x in (data.rows, data.cols, data.vals))
    w = np.asarray(data.effective_weights(), np.float64)
    m, n = data.shape
    keep = w > 0
    counts = np.bincount(r[keep], minlength=m).astype(np.float64)
    norm = np.where(counts > 0, 1 / np.sqrt(np.maximum(counts, 1)), 0.0)
    Nmat = np.zeros((m, n))
    Nmat[r[keep], c[keep]] = norm[r[keep]]
    return r, c, v.astype(np.float64), w, Nmat


def _numpy_objective(p: SVDppParams, data, l2, bias_l2, implicit_l2):
    """The SVD++ objective written out in NumPy (float64), from the parameters."""
    r, c, v, w, Nmat = _numpy_terms(data)
    P, H, Y, b, cb, mu = (np.asarray(x, np.float64) for x in p)
    W = P + Nmat @ Y
    pred = mu + b[r] + cb[c] + np.sum(W[r] * H[:, c].T, axis=1)
    se = np.sum(w * (v - pred) ** 2)
    pen = l2 * (np.sum(P ** 2) + np.sum(H ** 2)) + implicit_l2 * np.sum(Y ** 2) + bias_l2 * (np.sum(b ** 2)
                                                                                              + np.sum(cb ** 2))
    return (se + pen) / np.sum(w)


@pytest.mark.x64
def test_gradient_of_every_parameter_matches_finite_differences(rng):
    # Weighted data with some zero weights: those entries are out of N(u) and out of the loss.
    m, n, k, nnz = 9, 7, 3, 30
    flat = rng.choice(m * n, nnz, replace=False)
    weights = rng.uniform(0.5, 2.0, nnz)
    weights[:4] = 0.0
    data = jmf.Sparse(flat // n, flat % n, rng.normal(3.0, 1.0, nnz), (m, n), weights=weights)
    l2, bias_l2, implicit_l2 = 0.3, 0.2, 0.7
    # sgd(1) makes one step "params - gradient": the step's gradient is read off the update.
    solver = jmf.solvers.svdpp(optax.sgd(1.0), l2=l2, bias_l2=bias_l2, implicit_l2=implicit_l2)
    p = SVDppParams(rng.standard_normal((m, k)), rng.standard_normal((k, n)), rng.standard_normal((n, k)),
                    rng.standard_normal(m), rng.standard_normal(n), np.float64(3.1))
    *_, Nmat = _numpy_terms(data)
    f = jmf.Factors(jnp.asarray(p.P + Nmat @ p.Y), jnp.asarray(p.H), jnp.asarray(p.row_bias),
                    jnp.asarray(p.col_bias), jnp.asarray(p.offset))
    state = solver.init(f._replace(W=jnp.asarray(p.P)), data)._replace(Y=jnp.asarray(p.Y))
    # The recorded objective is the SVD++ objective (penalties on P and Y, not on W).
    np.testing.assert_allclose(float(solver.objective(f, state, data)),
                               _numpy_objective(p, data, l2, bias_l2, implicit_l2), rtol=1e-12)
    new, new_state = jax.jit(solver.step)(f, state, data)
    moved = SVDppParams(new_state.P, new.H, new_state.Y, new.row_bias, new.col_bias, new.offset)
    grads = [np.asarray(a) - np.asarray(b) for a, b in zip(p, moved)]
    eps = 1e-6
    for field, g in zip(SVDppParams._fields, grads):
        x = np.asarray(getattr(p, field), np.float64)
        fd = np.zeros(x.shape)
        for idx in np.ndindex(x.shape):
            hi, lo = x.copy(), x.copy()
            hi[idx] += eps
            lo[idx] -= eps
            J = [_numpy_objective(p._replace(**{field: z}), data, l2, bias_l2, implicit_l2) for z in (hi, lo)]
            fd[idx] = (J[0] - J[1]) / (2 * eps)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8, err_msg=field)
    assert np.abs(grads[2]).max() > 1e-3  # the implicit factors do get a gradient


@pytest.mark.x64
def test_frozen_implicit_factors_reproduce_ratings_gradient():
    data = jmf.datasets.synthetic_ratings(0, n_users=50, n_items=30, n_ratings=700, rank=3, noise=0.3, step=None,
                                          dtype=np.float64).data
    lr, l2, bias_l2 = 0.05, 0.4, 0.1

    def labels(p):
        return p._replace(**{name: None if getattr(p, name) is None else ("frozen" if name == "Y" else "adam")
                             for name in p._fields})

    frozen = optax.multi_transform({"adam": optax.adam(lr), "frozen": optax.set_to_zero()}, labels)
    kw = dict(rank=3, key=2, max_iter=20, **KW)
    a = jmf.fit(data, jmf.solvers.svdpp(frozen, l2=l2, bias_l2=bias_l2), **kw)
    b = jmf.fit(data, jmf.solvers.ratings_gradient(optax.adam(lr), l2=l2, bias_l2=bias_l2), **kw)
    assert np.all(np.asarray(a.state.Y) == 0)
    for x, y in zip(a.factors, b.factors):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(np.asarray(a.loss_history), np.asarray(b.loss_history), rtol=1e-10)
    # ...and with the implicit factors free, the same start reaches a lower objective.
    c = jmf.fit(data, jmf.solvers.svdpp(optax.adam(lr), l2=l2, bias_l2=bias_l2), **kw)
    assert float(c.loss) < float(b.loss)


def test_predictions_are_the_svdpp_formula_from_the_state(synth):
    data = synth.data
    res = jmf.fit(data, jmf.solvers.svdpp(optax.adam(0.05), l2=0.3, implicit_l2=0.3), rank=4, key=0, max_iter=30, **KW)
    st = res.state
    r, c, v, w, Nmat = _numpy_terms(data)
    P, Y, H = (np.asarray(x, np.float64) for x in (st.P, st.Y, res.factors.H))
    b, cb, mu = (np.asarray(x, np.float64) for x in (res.factors.row_bias, res.factors.col_bias, res.factors.offset))
    assert np.abs(Y).max() > 1e-3
    rows, cols = np.divmod(np.arange(data.shape[0] * data.shape[1]), data.shape[1])  # every (u, i)
    expected = np.empty(rows.shape)
    for u in range(data.shape[0]):
        rated = c[r == u]
        implicit = Y[rated].sum(axis=0) / np.sqrt(rated.size) if rated.size else np.zeros(Y.shape[1])
        sel = rows == u
        expected[sel] = mu + b[u] + cb[cols[sel]] + H[:, cols[sel]].T @ (P[u] + implicit)
    got = np.asarray(jmf.cf.predict(res.factors, rows, cols))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The recorded loss is the objective at the result's factors and state.
    p = SVDppParams(P, H, Y, b, cb, mu)
    np.testing.assert_allclose(float(res.loss), _numpy_objective(p, data, 0.3, 0.3, 0.3), rtol=1e-5)


def test_lowers_the_held_out_error_and_the_loss(synth):
    train, test = jmf.model_selection.train_test_split(synth.data, 0.2, key=0)
    res = jmf.fit(train, jmf.solvers.svdpp(optax.adam(0.03), l2=1.0), rank=3, key=0, max_iter=150, **KW)
    hist = np.asarray(res.loss_history)
    assert hist[-1] < 0.5 * hist[0]
    assert np.all(np.diff(hist[2:]) <= 1e-6)  # after Adam's first steps, no check is worse than the last
    r, c, v = (np.asarray(x) for x in (test.rows, test.cols, test.vals))
    rmse = float(np.sqrt(np.mean((np.asarray(jmf.cf.predict(res.factors, r, c)) - v) ** 2)))
    mean_rmse = float(np.sqrt(np.mean((float(np.mean(np.asarray(train.vals))) - v) ** 2)))
    assert rmse < 0.9 * mean_rmse


def test_update_w_moves_only_the_user_side_and_folds_in_new_users(synth):
    data = synth.data
    solver = jmf.solvers.svdpp(optax.adam(0.05), l2=0.3)
    res = jmf.fit(data, solver, rank=3, key=0, max_iter=40, **KW)
    f, st = res.factors, res.state
    g, st2 = solver.update_w(f, st, data)
    np.testing.assert_array_equal(np.asarray(g.H), np.asarray(f.H))
    np.testing.assert_array_equal(np.asarray(st2.Y), np.asarray(st.Y))
    np.testing.assert_array_equal(np.asarray(g.col_bias), np.asarray(f.col_bias))
    assert not np.allclose(np.asarray(st2.P), np.asarray(st.P))
    *_, Nmat = _numpy_terms(data)
    np.testing.assert_allclose(np.asarray(g.W), np.asarray(st2.P) + Nmat @ np.asarray(st2.Y), rtol=1e-5, atol=1e-6)
    # Fold-in: the users' own entries, the trained items (H, Y, column biases), P from zero.
    new = f._replace(W=jnp.zeros_like(f.W), row_bias=jnp.zeros_like(f.row_bias))
    state = solver.init(new, data)._replace(Y=st.Y)
    step = jax.jit(solver.update_w)
    before = float(solver.objective(new._replace(W=jnp.asarray(Nmat @ np.asarray(st.Y), f.W.dtype)), state, data))
    for _ in range(60):
        new, state = step(new, state, data)
    after = float(solver.objective(new, state, data))
    assert after < before
    np.testing.assert_array_equal(np.asarray(new.H), np.asarray(f.H))


def test_fit_many_over_restarts_and_ranks_keeps_inactive_columns_zero(synth):
    solver = jmf.solvers.svdpp(optax.adam(0.05), l2=0.3)
    many = jmf.fit_many(synth.data, solver, ranks=[2, 4], n_restarts=2, key=0, max_iter=20, **KW)
    W, H, P, Y = (np.asarray(x) for x in (many.factors.W, many.factors.H, many.result.state.P, many.result.state.Y))
    assert many.axes == ("rank", "restart") and W.shape == (2, 2, 50, 4)
    assert np.all(np.isfinite(np.asarray(many.loss)))
    for arr, axis in ((W, -1), (P, -1), (Y, -1), (H, -2)):  # the rank-2 members
        assert np.all(np.take(arr[0], [2, 3], axis=axis) == 0)
        assert np.abs(np.take(arr[0], [0, 1], axis=axis)).max() > 0
    assert np.abs(Y[1]).max() > 0  # the rank-4 members move their implicit factors too
    # Restarts differ, and each member's factors are its state's effective factors.
    assert not np.allclose(W[1, 0], W[1, 1])
    *_, Nmat = _numpy_terms(synth.data)
    np.testing.assert_allclose(W[0, 1], P[0, 1] + Nmat @ Y[0, 1], rtol=1e-5, atol=1e-6)


def test_bad_arguments(synth):
    with pytest.raises(TypeError, match="optimizer"):
        jmf.solvers.svdpp("adam")
    for name in ("l2", "bias_l2", "implicit_l2"):
        with pytest.raises(ValueError, match=name):
            jmf.solvers.svdpp(optax.adam(0.01), **{name: -1.0})
    with pytest.raises(TypeError, match="biases"):
        jmf.solvers.svdpp(optax.adam(0.01), biases="yes")
    with pytest.raises(TypeError, match="elementwise"):
        jmf.solvers.svdpp(optax.adam(0.01), elementwise="yes")
    with pytest.raises(ValueError, match="chunk_size"):
        jmf.solvers.svdpp(optax.adam(0.01), chunk_size=0)
    with pytest.raises(TypeError, match="name"):
        jmf.solvers.svdpp(optax.adam(0.01), name="")
    with pytest.raises(ValueError, match="loss value"):
        jmf.solvers.svdpp(optax.lbfgs())
    with pytest.raises(ValueError, match="optimizer"):
        make_solver("svdpp", optimizer="rmsprop")
    with pytest.raises(ValueError, match="learning_rate"):
        make_solver("svdpp", learning_rate=-0.1)
    with pytest.raises(ValueError, match="sparse|Sparse"):
        jmf.fit(jmf.Dense(np.ones((4, 3), np.float32)), jmf.solvers.svdpp(optax.adam(0.01)), rank=2, max_iter=2)


def test_registry_builds_the_solver():
    s = make_solver("svdpp", l2=0.2, implicit_l2=0.5, learning_rate=0.02)
    assert s.name == "svdpp" and s.biases and s.objective is not None
    assert make_solver("svdpp", l2=0.2, implicit_l2=0.5, learning_rate=0.02) is s  # one object: one compilation


def test_wrappers_of_the_half_step_keep_the_objective(synth):
    from jmf._src.sklearn._run import stop_each_step, w_change

    data = synth.data
    solver = jmf.solvers.svdpp(optax.adam(0.05), l2=0.3)
    f = jmf.Factors(jnp.ones((50, 2)) * 0.1, jnp.ones((2, 30)) * 0.1, jnp.zeros(50), jnp.zeros(30),
                    jnp.asarray(3.0, jnp.float32))
    state = solver.init(f, data)
    f, state = solver.step(f, state, data)
    want = float(solver.objective(f, state, data))
    wrapped = w_change(solver)
    assert float(wrapped.objective(f, wrapped.init(f, data)._replace(inner=state), data)) == want
    stopping = stop_each_step(solver._replace(progress=lambda f, s, d: jnp.zeros(())), 0.1)
    assert float(stopping.objective(f, stopping.init(f, data)._replace(inner=state), data)) == want


def test_penalty_grid_equals_single_fits_and_the_factory_is_memoized(synth):
    data = synth.data
    opt = optax.adam(0.05)
    assert jmf.solvers.svdpp(opt, l2=2.0) is jmf.solvers.svdpp(opt, l2=2.0)  # compiled once, not per call
    kw = dict(rank=3, key=0, max_iter=15, tol=None, check_every=15, progress=False)
    grid = jmf.solvers.svdpp(opt, l2=np.array([0.5, 4.0]), implicit_l2=np.array([1.0, 8.0]))
    res = jmf.fit_many(data, grid, **kw)
    for p, (l2, il2) in enumerate([(0.5, 1.0), (0.5, 8.0), (4.0, 1.0), (4.0, 8.0)]):
        one = jmf.fit(data, jmf.solvers.svdpp(opt, l2=l2, implicit_l2=il2), **kw)
        np.testing.assert_allclose(np.asarray(res.member(p).factors.W), np.asarray(one.factors.W), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(float(res.member(p).loss), float(one.loss), rtol=1e-5)
    with pytest.raises(ValueError, match="implicit_l2"):
        jmf.solvers.svdpp(opt, implicit_l2=np.array([1.0, -1.0]))
