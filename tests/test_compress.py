"""jmf.compress: sizes and ratios by hand, PSNR by hand, the SVD optimum, images channel by channel."""

import numpy as np
import pytest

import jmf
from jmf.compress import compress, psnr, stored_size


def test_stored_size_by_hand():
    assert stored_size((6, 4), 2) == 2 * (6 + 4)
    assert stored_size((427, 640, 3), 20) == 3 * 20 * (427 + 640) == 64020  # the photograph: 12.8x
    assert 427 * 640 * 3 / stored_size((427, 640, 3), 20) == pytest.approx(12.806, abs=1e-3)
    with pytest.raises(ValueError, match="shape"):
        stored_size((3,), 1)


def test_psnr_by_hand():
    a = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    b = a.astype(float) + np.array([[5.0, -5.0], [5.0, -5.0]])  # MSE 25
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / 25))
    x = np.array([0.0, 0.5, 1.0, 2.0])  # float: data range max - min = 2
    y = x + np.array([0.1, -0.1, 0.1, -0.1])  # MSE 0.01
    assert psnr(x, y) == pytest.approx(10 * np.log10(4 / 0.01))
    assert psnr(x, y, data_range=1.0) == pytest.approx(20.0)
    assert psnr(x, x) == float("inf")
    with pytest.raises(ValueError, match="shape"):
        psnr(x, x[:2])
    with pytest.raises(ValueError, match="data_range"):
        psnr(np.ones(3), np.zeros(3))


def test_compress_matrix_reaches_the_svd_optimum(rng):
    A = rng.standard_normal((30, 20))
    c = compress(A, rank=3)
    assert c.W.shape == (30, 3) and c.H.shape == (3, 20)
    assert (c.original_size, c.stored_size) == (600, 150) and c.ratio == pytest.approx(4.0)
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    best = (U[:, :3] * s[:3]) @ Vt[:3]
    np.testing.assert_allclose(c.reconstruct(), best, atol=1e-4)
    assert c.reconstruct(clip=(-0.25, 0.25)).max() <= 0.25


def test_compress_image_channel_by_channel(rng):
    img = (rng.random((12, 10, 3)) * 255).astype(np.uint8)
    c = compress(img, rank=2, solver=jmf.solvers.hals(), max_iter=50)
    assert c.W.shape == (3, 12, 2) and c.H.shape == (3, 2, 10)
    rec = c.reconstruct(clip=(0, 255))
    assert rec.shape == img.shape and rec.min() >= 0
    assert c.stored_size == 3 * 2 * 22 and c.ratio == pytest.approx(360 / 132)
    for ch in range(3):  # each channel is its own fit: same as compressing it alone
        alone = compress(img[..., ch], rank=2, solver=jmf.solvers.hals(), max_iter=50)
        np.testing.assert_allclose(rec[..., ch], np.clip(alone.reconstruct(), 0, 255), rtol=1e-3, atol=1e-2)
    assert psnr(img, rec) > 5


def test_compress_errors(rng):
    with pytest.raises(ValueError, match="rank"):
        compress(rng.random((4, 3)), rank=4)
    with pytest.raises(ValueError, match="matrix"):
        compress(rng.random(5), rank=1)
