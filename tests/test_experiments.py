"""Experiment grids: expansion, validation, TOML, metrics against references, resume and SIGKILL safety."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import jmf
import jmf.experiments as E

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small(**kw):
    cfg = dict(name="t", datasets=[{"kind": "low_rank", "m": 30, "n": 20, "rank": 2, "noise": 0.05, "holdout": 0.1}],
               solvers=[{"solver": "adam", "learning_rate": 0.05}], ranks=[1, 2, 3], restarts=2, max_iter=60,
               check_every=10)
    cfg.update(kw)
    return E.Experiment(**cfg)


def test_grid_expansion_and_labels():
    exp = _small(solvers=[{"solver": "adam", "learning_rate": [0.01, 0.1], "b1": 0.8},
                          {"solver": "sgd", "label": "plain", "learning_rate": 0.1, "max_iter": 10},
                          "adam"],
                 datasets=[{"kind": "low_rank"}, {"kind": "nonnegative", "name": "nn", "seed": 3}])
    cells = exp.cells()
    assert len(cells) == 2 * 4
    labels = [c.label for c in cells[:4]]
    assert labels == ["adam(learning_rate=0.01, b1=0.8)", "adam(learning_rate=0.1, b1=0.8)",
                      "plain", "adam"]
    assert cells[2].fit_options["max_iter"] == 10 and cells[0].fit_options["max_iter"] == 60
    assert cells[3].params == {} and cells[4].dataset_config["name"] == "nn"
    ids = exp.row_ids()
    assert len(ids) == len(set(ids)) == 8 * 3 * 2
    # Ids depend on what determines a fit, not on the grid around it.
    fewer = _small(solvers=["adam"], datasets=[{"kind": "low_rank"}], ranks=[2], restarts=1)
    assert set(fewer.row_ids()) <= set(ids)


@pytest.mark.parametrize("kw, err, match", [
    (dict(solvers=[{"solver": "nope"}]), ValueError, "unknown solver 'nope'; available: adam, sgd"),
    (dict(solvers=[{"solver": "adam", "lr": 0.1}]), ValueError, "bad hyperparameters for solver 'adam'"),
    (dict(solvers=[{"solver": "adam", "learning_rate": -1.0}]), ValueError, "learning_rate"),
    (dict(solvers=[{"learning_rate": 0.1}]), ValueError, "no 'solver' name"),
    (dict(solvers=[]), ValueError, "solvers is empty"),
    (dict(datasets=[{"kind": "what"}]), ValueError, "unknown dataset kind 'what'"),
    (dict(datasets=[{"kind": "low_rank", "size": 3}]), ValueError, "bad parameters for dataset kind 'low_rank'"),
    (dict(datasets=[{"kind": "low_rank", "holdout": 1.5}]), ValueError, "holdout must be a fraction"),
    (dict(ranks=[2, 0]), ValueError, "ranks must be"),
    (dict(ranks=[2, 2]), ValueError, "repeated"),
    (dict(restarts=0), ValueError, "restarts"),
    (dict(solvers=["adam", "adam"]), ValueError, "labels must be unique"),
    (dict(init="bogus"), ValueError, "bogus"),
])
def test_validation_before_compute(tmp_path, kw, err, match):
    with pytest.raises(err, match=match):
        E.run(_small(**kw), tmp_path / "r.jsonl", progress=False)
    assert not (tmp_path / "r.jsonl").exists() or (tmp_path / "r.jsonl").read_text() == ""


def test_rows_match_independent_references(tmp_path):
    exp = _small(datasets=[{"kind": "low_rank", "m": 30, "n": 20, "rank": 2, "noise": 0.05}], tol=None, ranks=[1, 3])
    df = E.run(exp, tmp_path / "r.jsonl", factors_dir=tmp_path / "f", progress=False)
    assert len(df) == 4 and set(df["status"]) == {"MAX_ITER"} and (df["n_iter"] == 60).all()
    data = E.make_dataset(exp.datasets[0])
    A = np.asarray(data.train.A, np.float64)
    s = np.linalg.svd(A, compute_uv=False)
    for _, row in df.iterrows():
        f = jmf.io.load_factors(row["factors_file"])
        assert f.W.shape == (30, row["rank"]) and f.H.shape == (row["rank"], 20)
        resid = A - f.W.astype(np.float64) @ f.H.astype(np.float64)
        np.testing.assert_allclose(row["rel_error"], np.linalg.norm(resid) / np.linalg.norm(A), rtol=1e-6)
        np.testing.assert_allclose(row["svd_rel_error"], np.sqrt(np.sum(s[row["rank"]:] ** 2) / np.sum(s**2)),
                                   rtol=1e-6)
        assert row["rel_error"] >= row["svd_rel_error"] * (1 - 1e-6)  # Eckart-Young
        # A row is the fit jmf.fit gives with the restart's key (padding to the largest rank is exact).
        key = jax.random.fold_in(jax.random.key(0), row["restart"])
        ref = jmf.fit(data.train, jmf.solvers.adam(0.05), rank=int(row["rank"]), key=key, max_iter=60, tol=None,
                      progress=False)
        np.testing.assert_allclose(row["loss"], float(ref.loss), rtol=2e-4)
        np.testing.assert_allclose(row["history_loss"], np.asarray(ref.loss_history), rtol=2e-4)
        assert row["history_iterations"] == list(range(0, 61, 10))
    # Summary: one line per (dataset, solver, rank), best over restarts.
    summ = E.summary(df)
    assert list(summ["rank"]) == [1, 3] and (summ["fits"] == 2).all()
    np.testing.assert_allclose(summ["best_rel_error"], df.groupby("rank")["rel_error"].min().to_numpy())
    assert (summ["gap_to_svd"] >= -1e-6).all()


def test_holdout_missing_and_sparse_datasets():
    dense = E.make_dataset({"kind": "low_rank", "m": 40, "n": 30, "missing": 0.5, "holdout": 0.2, "seed": 1})
    w = np.asarray(dense.train.weights)
    assert w.sum() == pytest.approx(0.8 * 0.5 * 1200, abs=1)
    r, c, v = dense.test
    assert len(v) == pytest.approx(0.2 * 600, abs=1) and np.all(w[r, c] == 0)
    assert dense.singular_values is None  # not fully observed: no Eckart-Young optimum
    sparse = E.make_dataset({"kind": "low_rank", "m": 40, "n": 30, "missing": 0.5, "holdout": 0.2, "seed": 1,
                             "sparse": True})
    assert isinstance(sparse.train, jmf.Sparse) and sparse.train.nnz == int(w.sum())
    np.testing.assert_array_equal(sparse.test[0], r)
    again = E.make_dataset({"kind": "low_rank", "m": 40, "n": 30, "missing": 0.5, "holdout": 0.2, "seed": 1})
    np.testing.assert_array_equal(np.asarray(again.train.A), np.asarray(dense.train.A))  # seeded


def test_incompatible_cells_are_skipped(tmp_path):
    nn = jmf.solvers.adam(0.05, projection="nonnegative")
    assert nn.nonnegative
    exp = _small(solvers=[{"solver": "adam", "learning_rate": 0.05, "projection": "nonnegative", "label": "nn"}],
                 ranks=[1])
    msgs = []
    df = E.run(exp, tmp_path / "r.jsonl", progress=False, log=msgs.append)
    assert len(df) == 0 and "negative" in msgs[0]
    with pytest.raises(ValueError, match="negative"):
        E.run(exp, tmp_path / "r.jsonl", progress=False, on_incompatible="error")


def test_toml_config(tmp_path):
    (tmp_path / "m.csv").write_text("\n".join(",".join(str(i * j + 1.0) for j in range(6)) for i in range(8)))
    (tmp_path / "exp.toml").write_text(textwrap.dedent("""
        name = "from-toml"
        ranks = [1, 2]
        restarts = 2
        max_iter = 40
        tol = "none"
        out = "results"

        [[datasets]]
        kind = "file"
        path = "m.csv"
        name = "csv"

        [[solvers]]
        solver = "adam"
        learning_rate = [0.05]
        """))
    exp, opts = E.load_config(tmp_path / "exp.toml")
    assert exp.name == "from-toml" and exp.tol is None and exp.ranks == (1, 2)
    assert opts["out"] == str(tmp_path / "results")
    assert exp.datasets[0]["path"] == str(tmp_path / "m.csv")
    df = E.run(tmp_path / "exp.toml", tmp_path / "r.jsonl", progress=False)
    assert len(df) == 4 and set(df["solver"]) == {"adam(learning_rate=0.05)"}
    assert (df["n_iter"] == 40).all()
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        E.load_config(tmp_path / "bad.toml")
    (tmp_path / "typo.toml").write_text('name = "x"\nrank = [2]\n')
    with pytest.raises(ValueError, match="unknown experiment keys \\['rank'\\]"):
        E.load_config(tmp_path / "typo.toml")


_TOL_TOML = """
name = "tol"
ranks = [2]
tol = 1e-6
[[datasets]]
kind = "low_rank"
[[solvers]]
solver = "adam"
[[solvers]]
solver = "als"
tol = "none"
"""


def test_top_level_tol_reaches_solvers_without_their_own(tmp_path):
    # A solver without its own tol used to get tol=None: every fit ran to max_iter, "converged 0".
    (tmp_path / "tol.toml").write_text(_TOL_TOML)
    as_dict = dict(name="tol", ranks=[2], tol=1e-6, datasets=[{"kind": "low_rank"}],
                   solvers=[{"solver": "adam"}, {"solver": "als", "tol": "none"}])
    for exp in (E.load_config(tmp_path / "tol.toml")[0], E.Experiment.from_dict(as_dict)):
        tols = {c.solver: c.fit_options["tol"] for c in exp.cells()}
        assert tols == {"adam": 1e-6, "als": None}
    assert {c.fit_options["tol"] for c in E.Experiment.from_dict({**as_dict, "tol": None}).cells()} == {None}


@pytest.mark.parametrize("where", ["top", "solver"])
def test_bad_tol_is_refused(tmp_path, where):
    text = _TOL_TOML.replace("tol = 1e-6", 'tol = "abc"') if where == "top" else _TOL_TOML.replace(
        'tol = "none"', 'tol = "abc"')
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(ValueError, match="tol must be a nonnegative finite float or None, got the string 'abc'"):
        E.load_config(tmp_path / "bad.toml")[0].cells()
    with pytest.raises(ValueError, match="max_iter"):
        E.Experiment.from_dict(dict(name="x", datasets=[{"kind": "low_rank"}], solvers=["als"], max_iter=-1))


def test_help_example_converges(tmp_path):
    from jmf.cli import _EXAMPLE_TOML

    toml = textwrap.dedent(_EXAMPLE_TOML.split("\n", 1)[1])  # drop the "example CONFIG.toml:" title
    (tmp_path / "example.toml").write_text(toml)
    exp, _ = E.load_config(tmp_path / "example.toml")
    assert all(c.fit_options["tol"] == 1e-6 for c in exp.cells())
    df = E.run(exp, tmp_path / "r.jsonl", progress=False)
    converged = df.groupby("solver")["status"].apply(lambda s: (s == "CONVERGED").mean())
    # Before the fix every fit ran to max_iter ("converged 0"); now most stop at the tolerance.
    assert len(df) == 27 and (df["status"] != "DIVERGED").all()
    assert (converged > 0).all() and (df["status"] == "CONVERGED").mean() > 0.5, converged


def test_resume_skips_rows_and_repairs_torn_line(tmp_path):
    path = tmp_path / "r.jsonl"
    exp = _small(ranks=[1, 2])
    first = E.run(exp, path, progress=False)
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4
    # Simulate a kill: drop the last row and leave half of it as a torn line.
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    assert len(E.read_rows(path)) == 3  # the torn tail is ignored by readers
    df = E.run(exp, path, progress=False)
    rows = [json.loads(x) for x in path.read_bytes().splitlines()]
    assert len(rows) == 4 and len({r["id"] for r in rows}) == 4
    assert sorted(df["id"]) == sorted(first["id"])
    np.testing.assert_allclose(df.sort_values("id")["loss"], first.sort_values("id")["loss"], rtol=1e-6)
    # A larger grid reuses what is there: only the rows of the new rank are added.
    bigger = E.run(_small(ranks=[1, 2, 3]), path, progress=False)
    assert len(bigger) == 6 and len(path.read_bytes().splitlines()) == 6
    assert set(bigger["id"]) >= set(first["id"])


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    with E.ResultsWriter(path):
        with pytest.raises(RuntimeError, match="another running experiment"):
            with E.ResultsWriter(path):
                pass


_CHILD = textwrap.dedent("""
    import sys
    import jmf.experiments as E
    # Three shapes: the learning rates share a program (traced), so each shape compiles and the child
    # still has rows left to write when the second and third attempts kill it.
    exp = E.Experiment(name="kill", datasets=[{"kind": "low_rank", "m": m, "n": 16, "rank": 2, "noise": 0.1}
                                              for m in (24, 28, 32)],
                       solvers=[{"solver": "adam", "learning_rate": [0.02, 0.05]}],
                       ranks=[1, 2, 3, 4], restarts=12, max_iter=50, tol=None)
    if __name__ == "__main__":
        E.run(exp, sys.argv[1], progress=False)
