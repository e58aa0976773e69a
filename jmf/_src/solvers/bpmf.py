r"""Bayesian probabilistic matrix factorization by Gibbs sampling (Salakhutdinov & Mnih 2008), with biases.

Model (``D = k + 1``: each user's factor row carries its bias, each item's its bias)::

    r_ij | x_i, y_j, alpha  ~  N(mu + b_i + c_j + u_i . v_j,  1 / (alpha w_ij))
    x_i = [u_i, b_i]  ~  N(mu_U, Lambda_U^-1),        y_j = [v_j, c_j]  ~  N(mu_V, Lambda_V^-1)
    (mu_U, Lambda_U), (mu_V, Lambda_V)  ~  Normal-Wishart(mu_0 = 0, beta_0 = 2, W_0 = I, nu_0 = D)
    alpha  ~  Gamma(a_0, b_0)

``mu`` is the observed mean (the model's offset, fixed).  There is no
penalty to tune: the prior precisions are sampled from the data.  One
``step`` is one sweep of the Gibbs sampler (Salakhutdinov & Mnih 2008,
section 3.3), in this order: the hyperparameters of both sides given the
factors (conjugate Normal-Wishart updates), every user row given the items
(an independent Gaussian per row, sampled through the Cholesky factor of its
precision ``Lambda_U + alpha sum_j w_ij f_j f_j^T`` with ``f_j = [v_j, 1]``),
every item row given the users, and the noise precision ``alpha`` given the
residuals (conjugate Gamma update; the paper fixes it at 2).  The row
samples run on the sparse engine (:mod:`._blocked`): memory
``O(nnz + (m + n) D)``, cost ``O(nnz D^2 + (m + n) D^3)`` per sweep.

Predictions are averaged over samples: after ``burn_in`` sweeps every
``thin``-th sample is kept in a ring buffer of ``n_keep`` slots in the solver
state, and :func:`posterior_mean` turns the buffer into one
:class:`jmf.Factors` whose predictions are exactly the average of the kept
samples' predictions: the sampled factors are concatenated,
``W = [U_1, ..., U_T] / sqrt(T)``, ``H = [V_1; ...; V_T] / sqrt(T)`` (width
``T k``), biases averaged.  Chains (``fit_many`` restarts) vmap as any other
member; :func:`posterior_mean` of a batch averages all chains as well.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._validation import check_int, check_positive_float
from ..data import Sparse
from ..factors import Factors
from ..init import _GOLDEN, _grid, _mix32, _seed_words
from ..losses.ratings import ratings_loss
from ._blocked import SparseLayout, packed_rows, per_segment, sparse_layout
from ._normal import UNROLLED_MAX, cholesky_loop, packed_spd_draw, spd_draw, triangular_solve_loop
from .base import Solver, cached_factory, unsharded_total

__all__ = ["bpmf", "BPMFState", "posterior_mean", "member_means"]


class BPMFState(NamedTuple):
    """State of the Gibbs sampler.

    Attributes
    ----------
    layout : SparseLayout
    key : uint32 array (2,)
        Key data of the chain: sweep ``t`` draws from a hash of ``(key, t)``.
    alpha : ()
        Observation precision of the last sweep.
    mu_u, lam_u, mu_v, lam_v : (D,), (D, D)
        Normal-Wishart hyperparameters of the last sweep (``D = k + 1``).
    sweeps : int32 ()
        Sweeps done.
    kept : int32 ()
        Samples written to the buffers so far (slot ``kept % n_keep`` is next).
    W_buf, H_buf : (n_keep, m, D), (n_keep, n, D)
        Kept samples ``[U, b]`` and ``[V, c]`` (rows of the item side).
    """

    layout: SparseLayout
    key: jax.Array
    alpha: jax.Array
    mu_u: jax.Array
    lam_u: jax.Array
    mu_v: jax.Array
    lam_v: jax.Array
    sweeps: jax.Array
    kept: jax.Array
    W_buf: jax.Array
    H_buf: jax.Array


# Proposals per Gamma draw: Marsaglia-Tsang accepts each with probability >= 0.95 for shape >= 1, so all
# of them are rejected with probability < 0.05**8 ~ 4e-11.
_GAMMA_PROPOSALS = 8

# Every draw of a sweep comes from the counter-based hash of jmf.init (``_grid``) seeded by (chain key, sweep),
# one stream per draw.  Threefry (``jax.random``) compiled to large code for each of the sweep's ~20 small
# draws, a third of the sampler's compile time (BENCHMARKS.md, 2026-12-01).
_NOISE = 0  # row noise of side s: stream s
_HYPER = (10, 20)  # side s: Wishart normals +0, mean normals +1, its Gamma draw +2 ... +4
_ALPHA = 40  # the noise precision's Gamma draw: +0 ... +2


def _draws(seed, stream: int, shape, kind: str, dtype):
    """``shape`` i.i.d. standard normals or uniforms in (0, 1) of one stream of the sweep's seed."""
    size = int(np.prod(shape, dtype=np.int64))
    return _grid(seed, stream, 1, max(size, 1), kind, dtype)[0, :size].reshape(shape)


