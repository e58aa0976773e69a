"""scikit-learn's ``test_truncated_svd.py`` (from the installed scikit-learn) run against jmf's TruncatedSVD
(see tests/sklearn_upstream.py for how).  No test is excluded.
"""

import pytest

pytest.importorskip("sklearn")

from .sklearn_upstream import global_random_seed, load, users_configuration  # noqa: E402, F401

EXCLUDED = {}

globals().update(load("test_truncated_svd.py", {"TruncatedSVD"}, EXCLUDED))
