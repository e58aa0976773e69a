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
    # The loss label counts a solver's default penalties (svdpp: l2 and implicit_l2), not only -p ones.
    code, out, err = _run(capsys, "fit", tmp_path / "r.csv", "--rank", 2, "--solver", "svdpp", "--max-iter", 5)
    assert code == 0, err
    assert "svdpp, rank 2" in out and "plus penalty" in out
    code, out, err = _run(capsys, "fit", tmp_path / "r.csv", "--rank", 2, "--solver", "svdpp", "-p", "l2=0",
                          "-p", "implicit_l2=0", "-p", "bias_l2=0", "--max-iter", 5)
    assert code == 0, err
    assert "plus penalty" not in out


def test_plain_als_on_sparse_ratings_warns_and_does_not_diverge(capsys, tmp_path):
    # u1.base-like: a few users and items have fewer ratings than the rank.  Plain als (l2 = 0, the
    # default solver) used to stop DIVERGED silently; now it stays finite and names the fix.
    rng = np.random.default_rng(0)
    rows = ["user,item,rating"] + [f"{u},{i},{rng.integers(1, 6)}" for u in range(30) for i in range(20)
                                   if rng.random() < (0.1 if u < 5 or i < 3 else 0.6)]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    code, out, err = _run(capsys, "fit", tmp_path / "r.csv", "--solver", "als", "--rank", 4, "--max-iter", 30, "-q")
    assert code == 0 and "DIVERGED" not in out, out
    assert "note: als without a ridge penalty" in err and "-p l2=" in err
    code, out, err = _run(capsys, "fit", tmp_path / "r.csv", "--rank", 4, "--max-iter", 30, "-q", "-p", "l2=1",
                          "--solver", "als")
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
    (["fit", "{txt}", "--rank", "2"], "not a rectangular numeric table"),
    (["experiment", "{missing}"], "no such experiment file"),
    (["experiment", "{badtoml}"], "unknown experiment keys ['solver']"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_exit_2(capsys, tmp_path, matrix_file, argv, message):
    (tmp_path / "bad.csv").write_text("alpha,beta\n1,2\n3,4,5\n")
    (tmp_path / "bad.toml").write_text('name = "x"\nsolver = "adam"\n')
    paths = {"missing": tmp_path / "nope.npy", "npy": matrix_file[0], "txt": tmp_path / "bad.csv",
             "badtoml": tmp_path / "bad.toml"}
    code, out, err = _run(capsys, *[a.format(**paths) for a in argv])
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def _grid(tmp_path, datasets='kind = "low_rank"\nm = 20\nn = 12\nrank = 2', solvers='solver = "adam"',
          top="ranks = [1, 2]\nmax_iter = 20"):
    path = tmp_path / "grid.toml"
    path.write_text(f'name = "g"\nout = "res"\n{top}\n\n[[datasets]]\n{datasets}\n\n[[solvers]]\n{solvers}\n')
    return path


def _files(tmp_path):
    """Bad inputs that used to end in a traceback with exit status 1."""
    np.save(tmp_path / "ok.npy", np.arange(12.0).reshape(4, 3) + 1)
    (tmp_path / "empty.npy").write_bytes(b"")
    np.savez(tmp_path / "full.npz", A=np.ones((30, 20)))
    raw = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "nan.csv").write_text("nan,nan\nnan,nan\n")
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["fit", "empty.npy", "--rank", "1"], "not a readable .npy file"),
    (["fit", "trunc.npz", "--rank", "1"], "not a readable .npz archive"),
    (["fit", "ok.npy", "--rank", "1", "--holdout", "0.999999"], "--holdout 0.999999"),
    (["fit", "ok.npy", "--rank", "1", "--seed", str(2**70)], "the seed must be in [0, 2**63)"),
    (["fit", "ok.npy", "--rank", "1", "-p", "learning_rate=0.1"], "unknown 'learning_rate'"),
    (["fit", "ok.npy", "--rank", "1", "-s", "adam", "-p", "learning_rate=null"], "does not accept None"),
    (["fit", "ok.npy", "--rank", "1", "-s", "adam", "-p", "learning_rate=fast"],
     "-p learning_rate=fast: expected a float"),
    (["fit", "ok.npy", "--rank", "1", "-s", "als", "-p", "solve=lu"],
     "-p solve=lu: expected one of ['cholesky', 'cg']"),
    (["fit", "ok.npy", "--rank", "1", "-s", "nope"], "unknown solver 'nope'"),
    (["fit", "ok.npy", "--rank", "1", "-s", "hals", "--biases"], "--biases: solver 'hals' has no bias terms"),
    (["fit", "ok.npy", "--rank", "1", "-p", "biases=maybe"], "-p biases=maybe: expected a bool"),
    (["fit", "ok.npy", "--rank", "1", "-s", "svd", "-p", "n_power_iter=2.5"], "expected an int"),
])
def test_bad_inputs_exit_2_with_one_line(capsys, tmp_path, argv, message):
    _files(tmp_path)
    code, _, err = _run(capsys, *[str(tmp_path / a) if a.endswith((".npy", ".npz")) else a for a in argv])
    assert code == 2, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("datasets, solvers, top, message", [
    (None, None, "ranks = [50]", "ranks [50] exceed min(m, n) = 12"),
    ('kind = "file"\npath = "missing.csv"', None, None, "no such file"),
    ('kind = "file"\npath = "nan.csv"', None, None, "entirely NaN"),
    (None, None, "ranks = [1]\nmax_iter = -1", "max_iter must be >= 1, got -1"),
    (None, 'solver = "adam"\nlearning_rate = "fast"', None, "adam: learning_rate must be a float, got 'fast'"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_experiment_errors_exit_2_before_anything_runs(capsys, tmp_path, datasets, solvers, top, message, dry_run):
    _files(tmp_path)
    kw = {k: v for k, v in dict(datasets=datasets, solvers=solvers, top=top).items() if v is not None}
    argv = ["experiment", _grid(tmp_path, **kw), "-q", "--no-figures"] + (["--dry-run"] if dry_run else [])
    code, _, err = _run(capsys, *argv)
    assert code == 2 and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "res" / "results.jsonl").exists() or not (tmp_path / "res" / "results.jsonl").read_text()


def test_experiment_header_says_what_runs_and_what_is_skipped(capsys, tmp_path):
    # hals is nonnegative: it cannot fit the signed low_rank data, so its 2 fits are skipped.  The header
    # used to count them among the fits to run.
    grid = _grid(tmp_path, solvers='solver = "adam"\n\n[[solvers]]\nsolver = "hals"')
    code, out, _ = _run(capsys, "experiment", grid, "--dry-run")
    assert code == 0 and "4 fits: 2 to run, 0 already done, 2 skipped" in out, out
    assert "skipping hals on" in out and "negative" in out


def test_typed_hyperparameters_and_notes(capsys, tmp_path):
    rows = ["user,item,rating"] + [f"{u},{i},{(u + i) % 5 + 1}" for u in range(8) for i in range(6)]
    (tmp_path / "r.csv").write_text("\n".join(rows + ["0,0,5", "0,0,1"]) + "\n")  # two repeats of (0, 0)
    # "False" used to reach the solver as the string 'False', i.e. true.
    code, out, err = _run(capsys, "fit", tmp_path / "r.csv", "--rank", 2, "-s", "ratings_als", "-p",
                          "count_scaled=False", "-p", "l2=0.5", "-p", "cg_steps=2", "--max-iter", 5, "--json")
    assert code == 0, err
    assert json.loads(out)["params"] == {"count_scaled": False, "l2": 0.5, "cg_steps": 2}
    assert "note: 2 duplicate ratings (same user and item)" in err and "merged" in err
    # A dense CSV with a header row is read (the header is skipped); it used to be refused.
    (tmp_path / "h.csv").write_text("a,b,c\n" + "\n".join(",".join(str(i + j + 1.0) for j in range(3))
                                                          for i in range(5)) + "\n")
    code, out, err = _run(capsys, "fit", tmp_path / "h.csv", "--rank", 2, "-s", "svd", "-q")
    assert code == 0 and "dense 5 x 3" in out, err


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