def _gamma(seed, stream: int, a, dtype):
    """``Gamma(a, 1)`` draws (elementwise in ``a``) by Marsaglia & Tsang (2000), without a loop.

    ``jax.random.gamma`` samples with a rejection ``while_loop`` per element,
    which made the sampler's program take tens of seconds to compile (every
    sweep draws three Gamma vectors).  Here a fixed batch of proposals is
    drawn and the first accepted one taken; shapes below 1 are boosted
    (``Gamma(a) = Gamma(a + 1) U^(1/a)``).  In the ~4e-11 event that every
    proposal is rejected, the first proposal's transformed value (the
    Wilson-Hilferty approximation) is used.  Streams ``stream`` to
    ``stream + 2`` of ``seed`` are used.
    """
    a = jnp.asarray(a, dtype)
    boost = a < 1
    d = jnp.where(boost, a + 1, a) - 1 / 3
    c = 1 / jnp.sqrt(9 * d)
    tiny = jnp.finfo(dtype).tiny
    x = _draws(seed, stream, (_GAMMA_PROPOSALS,) + a.shape, "normal", dtype)
    u = _draws(seed, stream + 1, (_GAMMA_PROPOSALS,) + a.shape, "uniform", dtype)
    c1, d1 = c[None], d[None]  # against the (proposals,) + a.shape draws
    v = (1 + c1 * x) ** 3
    positive = v > 0
    ok = positive & (jnp.log(u) < 0.5 * x * x + d1 - d1 * v + d1 * jnp.log(jnp.where(positive, v, 1)))
    first = jnp.argmax(ok, axis=0)
    accepted = jnp.take_along_axis(v, first[None], axis=0)[0]
    g = d * jnp.where(jnp.any(ok, axis=0), accepted, jnp.maximum(v[0], tiny))
    ub = _draws(seed, stream + 2, a.shape, "uniform", dtype)
    return jnp.where(boost, g * ub ** (1 / jnp.where(boost, a, 1)), g)


def _sample_wishart(seed, stream: int, V_inv, nu, dtype):
    """A draw of ``Wishart(V, nu)`` (scale ``V``, given by its inverse) by the Bartlett decomposition.

    ``A A^T ~ Wishart(I, nu)`` with ``A`` lower triangular,
    ``A_ii = sqrt(chi2(nu - i))``, ``A_ij ~ N(0, 1)`` below the diagonal, and
    ``M A A^T M^T ~ Wishart(M M^T, nu)`` for any ``M``: here ``M = C^-T``
    with ``V^-1 = C C^T``, so ``V`` is never formed (no inverse, no custom call).
    Streams ``stream`` (normals) and ``stream + 2`` to ``stream + 4`` (the chi-square draws).
    """
    D = V_inv.shape[-1]
    C = cholesky_loop(V_inv)
    chi2 = 2 * _gamma(seed, stream + 2, (nu - jnp.arange(D, dtype=dtype)) / 2, dtype)
    A = jnp.tril(_draws(seed, stream, (D, D), "normal", dtype), -1) + jnp.diag(jnp.sqrt(chi2))
    MA = triangular_solve_loop(C, A, transpose=True)
    return MA @ MA.T


