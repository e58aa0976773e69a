"""The one registry of names: solvers (with typed hyperparameters) and dataset kinds.

The ``jmf`` command (``--solver NAME -p KEY=VALUE``, ``jmf solvers``),
experiment grids (``{"solver": "als", "l2": 0.1}``), the experiment scripts
and the scikit-learn wrappers all build solvers here, so a name means the
same solver everywhere.  Every hyperparameter is declared once with its
type, default, range or choices and a one-line description: the command
parses ``-p`` values by that type (``-p count_scaled=false`` is the bool
``False``), and ``jmf solvers`` prints the declarations.  Ranges are
documentation and parsing aids; the solver factories validate the values.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import optax

from . import losses
from ._validation import check_choice, is_real, numpy_rng
from .solvers.als import als, ratings_als
from .solvers.bpmf import bpmf
from .solvers.bpr import bpr
from .solvers.gradient import _check_lr, adam, sgd
from .solvers.hals import hals
from .solvers.implicit import implicit_als
from .solvers.mu import mu
from .solvers.ratings import ratings_gradient
from .solvers.svd import svd
from .solvers.svdpp import svdpp

__all__ = ["Param", "SolverEntry", "SOLVERS", "solver_names", "solver_entry", "make_solver", "parse_param",
           "describe_solvers", "DATASETS", "register_dataset"]

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class Param(NamedTuple):
    """A declared hyperparameter.

    Attributes
    ----------
    name : str
    type : {"float", "int", "bool", "str", "penalty"}
        "penalty" is a float >= 0 or a pair ``(for W, for H)`` of them.
    default : object
    doc : str
        One line, plain text.
    lo : float, optional
        Smallest allowed value (exclusive with ``lo_open``).
    hi : float, optional
        Largest allowed value (exclusive with ``hi_open``).
    choices : tuple of str
        For "str": the allowed values; for numbers: words accepted besides them (``inner="auto"``).
    none_ok : bool
        ``None`` is a value (spelled none or null on the command line).
    """

    name: str
    type: str
    default: Any
    doc: str
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = ()
    none_ok: bool = False

    def kind(self) -> str:
        """The declared type in words, e.g. ``float > 0``, ``int >= 1 or 'auto'``."""
        if self.type == "str":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.type == "penalty":
            text = "float >= 0 or a pair [W, H]"
        else:
            text = self.type
            if self.lo is not None and self.hi is not None:
                text += f" in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
            elif self.lo is not None:
                text += f" {'>' if self.lo_open else '>='} {self.lo:g}"
            if self.choices:
                text += " or " + ", ".join(repr(c) for c in self.choices)
        return text + (" or none" if self.none_ok else "")

    def parse(self, text: str):
        """The value of ``text`` (a ``-p KEY=VALUE`` string) by the declared type; ValueError if it does not fit."""
        raw = text.strip()
        low = raw.lower()
        if low in ("none", "null"):
            if not self.none_ok:
                raise ValueError(f"{self.name} does not accept None")
            return None
        if self.type == "bool":
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("expected a bool (true/false, 1/0, yes/no)")
        if self.type == "str":
            if raw in self.choices:
                return raw
            raise ValueError(f"expected one of {list(self.choices)}")
        for choice in self.choices:
            if low == choice.lower():
                return choice
        if self.type == "penalty":
            if raw.startswith("["):
                try:
                    pair = json.loads(raw)
                except ValueError:
                    pair = None
                if not (isinstance(pair, list) and len(pair) == 2 and all(_is_number(x) for x in pair)):
                    raise ValueError("expected a float or a pair such as [0.1, 0.2]")
                return tuple(float(x) for x in pair)
            return _parse_float(raw)
        if self.type == "int":
            try:
                return int(raw)
            except ValueError:
                raise ValueError("expected an int" + (f" or one of {list(self.choices)}" if self.choices else "")) \
                    from None
        value = _parse_float(raw, self.choices)
        return value


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _parse_float(raw: str, choices=()) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a float" + (f" or one of {list(choices)}" if choices else "")) from None
    if not math.isfinite(value):
        raise ValueError("expected a finite float")
    return value


class SolverEntry(NamedTuple):
    """A solver name: its builder, its declared hyperparameters and a one-line description."""

    name: str
    build: Callable
    params: tuple
    doc: str

    def param(self, key: str) -> Param:
        for p in self.params:
            if p.name == key:
                return p
        raise KeyError(key)

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}


# -- solvers --------------------------------------------------------------------------------


def _penalty(name, doc, default=0.0):
    return Param(name, "penalty", default, doc, lo=0.0)


_L2 = _penalty("l2", "ridge penalty on W and H (sum units, see jmf.losses)")
_L1 = _penalty("l1", "lasso penalty on W and H")
_BIAS_L2 = Param("bias_l2", "float", None, "ridge penalty on the biases (default: l2)", lo=0.0, none_ok=True)
_BIASES = Param("biases", "bool", False, "fit row and column biases and an offset (ratings)")
_COUNT_SCALED = Param("count_scaled", "bool", False, "ALS-WR: scale each row's penalty by its number of entries")
_SOLVE = Param("solve", "str", "cholesky", "sparse data: exact Cholesky solves or warm-started CG iterations",
               choices=("cholesky", "cg"))
_CG_STEPS = Param("cg_steps", "int", 3, "conjugate-gradient iterations per row and sweep (solve=cg)", lo=1)
_CHUNK = Param("chunk_size", "int", 1 << 16, "entries per chunk when evaluating the loss on sparse data", lo=1)
_INNER = Param("inner", "int", 1, "sweeps per half-step on dense data (accelerated NMF)", lo=1, choices=("auto",))
_INNER_TOL = Param("inner_tol", "float", 0.1, "early stop of the repeated sweeps", lo=0.0, hi=1.0, hi_open=True)
_LR = Param("learning_rate", "float", 0.01, "step size", lo=0.0, lo_open=True)
_GRADIENT_TAIL = (
    Param("loss", "str", "frobenius", "the objective: squared error or a robust loss",
          choices=("frobenius", "huber", "l1")),
    _L2, _L1, _BIAS_L2,
    Param("delta", "float", 1.0, "loss=huber: residual size where the loss turns linear", lo=0.0, lo_open=True),
    Param("count_scaled", "bool", False, "loss=frobenius: ALS-WR count-scaled penalties (ratings)"),
    Param("projection", "str", None, "project the factors after each update (NMF)", choices=("nonnegative",),
          none_ok=True),
    Param("batch_size", "int", None, "sparse data: one step is an epoch of minibatches of this size", lo=1,
          none_ok=True),
    _BIASES,
)


@functools.lru_cache(maxsize=256)
def _loss(who: str, loss: str, l2, l1, bias_l2, delta: float, count_scaled: bool):
    """The loss of a gradient solver from its declared hyperparameters (cached: equal settings, one Loss object).

    ``None`` for the plain Frobenius loss, so the factory's default (and its cache) is used.
    """
    if loss != "frobenius" and count_scaled:
        raise ValueError(f"{who}: count_scaled applies to loss='frobenius' only, got loss={loss!r}")
    if loss == "huber":
        return losses.huber(delta, l2=l2, l1=l1, bias_l2=bias_l2)
    if loss == "l1":
        return losses.l1(l2=l2, l1=l1, bias_l2=bias_l2)
    if count_scaled:
        if l1 not in (0, 0.0, (0.0, 0.0)):
            raise ValueError(f"{who}: count_scaled does not combine with an l1 penalty")
        return losses.ratings_loss(l2, bias_l2, count_scaled=True)
    if l2 in (0, 0.0, (0.0, 0.0)) and l1 in (0, 0.0, (0.0, 0.0)) and bias_l2 is None:
        return None
    return losses.frobenius(l2=l2, l1=l1, bias_l2=bias_l2)


def _gradient_loss(who, loss, l2, l1, bias_l2, delta, count_scaled):
    check_choice(loss, "loss", ("frobenius", "huber", "l1"), who)
    try:
        return _loss(who, loss, l2, l1, bias_l2, delta, count_scaled)
    except TypeError as exc:  # unhashable values: let the loss constructors say what is wrong
        if "unhashable" not in str(exc):
            raise
        return _loss.__wrapped__(who, loss, l2, l1, bias_l2, delta, count_scaled)


def _gradient_extras(who, loss, l2, l1, bias_l2, delta, count_scaled, projection, batch_size, biases) -> dict:
    """Keyword arguments of :func:`jmf.solvers.gradient`, leaving out its defaults.

    Equal settings then share a cache entry."""
    extras = dict(loss=_gradient_loss(who, loss, l2, l1, bias_l2, delta, count_scaled), projection=projection,
                  batch_size=batch_size, biases=biases)
    return {k: v for k, v in extras.items() if v is not None and v is not False}


def _adam(learning_rate=0.01, b1=0.9, b2=0.999, eps=1e-8, loss="frobenius", l2=0.0, l1=0.0, bias_l2=None, delta=1.0,
          count_scaled=False, projection=None, batch_size=None, biases=False):
    extras = _gradient_extras("adam", loss, l2, l1, bias_l2, delta, count_scaled, projection, batch_size, biases)
    return adam(learning_rate, b1=b1, b2=b2, eps=eps, **extras)


def _sgd(learning_rate=0.01, momentum=None, nesterov=False, loss="frobenius", l2=0.0, l1=0.0, bias_l2=None,
         delta=1.0, count_scaled=False, projection=None, batch_size=None, biases=False):
    extras = _gradient_extras("sgd", loss, l2, l1, bias_l2, delta, count_scaled, projection, batch_size, biases)
    return sgd(learning_rate, momentum=momentum, nesterov=nesterov, **extras)


def _ratings_gradient(optimizer="adam", learning_rate=0.01, l2=0.1, bias_l2=None, count_scaled=False, biases=True,
                      chunk_size=1 << 16):
    check_choice(optimizer, "optimizer", ("adam", "sgd"), "ratings_gradient")
    lr = _check_lr(learning_rate, "ratings_gradient")
    return _optax_cached(ratings_gradient, optimizer, lr, l2=l2, bias_l2=bias_l2, count_scaled=count_scaled,
                         biases=biases, chunk_size=chunk_size)


def _svdpp(optimizer="adam", learning_rate=0.01, l2=10.0, bias_l2=None, implicit_l2=40.0, biases=True,
           chunk_size=1 << 16):
    check_choice(optimizer, "optimizer", ("adam", "sgd"), "svdpp")
    lr = _check_lr(learning_rate, "svdpp")
    return _optax_cached(svdpp, optimizer, lr, l2=l2, bias_l2=bias_l2, implicit_l2=implicit_l2, biases=biases,
                         chunk_size=chunk_size, elementwise=True)


@functools.lru_cache(maxsize=64)
def _optax_cached(factory, optimizer: str, lr: float, **kwargs):
    """One solver object per setting (an Optax transformation is a new object at every call)."""
    return factory(getattr(optax, optimizer)(lr), **kwargs)


SOLVERS: dict[str, SolverEntry] = {}


def _register(name: str, build: Callable, params: tuple, doc: str) -> None:
    SOLVERS[name] = SolverEntry(name, build, tuple(params), doc)


_register("adam", _adam, (
    _LR,
    Param("b1", "float", 0.9, "decay of the first-moment estimate", lo=0.0, hi=1.0, hi_open=True),
    Param("b2", "float", 0.999, "decay of the second-moment estimate", lo=0.0, hi=1.0, hi_open=True),
    Param("eps", "float", 1e-8, "added to the denominator", lo=0.0),
) + _GRADIENT_TAIL, "Adam steps on the loss (robust losses, NMF by projection, minibatch epochs on sparse data).")
_register("sgd", _sgd, (
    _LR,
    Param("momentum", "float", None, "heavy-ball momentum", lo=0.0, none_ok=True),
    Param("nesterov", "bool", False, "Nesterov momentum"),
) + _GRADIENT_TAIL, "Gradient descent (optionally with momentum) on the loss.")
_register("als", als, (_L2, _BIASES, _BIAS_L2, _COUNT_SCALED, _SOLVE, _CG_STEPS, _CHUNK),
          "Alternating least squares: exact ridge solves; biases and ALS-WR penalties for ratings.")
_register("ratings_als", ratings_als, (
    Param("l2", "float", 0.15, "ridge penalty on W and H (per rating with count_scaled)", lo=0.0, lo_open=True),
    _BIAS_L2, _COUNT_SCALED._replace(default=True), _BIASES._replace(default=True), _SOLVE._replace(default="cg"),
    _CG_STEPS, _CHUNK,
), "The als preset for explicit ratings (ALS-WR): biases on, count-scaled penalty, matrix-free CG solves.")
_register("hals", hals, (_L1, _L2, _INNER, _INNER_TOL),
          "Nonnegative factorization by HALS coordinate descent (scikit-learn's cd).")
_register("mu", mu, (
    Param("beta", "float", 2.0, "beta-divergence: 2 squared error, 1 Kullback-Leibler, 0 Itakura-Saito",
          choices=("frobenius", "kullback-leibler", "itakura-saito")),
    _L1, _L2,
    Param("eps", "float", None, "safeguard for zero denominators (default float32 eps)", lo=0.0, lo_open=True,
          hi=1.0, hi_open=True, none_ok=True),
    _INNER, _INNER_TOL,
), "Nonnegative factorization by multiplicative updates for a beta-divergence.")
_register("svd", svd, (
    Param("method", "str", "auto", "exact (dense), randomized, or auto", choices=("auto", "exact", "randomized")),
    Param("n_oversamples", "int", 10, "randomized: extra columns of the sketch", lo=0),
    Param("n_power_iter", "int", 4, "randomized: power iterations", lo=0),
), "Truncated SVD, computed once: the optimum of the unweighted squared error.")
_register("implicit_als", implicit_als, (
    Param("l2", "float", 1.0, "ridge penalty on W and H (sum units)", lo=0.0, lo_open=True),
    Param("alpha", "float", 2.0, "confidence slope: an observed value r has confidence 1 + alpha r", lo=0.0),
    _SOLVE._replace(default="cg"), _CG_STEPS, _CHUNK,
    Param("unobserved_weight", "float", 1.0, "weight of every unobserved entry (Rendle et al. 2021: alpha_0)", lo=0.0),
    Param("nu", "float", 0.0, "frequency-scaled penalty l2 (count + w0 n)^nu (Rendle et al. 2021; 0: plain ridge)",
          lo=0.0),
), "Confidence-weighted ALS for implicit feedback (Hu, Koren and Volinsky 2008; iALS of Rendle et al. 2021).")
_register("ratings_gradient", _ratings_gradient, (
    Param("optimizer", "str", "adam", "the Optax optimizer", choices=("adam", "sgd")),
    _LR,
    Param("l2", "float", 0.1, "ridge penalty on W and H (sum units)", lo=0.0),
    _BIAS_L2, _COUNT_SCALED, _BIASES._replace(default=True), _CHUNK,
), "Full-batch gradient steps for explicit ratings (biases, packed gradient passes).")
_register("svdpp", _svdpp, (
    Param("optimizer", "str", "adam", "the Optax optimizer", choices=("adam", "sgd")),
    _LR,
    Param("l2", "float", 10.0, "ridge penalty on the explicit user factors P and on H (sum units)", lo=0.0),
    _BIAS_L2,
    Param("implicit_l2", "float", 40.0, "ridge penalty on the implicit item factors Y (none: l2)", lo=0.0,
          none_ok=True),
    _BIASES._replace(default=True), _CHUNK,
), "SVD++ (Koren 2008): ratings_gradient's model plus implicit feedback from the items each user rated "
   "(defaults validated on MovieLens latest-small with --rank 40, 300 steps, tol none).")
_register("bpmf", bpmf, (
    Param("burn_in", "int", 20, "Gibbs sweeps discarded before samples are kept", lo=0),
    Param("thin", "int", 1, "keep every thin-th sweep after the burn-in", lo=1),
    Param("n_keep", "int", 32, "samples averaged for prediction (a ring buffer in the solver state)", lo=1),
    Param("beta0", "float", 2.0, "Normal-Wishart hyperprior strength of the mean", lo=0.0, lo_open=True),
    Param("a0", "float", 2.0, "Gamma prior shape of the noise precision", lo=0.0, lo_open=True),
    Param("b0", "float", 1.0, "Gamma prior rate of the noise precision", lo=0.0, lo_open=True),
), "Bayesian PMF by Gibbs sampling (Salakhutdinov and Mnih 2008), biases, no penalty to tune; run with tol=none.")


def _bpr(optimizer=None, learning_rate=0.01, l2=0.01, bias_l2=None, batch_size=1024, item_bias=True, resample=3,
         n_eval=1 << 14):
    optimizer = "adam" if optimizer is None else optimizer
    check_choice(optimizer, "optimizer", ("adam", "sgd", "adagrad"), "bpr")
    lr = _check_lr(learning_rate, "bpr")
    return _optax_cached(bpr, optimizer, lr, l2=l2, bias_l2=bias_l2, batch_size=batch_size, item_bias=item_bias,
                         resample=resample, n_eval=n_eval)


_register("bpr", _bpr, (
    Param("optimizer", "str", None, "the Optax optimizer of the minibatch updates (none: adam)",
          choices=("adam", "sgd", "adagrad"), none_ok=True),
    _LR,
    Param("l2", "float", 0.01, "per-triple ridge penalty on the user row and both item rows", lo=0.0),
    _BIAS_L2,
    Param("batch_size", "int", 1024, "triples per optimizer update (one step is an epoch)", lo=1),
    Param("item_bias", "bool", True, "fit an item bias (popularity)"),
    Param("resample", "int", 3, "redraws of a negative item that is a positive", lo=0),
    Param("n_eval", "int", 1 << 14, "triples in the fixed sample of the recorded loss", lo=1),
), "Bayesian personalized ranking (Rendle et al. 2009) for implicit feedback: sampled triples, Optax updates.")


def solver_names() -> list[str]:
    """The registered solver names."""
    return list(SOLVERS)


def solver_entry(name: str) -> SolverEntry:
    if not isinstance(name, str) or not name:
        raise TypeError(f"solver name must be a non-empty string, got {name!r}")
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; available: {', '.join(SOLVERS)}")
    return SOLVERS[name]


def _freeze(value):
    """Lists become tuples (hashable, so cached solver factories compile once)."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    return value


