"""Host-side checks of the arrays that go into :class:`~jmf.Dense` and :class:`~jmf.Sparse`, and their dtype policy.

Everything here runs with numpy before any compute and raises
``ValueError``/``TypeError`` naming the argument; traced values (containers
rebuilt inside a transformation) are never checked.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import is_int


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


_HALF = (np.dtype(np.float16), np.dtype(jnp.bfloat16))


def _check_not_half(dtype, name: str) -> None:
    # float16 was accepted and then crashed inside jaxlib after compiling, and bfloat16 was refused
    # as "not numeric"; neither has the range for squared errors or the precision for the solves.
    if np.dtype(dtype) in _HALF:
        raise TypeError(f"{name} has dtype {np.dtype(dtype)}: float16/bfloat16 are not supported: "
                        "use float32 or float64")


def device_array(x, dtype=None):
    """``x`` as a JAX array; host data is converted (and cast) with NumPy and copied by ``device_put``.

    ``jnp.asarray`` of host data compiles a small program per shape and dtype (a copy, a conversion),
    which every call of the functions taking user ids, padded batches or new users paid.  A JAX array
    is returned as it is (cast if ``dtype`` differs).
    """
    if isinstance(x, jax.Array):
        return x if dtype is None or x.dtype == dtype else x.astype(dtype)
    return jax.device_put(np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype))


def _float_dtype(dtype) -> np.dtype:
    """Floating dtype used to store values of ``dtype`` (ints/bools become the default float)."""
    dtype = np.dtype(dtype)
    _check_not_half(dtype, "data")
    if dtype.kind == "f":
        if dtype == np.float64 and not jax.config.jax_enable_x64:
            return np.dtype(np.float32)
        return dtype
    if dtype.kind in "iub":
        return np.dtype(jnp.zeros((), dtype=float).dtype)
    raise TypeError(f"unsupported dtype {dtype}")


_warned_x64 = False


def _check_fits(arr: np.ndarray, target, name: str, why: str) -> None:
    """Refuse finite values that a cast to ``target`` would turn into inf (reported as "contains inf" later)."""
    target = np.dtype(target)
    if arr.dtype.kind != "f" or target.kind != "f" or np.finfo(arr.dtype).max <= np.finfo(target).max:
        return
    big = np.finfo(target).max
    finite = np.isfinite(arr)
    if arr.size and np.any(np.abs(np.where(finite, arr, 0)) > big):
        top = float(np.max(np.abs(arr[finite])))
        raise ValueError(f"{name} has values up to {top:.3g}, beyond {target}'s range ({big:.3g}); {why}")


def _check_cast(arr: np.ndarray, target, name: str) -> None:
    """Before storing float64 values as float32 (JAX's x64 mode off): refuse what does not fit, say it once."""
    global _warned_x64
    if arr.dtype != np.float64 or np.dtype(target) != np.float32:
        return
    _check_fits(arr, target, name, "float64 input is stored as float32 because JAX's x64 mode is off: enable "
                "float64 with jax.config.update(\"jax_enable_x64\", True), or rescale the data")
    if not _warned_x64:
        _warned_x64 = True
        warnings.warn(f"{name} is float64 but JAX's x64 mode is off, so jmf computes in float32 (about 7 "
                      "significant digits); to keep float64 call jax.config.update(\"jax_enable_x64\", True) "
                      "at startup (this warning is shown once)", UserWarning, stacklevel=4)


def check_scale(values: np.ndarray, dtype, name: str = "data") -> None:
    """Refuse observed values whose squares overflow or underflow ``dtype`` (before any compute).

    Fits of data scaled by about 1e20 reported DIVERGED at iteration 0 (the squared residuals are
    inf in float32) and data scaled by 1e-20 reported CONVERGED with garbage (they are subnormal
    or 0).  The thresholds keep a margin of 1e3 on the value (1e6 on its square) for residuals,
    penalties and sums.  Exact zeros are ignored; ``values`` holds the observed entries.
    """
    if values.size == 0:
        return
    top = float(np.max(np.abs(values)))
    if top == 0 or not np.isfinite(top):
        return
    fi = np.finfo(dtype)
    hi, lo = float(np.sqrt(fi.max)) / 1e3, float(np.sqrt(fi.tiny)) * 1e3
    if lo <= top <= hi:
        return
    x64 = ("" if np.dtype(dtype) == np.float64 else
           ", or enable float64 with jax.config.update(\"jax_enable_x64\", True)")
    if top > hi:
        what = f"too large for {np.dtype(dtype)}: squared errors overflow (largest {np.dtype(dtype)} {fi.max:.3g})"
    else:
        what = (f"too small for {np.dtype(dtype)}: squared errors underflow to subnormal numbers (smallest "
                f"normal {fi.tiny:.3g}) and a fit would stop on noise")
    raise ValueError(f"{name}: the largest observed |value| is {top:.3g}, {what}; rescale the data "
                     f"(e.g. divide it by {top:.3g}){x64}")


def _as_float_array(x, name: str, *, dtype=None):
    """Convert ``x`` to a jax float array, rejecting non-numeric and complex input."""
    if _is_tracer(x):
        return x if dtype is None else x.astype(dtype)
    if hasattr(x, "toarray") and not isinstance(x, (np.ndarray, jax.Array)):
        raise TypeError(f"{name} is a scipy sparse matrix; use jmf.Sparse.from_scipy({name}) instead of jmf.Dense")
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name} could not be converted to an array: {exc}") from None
    if dtype is None:
        _check_not_half(arr.dtype, name)
    if arr.dtype == object or arr.dtype.kind not in "fiub":
        if arr.dtype.kind == "c":
            raise TypeError(f"{name} has complex dtype {arr.dtype}; jmf factorizes real matrices")
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    target = _float_dtype(arr.dtype) if dtype is None else np.dtype(dtype)
    if dtype is None:
        _check_cast(arr, target, name)
    return device_array(arr, target)


def _check_finite(arr, name: str, what: str = "NaN or inf") -> None:
    if _is_tracer(arr):
        return
    a = np.asarray(arr)
    if not np.all(np.isfinite(a)):
        n_nan = int(np.isnan(a).sum())
        n_inf = int(np.isinf(a).sum())
        raise ValueError(f"{name} contains {n_nan} NaN and {n_inf} inf values; {what} is not allowed here")


def _check_weights(weights, name: str = "weights") -> None:
    if _is_tracer(weights):
        return
    w = np.asarray(weights)
    _check_finite(w, name)
    if np.any(w < 0):
        raise ValueError(f"{name} must be nonnegative; found {int((w < 0).sum())} negative values")
    if w.size and not np.any(w > 0):
        raise ValueError(f"{name} are all zero: no entry is observed")


def _check_shape(shape) -> tuple[int, int]:
    try:
        m, n = shape
    except Exception:
        raise ValueError(f"shape must be a pair (m, n) of positive ints, got {shape!r}") from None
    if not (is_int(m) and is_int(n)):
        # int() would truncate (3.7, 3.2) to (3, 3) and silently drop the entries beyond it.
        raise TypeError(f"shape must be a pair (m, n) of ints, got {shape!r}")
    m, n = int(m), int(n)
    if m <= 0 or n <= 0:
        raise ValueError(f"shape must be positive, got {(m, n)}")
    if m >= 2**31 or n >= 2**31:
        raise ValueError(f"shape {(m, n)} exceeds the int32 index range")
    return (m, n)


def _as_index_array(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if arr.size and not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or inf")
        if arr.size and np.any(arr != np.round(arr)):
            raise TypeError(f"{name} must be integers, got non-integral floats")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)