def _sample_hyper(seed, stream: int, X, live, mask, beta0, dtype, total=unsharded_total):
    """Normal-Wishart posterior draw ``(mu, Lambda)`` given the rows ``X`` (S, D) with ``live`` (S,) 0/1.

    Prior ``mu_0 = 0``, ``W_0 = I``, ``nu_0 = D`` (Salakhutdinov & Mnih 2008, eq. 14).  Inactive
    columns (``mask`` 0) come out with unit precision and zero mean, uncoupled from the others.
    Streams ``stream`` to ``stream + 4`` of ``seed``.  ``total`` sums over the row blocks of a
    sharded fit (``psum``; every device then draws the same values).
    """
    D = X.shape[1]
    Xl = X * live[:, None]
    counts = total(jnp.concatenate([jnp.sum(Xl, axis=0), jnp.sum(live)[None]]))
    N = jnp.maximum(counts[D], 1)
    xbar = counts[:D] / N
    Xc = (X - xbar[None, :]) * live[:, None]
    S = total(Xc.T @ Xc)  # N * S_bar, centred first: float32 sums of squares would lose the spread
    bn = beta0 + N
    V_inv = jnp.eye(D, dtype=dtype) + S + (beta0 * N / bn) * jnp.outer(xbar, xbar)
    lam = _sample_wishart(seed, stream, V_inv, D + N, dtype)
    mm = jnp.outer(mask, mask)
    lam = lam * mm + jnp.diag(1 - mask)
    mu0 = N * xbar / bn
    Lc = cholesky_loop(bn * lam)
    z = _draws(seed, stream + 1, (D,), "normal", dtype) * mask
    mu = mu0 + triangular_solve_loop(Lc, z[:, None], transpose=True)[:, 0]
    return mu * mask, lam


# Short segments (at most this many entries) gather precomputed Khatri-Rao squares; longer ones use GEMMs.
_KR_MAX = 32


def _sample(P, b, z):
    """``P^-1 b + L^-T z`` with ``P = L L^T`` (S, D, D), ``b``, ``z`` (S, D) by LAPACK; ``z = None``: ``P^-1 b``.

    ``L^-T z`` with ``z ~ N(0, I)`` has covariance ``P^-1``.  Used for ``D > UNROLLED_MAX`` (rank 16 and
    up), where LAPACK is the faster.  Narrower systems take :func:`._normal.packed_spd_draw`, which has no
    custom call, so the sampler's members can run on several CPU devices of one process at once.
    """
    L = lax.linalg.cholesky(P, symmetrize_input=True)
    y = lax.linalg.triangular_solve(L, b[..., :, None], left_side=True, lower=True)
    if z is not None:
        y = y + z[..., :, None]
    return lax.linalg.triangular_solve(L, y, left_side=True, lower=True, transpose_a=True)[..., 0]


