"""The default ratings model (jmf.cf.fit_ratings) and the CLI paths built on it: fit RATINGS, --test, recommend."""

import json

import numpy as np
import pytest

import jmf
from jmf.cli import main

# Small enough that the sampler's programs compile and run in seconds; the same settings everywhere so
# the tests share compiled programs.
FAST = dict(ranks=(2, 4), max_iter=12, burn_in=4, n_keep=4)


@pytest.fixture(scope="module")
def table():
    return jmf.datasets.synthetic_ratings(0, n_users=60, n_items=40, n_ratings=900).data


def _rmse(model, data):
    p = np.asarray(model.predict(np.asarray(data.rows), np.asarray(data.cols)), np.float64)
    return float(np.sqrt(np.mean((p - np.asarray(data.vals, np.float64)) ** 2)))


def test_auto_rank_is_the_validation_argmin_and_beats_the_mean(table):
    train, test = jmf.model_selection.train_test_split(table, 0.2, key=1)
    model = jmf.cf.fit_ratings(train, key=0, **FAST)
    search = model.search
    assert list(search["choice"]) == ["rank 2", "rank 4", "ensemble"] and list(search["rank"]) == [2, 4, 6]
    best = int(np.argmin(search["validation_rmse"]))
    assert model.params["choice"] == search["choice"][best] and model.rank == int(search["rank"][best])
    assert model.params["model"] == "bpmf" and model.params["rank"] == model.rank
    assert model.factors.W.shape[0] == train.shape[0] and model.factors.H.shape[1] == train.shape[1]
    mean_rmse = float(np.sqrt(np.mean((np.asarray(test.vals) - np.mean(np.asarray(train.vals))) ** 2)))
    assert _rmse(model, test) < 0.95 * mean_rmse
    lo, hi = model.clip
    p = np.asarray(model.predict(np.asarray(test.rows), np.asarray(test.cols)))
    assert lo == float(np.min(train.vals)) and hi == float(np.max(train.vals))
    assert p.min() >= lo and p.max() <= hi


def test_ensemble_predicts_the_average_of_its_members(table):
    from jmf._src.ratings_model import _ensemble

    a = jmf.cf.fit_ratings(table, rank=2, key=0, max_iter=12, burn_in=4, n_keep=4).factors
    b = jmf.cf.fit_ratings(table, rank=3, key=1, max_iter=12, burn_in=4, n_keep=4).factors
    r, c = np.asarray(table.rows), np.asarray(table.cols)
    mean = (np.asarray(a.predict(r, c)) + np.asarray(b.predict(r, c))) / 2
    np.testing.assert_allclose(np.asarray(_ensemble([a, b]).predict(r, c)), mean, rtol=1e-5, atol=1e-5)


def test_fixed_rank_and_unknown_ids(table):
    model = jmf.cf.fit_ratings(table, rank=3, key=0, max_iter=12, burn_in=4, n_keep=4)
    assert model.rank == 3 and model.search is None
    p = np.asarray(model.predict([0, -1, -1], [-1, 0, -1]))  # unknown item / user / both: biases and offset
    f = model.factors
    np.testing.assert_allclose(p[2], np.clip(float(f.offset), *model.clip), rtol=1e-5)
    np.testing.assert_allclose(p[1], np.clip(float(f.offset) + float(f.col_bias[0]), *model.clip), rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(rank=0), "rank"),
    (dict(burn_in=12, max_iter=12), "burn_in"),
    (dict(ranks="abc"), "ranks"),
])
def test_bad_arguments(table, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        jmf.cf.fit_ratings(table, **kwargs)


def test_dense_input_is_refused():
    with pytest.raises(TypeError, match="jmf.Sparse"):
        jmf.cf.fit_ratings(jmf.Dense(np.ones((3, 4), np.float32)))


# -- the command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, table):
    d = tmp_path_factory.mktemp("ratings")
    r, c, v = (np.asarray(x) for x in (table.rows, table.cols, table.vals))
    rng = np.random.default_rng(0)
    test = rng.random(len(r)) < 0.2
    lines = [f"{a + 1}\t{10 * b + 7}\t{x:.0f}\t0" for a, b, x in zip(r, c, np.clip(np.round(v), 1, 5))]
    (d / "u1.base").write_text("\n".join(np.array(lines)[~test]) + "\n")
    # the test file also rates an item and a user the training file has never seen
    (d / "u1.test").write_text("\n".join(list(np.array(lines)[test]) + ["999\t7\t3\t0", "1\t99999\t4\t0"]) + "\n")
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n"
                                   + "\n".join(line.replace("\t", ",") for line in lines) + "\n")
    (d / "movies.csv").write_text("movieId,title,genres\n"
                                  + "\n".join(f'{10 * b + 7},"Film {b}, The (1999)",Drama' for b in range(40)) + "\n")
    return d


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _fast_defaults(monkeypatch):
    # the CLI calls fit_ratings with its defaults; shrink them here so that the tests run in seconds
    import jmf._src.ratings_model as rm

    monkeypatch.setattr(rm, "DEFAULT_RANKS", FAST["ranks"])
    original = rm.fit_ratings

    def fast(data, rank="auto", **kw):
        return original(data, rank, **{**FAST, **kw})

    monkeypatch.setattr(jmf.cf, "fit_ratings", fast)


