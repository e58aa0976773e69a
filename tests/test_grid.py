"""Hyperparameters as data: a solver built with arrays fits every grid point in one compiled call."""

import jax
import numpy as np
import pytest

import jmf
from jmf._src.compilation import compilations

from .conftest import low_rank

KW = dict(rank=3, max_iter=30, tol=None, progress=False)


def _sparse(rng, m=30, n=20, p=0.6):
    A = np.abs(low_rank(rng, m, n, 3, noise=0.1)) + 1
    r, c = np.nonzero(rng.random((m, n)) < p)
    return jmf.Sparse(r, c, A[r, c], (m, n))


@pytest.mark.parametrize("factory, grid, kind", [
    (jmf.solvers.als, {"l2": [0.0, 0.1, 1.0]}, "dense"),
    (jmf.solvers.als, {"l2": [0.01, 1.0], "bias_l2": [0.1, 2.0]}, "sparse"),
    (jmf.solvers.adam, {"learning_rate": [1e-3, 3e-2]}, "dense"),
    (jmf.solvers.hals, {"l1": [0.0, 0.5]}, "weighted"),
    (jmf.solvers.ratings_als, {"l2": [0.05, 0.5, 5.0]}, "sparse"),
    (jmf.solvers.implicit_als, {"alpha": [1.0, 10.0]}, "sparse"),
])
@pytest.mark.x64  # grid members equal single fits to 2e-6 after 50+ iterations
def test_every_grid_point_equals_its_own_fit(rng, factory, grid, kind):
    if kind == "sparse":
        data = _sparse(rng)
    else:
        A = np.abs(low_rank(rng, 30, 20, 3, noise=0.1))
        data = jmf.Dense(A, (rng.random(A.shape) < 0.7).astype(float) if kind == "weighted" else None)
    extra = {"biases": True} if "bias_l2" in grid else {}
    solver = factory(**{k: np.asarray(v) for k, v in grid.items()}, **extra)
    keys = jax.random.split(jax.random.key(0), 2)
    res = jmf.fit_many(data, solver, keys=keys, **KW)
    P = int(np.prod([len(v) for v in grid.values()]))
    assert res.axes == ("param", "restart") and res.loss.shape == (P, 2)
    assert set(res.params) == set(grid) and all(len(v) == P for v in res.params.values())
    for p in range(P):
        point = {k: float(v[p]) for k, v in res.params.items()}
        single = jmf.fit(data, factory(**point, **extra), key=keys[1], **KW)
        np.testing.assert_allclose(res.member(p, 1).factors.W, single.factors.W, rtol=2e-6, atol=1e-9)
        np.testing.assert_allclose(res.loss[p, 1], single.loss, rtol=2e-6)


def test_grid_is_the_cartesian_product_in_one_program(rng):
    A = low_rank(rng, 20, 12, 2, noise=0.1)
    solver = jmf.solvers.als(l2=np.array([0.01, 0.1, 1.0]), bias_l2=np.array([0.5, 5.0]), biases=True)
    assert solver.grid.size == 6
    with compilations() as log:
        res = jmf.fit_many(A, solver, ranks=[1, 2], n_restarts=2, key=0, **{**KW, "rank": None})
    assert res.loss.shape == (6, 2, 2) and res.axes == ("param", "rank", "restart")
    np.testing.assert_array_equal(res.params["l2"], np.repeat([0.01, 0.1, 1.0], 2))
    np.testing.assert_array_equal(res.params["bias_l2"], np.tile([0.5, 5.0], 3))
    assert log.programs <= 8  # start and advance (plus tiny host-side kernels), not one per point
    with compilations() as again:  # another grid of the same size reuses the programs
        jmf.fit_many(A, jmf.solvers.als(l2=np.array([1.0, 2.0, 3.0]), bias_l2=np.array([1.0, 9.0]), biases=True),
                     ranks=[1, 2], n_restarts=2, key=1, **{**KW, "rank": None})
    assert again.programs == 0
    # a larger l2 (same bias_l2) shrinks the factors
    f = res.best().factors
    size = np.sum(np.asarray(f.W) ** 2, axis=(-2, -1)) + np.sum(np.asarray(f.H) ** 2, axis=(-2, -1))
    assert size[0, 1] > size[4, 1]


def test_grid_values_are_validated_before_anything_runs():
    with pytest.raises(ValueError, match="l2"):
        jmf.solvers.als(l2=np.array([0.1, -1.0]))
    with pytest.raises(ValueError, match="empty"):
        jmf.solvers.adam(learning_rate=np.array([]))
    with pytest.raises(TypeError, match="numbers"):
        jmf.solvers.hals(l1=np.array(["a", "b"]))


def test_fit_refuses_a_grid(rng):
    with pytest.raises(ValueError, match="fit_many"):
        jmf.fit(low_rank(rng, 6, 5, 2), jmf.solvers.als(l2=np.array([0.1, 1.0])), rank=2, key=0)


def test_penalty_pairs_keep_their_meaning():
    solver = jmf.solvers.hals(l2=(0.1, 0.2))  # a tuple is (for W, for H), not a grid
    assert solver.grid is None