def _rows(data: Sparse, side, X, F, shift, other_idx, alpha, mu, lam, mask, noise, n_other, lapack: bool = True):
    """New rows ``(S, D)`` of one side and the weighted squared residual of the data at them.

    Gaussian draws (``noise`` (D, S) standard normal) or conditional means
    (``noise=None``).  The Gram blocks, right-hand sides and ``sum w t^2``
    of every row come from one packed pass over the entries; all rows are
    then factored at once.  The residual ``sum_ij w_ij (t_ij - f_j . x_i)^2``
    follows from those sums, ``sum w t^2 - 2 x . R + x^T G x``, without
    another pass.  ``lapack=False`` keeps systems wider than ``UNROLLED_MAX`` off LAPACK too (a sharded
    fit whose mesh holds several CPU devices of this process: their custom calls could block each other).
    """
    dtype = F.dtype
    p, D = F.shape
    S = X.shape[0]
    feats = jnp.concatenate([F, jnp.zeros((1, D), dtype)], axis=0)  # row p: padded slots gather zeros
    sh = jnp.concatenate([shift, jnp.zeros((1,), dtype)])
    w_all = data.effective_weights()
    # Gram blocks are symmetric: their upper triangles (Q = D (D + 1) / 2 entries) are summed, which halves the
    # bytes of the gathered Khatri-Rao squares, the item side's largest stream.
    iu, ju = np.triu_indices(D)
    Q = iu.size
    full = np.zeros((D, D), np.int32)
    full[iu, ju] = full[ju, iu] = np.arange(Q)
    kr = feats[:, iu] * feats[:, ju]  # (p + 1, Q)

    def chunk_fn(ent, valid, tile_local, seg, x0):
        o = jnp.where(valid, other_idx[ent], p)
        w = jnp.where(valid, w_all[ent], 0).astype(dtype)
        t = data.vals[ent].astype(dtype) - sh[o]
        Y = feats[o]
        # Short segments: a weighted sum of the other side's gathered Khatri-Rao squares f f^T, where a
        # batch of tiny (L x D)^T (L x D) matrix products would run one small GEMM per segment (3x
        # slower on the item side of ml-latest-small); long segments: those GEMMs.
        if Y.shape[1] <= _KR_MAX:
            G = jnp.einsum("vl,vlq->vq", w, kr[o])
        else:
            G = jnp.einsum("vlk,vlj->vkj", Y * w[..., None], Y, preferred_element_type=dtype)[:, iu, ju]
        R = jnp.sum(Y * (w * t)[..., None], axis=1)
        T = jnp.sum(w * t * t, axis=1, keepdims=True)
        return per_segment(jnp.concatenate([G, R, T], axis=1), tile_local, seg.shape[0])  # tiles into rows

    GR = packed_rows(side, jnp.zeros((S, Q + D + 1), dtype), chunk_fn, data.nnz, n_other)
    R = GR[:, Q: Q + D]
    if D <= UNROLLED_MAX:
        # Factored batch-last from the packed triangles: no (S, D, D) blocks are unpacked and transposed.
        GRt = GR.T
        bt = alpha * GRt[Q: Q + D] + (lam @ mu)[:, None]
        x = packed_spd_draw(GRt[:Q], alpha, lam, bt, noise).T
    else:
        G = GR[:, full.reshape(-1)].reshape(S, D, D)
        draw = _sample if lapack else spd_draw
        x = draw(alpha * G + lam[None], alpha * R + (lam @ mu)[None], None if noise is None else noise.T)
    x = x * mask[None, :]
    twice = np.where(iu == ju, 1, 2).astype(dtype)  # x^T G x from the triangle: off-diagonal entries count twice
    quad = jnp.sum(GR[:, :Q] * (x[:, iu] * x[:, ju]) * twice[None])
    sse = jnp.sum(GR[:, -1]) - 2 * jnp.sum(x * R) + quad
    return x, sse


class GibbsSettings(NamedTuple):
    """The sampler's constants (see :func:`bpmf`)."""

    burn_in: int
    thin: int
    n_keep: int
    beta0: float
    a0: float
    b0: float


def sample_rows(f: Factors):
    """``([U, b], [V, c])``: the sampled rows of both sides, each factor row with its bias."""
    return (jnp.concatenate([f.W, f.row_bias[:, None]], axis=1),
            jnp.concatenate([f.H.T, f.col_bias[:, None]], axis=1))


