"""Figures: files written (PNG and SVG), non-empty, axes labelled, scales and reference lines as documented."""

import os

import numpy as np
import pandas as pd
import pytest

import jmf.plotting as P


def _fake_results():
    """A results table shaped like jmf.experiments.load_results (no fitting needed)."""
    rows = []
    rng = np.random.default_rng(0)
    for solver, rate in (("adam", 0.05), ("als", 0.5)):
        for rank in (1, 2, 3):
            for restart in range(3):
                its = list(range(0, 101, 10))
                floor = 0.5 / rank
                loss = [floor + np.exp(-rate * i) * (1 + 0.1 * restart) for i in its]
                rows.append(dict(dataset="toy", solver=solver, rank=rank, restart=restart, loss=loss[-1],
                                 rel_error=np.sqrt(loss[-1]) + 0.01 * rng.random(), svd_rel_error=np.sqrt(floor),
                                 svd_loss=floor, test_rmse=1 + 0.1 * abs(rank - 2), n_iter=100, status="CONVERGED",
                                 seconds=0.01 if solver == "adam" else 0.002, seconds_per_iter=1e-4,
                                 compile_seconds=1.5, history_iterations=its, history_loss=loss,
                                 dataset_info={"true_rank": 2}))
    return pd.DataFrame(rows)


def _labels(fig):
    ax = fig.axes[0]
    return ax.get_xlabel(), ax.get_ylabel(), ax.get_title()


@pytest.mark.parametrize("make, logy", [
    (lambda df: P.loss_curves(df, rank=2), True),
    (lambda df: P.loss_curves(df, x="seconds", rank=2), True),
    (lambda df: P.error_vs_rank(df), False),
    (lambda df: P.error_vs_rank(df, metric="test_rmse"), False),
    (lambda df: P.accuracy_vs_time(df), True),
    (lambda df: P.accuracy_vs_time(df, metric="test_rmse"), False),
    (lambda df: P.timing(df), True),
])
def test_figures_are_saved_and_labelled(tmp_path, make, logy):
    fig = make(_fake_results())
    xl, yl, title = _labels(fig)
    assert xl and yl and title
    assert (fig.axes[0].get_yscale() == "log") == logy
    assert fig.axes[0].get_legend() is not None
    paths = P.save(fig, tmp_path / "sub" / "fig")
    assert [os.path.basename(p) for p in paths] == ["fig.png", "fig.svg"]
    png, svg = (open(p, "rb").read() for p in paths)
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert b"<svg" in svg[:2000]
    assert sorted(os.listdir(tmp_path / "sub")) == ["fig.png", "fig.svg"]  # no temporary files left