""")


@pytest.mark.multiprocess
def test_sigkill_at_random_moments_then_resume(tmp_path):
    """Kill a real run with SIGKILL several times, resume, and check every row is there exactly once and valid."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    path = tmp_path / "r.jsonl"
    # A persistent compilation cache keeps the resumed children fast; the results file is what is under test.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT,
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    py = sys.executable
    scope = {"__name__": "grid"}
    exec(compile(_CHILD, "child", "exec"), scope)  # the same grid, in-process, for its row ids
    expected = scope["exp"].row_ids()
    assert len(expected) == len(set(expected)) == 3 * 2 * 4 * 12
    rng = np.random.default_rng()
    kills = 0
    sizes = []
    for attempt in range(3):
        before = len(E.read_rows(path))
        proc = subprocess.Popen([py, str(script), str(path), "run"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        if attempt == 0:
            time.sleep(rng.uniform(0.5, 3.0))  # anywhere in start-up, compilation or the first writes
        else:
            # Wait until rows are being written, then kill a random moment later (inside the write burst).
            target = before + int(rng.integers(1, 20))
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None:
                if path.exists() and path.read_bytes().count(b"\n") >= target:
                    break
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.02))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        sizes.append(len(E.read_rows(path)))
    assert kills >= 2, "the child finished before it could be killed"
    assert sizes == sorted(sizes)  # nothing already written is ever lost
    done = subprocess.run([py, str(script), str(path), "run"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    rows = [json.loads(line) for line in raw.splitlines()]  # every line is valid JSON
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicated rows"
    assert sorted(ids) == sorted(expected), "missing or foreign rows"
    assert all(np.isfinite(r["loss"]) and r["n_iter"] == 50 for r in rows)
