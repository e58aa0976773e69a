"""Test helpers for the classical solvers: a light compiled runner for ``Solver.step``.

:func:`jmf.fit` compiles the whole driver (vmapped while-loop with checks), which
is the right thing for users but costs several seconds per solver and data kind
on a busy 2-core machine.  Reference comparisons only need ``n`` steps and the
loss after each: :func:`run` jits one ``lax.scan`` over ``solver.step`` per
(solver, steps, shapes), shared by every test that uses the same combination.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jmf


@functools.lru_cache(maxsize=None)
def _runner(solver, n_steps):
    def run(f0, data, mask):
        state = solver.init(f0, data, jax.random.key(0))

        def body(carry, _):
            f, s = carry
            f, s = solver.step(f, s, data, mask)
            return (f, s), solver.loss.value(f, data)

        (f, _), hist = lax.scan(body, (f0, state), None, length=n_steps)
        return f, jnp.concatenate([solver.loss.value(f0, data)[None], hist])

    return jax.jit(run)


def run(solver, data, f0, n_steps, mask=None):
    """``n_steps`` steps of ``solver`` from ``f0``: ``(factors, loss history of length n_steps + 1)``."""
    if not isinstance(f0, jmf.Factors):
        f0 = jmf.Factors(*[jnp.asarray(x) for x in f0])
    f, hist = _runner(solver, n_steps)(f0, data, mask)
    return f, np.asarray(hist)
