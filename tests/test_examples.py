"""Each gallery script in examples/ runs with --quick --out DIR, writes its figures and gets the expected answer."""

import importlib.util
import os

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
GALLERY = os.path.join(ROOT, "docs", "gallery")

FIGURES = {
    "compress_image": ["compress_image.png", "compress_image_rank.png"],
    "denoise": ["denoise.png"],
    "nmf_digits": ["nmf_digits_parts.png", "nmf_digits_reconstructions.png", "nmf_digits_loss.png"],
    "recommender": ["recommender.png"],
    "batch_rank_selection": ["batch_rank_selection.png"],
}


def _run(name, out):
    spec = importlib.util.spec_from_file_location(f"jmf_example_{name}", os.path.join(EXAMPLES, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = mod.main(["--quick", "--out", str(out)])
    for fig in FIGURES[name]:
        path = out / fig
        assert path.exists() and path.stat().st_size > 1000, path
        assert path.read_bytes()[:4] == b"\x89PNG"
    return result


def test_every_example_is_tested_and_its_figures_committed():
    scripts = sorted(f[:-3] for f in os.listdir(EXAMPLES) if f.endswith(".py") and not f.startswith("_"))
    assert scripts == sorted(FIGURES)
    for name, figs in FIGURES.items():
        for fig in figs:  # the gallery page shows the committed full-size figures
            path = os.path.join(GALLERY, fig)
            assert os.path.exists(path), f"{fig} is missing: run python examples/{name}.py"
            assert os.path.getsize(path) < 400_000, f"{fig} is too large for the repository"
        with open(os.path.join(EXAMPLES, name + ".py")) as fh:
            source = fh.read()
        assert "jmf._src" not in source  # the public API only
        assert len(source.splitlines()) <= 100


def test_compress_image(tmp_path):
    rows = _run("compress_image", tmp_path)
    ranks, ratios, db = zip(*rows)
    assert list(db) == sorted(db) and list(ratios) == sorted(ratios, reverse=True)  # more rank: better, bigger


def test_denoise(tmp_path):
    scores = _run("denoise", tmp_path)
    noisy, plain, robust = scores.values()
    assert noisy < plain < robust and robust > 25


def test_nmf_digits(tmp_path):
    assert _run("nmf_digits", tmp_path) < 0.5  # relative error of the rank-8 NMF


def test_recommender(tmp_path):
    rmse = _run("recommender", tmp_path)
    assert min(rmse.values()) < 0.9


def test_batch_rank_selection(tmp_path):
    selected = _run("batch_rank_selection", tmp_path)
    assert sum(s == r for r, s in selected.items()) >= 3
