"""scikit-learn's ``test_nmf.py`` (from the installed scikit-learn) run against jmf's NMF, MiniBatchNMF and
non_negative_factorization (see tests/sklearn_upstream.py for how).

Excluded, each for its reason: only tests of scikit-learn's own internals (its private functions, or
behaviour that depends on how scikit-learn stores arrays).  Every other upstream test, with every
parametrization, must pass.
"""

import pytest

pytest.importorskip("sklearn")

from .sklearn_upstream import global_random_seed, load, users_configuration  # noqa: E402, F401

EXCLUDED = {
    "test_initialize_nn_output": "tests sklearn.decomposition._nmf._initialize_nmf only (a private function)",
    "test_initialize_close": "tests sklearn.decomposition._nmf._initialize_nmf only (a private function)",
    "test_initialize_variants": "tests sklearn.decomposition._nmf._initialize_nmf only (a private function)",
    "test_beta_divergence": "tests the private sklearn.decomposition._nmf._beta_divergence against its own "
                            "dense reference",
    "test_special_sparse_dot": "tests the private sklearn.decomposition._nmf._special_sparse_dot (and the "
                               "index layout of the CSR matrix it returns)",
    "test_nmf_underflow": "tests the private sklearn.decomposition._nmf._beta_divergence on subnormal inputs",
    "test_minibatch_nmf_partial_fit": "passes in scikit-learn only because its MiniBatchNMF keeps, as "
                                      "components_, the very H array passed to fit() and updates it in place: the "
                                      "second estimator's partial_fit(H=H) then receives and mutates the first "
                                      "one's components_, so the two compared arrays are one object (the batches "
                                      "and forget rates of the two runs differ); jmf returns new arrays and "
                                      "never writes to the caller's",
}

globals().update(load("test_nmf.py", {"NMF", "MiniBatchNMF", "non_negative_factorization"}, EXCLUDED))
