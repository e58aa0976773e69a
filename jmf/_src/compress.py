"""Low-rank compression of matrices and images, and the PSNR of a reconstruction.

A matrix ``A`` of shape ``(m, n)`` stored as ``W`` (m x k) and ``H`` (k x n)
takes ``k (m + n)`` numbers instead of ``m n``.  An image ``(height, width,
channels)`` is compressed channel by channel: the channels form a stack of
matrices fitted in one :func:`jmf.fit_many` call.  The default solver is the
truncated SVD, the best rank-``k`` approximation in the Frobenius norm
(Eckart--Young); any other solver, e.g. :func:`jmf.solvers.hals` for
nonnegative parts, can be given instead.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

__all__ = ["Compressed", "compress", "psnr", "stored_size"]


def stored_size(shape, rank: int) -> int:
    """Numbers stored by rank-``rank`` factors of a matrix or image of ``shape``.

    ``rank (m + n)`` for a matrix ``(m, n)``; ``channels rank (m + n)`` for an
    image ``(m, n, channels)``.

    >>> stored_size((427, 640, 3), 20)
    64020
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be (m, n) or (m, n, channels), got {shape}")
    channels = shape[2] if len(shape) == 3 else 1
    return channels * int(rank) * (shape[0] + shape[1])


class Compressed(NamedTuple):
    """Result of :func:`compress`.

    Attributes
    ----------
    W : ndarray, (m, k) or (channels, m, k)
    H : ndarray, (k, n) or (channels, k, n)
    shape : tuple
        Shape of the original array.
    rank : int
    original_size : int
        Numbers in the original (``m n`` or ``m n channels``).
    stored_size : int
        Numbers in the factors (see :func:`stored_size`).
    ratio : float
        ``original_size / stored_size``: above 1 the factors are smaller.
    result : FitManyResult
        The fit (loss, status, number of iterations of each channel).
    """

    W: np.ndarray
    H: np.ndarray
    shape: tuple
    rank: int
    original_size: int
    stored_size: int
    ratio: float
    result: object = None

    def reconstruct(self, clip: Optional[tuple] = None) -> np.ndarray:
        """``W H`` in the original layout (``(m, n)`` or ``(m, n, channels)``), float.

        ``clip=(lo, hi)`` clips the values, e.g. ``(0, 255)`` for an 8-bit image.
        """
        Y = np.matmul(self.W, self.H)
        if Y.ndim == 3:
            Y = np.moveaxis(Y, 0, -1)
        if clip is not None:
            Y = np.clip(Y, clip[0], clip[1])
        return Y


def compress(A, rank: int, solver=None, *, key=0, max_iter: int = 200, tol: Optional[float] = 1e-4,
             dtype=np.float32, **fit_kwargs) -> Compressed:
    """Store ``A`` as rank-``rank`` factors; report their size and the compression ratio.

    Parameters
    ----------
    A : array, (m, n) or (m, n, channels)
        A matrix, or an image with channels last (each channel is factorized;
        all channels in one compiled :func:`jmf.fit_many` call).  Integer
        images (e.g. ``uint8``) are fitted in ``dtype``.
    rank : int
        Components per channel, ``1 <= rank <= min(m, n)``.
    solver : Solver, optional
        Default :func:`jmf.solvers.svd` (the optimal rank-``rank``
        approximation); e.g. :func:`jmf.solvers.hals` for nonnegative parts.
    key : jax.random.key or int, default 0
    max_iter, tol :
        As in :func:`jmf.fit` (the SVD solver converges in one step).
    dtype : default float32
    **fit_kwargs :
        Other arguments of :func:`jmf.fit_many` (``init``, ``progress``...).

    Returns
    -------
    Compressed
        ``W``, ``H`` (numpy), ``ratio``, ``stored_size`` and
        ``reconstruct()``.

    Examples
    --------
    >>> import numpy as np, jmf
    >>> A = np.outer(np.arange(1.0, 7.0), np.ones(4))        # a 6 x 4 matrix of rank 1
    >>> c = jmf.compress.compress(A, rank=1)
    >>> c.stored_size, c.original_size, round(c.ratio, 2)
    (10, 24, 2.4)
    >>> bool(np.allclose(c.reconstruct(), A, atol=1e-4))
    True
    """
    import jax

    from .data import Dense
    from .fit import fit_many
    from .solvers.svd import svd

    arr = np.asarray(A)
    if arr.ndim not in (2, 3):
        raise ValueError(f"A must be a matrix (m, n) or an image (m, n, channels), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"A is empty (shape {arr.shape})")
    stack = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    stack = np.ascontiguousarray(stack, dtype=dtype)
    m, n = stack.shape[1:]
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= min(m, n):
        raise ValueError(f"rank must be an int between 1 and min(m, n) = {min(m, n)}, got {rank!r}")
    solver = svd() if solver is None else solver
    fit_kwargs.setdefault("progress", False)
    res = fit_many(Dense(stack), solver, rank=int(rank), key=key, max_iter=max_iter, tol=tol, **fit_kwargs)
    W, H = (np.asarray(jax.device_get(x)) for x in (res.factors.W, res.factors.H))
    if arr.ndim == 2:
        W, H = W[0], H[0]
    size = stored_size(arr.shape, rank)
    return Compressed(W, H, tuple(arr.shape), int(rank), int(arr.size), size, arr.size / size, res)


def psnr(original, reconstruction, data_range: Optional[float] = None) -> float:
    """Peak signal-to-noise ratio in decibels: ``10 log10(data_range**2 / MSE)``.

    Parameters
    ----------
    original, reconstruction : arrays of the same shape
    data_range : float, optional
        The peak-to-peak range of the signal.  Default: the range of the
        original's integer dtype (255 for ``uint8``), or for float arrays
        ``original.max() - original.min()``.

    Returns
    -------
    float
        ``inf`` when the two arrays are equal.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    >>> round(psnr(a, a.astype(float) + 5.0), 2)       # MSE 25: 10 log10(255**2 / 25)
    34.15
    """
    x = np.asarray(original)
    y = np.asarray(reconstruction)
    if x.shape != y.shape:
        raise ValueError(f"original {x.shape} and reconstruction {y.shape} differ in shape")
    if data_range is None:
        if np.issubdtype(x.dtype, np.integer):
            info = np.iinfo(x.dtype)
            data_range = float(info.max) - (float(info.min) if info.min < 0 else 0.0)
        else:
            data_range = float(np.max(x) - np.min(x))
    data_range = float(data_range)
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range} (a constant original needs data_range=...)")
    mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range ** 2 / mse))