def test_fit_ratings_file_without_options_uses_the_default_model(capsys, files):
    code, out, err = _run(capsys, "fit", files / "ratings.csv", "--holdout", 0.2, "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["model"] == "bpmf" and s["rank_chosen"] and s["rank"] in (2, 4, 6)
    assert {"train_rmse", "test_rmse", "test_mae", "seconds"} <= set(s)
    assert 0 < s["test_rmse"] < 1.5 and s["params"]["rank"] == s["rank"]
    assert [row["choice"] for row in s["validation"]] == ["rank 2", "rank 4", "ensemble"]


def test_test_file_and_recommend_with_titles(capsys, files, tmp_path):
    model = tmp_path / "model.npz"
    code, out, err = _run(capsys, "fit", files / "u1.base", "--test", files / "u1.test", "--rank", 3, "-q",
                          "--out", model)
    assert code == 0, err
    assert "u1.test" in out and "RMSE" in out and "rank 3" in out
    code, out, err = _run(capsys, "fit", files / "u1.base", "--test", files / "u1.test", "--rank", 3, "--json")
    s = json.loads(out)
    assert s["test_unknown"] == 2 and s["test_n"] == len((files / "u1.test").read_text().split("\n")) - 1
    assert np.isfinite(s["test_rmse"])

    code, out, err = _run(capsys, "recommend", model, "--user", 1, "-n", 5, "--items", files / "movies.csv",
                          "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert len(rec["items"]) == 5 and all(r["title"].startswith("Film ") for r in rec["items"])
    base = [line.split("\t") for line in (files / "u1.base").read_text().split("\n") if line]
    seen = {int(b) for a, b, *_ in base if a == "1"}
    assert not seen & {r["item"] for r in rec["items"]}
    scores = [r["predicted"] for r in rec["items"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("argv, message", [
    (["fit", "{npy}", "--test", "{test}"], "--test needs a ratings table"),
    (["fit", "{ratings}", "--solver", "als"], "--rank K is required for --solver als"),
    (["fit", "{ratings}", "--test", "{missing}"], "--test: file not found"),
    (["recommend", "{missing}", "--user", "1"], "no such file"),
    (["recommend", "{npy}", "--user", "1"], "cannot read model"),
])
def test_usage_errors_are_one_line(capsys, files, tmp_path, argv, message):
    np.save(tmp_path / "a.npy", np.ones((5, 4), np.float32))
    subst = {"{npy}": tmp_path / "a.npy", "{test}": files / "u1.test", "{ratings}": files / "ratings.csv",
             "{missing}": tmp_path / "nope.csv"}
    code, out, err = _run(capsys, *[subst.get(a, a) for a in argv])
    assert code == 2 and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_recommend_unknown_user(capsys, files, tmp_path):
    model = tmp_path / "m.npz"
    assert _run(capsys, "fit", files / "ratings.csv", "--rank", 2, "-q", "--out", model)[0] == 0
    code, out, err = _run(capsys, "recommend", model, "--user", 12345)
    assert code == 2 and "is not in the model" in err


# -- RatingsRegressor() is the default model -----------------------------------------------------


def test_ratings_regressor_default_is_the_default_model(table):
    from sklearn.model_selection import cross_val_score

    from jmf.sklearn import RatingsRegressor

    rng = np.random.default_rng(14)  # low rank plus biases plus a little noise: a signal to find
    m, n, nnz = 50, 40, 900
    flat = rng.choice(m * n, size=nnz, replace=False)
    r, c = flat // n, flat % n
    U, V = rng.standard_normal((m, 2)), rng.standard_normal((2, n))
    v = 3.0 + 0.5 * rng.standard_normal(m)[r] + np.einsum("pk,kp->p", U[r], V[:, c]) + 0.1 * rng.standard_normal(nnz)
    X = np.column_stack([r + 100, c])  # raw ids
    est = RatingsRegressor(max_iter=12, random_state=0).fit(X, v)
    assert est.get_params()["solver"] == "auto" and est.get_params()["n_components"] == "auto"
    assert est.choice_ in ("rank 5", "rank 10", "ensemble") and np.isnan(est.loss_)
    p = est.predict(X)
    assert p.min() >= v.min() and p.max() <= v.max()  # on the rating scale, as the default model predicts
    # it learns: held-out R^2 of the default well above 0 (the biases-free baseline)
    scores = cross_val_score(RatingsRegressor(max_iter=12, random_state=0), X, v, cv=3)
    assert scores.min() > 0.5, scores
    with pytest.raises(ValueError, match="max_iter >= 2"):
        RatingsRegressor(max_iter=1).fit(X, v)