def gibbs_sweep(f: Factors, st: BPMFState, side_rows, live, n_obs, mk, cfg: GibbsSettings, total=unsharded_total):
    """One sweep of the sampler: hyperparameters, user rows, item rows, noise precision, sample buffers.

    ``side_rows(f, side, seed, alpha, mu, lam) -> (f, sse)`` draws every row
    of one side (0: users, 1: items) and returns the factors with them and
    the weighted squared residual of its entries; ``live`` is ``(users,
    items)`` 0/1 (rows with observations) and ``n_obs`` the observed
    weight.  ``total`` sums over the blocks of a sharded fit; the single-device
    solver and the sharded one (:mod:`jmf._src.sharded.solvers`) run this
    same sweep.
    """
    dtype = f.W.dtype
    # One seed per (chain, sweep) for every draw of the sweep (see _draws): the hash is also 10x cheaper
    # to run than threefry for the (m + n) D normals of the rows, which were a sixth of a sweep's time.
    seed = _mix32(_seed_words(st.key) ^ (st.sweeps.astype(jnp.uint32) * jnp.uint32(_GOLDEN)))
    X, Y = sample_rows(f)
    mu_u, lam_u = _sample_hyper(seed, _HYPER[0], X, live[0], mk, cfg.beta0, dtype, total)
    mu_v, lam_v = _sample_hyper(seed, _HYPER[1], Y, live[1], mk, cfg.beta0, dtype, total)
    f, _ = side_rows(f, 0, seed, st.alpha, mu_u, lam_u)
    f, sse = side_rows(f, 1, seed, st.alpha, mu_v, lam_v)  # residuals of the new sample
    sse = jnp.maximum(total(sse), 0)
    alpha = _gamma(seed, _ALPHA, cfg.a0 + n_obs / 2, dtype) / (cfg.b0 + sse / 2)
    sweeps = st.sweeps + 1
    take = (sweeps > cfg.burn_in) & ((sweeps - cfg.burn_in) % cfg.thin == 0)
    slot = st.kept % cfg.n_keep
    X, Y = sample_rows(f)
    W_buf = st.W_buf.at[slot].set(jnp.where(take, X, st.W_buf[slot]))
    H_buf = st.H_buf.at[slot].set(jnp.where(take, Y, st.H_buf[slot]))
    st = st._replace(alpha=alpha, mu_u=mu_u, lam_u=lam_u, mu_v=mu_v, lam_v=lam_v,
                     sweeps=sweeps, kept=st.kept + take.astype(jnp.int32), W_buf=W_buf, H_buf=H_buf)
    return f, st