def _canonical(param: Param, value):
    """One spelling per value, so equal settings give one cached solver: a penalty pair ``(x, x)`` is ``x``."""
    if (param.type == "penalty" and isinstance(value, tuple) and len(value) == 2 and all(map(is_real, value))
            and value[0] == value[1]):
        return value[0]
    return value


def make_solver(name: str, **params):
    """Build solver ``name`` with hyperparameters ``params`` (the declared defaults fill in the rest).

    ``make_solver("adam", learning_rate=0.01)`` is ``jmf.solvers.adam(0.01)``.
    Unknown names and hyperparameters, and values the factory refuses, raise
    :class:`ValueError` naming the solver once.
    """
    entry = solver_entry(name)
    declared = [p.name for p in entry.params]
    unknown = [k for k in params if k not in declared]
    if unknown:
        raise ValueError(f"bad hyperparameters for solver {name!r}: unknown {', '.join(map(repr, unknown))} "
                         f"(accepted: {', '.join(declared)})")
    given = {k: _canonical(entry.param(k), _freeze(v)) for k, v in params.items()}
    kwargs = {**entry.defaults(), **given}
    try:
        return entry.build(**kwargs)
    except (TypeError, ValueError) as exc:
        # The factories name themselves ("als: l2 must be ..."); add the solver only where they did not.
        msg = str(exc)
        raise ValueError(msg if msg.startswith(f"{name}: ") else f"solver {name!r}: {msg}") from None


