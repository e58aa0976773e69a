"""Datasets of an experiment: generated or given, with hidden and held-out entries, ready to fit."""

from __future__ import annotations

import hashlib
import inspect
from typing import Any, Mapping, NamedTuple, Optional

import jax
import numpy as np

from .._validation import check_fraction, check_int, numpy_rng
from ..data import Dense, Sparse
from ..model_selection import holdout_mask
from ..registry import DATASETS
from .store import _jsonable


class PreparedData(NamedTuple):
    """A dataset ready to fit.

    Attributes
    ----------
    name : str
    config : dict
        JSON-serializable description (part of every row id).
    train : Dense or Sparse
        What the solvers fit (held-out entries removed or weighted 0).
    test : tuple (rows, cols, vals) of numpy arrays, or None
        Held-out entries for ``test_rmse``/``test_mae``.
    info : dict
        Known truth such as ``true_rank`` and ``noise`` (copied into rows).
    singular_values : ndarray or None
        Singular values of the fully observed unweighted dense training
        matrix (for the Eckart--Young optimum ``svd_rel_error``).
    """

    name: str
    config: dict
    train: Any
    test: Optional[tuple]
    info: dict
    singular_values: Optional[np.ndarray]


# Keys of a dataset spec that are options of the preparation, not parameters of the generator.
_DATA_OPTIONS = ("kind", "name", "seed", "missing", "holdout", "sparse", "dtype", "data")


def _fingerprint(data) -> str:
    h = hashlib.sha1()
    for leaf in jax.tree_util.tree_leaves(data):
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def _dataset_config(spec: Mapping) -> dict:
    """The JSON-able part of a dataset spec, validated (no data generated)."""
    spec = dict(spec)
    if "data" in spec:
        if "name" not in spec:
            raise ValueError("a dataset given as data needs a 'name'")
        data = spec.pop("data")
        spec["fingerprint"] = _fingerprint(data)
        spec.setdefault("kind", "data")
    kind = spec.get("kind")
    if kind is None:
        raise ValueError(f"dataset spec needs a 'kind' (one of {sorted(DATASETS)}) or 'data', got {spec}")
    if kind != "data":
        if kind not in DATASETS:
            raise ValueError(f"unknown dataset kind {kind!r}; available: {', '.join(sorted(DATASETS))}")
        params = {k: v for k, v in spec.items() if k not in _DATA_OPTIONS}
        gen = DATASETS[kind]
        sig = inspect.signature(gen)
        try:
            if "key" in sig.parameters:
                sig.bind(None, **params)
            else:
                sig.bind(**params)
        except TypeError as exc:
            raise ValueError(f"bad parameters for dataset kind {kind!r}: {exc}") from None
    for opt in ("missing", "holdout"):
        if opt in spec:
            spec[opt] = check_fraction(spec[opt], f"dataset option {opt}")
    if "dtype" in spec and spec["dtype"] not in ("float32", "float64"):
        raise ValueError(f"dataset option dtype must be 'float32' or 'float64', got {spec['dtype']!r}")
    if "seed" in spec:
        spec["seed"] = check_int(spec["seed"], "dataset option seed", lo=None)
    if "name" not in spec:
        extras = {k: v for k, v in spec.items() if k not in ("kind",)}
        spec["name"] = kind + (("-" + "-".join(f"{k}{v}" for k, v in sorted(extras.items()))) if extras else "")
    return _jsonable(spec)


def make_dataset(spec: Mapping) -> PreparedData:
    """Generate (or load) a dataset from its spec.

    Parameters
    ----------
    spec : dict
        ``kind`` (a key of :data:`DATASETS`) and its parameters, or ``data``
        (an array, Dense or Sparse) with a ``name``; plus options

        * ``seed`` (int, default 0): key of the generator and of the masks;
        * ``missing`` (fraction): entries hidden from the fit (never used);
        * ``holdout`` (fraction): observed entries held out as a test set;
        * ``sparse`` (bool): give the solvers a :class:`~jmf.Sparse` of the
          observed entries instead of a weighted :class:`~jmf.Dense`;
        * ``dtype`` ("float32" default, or "float64").

    Returns
    -------
    PreparedData
    """
    return _make_dataset(spec)


