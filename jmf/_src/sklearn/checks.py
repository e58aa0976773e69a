"""What scikit-learn's estimator checks cannot apply to, and a scorer for unsupervised grid searches."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["expected_failed_checks", "reconstruction_scorer"]


def expected_failed_checks(estimator) -> dict:
    """scikit-learn checks that cannot apply to ``estimator``, with the reason.

    Pass it to scikit-learn's harness::

        from sklearn.utils.estimator_checks import parametrize_with_checks
        @parametrize_with_checks([NMF(), ...], expected_failed_checks=expected_failed_checks)

    (``check_estimator(est, expected_failed_checks=expected_failed_checks(est))``
    for a single estimator).  The dictionary is also available as the
    estimator's ``_expected_failed_checks()``.
    """
    fn = getattr(estimator, "_expected_failed_checks", None)
    return dict(fn()) if fn is not None else {}


def reconstruction_scorer(estimator, X, y=None):
    """Negative mean squared reconstruction error of held-out rows (greater is better).

    ``-nanmean((X - inverse_transform(transform(X)))^2)`` over the observed
    (non-NaN) entries.  Works with any fitted transformer that has
    ``inverse_transform`` (jmf's and scikit-learn's ``NMF``,
    ``TruncatedSVD``, ``PCA``...), so it can be passed as ``scoring=`` to
    ``GridSearchCV`` or ``cross_val_score`` to pick ``n_components``.
    """
    Xd = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    Z = estimator.transform(X)
    R = np.asarray(estimator.inverse_transform(Z), dtype=np.float64)
    return -float(np.nanmean((Xd - R) ** 2))
