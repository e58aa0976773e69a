"""The jmf command: fit files of every format, run experiments, clear errors with exit status 2."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jmf
from jmf.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def matrix_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    A = (rng.standard_normal((20, 3)) @ rng.standard_normal((3, 12))).astype(np.float32)
    path = tmp_path_factory.mktemp("cli") / "a.npy"
    np.save(path, A)
    return path, A


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_for_newcomers(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    for text in ("A ~ W H", "fit", "experiment", "solvers", "examples:", "jmf fit data.npy --rank 10"):
        assert text in out
    code, out, _ = _run(capsys, "fit", "--help")
    assert code == 0 and ".mtx" in out and "--rank" in out and "ratings" in out
    code, out, _ = _run(capsys, "experiment", "--help")
    assert code == 0 and "[[solvers]]" in out
    code, out, _ = _run(capsys)
    assert code == 2 and "commands" in out


def test_fit_npy_summary_and_model(capsys, tmp_path, matrix_file):
    path, A = matrix_file
    model = tmp_path / "model.npz"
    # All fits in this file use the same options on same-shape data, so they share one compilation.
    code, out, _ = _run(capsys, "fit", path, "--rank", 3, "--solver", "adam", "--max-iter", 20, "--out", model,
                        "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["status"] == "MAX_ITER" and summary["n_iter"] == 20 and summary["rank"] == 3
    f, meta = jmf.io.load_factors(model, with_metadata=True)
    assert f.W.shape == (20, 3) and f.H.shape == (3, 12) and meta["solver"] == "adam"
    # The printed numbers are those of the saved factors (independent float64 recomputation).
    resid = A.astype(np.float64) - f.W.astype(np.float64) @ f.H.astype(np.float64)
    np.testing.assert_allclose(summary["loss"], np.mean(resid**2), rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(summary["rel_error"], np.linalg.norm(resid) / np.linalg.norm(A), rtol=1e-4)
    s = np.linalg.svd(A.astype(np.float64), compute_uv=False)
    assert summary["svd_rel_error"] == pytest.approx(np.sqrt(np.sum(s[3:] ** 2) / np.sum(s**2)), abs=1e-6)

    code, out, _ = _run(capsys, "fit", path, "--rank", 3, "--solver", "adam", "--max-iter", 20, "-q")
    assert code == 0
    assert "MAX_ITER after 20 iterations; final loss" in out
    assert "relative error" in out and "best possible at rank 3" in out


def test_fit_csv_mtx_and_ratings(capsys, tmp_path, matrix_file):
    _, A = matrix_file
    np.savetxt(tmp_path / "a.csv", A, delimiter=",")
    import scipy.io
    import scipy.sparse as sp

    scipy.io.mmwrite(str(tmp_path / "a.mtx"), sp.coo_matrix(A))
    for name in ("a.csv", "a.mtx"):
        code, out, err = _run(capsys, "fit", tmp_path / name, "--rank", 3, "--solver", "adam", "--max-iter", 20,
                              "-q")
        assert code == 0, err
        assert "20 x 12" in out and "240 observed entries" in out
    rows = ["user,item,rating"] + [f"u{u},m{i},{(u * i) % 5 + 1}" for u in range(12) for i in range(9) if (u + i) % 3]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    model = tmp_path / "r.npz"
    code, out, err = _run(capsys, "fit", tmp_path / "r.csv", "--rank", 2, "--solver", "adam", "--biases",
                          "--holdout", 0.2, "--max-iter", 20, "-q", "--out", model)
    assert code == 0, err
    assert "ratings 12 x 9" in out and "held-out RMSE" in out
    f, meta = jmf.io.load_factors(model, with_metadata=True)
    assert f.row_bias is not None and list(meta["arrays"]["user_ids"][:3]) == ["u0", "u1", "u10"]


def test_plain_als_on_sparse_ratings_warns_and_does_not_diverge(capsys, tmp_path):
    # u1.base-like: a few users and items have fewer ratings than the rank.  Plain als (l2 = 0, the
    # default solver) used to stop DIVERGED silently; now it stays finite and names the fix.
    rng = np.random.default_rng(0)
    rows = ["user,item,rating"] + [f"{u},{i},{rng.integers(1, 6)}" for u in range(30) for i in range(20)
                                   if rng.random() < (0.1 if u < 5 or i < 3 else 0.6)]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    code, out, err = _run(capsys, "fit", tmp_path / "r.csv", "--rank", 4, "--max-iter", 30, "-q")
    assert code == 0 and "DIVERGED" not in out, out
    assert "note: als without a ridge penalty" in err and "-p l2=" in err
    code, out, err = _run(capsys, "fit", tmp_path / "r.csv", "--rank", 4, "--max-iter", 30, "-q", "-p", "l2=1")
    assert code == 0 and "note" not in err


@pytest.mark.parametrize("argv, message", [
    (["fit", "{missing}", "--rank", "2"], "no such file"),
    (["fit", "{npy}", "--rank", "2", "--solver", "newton"], "unknown solver 'newton'; available: adam"),
    (["fit", "{npy}", "--rank", "0"], "--rank"),
    (["fit", "{npy}", "--rank", "two"], "positive integer"),
    (["fit", "{npy}", "--rank", "50"], "--rank 50 is too large for a 20 x 12 matrix"),
    (["fit", "{npy}", "--rank", "2", "-p", "l3=1"], "bad hyperparameters for solver"),
    (["fit", "{npy}", "--rank", "2", "-p", "nokey"], "KEY=VALUE"),
    (["fit", "{npy}", "--rank", "2", "--tol", "-1"], "tol must be"),
    (["fit", "{npy}", "--rank", "2", "--holdout", "1.5"], "fraction"),
    (["fit", "{npy}", "--rank", "2", "--init", "magic"], "--init"),
    (["fit", "{npy}", "--rank", "2", "--solver", "hals", "--biases"], "has no bias terms"),
    (["fit", "{npy}", "--rank", "2", "--out", "/nonexistent/dir/m.npz"], "does not exist"),
    (["fit", "{npy}"], "--rank"),
    (["fit", "{txt}", "--rank", "2"], "non-numeric first line"),
    (["experiment", "{missing}"], "no such experiment file"),
    (["experiment", "{badtoml}"], "unknown experiment keys ['solver']"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_exit_2(capsys, tmp_path, matrix_file, argv, message):
    (tmp_path / "bad.csv").write_text("alpha,beta\n1,2\n")
    (tmp_path / "bad.toml").write_text('name = "x"\nsolver = "adam"\n')
    paths = {"missing": tmp_path / "nope.npy", "npy": matrix_file[0], "txt": tmp_path / "bad.csv",
             "badtoml": tmp_path / "bad.toml"}
    code, out, err = _run(capsys, *[a.format(**paths) for a in argv])
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_experiment_command(capsys, tmp_path):
    (tmp_path / "grid.toml").write_text(textwrap.dedent("""
        name = "cli-grid"
        ranks = [1, 2]
        restarts = 2
        max_iter = 20
        out = "res"

        [[datasets]]
        kind = "low_rank"
        m = 20
        n = 12
        rank = 2

        [[solvers]]
        solver = "adam"
        """))
    code, out, _ = _run(capsys, "experiment", tmp_path / "grid.toml", "--dry-run")
    assert code == 0 and "1 cells" in out and "4 fits" in out
    assert not (tmp_path / "res").exists()
    code, out, err = _run(capsys, "experiment", tmp_path / "grid.toml", "-q", "--factors")
    assert code == 0, err
    res = tmp_path / "res"
    rows = [json.loads(x) for x in (res / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(os.path.exists(r["factors_file"]) for r in rows)
    assert (res / "summary.csv").exists() and "adam" in out
    pngs = sorted(os.listdir(res / "figures"))
    assert any(p.endswith("_overview.png") for p in pngs) and any(p.endswith("_overview.svg") for p in pngs)
    # Rerun: nothing to do, same four rows.
    code, out, _ = _run(capsys, "experiment", tmp_path / "grid.toml", "-q", "--no-figures")
    assert code == 0 and len((res / "results.jsonl").read_text().splitlines()) == 4


def test_solvers_listing(capsys):
    code, out, _ = _run(capsys, "solvers")
    assert code == 0 and "adam(learning_rate=0.01" in out and "sgd(" in out


@pytest.mark.multiprocess
def test_real_subprocess(tmp_path, matrix_file):
    path, _ = matrix_file
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    ok = subprocess.run([sys.executable, "-m", "jmf.cli", "fit", str(path), "--rank", "3", "--solver", "adam",
                         "--max-iter", "20", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["n_iter"] == 20
    bad = subprocess.run([sys.executable, "-m", "jmf.cli", "fit", str(tmp_path / "missing.csv"), "--rank", "2"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "no such file" in bad.stderr and "Traceback" not in bad.stderr
