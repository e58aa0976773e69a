"""Checks shared by the estimators: parameters (at fit, never in ``__init__``), input data, keys and precision.

Parameter checks read the estimator's attribute and name the estimator in
the message (the rules themselves live in :mod:`jmf._src._validation`).
Input data becomes jmf data once, here: dense ``NaN`` entries are missing
(weight 0), and a ``scipy.sparse`` matrix keeps its sparsity -- its absent
entries are zeros (scikit-learn's meaning, ``absent="zero"``) or missing
(``absent="missing"``).  Floats are computed in the input's precision:
float64 input runs with JAX's x64 mode switched on for the call only
(:func:`precision`), as scikit-learn computes float64 in float64.
"""

from __future__ import annotations

import contextlib

import numpy as np
import scipy.sparse as sp

try:
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import check_array
except ImportError as exc:  # pragma: no cover - exercised only without sklearn
    raise ImportError(
        "jmf.sklearn needs scikit-learn (>= 1.6); install it with `pip install scikit-learn`"
    ) from exc

import jax

from .._validation import check_choice, check_float, check_int, is_int
from ..data import Dense, Sparse

__all__ = ["int_param", "real_param", "choice_param", "bool_param", "verbose_param", "check_random_state_type",
           "key_from_random_state", "precision", "as_data", "absent_param", "check_codes", "n_observed_entries",
           "ABSENT"]

#: Values of the estimators' ``absent`` parameter: what the entries a sparse ``X`` does not store are.
ABSENT = ("zero", "missing")


def _owner(est) -> str:
    return type(est).__name__


def int_param(est, name, lo, hi=None, none_ok=False):
    return check_int(getattr(est, name), name, _owner(est), lo=lo, hi=hi, none_ok=none_ok)


def real_param(est, name, lo=0.0, hi=None, none_ok=False, value=None):
    v = getattr(est, name) if value is None else value
    return check_float(v, name, owner=_owner(est), lo=lo, hi=hi, none_ok=none_ok)


def choice_param(est, name, choices):
    v = getattr(est, name)
    if not isinstance(v, str):
        raise ValueError(f"{_owner(est)}: {name} must be one of {sorted(choices)}, got {v!r}")
    return check_choice(v, name, sorted(choices), _owner(est))


def bool_param(est, name):
    v = getattr(est, name)
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{_owner(est)}: {name} must be a bool, got {v!r}")
    return bool(v)


def verbose_param(est):
    v = est.verbose
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    return int_param(est, "verbose", 0)


def absent_param(est):
    return choice_param(est, "absent", ABSENT)


def pair_param(est, name):
    """A penalty given as a number or a (for W, for H) pair; returned as a pair of floats."""
    v = getattr(est, name)
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{_owner(est)}: {name} must be a number or a pair (for W, for H), got {v!r}")
        return tuple(real_param(est, name, value=x) for x in v)
    x = real_param(est, name)
    return (x, x)


def check_random_state_type(est):
    rs = est.random_state
    if not (rs is None or is_int(rs) or isinstance(rs, np.random.RandomState)):
        raise TypeError(f"{_owner(est)}: random_state must be None, an int or a numpy.random.RandomState, "
                        f"got {rs!r}")


def key_from_random_state(random_state):
    """A ``jax.random.key`` from scikit-learn's ``random_state``.

    An int seeds the key directly (``random_state=0`` gives ``jax.random.key(0)``,
    so results equal ``jmf.fit(..., key=0)``); ``None`` or a
    ``numpy.random.RandomState`` draw a seed from that generator (``None``:
    numpy's global one), as scikit-learn does.
    """
    if is_int(random_state):
        if not 0 <= random_state < 2**32:
            raise ValueError(f"random_state must be in [0, 2**32), got {random_state}")
        return jax.random.key(int(random_state))
    if random_state is None or isinstance(random_state, np.random.RandomState):
        seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
        return jax.random.key(int(seed))
    raise TypeError("random_state must be None, an int or a numpy.random.RandomState, "
                    f"got {type(random_state).__name__}")


def _enable_x64(on: bool):
    """JAX's x64 switch as a context manager (``jax.enable_x64``; older JAX: ``jax.experimental.enable_x64``)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(on)
    from jax.experimental import enable_x64  # pragma: no cover - JAX < 0.7

    return enable_x64(on)  # pragma: no cover


def precision(dtype):
    """Compute in ``dtype``: float64 turns JAX's x64 mode on for the block (float32 needs nothing)."""
    if np.dtype(dtype) == np.float64 and not jax.config.jax_enable_x64:
        return _enable_x64(True)
    return contextlib.nullcontext()


def as_data(X, absent: str = "zero"):
    """jmf data of a validated ``X`` (float ndarray, NaN allowed, or a scipy.sparse matrix).

    Dense: ``NaN`` entries are missing (weight 0).  Sparse: never densified;
    the absent entries are zeros (``absent="zero"``) or missing
    (``absent="missing"``).  Call inside :func:`precision` so that float64
    stays float64.
    """
    if sp.issparse(X):
        return Sparse.from_scipy(X, absent="zero" if absent == "zero" else "missing")
    X = np.asarray(X)
    nan = np.isnan(X)
    if nan.any():
        if nan.all():
            raise ValueError("X is entirely NaN: no entry is observed")
        return Dense(np.where(nan, 0, X), weights=(~nan).astype(X.dtype))
    return Dense(X)


def n_observed_entries(X, absent: str = "zero"):
    """Number of observed entries of ``X``: non-NaN for dense, all or the stored ones for sparse."""
    if sp.issparse(X):
        return X.shape[0] * X.shape[1] if absent == "zero" else X.nnz
    return int(np.sum(~np.isnan(X)))


def observed_min(X, absent: str = "zero") -> float:
    """The smallest observed value (absent sparse entries count as 0 when they are zeros)."""
    if sp.issparse(X):
        data = X.data
        lo = float(data.min()) if data.size else 0.0
        if absent == "zero" and X.nnz < X.shape[0] * X.shape[1]:
            lo = min(lo, 0.0)
        return lo
    return float(np.nanmin(X)) if X.size else 0.0


def check_codes(Z, k):
    """Validate the input of ``inverse_transform``: a 2-D float array with ``k`` columns."""
    Z = check_array(Z, dtype=[np.float64, np.float32], accept_sparse=("csr", "csc"))
    if sp.issparse(Z):
        Z = Z.toarray()
    if Z.shape[1] != k:
        raise ValueError(f"X has {Z.shape[1]} features, but the model has n_components = {k}")
    return Z
