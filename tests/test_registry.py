"""The solver registry: one name -> one solver for the command, experiments, scripts and scikit-learn wrappers."""

import importlib.util
import inspect
import os

import numpy as np
import pytest

import jmf
import jmf.experiments as E
from jmf._src import registry as R

S = jmf.solvers
HERE = os.path.dirname(os.path.abspath(__file__))


def _factory_defaults(name):
    """Defaults of the factory behind a registry name (adam/sgd: plus those they forward to gradient)."""
    factory = {"ratings_gradient": S.ratings_gradient}.get(name, getattr(S, name))
    params = dict(inspect.signature(factory).parameters)
    if name in ("adam", "sgd"):
        params.update({k: v for k, v in inspect.signature(S.gradient).parameters.items() if k not in params})
    return {k: p.default for k, p in params.items() if p.default is not p.empty}


@pytest.mark.parametrize("name", R.solver_names())
def test_declared_defaults_are_the_factory_defaults(name):
    entry = R.solver_entry(name)
    factory = _factory_defaults(name)
    shared = [p for p in entry.params if p.name in factory]
    assert shared, name
    # The registry spells some values by name: loss="frobenius" is the factories' default Loss (None);
    # adam and sgd have no default learning rate (the registry's 0.01 was the experiments' default).
    translated = {("loss", None): "frobenius"}
    for p in shared:
        expected = translated.get((p.name, factory[p.name]), factory[p.name])
        assert expected == p.default, (name, p.name, factory[p.name], p.default)
    # every declared parameter has a one-line, plain-text doc and a known type
    for p in entry.params:
        assert p.type in ("float", "int", "bool", "str", "penalty") and p.doc and "\n" not in p.doc


@pytest.mark.parametrize("name, direct", [
    ("adam", lambda: S.adam(0.01)),
    ("sgd", lambda: S.sgd(0.01)),
    ("als", lambda: S.als()),
    ("ratings_als", lambda: S.ratings_als()),
    ("hals", lambda: S.hals()),
    ("mu", lambda: S.mu()),
    ("svd", lambda: S.svd()),
    ("implicit_als", lambda: S.implicit_als()),
])
def test_defaults_build_the_factory_default_solver(name, direct):
    assert R.make_solver(name) is direct()  # the same object: nothing compiles twice


def test_hyperparameters_reach_the_solver():
    assert R.make_solver("als", l2=[0.1, 0.2], biases=True, count_scaled=True) is \
        S.als(l2=(0.1, 0.2), biases=True, count_scaled=True)
    assert R.make_solver("hals", inner="auto") is S.hals(inner="auto")
    huber = R.make_solver("adam", loss="huber", delta=0.5, l2=0.1)
    assert huber.loss.name == "huber(0.5)" and huber is R.make_solver("adam", loss="huber", delta=0.5, l2=0.1)
    wr = R.make_solver("adam", count_scaled=True, l2=0.1, biases=True, batch_size=64)
    assert wr.loss.name == "ratings-wr" and wr.biases and wr.data_kinds == ("sparse",)
    nn = R.make_solver("sgd", projection="nonnegative", momentum=0.9)
    assert nn.nonnegative
    rg = R.make_solver("ratings_gradient", optimizer="sgd", learning_rate=0.1)
    assert rg.biases and rg is R.make_solver("ratings_gradient", optimizer="sgd", learning_rate=0.1)


@pytest.mark.parametrize("name, params, match", [
    ("nope", {}, "unknown solver 'nope'"),
    ("als", {"l3": 1.0}, "bad hyperparameters for solver 'als': unknown 'l3'"),
    ("adam", {"learning_rate": "fast"}, "adam: learning_rate must be a float"),
    ("adam", {"loss": "cauchy"}, "adam: loss must be one of"),
    ("adam", {"loss": "huber", "count_scaled": True}, "count_scaled applies to loss='frobenius' only"),
    ("ratings_gradient", {"optimizer": "lbfgs"}, "optimizer must be one of"),
])
def test_errors_name_the_solver(name, params, match):
    with pytest.raises(ValueError, match=match):
        R.make_solver(name, **params)


