"""jmf under JAX transformations: what nests works, what cannot nest says what to use instead."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmf


@pytest.fixture(scope="module")
def A():
    return np.random.default_rng(0).random((8, 6)).astype(np.float32)


@pytest.mark.parametrize("transform", ["jit", "vmap", "grad"])
def test_fit_under_a_transformation_names_the_alternatives(A, transform):
    solver = jmf.solvers.als()

    def f(X):
        return jmf.fit(X, solver, rank=2, key=0, progress=False).loss

    with pytest.raises(TypeError, match=r"jmf\.fit was called inside a JAX transformation") as info:
        if transform == "jit":
            jax.jit(f)(A)
        elif transform == "vmap":
            jax.vmap(f)(np.stack([A, A]))
        else:
            jax.grad(f)(A)
    msg = str(info.value)
    assert "jmf.fit_many" in msg and "solver.init" in msg and "solver.step" in msg and "'data'" in msg


def test_fit_many_and_traced_keys_are_refused_too(A):
    solver = jmf.solvers.als()
    with pytest.raises(TypeError, match=r"jmf\.fit_many .*'keys' is a traced value"):
        jax.jit(lambda k: jmf.fit_many(A, solver, rank=2, keys=k, progress=False).loss)(
            jax.random.split(jax.random.key(0), 2))
    with pytest.raises(TypeError, match=r"'key' is a traced value"):
        jax.jit(lambda k: jmf.fit(A, solver, rank=2, key=k, progress=False).loss)(jax.random.key(0))
    with pytest.raises(TypeError, match=r"'data' is a traced value"):
        jax.jit(lambda X: jmf.fit(jmf.Dense(X), solver, rank=2, key=0, progress=False).loss)(A)


def test_solver_steps_nest_in_a_user_scan_vmap_and_grad(A):
    data = jmf.Dense(A)
    solver = jmf.solvers.adam(0.05)
    f0 = jmf.init.random(jax.random.key(0), data, 2)

    @jax.jit
    def run(f, d):
        def body(carry, _):
            f, state = solver.step(*carry, d)
            return (f, state), solver.loss.value(f, d)
        (f, _), losses = jax.lax.scan(body, (f, solver.init(f, d)), None, length=30)
        return f, losses

    _, losses = run(f0, data)
    ref = jmf.fit(data, solver, rank=2, key=0, max_iter=30, tol=None, check_every=30, progress=False)
    assert float(losses[-1]) == pytest.approx(float(ref.loss), rel=1e-4)
    starts = jax.vmap(lambda k: jmf.init.random(k, data, 2))(jax.random.split(jax.random.key(1), 3))
    _, curves = jax.vmap(run, in_axes=(0, None))(starts, data)
    assert curves.shape == (3, 30) and bool(jnp.all(curves[:, -1] < curves[:, 0]))

    def after_steps(scale):  # differentiate through three gradient steps
        d = jmf.Dense(data.A * scale)
        f, state = f0, solver.init(f0, d)
        for _ in range(3):
            f, state = solver.step(f, state, d)
        return solver.loss.value(f, d)

    g = jax.grad(after_steps)(jnp.asarray(1.0, data.dtype))
    assert np.isfinite(float(g))


@pytest.mark.parametrize("make", [lambda: optax.lbfgs(), lambda: optax.contrib.reduce_on_plateau(),
                                  lambda: optax.chain(optax.adam(1e-2), optax.contrib.reduce_on_plateau())])
def test_optax_transforms_that_need_the_loss_value_are_refused(make):
    with pytest.raises(ValueError, match=r"needs the loss value.*update\(grads, state, params\)"):
        jmf.solvers.gradient(make())


def test_ordinary_optax_transforms_are_accepted(A):
    for opt in (optax.adamw(1e-2), optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9)),
                optax.multi_transform({"a": optax.adam(1e-2), "b": optax.sgd(0.1)},
                                      jmf.Factors(W="a", H="b"))):
        solver = jmf.solvers.gradient(opt)
        res = jmf.fit(A, solver, rank=2, key=0, max_iter=20, progress=False)
        assert np.isfinite(float(res.loss))
