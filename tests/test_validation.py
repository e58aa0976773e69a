"""Hyperparameters are checked when a solver is built: type, range, the solver named in the message."""

import numpy as np
import optax
import pytest

import jmf
from jmf._src import _validation as V
from jmf.solvers import implicit_als, ratings_als, ratings_gradient

S = jmf.solvers
OPT = optax.sgd(0.1)

# (factory, kwargs, exception, text the message must contain)
BAD = [
    (S.als, {"l2": "a"}, TypeError, "als: l2"),
    (S.als, {"l2": None}, TypeError, "als: l2"),
    (S.als, {"l2": -1.0}, ValueError, "als: l2"),
    (S.als, {"bias_l2": "0.1"}, TypeError, "als: bias_l2"),
    (S.als, {"biases": "False"}, TypeError, "als: biases"),
    (S.als, {"row_scaled_l2": 1}, TypeError, "als: row_scaled_l2"),
    (S.adam, {"learning_rate": "0.01"}, TypeError, "adam: learning_rate"),
    (S.adam, {"learning_rate": None}, TypeError, "adam: learning_rate"),
    (S.adam, {"learning_rate": float("nan")}, ValueError, "adam: learning_rate"),
    (S.adam, {"learning_rate": 0.0}, ValueError, "adam: learning_rate"),
    (S.adam, {"learning_rate": 0.01, "b1": 1.5}, ValueError, "adam: b1"),
    (S.adam, {"learning_rate": 0.01, "eps": "tiny"}, TypeError, "adam: eps"),
    (S.adam, {"learning_rate": 0.01, "batch_size": 1.5}, TypeError, "adam: batch_size"),
    (S.adam, {"learning_rate": 0.01, "biases": "yes"}, TypeError, "adam: biases"),
    (S.sgd, {"learning_rate": True}, TypeError, "sgd: learning_rate"),
    (S.sgd, {"learning_rate": 0.1, "momentum": "x"}, TypeError, "sgd: momentum"),
    (S.sgd, {"learning_rate": 0.1, "nesterov": "False"}, TypeError, "sgd: nesterov"),
    (S.gradient, {"optimizer": OPT, "batch_size": 0}, ValueError, "gradient: batch_size"),
    (S.gradient, {"optimizer": OPT, "elementwise": "True"}, TypeError, "gradient: elementwise"),
    (S.hals, {"l1": "0"}, TypeError, "hals: l1"),
    (S.hals, {"inner": 2.5}, ValueError, "hals: inner"),
    (S.hals, {"inner_tol": 1.5}, ValueError, "hals: inner_tol"),
    (S.mu, {"beta": None}, TypeError, "mu: beta"),
    (S.mu, {"eps": 0.0}, ValueError, "mu: eps"),
    (S.mu, {"l2": [0.1]}, ValueError, "mu: l2"),
    (S.svd, {"method": "lanczos"}, ValueError, "svd: method"),
    (S.svd, {"n_power_iter": 2.0}, TypeError, "svd: n_power_iter"),
    (ratings_als, {"l2": "0.1"}, TypeError, "ratings_als: l2"),
    (ratings_als, {"count_scaled": "False"}, TypeError, "ratings_als: count_scaled"),
    (ratings_als, {"biases": 0}, TypeError, "ratings_als: biases"),
    (ratings_als, {"solve": "lu"}, ValueError, "ratings_als: solve"),
    (ratings_als, {"cg_steps": 0}, ValueError, "ratings_als: cg_steps"),
    (ratings_gradient, {"optimizer": OPT, "count_scaled": "no"}, TypeError, "ratings-gradient: count_scaled"),
    (ratings_gradient, {"optimizer": OPT, "chunk_size": 0.5}, TypeError, "ratings-gradient: chunk_size"),
    (implicit_als, {"alpha": "2"}, TypeError, "implicit_als: alpha"),
    (implicit_als, {"cg_steps": 2.0}, TypeError, "implicit_als: cg_steps"),
]


@pytest.mark.parametrize("factory, kwargs, exc, match", BAD,
                         ids=[f"{f.__name__}-{'-'.join(k for k in kw if k != 'optimizer')}" for f, kw, _, _ in BAD])
def test_bad_hyperparameters_fail_when_built(factory, kwargs, exc, match):
    with pytest.raises(exc) as info:
        factory(**kwargs)
    assert match in str(info.value)


GOOD = [
    (S.als, {"l2": np.float32(1e-4), "bias_l2": np.float64(0.1), "biases": np.bool_(True)}),
    (S.adam, {"learning_rate": np.float32(1e-2), "b1": np.float32(0.9)}),
    (S.adam, {"learning_rate": optax.linear_schedule(0.1, 0.01, 10)}),  # an Optax schedule
    (S.sgd, {"learning_rate": np.float64(0.1), "momentum": np.float32(0.9)}),
    (S.hals, {"l1": np.float32(0.1), "inner": np.int64(3), "inner_tol": np.float32(0.2)}),
    (S.hals, {"inner": "auto"}),
    (S.mu, {"beta": np.float32(1.0), "eps": np.float32(1e-6)}),
    (S.svd, {"n_oversamples": np.int32(4)}),
    (ratings_als, {"l2": np.float32(0.1), "cg_steps": np.int64(2)}),
    (implicit_als, {"alpha": np.float32(1.0)}),
]


@pytest.mark.parametrize("factory, kwargs", GOOD, ids=[f.__name__ for f, _ in GOOD])
def test_numpy_scalars_are_accepted(factory, kwargs):
    solver = factory(**kwargs)
    assert isinstance(solver, S.Solver)


def test_cached_factories_still_memoize():
    assert S.als(l2=np.float32(1e-4)) is S.als(l2=np.float32(1e-4))
    assert S.adam(1e-2) is S.adam(1e-2)
    assert S.hals(inner="auto") is S.hals(inner="auto")


def test_make_solver_names_the_solver_once():
    import jmf.experiments as E

    with pytest.raises(ValueError, match=r"^adam: learning_rate must be a float, got 'fast'"):
        E.make_solver("adam", learning_rate="fast")
    with pytest.raises(ValueError, match="bad hyperparameters for solver 'als'"):
        E.make_solver("als", l3=1.0)


def test_shared_checks():
    assert V.check_int(np.int64(3), "n") == 3 and type(V.check_int(np.int64(3), "n")) is int
    with pytest.raises(TypeError, match="n must be an int"):
        V.check_int(True, "n")
    assert V.check_fraction(np.float32(0.5), "f") == 0.5
    with pytest.raises(ValueError, match="f must be"):
        V.check_fraction(1.0, "f")
    assert V.check_tol(None) is None and V.check_tol(np.float32(1e-4)) == pytest.approx(1e-4)
    with pytest.raises(TypeError, match="string 'none'"):
        V.check_tol("none")
    with pytest.raises(ValueError, match="tol"):
        V.check_tol(float("inf"))
    assert V.check_choice("cg", "solve", ("cg", "cholesky")) == "cg"
    assert V.check_penalty((1, np.float32(0.5)), "l2") == (1.0, 0.5)