@cached_factory
def bpmf(burn_in: int = 20, thin: int = 1, n_keep: int = 32, beta0: float = 2.0, a0: float = 2.0,
         b0: float = 1.0) -> Solver:
    r"""Bayesian probabilistic matrix factorization with biases, by Gibbs sampling (Salakhutdinov & Mnih 2008).

    See the module docstring for the model.  Run it for a fixed number of
    sweeps (``tol=None``: the sampled loss fluctuates), e.g.
    ``jmf.fit(train, bpmf(), rank=10, key=0, max_iter=100, tol=None)``,
    then predict with :func:`posterior_mean` of the result (the average over
    the kept samples); ``result.factors`` is the last sample alone.

    Parameters
    ----------
    burn_in : int, default 20
        Sweeps discarded before samples are kept.
    thin : int, default 1
        Keep every ``thin``-th sweep after the burn-in.
    n_keep : int, default 32
        Slots of the sample buffer (the last ``n_keep`` kept samples are
        averaged); memory ``n_keep (m + n) (k + 1)`` floats per chain.
    beta0 : float > 0, default 2
        Normal-Wishart prior strength of the hyperprior's mean.
    a0, b0 : float > 0, default 2, 1
        Gamma prior (shape, rate) of the observation precision ``alpha``.

    Returns
    -------
    Solver
        Biased model on :class:`jmf.Sparse` ratings; ``loss`` is the mean
        squared training error of the current sample (no penalty).
        ``update_w`` replaces each row by its conditional posterior mean
        (not a draw) given the items and the current hyperparameters: the
        fold-in of new users.

    Notes
    -----
    Cost per sweep ``O(nnz (k+1)^2 + (m + n) (k+1)^3)`` plus one pass over
    the entries for the residuals.  ``jmf.fit(..., mesh=jmf.sharding.model_mesh())``
    runs the same chain with the rows split over devices; :func:`posterior_mean`
    of that result is sharded like its factors.  Rank-masked members keep their inactive
    columns at zero (unit prior precision, no data, no noise there).
    """
    who = "bpmf"
    burn_in = check_int(burn_in, "burn_in", who, lo=0)
    thin = check_int(thin, "thin", who)
    n_keep = check_int(n_keep, "n_keep", who)
    beta0 = check_positive_float(beta0, "beta0", who)
    a0 = check_positive_float(a0, "a0", who)
    b0 = check_positive_float(b0, "b0", who)
    loss = ratings_loss(0.0, 0.0)
    settings = GibbsSettings(burn_in, thin, n_keep, beta0, a0, b0)

    def _mask(f: Factors, mask):
        k = f.W.shape[1]
        dtype = f.W.dtype
        mk = jnp.ones((k,), dtype) if mask is None else mask.astype(dtype)
        return jnp.concatenate([mk, jnp.ones((1,), dtype)])

    def init(f: Factors, data, key=None):
        dtype = f.W.dtype
        m, n = data.shape
        D = f.W.shape[1] + 1
        key = jax.random.key(0) if key is None else key
        eye = jnp.eye(D, dtype=dtype)
        zero = jnp.zeros((D,), dtype)
        return BPMFState(sparse_layout(data), jax.random.key_data(key), jnp.asarray(a0 / b0, dtype), zero, eye, zero,
                         eye, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), jnp.zeros((n_keep, m, D), dtype),
                         jnp.zeros((n_keep, n, D), dtype))

    def _side(f, st: BPMFState, data, mk, side, seed, alpha, mu, lam, sample):
        X, Y = sample_rows(f)
        m, n = data.shape
        if side == 0:
            own, other, shift_b, lay, other_idx, n_other = X, Y, f.col_bias, st.layout.rows, data.cols, n
        else:
            own, other, shift_b, lay, other_idx, n_other = Y, X, f.row_bias, st.layout.cols, data.rows, m
        F = jnp.concatenate([other[:, :-1], jnp.ones((other.shape[0], 1), other.dtype)], axis=1) * mk[None, :]
        shift = shift_b + f.offset
        noise = (_grid(seed, _NOISE + side, own.shape[1], own.shape[0], "normal", own.dtype) * mk[:, None]
                 if sample else None)
        new, sse = _rows(data, lay, own, F, shift, other_idx, alpha, mu, lam, mk, noise, n_other)
        if side == 0:
            return f._replace(W=new[:, :-1], row_bias=new[:, -1]), sse
        return f._replace(H=new[:, :-1].T, col_bias=new[:, -1]), sse

    def step(f: Factors, st: BPMFState, data, mask=None):
        dtype = f.W.dtype
        live = ((st.layout.row_weight > 0).astype(dtype), (st.layout.col_weight > 0).astype(dtype))

        def side_rows(f, side, seed, alpha, mu, lam):
            return _side(f, st, data, mk, side, seed, alpha, mu, lam, True)

        mk = _mask(f, mask)
        return gibbs_sweep(f, st, side_rows, live, data.n_observed().astype(dtype), mk, settings)

    def update_w(f: Factors, st: BPMFState, data, mask=None):
        mk = _mask(f, mask)
        return _side(f, st, data, mk, 0, None, st.alpha, st.mu_u, st.lam_u, False)[0], st

    return Solver(init=init, step=step, loss=loss, name="bpmf", biases=True, data_kinds=("sparse",),
                  update_w=update_w, spec=settings)


