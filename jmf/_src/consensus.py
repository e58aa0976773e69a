"""Across restarts: align components between restarts and score their stability.

Factorizations are identifiable only up to a permutation of the components
(and, for signed models, a sign flip of ``W[:, j]`` together with
``H[j, :]``).  :func:`align_restarts` matches every restart's components to
a reference restart (by default the one with the lowest loss) with the
Hungarian algorithm on the cosine similarity of the rows of ``H`` (or the
columns of ``W``), permutes them into the reference's order, and reports the
similarity of each matched pair.  The *stability* of a rank is the mean
matched similarity over components and non-reference restarts: 1 means
every restart found the same components (a consensus-NMF user's signal that
the rank is well supported).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .factors import Factors

__all__ = ["Alignment", "align_restarts", "match_components"]


class Alignment(NamedTuple):
    """Result of :func:`align_restarts`; leading axes are the result's non-restart axes.

    Attributes
    ----------
    factors : Factors
        Aligned factors, shape like the input's (restart axis kept).
    permutation : ndarray of int, (..., n_restarts, k)
        ``aligned[..., s, :, j] = original[..., s, :, permutation[..., s, j]]``.
    similarity : ndarray, (..., n_restarts, k)
        Cosine similarity of each aligned component with the reference's (NaN for padded components).
    reference : ndarray of int, (...)
        Index of the reference restart.
    stability : ndarray, (...)
        Mean similarity over components and non-reference restarts.
    """

    factors: Factors
    permutation: np.ndarray
    similarity: np.ndarray
    reference: np.ndarray
    stability: np.ndarray


def _unit(x, axis):
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.where(norm > 0, norm, 1)


def match_components(ref: np.ndarray, other: np.ndarray, signed: bool = False):
    """Hungarian matching of the rows of ``other`` (k, d) to the rows of ``ref`` (k, d).

    Returns ``(perm, similarity, signs)`` with ``other[perm[j]]`` matched to
    ``ref[j]``; with ``signed=True`` similarity is ``|cos|`` and ``signs``
    gives the flip that aligns each matched row.
    """
    from scipy.optimize import linear_sum_assignment  # imported lazily: scipy.optimize is slow to import

    cos = _unit(ref, 1) @ _unit(other, 1).T
    score = np.abs(cos) if signed else cos
    rows, cols = linear_sum_assignment(-score)
    perm = np.empty(len(rows), dtype=int)
    perm[rows] = cols
    matched = cos[np.arange(len(perm)), perm]
    signs = np.sign(matched) if signed else np.ones_like(matched)
    signs[signs == 0] = 1
    return perm, np.abs(matched) if signed else matched, signs


def align_restarts(result, on: str = "H", reference: "int | str" = "best", signed: "bool | None" = None) -> Alignment:
    """Align the components of every restart of a :class:`jmf.FitManyResult`.

    Parameters
    ----------
    result : FitManyResult
        From :func:`jmf.fit_many` with restarts (``keys`` or ``n_restarts``).
    on : {"H", "W"}
        Match on the rows of ``H`` (component profiles, the usual choice for
        consensus NMF) or on the columns of ``W``.
    reference : "best" or int
        Reference restart: the lowest final loss, or a fixed index.
    signed : bool, optional
        Allow sign flips (default: True when some factor entry is negative).

    Returns
    -------
    Alignment
    """
    if "restart" not in result.axes:
        raise ValueError("result has no restart axis: fit with keys=... or n_restarts=...")
    if on not in ("H", "W"):
        raise ValueError(f"on must be 'H' or 'W', got {on!r}")
    r_ax = result.axes.index("restart")
    W = np.moveaxis(np.asarray(result.factors.W), r_ax, -3)  # (..., S, m, k)
    H = np.moveaxis(np.asarray(result.factors.H), r_ax, -3)  # (..., S, k, n)
    loss = np.moveaxis(np.asarray(result.loss), r_ax, -1)  # (..., S)
    status = np.moveaxis(np.asarray(result.status), r_ax, -1)
    if signed is None:
        signed = bool((W < 0).any() or (H < 0).any())
    lead = loss.shape[:-1]
    S, k = H.shape[-3], H.shape[-2]
    rank_axis = result.axes.index("rank") if "rank" in result.axes else None
    W_al, H_al = W.copy(), H.copy()
    perms = np.tile(np.arange(k), lead + (S, 1))
    sims = np.full(lead + (S, k), np.nan)
    refs = np.zeros(lead, dtype=int)
    stab = np.full(lead, np.nan)
    for idx in np.ndindex(*lead):
        if isinstance(reference, str):
            if reference != "best":
                raise ValueError(f"reference must be 'best' or an int, got {reference!r}")
            score = np.where(status[idx] == 2, np.inf, loss[idx])  # 2 = DIVERGED
            ref = int(np.nanargmin(np.where(np.isnan(score), np.inf, score)))
        else:
            ref = int(reference)
            if not 0 <= ref < S:
                raise ValueError(f"reference {ref} is out of range for {S} restarts")
        refs[idx] = ref
        r = k
        if rank_axis is not None:
            r = int(result.ranks[idx[rank_axis]])
        vec = (lambda s: H[idx + (s,)][:r]) if on == "H" else (lambda s: W[idx + (s,)][:, :r].T)
        ref_vec = vec(ref)
        for s in range(S):
            perm, sim, signs = match_components(ref_vec, vec(s), signed=signed)
            full = np.concatenate([perm, np.arange(r, k)])
            perms[idx + (s,)] = full
            sims[idx + (s,)][:r] = sim
            W_al[idx + (s,)] = W[idx + (s,)][:, full]
            H_al[idx + (s,)] = H[idx + (s,)][full]
            W_al[idx + (s,)][:, :r] *= signs
            H_al[idx + (s,)][:r] *= signs[:, None]
        others = [s for s in range(S) if s != ref]
        stab[idx] = float(np.nanmean(sims[idx][others][:, :r])) if others else 1.0
    factors = result.factors._replace(W=np.moveaxis(W_al, -3, r_ax), H=np.moveaxis(H_al, -3, r_ax))
    return Alignment(factors, perms, sims, refs, stab)
