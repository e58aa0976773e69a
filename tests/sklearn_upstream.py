"""scikit-learn's own test files, import-swapped to jmf.sklearn at test time (the machinery of the upstream tests).

:func:`load` reads ``sklearn/decomposition/tests/<name>`` of the *installed*
scikit-learn (nothing is copied into this repository), rewrites its imports
with the AST so that the estimators in ``SWAPPED`` come from
:mod:`jmf.sklearn` -- everything else (scikit-learn's testing helpers, its
private functions used as references, ``PCA``) stays scikit-learn's -- writes
the result to a temporary directory, imports it, and returns its test
functions and fixtures, with every excluded test marked skipped with its
reason.  ``test_sklearn_upstream_*.py`` put them in their module namespace,
where pytest collects them like their own: each upstream test (and every
parametrization) passes or fails on its own in ``make test``.

The tests run with JAX's default configuration (x64 off, standard dtype
promotion; :func:`users_configuration`), as a user's program would:
float64 data is computed in float64 by the estimators themselves.
"""

from __future__ import annotations

import ast
import atexit
import importlib.util
import os
import shutil
import tempfile

import jax
import pytest

from jmf._src.sklearn._validation import _enable_x64

SWAPPED = {"NMF", "MiniBatchNMF", "non_negative_factorization", "TruncatedSVD"}
_TMP = tempfile.mkdtemp(prefix="jmf-sklearn-upstream-")
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


class _SwapImports(ast.NodeTransformer):
    """``from sklearn.decomposition import NMF, PCA`` -> ``from jmf.sklearn import NMF`` + ``... import PCA``."""

    def __init__(self):
        self.swapped = set()

    def visit_ImportFrom(self, node):
        if node.module != "sklearn.decomposition":
            return node
        ours = [a for a in node.names if a.name in SWAPPED]
        theirs = [a for a in node.names if a.name not in SWAPPED]
        self.swapped |= {a.name for a in ours}
        out = []
        if ours:
            out.append(ast.copy_location(ast.ImportFrom(module="jmf.sklearn", names=ours, level=0), node))
        if theirs:
            out.append(ast.copy_location(ast.ImportFrom(module=node.module, names=theirs, level=0), node))
        return out


def source_path(name: str) -> str:
    import sklearn

    return os.path.join(os.path.dirname(sklearn.__file__), "decomposition", "tests", name)


def rewrite(source: str) -> tuple:
    """``(rewritten source, names swapped)``."""
    tree = ast.parse(source)
    swapper = _SwapImports()
    tree = ast.fix_missing_locations(swapper.visit(tree))
    return ast.unparse(tree), swapper.swapped


def load(name: str, expected: set, excluded: dict) -> dict:
    """The tests and fixtures of scikit-learn's ``name``, import-swapped; ``excluded`` tests marked skipped."""
    with open(source_path(name), encoding="utf-8") as fh:
        text, swapped = rewrite(fh.read())
    if swapped != expected:  # the upstream file changed its imports: say so instead of testing scikit-learn
        raise RuntimeError(f"{name}: expected to swap {sorted(expected)}, swapped {sorted(swapped)}")
    modname = "jmf_upstream_" + name[:-3]
    path = os.path.join(_TMP, name)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("# Generated from scikit-learn's " + name + " by tests/sklearn_upstream.py: imports swapped to "
                 "jmf.sklearn.\n" + text)
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = {k: v for k, v in vars(module).items() if not k.startswith("__")}
    unknown = set(excluded) - {k for k in names if k.startswith("test_")}
    if unknown:
        raise RuntimeError(f"{name}: excluded tests not in the upstream file: {sorted(unknown)}")
    for test, reason in excluded.items():
        names[test] = pytest.mark.skip(reason=f"excluded (scikit-learn internals): {reason}")(names[test])
    return names


@pytest.fixture(autouse=True)
def users_configuration():
    """JAX's defaults while an upstream test runs (jmf's own suite turns x64 and strict promotion on)."""
    with _enable_x64(False), jax.numpy_dtype_promotion("standard"):
        yield


@pytest.fixture
def global_random_seed():
    """scikit-learn's fixture (its conftest parametrizes it from SKLEARN_TESTS_GLOBAL_RANDOM_SEED; default 42)."""
    return int(os.environ.get("SKLEARN_TESTS_GLOBAL_RANDOM_SEED", "42").split("-")[0]) \
        if os.environ.get("SKLEARN_TESTS_GLOBAL_RANDOM_SEED", "42") not in ("all", "any") else 42