@jax.jit
def _dataset_keys(seed):
    """The generator's, the missing mask's and the holdout's keys of ``seed``: one program (eagerly, four)."""
    return tuple(jax.random.split(jax.random.key(seed), 3))


def _make_dataset(spec: Mapping, svd: bool = True) -> PreparedData:
    config = _dataset_config(spec)
    seed = int(config.get("seed", 0))
    k_gen, k_missing, k_holdout = _dataset_keys(seed)
    dtype = np.float64 if config.get("dtype") == "float64" and jax.config.jax_enable_x64 else np.float32
    if "data" in spec:
        raw, info = spec["data"], {}
    else:
        gen = DATASETS[config["kind"]]
        params = {k: v for k, v in config.items() if k not in _DATA_OPTIONS}
        if "key" in inspect.signature(gen).parameters:
            params["key"] = k_gen
        raw = gen(**params)
        raw, info = raw if isinstance(raw, tuple) else (raw, {})
    info = dict(info)

    # Observed entries as triplets (dense matrices keep a weight array).
    if isinstance(raw, Sparse):
        if raw.batch_shape:
            raise ValueError(f"dataset {config['name']!r} is a batch; experiments take single matrices")
        shape = raw.shape
        rows, cols = np.asarray(raw.rows), np.asarray(raw.cols)
        vals = np.asarray(raw.vals, np.float64)
        weights = None if raw.weights is None else np.asarray(raw.weights, np.float64)
        dense = None
    else:
        if isinstance(raw, Dense):
            if raw.batch_shape:
                raise ValueError(f"dataset {config['name']!r} is a batch; experiments take single matrices")
            A = np.asarray(raw.A, np.float64)
            weights = None if raw.weights is None else np.asarray(raw.weights, np.float64)
        else:
            A = np.asarray(raw, np.float64)
            if A.ndim != 2:
                raise ValueError(f"dataset {config['name']!r} must be a 2-D matrix, got shape {A.shape}")
            weights = None
            if np.isnan(A).any():
                weights = (~np.isnan(A)).astype(np.float64)
                A = np.where(np.isnan(A), 0.0, A)
        shape = A.shape
        dense = A
        weights_full = weights
        rows, cols = (x.ravel() for x in np.indices(shape))
        vals = A.ravel()
        weights = None if weights_full is None else weights_full.ravel()

    rng_missing, rng_holdout = numpy_rng(k_missing), numpy_rng(k_holdout)
    keep = np.ones(len(vals), bool) if weights is None else weights > 0
    if config.get("missing"):
        hidden = holdout_mask(len(vals), config["missing"], rng_missing, weights)
        keep &= ~hidden
    test = None
    if config.get("holdout"):
        w_keep = keep.astype(np.float64) if weights is None else weights * keep
        is_test = holdout_mask(len(vals), config["holdout"], rng_holdout, w_keep)
        test = (rows[is_test].astype(np.int32), cols[is_test].astype(np.int32), vals[is_test])
        keep &= ~is_test
    if not keep.any():
        raise ValueError(f"dataset {config['name']!r}: no observed entry left after missing/holdout")

    full = keep.all() and weights is None
    if dense is not None and not config.get("sparse"):
        w = None if full else (keep * (1.0 if weights is None else weights)).reshape(shape)
        train = Dense(dense.astype(dtype), None if w is None else w.astype(dtype))
    else:
        sel = keep if weights is None else keep & (weights > 0)
        w = None if weights is None or np.all(weights[sel] == 1) else weights[sel].astype(dtype)
        train = Sparse(rows[sel], cols[sel], vals[sel].astype(dtype), shape, weights=w)
    sv = None
    if svd and dense is not None and full and shape[0] * shape[1] * min(shape) <= 4e9:  # a few seconds at most
        sv = np.linalg.svd(dense, compute_uv=False)
    info.update(shape=list(shape), n_observed=int(keep.sum()), n_test=0 if test is None else int(len(test[0])))
    return PreparedData(config["name"], config, train, test, _jsonable(info), sv)
