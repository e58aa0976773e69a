"""One home for argument checks and key -> RNG helpers.

Every public entry point validates its arguments here, before any compute,
so that a wrong value fails with one clear message naming the argument (and,
via ``owner``, the solver or function it belongs to) instead of deep inside
JAX or as a silently wrong result.  Conventions: a value of the wrong *type*
raises :class:`TypeError`, a value of the right type outside its range
raises :class:`ValueError`.  Numpy scalars (``np.float32(1e-4)``,
``np.int64(3)``) are accepted wherever Python numbers are; ``bool`` is never
a number here (``True`` as a learning rate is a bug, not ``1.0``).
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional

import numpy as np

__all__ = [
    "check_float",
    "check_nonneg_float",
    "check_positive_float",
    "check_fraction",
    "check_bool",
    "check_int",
    "check_rank",
    "check_choice",
    "check_penalty",
    "check_tol",
    "as_key",
    "numpy_rng",
]


def _who(name: str, owner: Optional[str]) -> str:
    return f"{owner}: {name}" if owner else name


def _got(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def is_real(value) -> bool:
    """A real scalar (Python, numpy, or a 0-d numpy or concrete jax array), not a bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, np.ndarray) or _is_concrete_jax_scalar(value):
        return value.ndim == 0 and np.dtype(value.dtype).kind in "iuf"
    return isinstance(value, numbers.Real)


def _is_tracer(value) -> bool:
    import jax

    return isinstance(value, jax.core.Tracer)


def _is_concrete_jax_scalar(value) -> bool:
    import jax

    if not isinstance(value, jax.Array) or isinstance(value, jax.core.Tracer) or value.ndim != 0:
        return False
    try:
        np.dtype(value.dtype)
    except TypeError:  # a typed PRNG key: not a number
        return False
    return True


def is_int(value) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_float(value, name: str, *, owner: Optional[str] = None, lo: Optional[float] = None,
                lo_open: bool = False, hi: Optional[float] = None, hi_open: bool = False,
                none_ok: bool = False) -> Optional[float]:
    """``value`` as a Python float in the given interval (``None`` passes with ``none_ok``)."""
    if value is None and none_ok:
        return None
    if _is_tracer(value):
        return value  # a grid value inside a compiled member: validated concretely when the grid was built
    if not is_real(value):
        what = "a float" + (" or None" if none_ok else "")
        raise TypeError(f"{_who(name, owner)} must be {what}, got {_got(value)}")
    v = float(value)
    bad = not math.isfinite(v)
    if lo is not None and (v <= lo if lo_open else v < lo):
        bad = True
    if hi is not None and (v >= hi if hi_open else v > hi):
        bad = True
    if bad:
        if lo is not None and hi is not None:
            rng = f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        elif lo is not None:
            rng = f" {'>' if lo_open else '>='} {lo:g}"
        elif hi is not None:
            rng = f" {'<' if hi_open else '<='} {hi:g}"
        else:
            rng = ""
        raise ValueError(f"{_who(name, owner)} must be a finite number{rng}, got {value!r}")
    return v


def check_nonneg_float(value, name: str, owner: Optional[str] = None, *, none_ok: bool = False):
    """A finite float ``>= 0``."""
    return check_float(value, name, owner=owner, lo=0.0, none_ok=none_ok)


def check_positive_float(value, name: str, owner: Optional[str] = None, *, none_ok: bool = False):
    """A finite float ``> 0``."""
    return check_float(value, name, owner=owner, lo=0.0, lo_open=True, none_ok=none_ok)


def check_fraction(value, name: str, owner: Optional[str] = None) -> float:
    """A float in ``[0, 1)`` (e.g. a share of entries to hold out)."""
    if is_real(value) and not 0 <= float(value) < 1:
        raise ValueError(f"{_who(name, owner)} must be a fraction in [0, 1), got {value!r}")
    return check_float(value, name, owner=owner, lo=0.0, hi=1.0, hi_open=True)