def member_means(factors: Factors, state: BPMFState) -> Factors:
    """Posterior-mean factors of every member of a batch: leading member axes kept, width ``n_keep k``.

    The batched form of :func:`posterior_mean` (one chain per member);
    members that kept no sample yet get their last sample (zero-padded to
    the same width).
    """
    T = state.W_buf.shape[-3]
    kept = jnp.minimum(state.kept, T)
    valid = (jnp.broadcast_to(jnp.arange(T, dtype=kept.dtype), kept.shape + (T,)) < kept[..., None]).astype(
        state.W_buf.dtype)  # (..., T)
    none = kept == 0
    w = jnp.where(none[..., None], 0, valid / jnp.maximum(kept, 1)[..., None].astype(valid.dtype))
    s = jnp.sqrt(w)
    k = state.W_buf.shape[-1] - 1
    m, n = state.W_buf.shape[-2], state.H_buf.shape[-2]
    lead = kept.shape
    Wc = state.W_buf[..., :k] * s[..., None, None]  # (..., T, m, k)
    Hc = state.H_buf[..., :k] * s[..., None, None]
    Wc = jnp.moveaxis(Wc, -3, -2).reshape(lead + (m, T * k))
    Hc = jnp.swapaxes(Hc, -1, -2).reshape(lead + (T * k, n))  # (..., T, k, n)
    pad = T * k - factors.W.shape[-1]
    last_W = jnp.concatenate([factors.W, jnp.zeros(lead + (m, pad), Wc.dtype)], axis=-1)
    last_H = jnp.concatenate([factors.H, jnp.zeros(lead + (pad, n), Hc.dtype)], axis=-2)
    nz = none[..., None, None]
    rb = jnp.einsum("...t,...tm->...m", w, state.W_buf[..., k])
    cb = jnp.einsum("...t,...tn->...n", w, state.H_buf[..., k])
    return Factors(jnp.where(nz, last_W, Wc), jnp.where(nz, last_H, Hc),
                   jnp.where(none[..., None], factors.row_bias, rb), jnp.where(none[..., None], factors.col_bias, cb),
                   factors.offset)


def posterior_mean(result, state=None) -> Factors:
    """Factors whose predictions are the average of the kept Gibbs samples (of every chain).

    Parameters
    ----------
    result : FitResult or FitManyResult
        A fit with :func:`bpmf`; for a batch, all members (chains) are
        averaged together (give ``result.member(...)`` for one chain).
    state : BPMFState, optional
        Instead of ``result.state``.

    Returns
    -------
    Factors
        ``W (m, C T k)``, ``H (C T k, n)`` (``C`` chains, ``T = n_keep`` slots
        each, kept samples scaled by ``1 / sqrt(C T_kept)``, empty slots 0),
        averaged biases and the offset:
        ``predict`` gives the posterior mean prediction
        ``mu + mean_s (b_i^s + c_j^s + u_i^s . v_j^s)``.  Before any sample
        is kept (fewer sweeps than ``burn_in``), the last sample.
    """
    result = getattr(result, "result", result)  # a FitManyResult holds its FitResult
    st = result.state if state is None else state
    if not isinstance(st, BPMFState):
        raise TypeError("posterior_mean needs the result of a jmf.solvers.bpmf fit (its state holds the samples)")
    mm = member_means(result.factors, st)
    lead = st.kept.shape
    if not lead:
        return mm
    C = int(np.prod(lead))
    m, w = mm.W.shape[-2:]
    n = mm.H.shape[-1]
    s = 1 / np.sqrt(C)
    W = jnp.moveaxis(mm.W.reshape(C, m, w), 0, 1).reshape(m, C * w) * s
    H = mm.H.reshape(C * w, n) * s
    return Factors(W, H, jnp.mean(mm.row_bias.reshape(C, m), axis=0), jnp.mean(mm.col_bias.reshape(C, n), axis=0),
                   jnp.ravel(mm.offset)[0])