def parse_param(name: str, key: str, text: str):
    """Parse ``-p key=text`` for solver ``name`` by the declared type (ValueError: unknown key or bad value)."""
    entry = solver_entry(name)
    try:
        param = entry.param(key)
    except KeyError:
        raise ValueError(f"bad hyperparameters for solver {name!r}: unknown {key!r} "
                         f"(accepted: {', '.join(p.name for p in entry.params)})") from None
    try:
        return param.parse(text)
    except ValueError as exc:
        raise ValueError(f"-p {key}={text}: {exc}") from None


def describe_solvers() -> str:
    """Plain-text listing of every solver: signature with defaults, description, one line per hyperparameter."""
    lines = []
    for entry in SOLVERS.values():
        sig = ", ".join(f"{p.name}={p.default!r}" for p in entry.params)
        lines.append(f"  {entry.name}({sig})")
        lines.append(f"      {entry.doc}")
        width = max(len(p.name) for p in entry.params)
        kinds = [p.kind() for p in entry.params]
        kw = max(len(k) for k in kinds)
        for p, kind in zip(entry.params, kinds):
            lines.append(f"        {p.name:<{width}}  {kind:<{kw}}  {p.doc}")
    return "\n".join(lines)


# -- dataset kinds ----------------------------------------------------------------------------


