"""Each experiment script runs with --quick --out DIR and writes its table, results and figures."""

import importlib.util
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name):
    spec = importlib.util.spec_from_file_location(f"jmf_script_{name}", os.path.join(ROOT, "experiments", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _nonempty(path):
    assert os.path.exists(path), path
    assert os.path.getsize(path) > 0, path


@pytest.mark.slow
def test_compare_solvers_quick(tmp_path, capsys):
    out = tmp_path / "cmp"
    outputs = _script("compare_solvers").main(["--quick", "--out", str(out), "--restarts", "2", "--no-progress"])
    printed = capsys.readouterr().out
    assert set(outputs) == {"dense", "nmf", "masked"}
    # It says where its table and figures are.
    assert f"table:   {out / 'table.md'}" in printed and f"figures: {out / 'figures'}" in printed
    for f in ("results.jsonl", "summary.csv", "table.md"):
        _nonempty(out / f)
    for problem in outputs:
        _nonempty(out / "figures" / f"{problem}_overview.png")
        _nonempty(out / "figures" / f"{problem}_overview.svg")
    # Dense problem: the exact solvers reach the Eckart-Young optimum at the true rank.
    df, table = outputs["dense"]
    at_true = df[df["rank"] == 5]
    best = at_true.groupby("solver")["rel_error"].min()
    svd = at_true["svd_rel_error"].iloc[0]
    assert best["als"] == pytest.approx(svd, rel=1e-4)
    assert (best >= svd * (1 - 1e-5)).all()
    assert "held-out RMSE (best)" in outputs["masked"][1].columns
    # Rerun reuses every fit.
    n = len(open(out / "results.jsonl").read().splitlines())
    _script("compare_solvers").main(["--quick", "--out", str(out), "--restarts", "2", "--no-progress",
                                     "--problems", "dense"])
    assert len(open(out / "results.jsonl").read().splitlines()) == n


@pytest.mark.slow
def test_rank_selection_quick(tmp_path, capsys):
    out = tmp_path / "rank"
    summary = _script("rank_selection").main(["--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "recovered in" in printed
    data = json.loads((out / "rank_selection.json").read_text())
    assert data["true_rank"] == 3 and len(data["selected"]) == data["seeds"] == 4
    assert data["recovery_rate"] >= 0.75  # well-separated synthetic data: CV finds the rank
    held = np.asarray(data["heldout_rmse"])
    train = np.asarray(data["train_rmse"])
    assert np.all(np.diff(train, axis=1) <= 1e-6)  # the training error cannot choose: it only falls
    assert summary["selected"] == list(np.asarray(data["ranks"])[held.argmin(axis=1)])
    for f in ("cv_curves.csv", "figures/rank_selection_cv.png", "figures/rank_selection_selected.svg"):
        _nonempty(out / f)


@pytest.mark.slow
def test_batch_fit_quick(tmp_path):
    out = tmp_path / "batch"
    df, checks = _script("batch_fit").main(["--quick", "--out", str(out)])
    assert set(df["problem"]) == {"seed 4x2", "100x50 rank 5"}
    assert (df["fits_per_s"] > 0).all()
    assert all(diff < 1e-4 for diff in checks.values())  # batch member i == fitting matrix i alone
    for f in ("batch_fit.csv", "batch_fit.json", "figures/batch_fit_throughput.png",
              "figures/batch_fit_throughput.svg"):
        _nonempty(out / f)


def test_collaborative_filtering_quick(tmp_path, capsys):
    """The CF script fits each model once, splits its time into compiling and fitting, and writes its table."""
    out = tmp_path / "cf"
    rows = _script("collaborative_filtering").main(["--quick", "--models", "als-wr", "implicit-als",
                                                    "--out", str(out)])
    assert [r["solver"] for r in rows] == ["als-wr", "implicit-als"]
    als, ials = rows
    assert 0.3 < als["rmse"] < 1.5 and np.isnan(ials["rmse"])  # implicit-als ranks, it does not rate
    assert 0 < ials["ndcg_at_10"] <= 1
    for r in rows:
        assert r["fit_seconds"] >= 0 and r["compile_seconds"] >= 0
    assert "fit s (excl. compile)" in capsys.readouterr().out
    _nonempty(out / "cf_results.md")
    assert [r["solver"] for r in json.loads((out / "cf_results.json").read_text())] == ["als-wr", "implicit-als"]
