"""Strict test configuration: 4 simulated CPU devices, strict dtype promotion, no implicit rank promotion.

Tests run in float32, JAX's default and what users run.  A test that needs float64 (a comparison with a
reference to ~1e-10, finite differences) opts in with the ``x64`` marker -- ``@pytest.mark.x64`` on the test,
or ``pytestmark = pytest.mark.x64`` for a whole file -- which runs its setup, call and teardown inside
``jax.enable_x64(True)``; or, for part of a test, with the ``x64`` fixture.

The device count must be set before JAX initializes its backends, hence at import time here.
"""

import os

_flag = "--xla_force_host_platform_device_count=4"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

# The suite uses jmf's persistent compilation cache like any user (JMF_CACHE_DIR=off turns it off).  It
# was off for a while on 2026-11-30 after workers died in XLA's loading of cached executables, but the
# same crashes happened while compiling with the cache off (BENCHMARKS.md, known problems), and
# `make test` reruns a test whose worker crashed.

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
# Library code must not rely on NumPy's implicit rank promotion (users may set "raise"): broadcasts are
# written out ([None, :], jnp.broadcast_to).
jax.config.update("jax_numpy_rank_promotion", "raise")


# The lowest supported JAX (0.6.1, the CI's lowest-versions stage) has the switch in jax.experimental.
from jmf._src.compilation import release_programs_near_map_limit  # noqa: E402
from jmf._src.sklearn._validation import _enable_x64  # noqa: E402


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Fixtures and test of an ``x64``-marked test inside ``jax.enable_x64(True)`` (thread-local, read at trace
    time; jit caches are keyed on it, so float32 and float64 compilations of a function never mix)."""
    if item.get_closest_marker("x64") is None:
        return (yield)
    with _enable_x64(True):
        return (yield)


def pytest_runtest_teardown(item, nextitem):
    """A worker obtains thousands of programs; free them before the kernel's limit on memory regions.

    Fits check on their own (``jmf.fit_many``), the losses, metrics and solvers a test calls directly do not:
    past vm.max_map_count the next program XLA:CPU loads segfaults (see
    :func:`jmf._src.compilation.release_programs_near_map_limit`; it looks only every 64 programs).
    """
    release_programs_near_map_limit()


@pytest.fixture
def x64():
    """float64 for the rest of one test (``request.getfixturevalue("x64")``, or a test argument)."""
    with _enable_x64(True):
        yield

# Scripts that tests start as subprocesses run code at import: never collect them (--doctest-modules).
collect_ignore = ["execution_worker.py", "multihost_worker.py", "sharded_worker.py"]

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def low_rank(rng, m, n, k, noise=0.0, nonnegative=False, dtype=np.float64):
    """``U V + noise`` with known rank ``k``."""
    if nonnegative:
        U, V = rng.random((m, k)), rng.random((k, n))
    else:
        U, V = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    A = U @ V
    if noise:
        A = A + noise * (rng.random((m, n)) if nonnegative else rng.standard_normal((m, n)))
    return A.astype(dtype)


def movielens_small_path():
    """Path of ../shared/data/ml-latest-small, or skip the test when it is absent."""
    path = os.path.abspath(os.path.join(SHARED_DATA, "ml-latest-small"))
    if not os.path.exists(os.path.join(path, "ratings.csv")):
        pytest.skip("MovieLens latest-small is not available")
    return path