def _low_rank(key, m: int = 200, n: int = 100, rank: int = 5, noise: float = 0.1):
    """``U V / sqrt(rank) + noise E``: entries of the clean part have unit variance, ``E ~ N(0, 1)``."""
    rng = numpy_rng(key)
    U, V = rng.standard_normal((m, rank)), rng.standard_normal((rank, n))
    A = U @ V / math.sqrt(rank) + noise * rng.standard_normal((m, n))
    return A, {"true_rank": rank, "noise": noise}


def _nonnegative(key, m: int = 200, n: int = 100, rank: int = 5, noise: float = 0.05):
    """``U V / rank + noise |E|`` with ``U, V`` uniform on [0, 1): a nonnegative rank-``rank`` matrix."""
    rng = numpy_rng(key)
    U, V = rng.random((m, rank)), rng.random((rank, n))
    A = U @ V / rank + noise * np.abs(rng.standard_normal((m, n)))
    return A, {"true_rank": rank, "noise": noise}


def _digits():
    """scikit-learn's 8x8 digits (1797 x 64), scaled to [0, 1]: a nonnegative real dataset."""
    from sklearn.datasets import load_digits

    return load_digits().data / 16.0, {}


def _image(name: str = "china.jpg", step: int = 1):
    """A grayscale sample photograph from scikit-learn (427 x 640 in [0, 1]; needs pillow), every ``step``-th pixel."""
    from sklearn.datasets import load_sample_image

    img = load_sample_image(name).astype(np.float64).mean(axis=2) / 255.0
    return img[::step, ::step], {}