def check_bool(value, name: str, owner: Optional[str] = None) -> bool:
    """A real bool (``np.bool_`` too); strings such as ``'False'`` are refused, not truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{_who(name, owner)} must be a bool (True or False), got {_got(value)}")
    return bool(value)


def check_int(value, name: str, owner: Optional[str] = None, *, lo: Optional[int] = 1,
              hi: Optional[int] = None, none_ok: bool = False) -> Optional[int]:
    """An int (Python or numpy, not bool) in ``[lo, hi]``."""
    if value is None and none_ok:
        return None
    if not is_int(value):
        raise TypeError(f"{_who(name, owner)} must be an int{' or None' if none_ok else ''}, got {_got(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"in [{lo}, {hi}]")
        raise ValueError(f"{_who(name, owner)} must be {rng}, got {value!r}")
    return int(value)


def check_rank(rank, shape, name: str = "rank", owner: Optional[str] = None) -> int:
    """A rank ``k`` with ``1 <= k <= min(m, n)`` for a matrix of ``shape`` (m, n)."""
    rank = check_int(rank, name, owner)
    if rank > min(shape):
        raise ValueError(f"{_who(name, owner)} {rank} is out of range: it must be between 1 and min(m, n) = "
                         f"{min(shape)} for shape {tuple(shape)}")
    return rank


def check_choice(value, name: str, choices: Iterable, owner: Optional[str] = None):
    """One of ``choices`` (compared with ``==``; strings are not lower-cased)."""
    choices = tuple(choices)
    try:
        ok = value in choices
    except TypeError:  # unhashable / incomparable
        ok = False
    if not ok:
        raise ValueError(f"{_who(name, owner)} must be one of {list(choices)}, got {value!r}")
    return value


def check_penalty(value, name: str, owner: Optional[str] = None) -> tuple:
    """A nonnegative penalty, or a pair ``(for W, for H)`` of them; returns the pair of floats.

    Arrays (e.g. traced values when hyperparameters are batched) pass
    through unchecked: they are data, validated by whoever built them.
    """
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{_who(name, owner)} must be a number or a pair (for W, for H), got {value!r}")
        pair = (value[0], value[1])
    else:
        pair = (value, value)
    out = []
    for v in pair:
        if _is_array(v) and not (isinstance(v, np.ndarray) and v.ndim == 0):
            out.append(v)
            continue
        if not is_real(v):
            raise TypeError(f"{_who(name, owner)} must be a nonnegative float or a pair of them, got {_got(value)}")
        f = float(v)
        if not (f >= 0) or math.isinf(f):
            raise ValueError(f"{_who(name, owner)} must be nonnegative and finite, got {value!r}")
        out.append(f)
    return tuple(out)


def _is_array(x) -> bool:
    import jax

    return isinstance(x, (np.ndarray, jax.Array))


def check_tol(tol, name: str = "tol", owner: Optional[str] = None) -> Optional[float]:
    """The stopping tolerance: a finite float ``>= 0``, or ``None`` (run all iterations)."""
    if isinstance(tol, str):
        # Separate message: the string "none" is the classic mistake from config files.
        raise TypeError(f"{_who(name, owner)} must be a nonnegative finite float or None, got the string {tol!r}")
    return check_float(tol, name, owner=owner, lo=0.0, none_ok=True)


# -- keys ---------------------------------------------------------------------------------

#: Seeds :func:`jax.random.key` accepts without overflow (it converts to a 64-bit integer).
_SEED_RANGE = (-(2**63), 2**64 - 1)


def as_key(key, name: str = "key", owner: Optional[str] = None):
    """A single PRNG key from a typed key, a legacy raw ``uint32`` key or an int seed.

    Raises :class:`TypeError` for anything else (strings, floats, float or
    wrong-length arrays, batches of keys) instead of letting JAX fail later
    with an unrelated message, and :class:`ValueError` for an int seed that
    does not fit in 64 bits.
    """
    import jax
    import jax.numpy as jnp

    who = _who(name, owner)
    if key is None:
        raise TypeError(f"{who} is required: pass a PRNG key such as jax.random.key(0) (or an int seed)")
    if is_int(key):
        seed = int(key)
        if not _SEED_RANGE[0] <= seed <= _SEED_RANGE[1]:
            raise ValueError(f"{who}: the int seed {seed} does not fit in 64 bits; use a seed in "
                             f"[-2**63, 2**64 - 1]")
        if 0 <= seed < 2**32 and jax.config.jax_default_prng_impl == "threefry2x32":
            # Equal to jax.random.key(seed), without compiling the seeding function.
            return jax.random.wrap_key_data(np.array([0, seed], np.uint32))
        return jax.random.key(seed)
    if isinstance(key, (np.ndarray, jax.Array)):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.ndim != 0:
                raise TypeError(f"{who} must be a single PRNG key, got an array of {key.shape} keys "
                                "(pass keys=... to jmf.fit_many for several)")
            return key
        raw = _raw_key_shape()
        if key.dtype == np.uint32 and tuple(key.shape) == raw:
            return jnp.asarray(key)
        raise TypeError(f"{who} must be a jax.random.key (or an int seed, or a legacy uint32 key of shape "
                        f"{raw}), got a {key.dtype} array of shape {tuple(key.shape)}")
    raise TypeError(f"{who} must be a jax.random.key (or an int seed), got {_got(key)}")


def _raw_key_shape() -> tuple:
    import jax

    return tuple(jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape)


def numpy_rng(key, name: str = "key") -> np.random.Generator:
    """A numpy Generator seeded from the bits of a jax key (or an int seed), so all randomness stems from keys."""
    import jax
    import jax.numpy as jnp

    key = as_key(key, name)
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return np.random.default_rng(np.asarray(data, dtype=np.uint32).ravel().tolist())