def test_reference_lines_and_content():
    df = _fake_results()
    fig = P.loss_curves(df, rank=2)
    ax = fig.axes[0]
    # 2 solvers x 3 restarts, plus the SVD optimum at the floor.
    assert len(ax.lines) == 7
    svd = [ln for ln in ax.lines if ln.get_label() == "SVD optimum"]
    assert len(svd) == 1 and svd[0].get_ydata()[0] == pytest.approx(0.25)
    assert "wall time" in P.loss_curves(df, x="seconds").axes[0].get_xlabel()
    ax = P.error_vs_rank(df).axes[0]
    labels = [ln.get_label() for ln in ax.lines]
    assert "SVD optimum (Eckart–Young)" in labels and "true rank 2" in labels
    med = [ln for ln in ax.lines if ln.get_label() == "adam (median)"][0]
    np.testing.assert_allclose(med.get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(med.get_ydata(), df[df.solver == "adam"].groupby("rank")["rel_error"].median())
    assert P.overview(df, rank=2).axes.__len__() == 4


def test_plot_errors():
    df = _fake_results()
    with pytest.raises(ValueError, match="empty"):
        P.loss_curves(df.iloc[:0])
    two = pd.concat([df, df.assign(dataset="other")])
    with pytest.raises(ValueError, match="several datasets"):
        P.error_vs_rank(two)
    with pytest.raises(ValueError, match="metric 'test_mae'"):
        P.error_vs_rank(df, metric="test_mae")
    with pytest.raises(ValueError, match="x must be"):
        P.loss_curves(df, x="epochs")


# -- figures of fit results and images ---------------------------------------------------


@pytest.fixture(scope="module")
def fits():
    import jax

    import jmf

    A = np.random.default_rng(0).random((20, 12))
    one = jmf.fit(A, jmf.solvers.als(), rank=3, key=0, max_iter=60, tol=1e-2, progress=False)
    many = jmf.fit_many(A, jmf.solvers.adam(0.05), ranks=[2, 3], n_restarts=3, key=jax.random.key(1),
                        max_iter=80, tol=1e-3, progress=False)
    return one, many


def test_plot_loss_single_drops_the_nan_tail(fits):
    one, _ = fits
    fig = P.plot_loss(one, label="als")
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and len(ax.lines) == 1 and ax.get_yscale() == "log"
    hist = np.asarray(one.loss_history)
    n = int(np.isfinite(hist).sum())
    assert n < hist.size  # converged before max_iter: a NaN tail exists ...
    np.testing.assert_allclose(ax.lines[0].get_ydata(), hist[:n])  # ... and is not drawn
    np.testing.assert_allclose(ax.lines[0].get_xdata(), np.asarray(one.iterations)[:n])
    assert ax.get_legend().get_texts()[0].get_text() == "als"


def test_plot_loss_many_members_lines_and_band(fits):
    _, many = fits
    fig = P.plot_loss(many, style="lines")
    assert len(fig.axes[0].lines) == 6  # 2 ranks x 3 restarts
    names = [f"rank {r} restart {s}" for r in (2, 3) for s in range(3)]
    fig = P.plot_loss(many, style="lines", labels=names)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == names
    with pytest.raises(ValueError, match="labels"):
        P.plot_loss(many, labels=["one"])
    fig = P.plot_loss(many, style="band", label="adam", logy=False)
    ax = fig.axes[0]
    assert len(ax.lines) == 1 and len(ax.collections) == 1 and ax.get_yscale() == "linear"
    hist = np.asarray(many.loss_history).reshape(6, -1)
    assert ax.lines[0].get_ydata()[0] == pytest.approx(np.median(hist[:, 0]))
    fig2 = P.plot_loss(many.best(), ax=ax)  # overlay into existing axes
    assert fig2 is fig and len(ax.lines) == 3
    with pytest.raises(ValueError, match="style"):
        P.plot_loss(many, style="dots")
    with pytest.raises(TypeError, match="FitResult"):
        P.plot_loss(np.zeros(3))


def test_plot_components_grid():
    H = np.random.default_rng(0).random((5, 64))
    fig = P.plot_components(H, (8, 8))
    assert len(fig.axes) == 5
    np.testing.assert_allclose(fig.axes[2].images[0].get_array(), H[2].reshape(8, 8))
    fig = P.plot_components(H.T, (8, 8), n_cols=5, titles=False)  # W: components as columns
    assert len(fig.axes) == 5 and fig.axes[0].get_title() == ""
    with pytest.raises(ValueError, match="prod"):
        P.plot_components(H, (7, 7))


def test_plot_reconstructions_titles_psnr(tmp_path):
    from jmf.compress import psnr

    rng = np.random.default_rng(0)
    img = (rng.random((16, 24, 3)) * 255).astype(np.uint8)
    recs = {"rank 1": img * 0.9, "rank 5": img.astype(float) + 1.0}
    fig = P.plot_reconstructions(img, recs)
    assert len(fig.axes) == 3
    assert fig.axes[0].get_title() == "original"
    assert fig.axes[2].get_title() == f"rank 5\nPSNR {psnr(img, recs['rank 5']):.1f} dB"
    gray = P.plot_reconstructions(img[..., 0] / 255, {"a": img[..., 0] / 255}, show_psnr=False, n_cols=1)
    assert len(gray.axes) == 2 and gray.axes[1].get_title() == "a"
    (path,) = P.save(fig, tmp_path / "rec", formats=("png",), png_colors=64)  # palette PNG (pillow)
    from PIL import Image

    with Image.open(path) as im:
        assert path.endswith("rec.png") and im.mode == "P" and len(im.getcolors()) <= 64
    with pytest.raises(ValueError, match="shape"):
        P.plot_reconstructions(img, {"bad": img[:2]})
    with pytest.raises(TypeError, match="dict"):
        P.plot_reconstructions(img, [img])