def _file(path: str, format: str = "auto"):
    """A matrix file read with :func:`jmf.io.load_matrix`."""
    from .datasets.readers import load_matrix

    data, info = load_matrix(path, format=format)
    return data, {k: v for k, v in info.items() if k in ("kind", "shape", "nnz", "missing")}


def _ratings(key, **params):
    """Synthetic ratings from :func:`jmf.datasets.synthetic_ratings` (power-law activity, known truth)."""
    from .datasets.synthetic import synthetic_ratings  # loaded on use: datasets pull in pandas-free but heavy readers

    out = synthetic_ratings(key, **params)
    info = {k: params[k] for k in ("rank", "noise") if k in params}
    if "rank" in info:
        info["true_rank"] = info.pop("rank")
    return out.data, info


#: Built-in dataset kinds: name -> generator.  Generators taking a ``key``
#: argument receive ``jax.random.key(seed)``.  Extend with :func:`register_dataset`.
DATASETS: dict[str, Callable] = {
    "low_rank": _low_rank,
    "nonnegative": _nonnegative,
    "digits": _digits,
    "image": _image,
    "file": _file,
    "ratings": _ratings,
}


def register_dataset(kind: str, generator: Callable) -> None:
    """Add a dataset kind.

    ``generator(**params)`` (plus ``key`` if it takes one) returns an array, a Dense, a Sparse, or (that, info)."""
    if not callable(generator):
        raise TypeError(f"generator must be callable, got {type(generator).__name__}")
    DATASETS[kind] = generator