@pytest.mark.parametrize("name, key, text, value", [
    ("als", "count_scaled", "False", False),
    ("als", "biases", "yes", True),
    ("als", "l2", "0.5", 0.5),
    ("als", "l2", "[0.1, 0.2]", (0.1, 0.2)),
    ("als", "solve", "cg", "cg"),
    ("als", "bias_l2", "none", None),
    ("hals", "inner", "auto", "auto"),
    ("hals", "inner", "3", 3),
    ("mu", "beta", "kullback-leibler", "kullback-leibler"),
    ("mu", "beta", "1.5", 1.5),
    ("adam", "projection", "nonnegative", "nonnegative"),
    ("adam", "batch_size", "null", None),
])
def test_values_are_parsed_by_the_declared_type(name, key, text, value):
    got = R.parse_param(name, key, text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("name, key, text, match", [
    ("als", "count_scaled", "maybe", "expected a bool"),
    ("als", "cg_steps", "2.5", "expected an int"),
    ("als", "l2", "[0.1]", "a pair such as"),
    ("als", "solve", "lu", "expected one of"),
    ("adam", "learning_rate", "none", "does not accept None"),
    ("adam", "learning_rate", "inf", "finite"),
    ("als", "learning_rate", "0.1", "unknown 'learning_rate'"),
])
def test_bad_values_are_refused(name, key, text, match):
    with pytest.raises(ValueError, match=match):
        R.parse_param(name, key, text)


def test_listing_is_plain_text_and_complete():
    text = R.describe_solvers()
    for name in R.solver_names():
        assert f"  {name}(" in text
    for markup in (":func:", ":class:", ":mod:", "``"):
        assert markup not in text


def test_every_consumer_uses_the_registry():
    assert E.available_solvers() == R.solver_names()
    assert E.make_solver("als", l2=0.1) is R.make_solver("als", l2=0.1)
    assert E.DEFAULT_PARAMS["adam"]["learning_rate"] == 0.01
    assert set(E.solver_parameters("ratings_als")) >= {"l2", "count_scaled", "biases"}
    assert E.DATASETS is R.DATASETS
    sk = pytest.importorskip("jmf.sklearn")
    est = sk.MatrixFactorization(solver="adam", l2=0.1, learning_rate=0.05, nonnegative=True)
    assert est._params()["solver"] is R.make_solver("adam", learning_rate=0.05, l2=(0.1, 0.1), projection="nonnegative")
    assert sk.MatrixFactorization(solver="hals")._params()["solver"] is S.hals()


def test_collaborative_filtering_script_models_are_registry_solvers():
    spec = importlib.util.spec_from_file_location("cf_script", os.path.join(HERE, "..", "experiments",
                                                                           "collaborative_filtering.py"))
    cf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cf)
    solver, sweeps = cf.make_solver("als-wr", cf.DEFAULTS["als-wr"])
    assert solver is S.ratings_als(l2=0.15, count_scaled=True) and sweeps == 10
    core, _ = cf.make_solver("als-core", cf.DEFAULTS["als-core"])
    assert core is S.als(l2=0.1, biases=True, count_scaled=True)  # the same model, exact solves
    mb, epochs = cf.make_solver("minibatch-adam", cf.DEFAULTS["minibatch-adam"])
    assert mb.spec.batch_size == 4096 and mb.biases and epochs == 20
    with pytest.raises(ValueError, match="unknown model"):
        cf.make_solver("nope", {})


def test_datasets_registry():
    assert {"low_rank", "nonnegative", "digits", "image", "file", "ratings"} <= set(R.DATASETS)
    data, info = R.DATASETS["ratings"](jmf._src._validation.as_key(0), n_users=30, n_items=20, n_ratings=200, rank=2)
    assert isinstance(data, jmf.Sparse) and info == {"true_rank": 2}
    A, info = R.DATASETS["low_rank"](0, m=5, n=4, rank=2)
    assert np.shape(A) == (5, 4) and info["true_rank"] == 2
    with pytest.raises(TypeError, match="callable"):
        R.register_dataset("x", 3)
