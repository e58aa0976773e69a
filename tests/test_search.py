"""Batched cross-validation: K folds x ranks x a hyperparameter grid in one compiled call, scored in one more."""

import numpy as np
import pandas as pd
import pytest

import jmf
from jmf._src.compilation import compilations
from jmf.model_selection import fold_stack, grid_search

KW = dict(max_iter=4, key=3)


@pytest.fixture(scope="module")
def ratings():
    return jmf.datasets.synthetic_ratings(0, n_users=60, n_items=40, n_ratings=900, rank=3).data


def test_folds_are_equal_disjoint_and_cover_the_entries(ratings):
    train, test = fold_stack(ratings, 4, key=1)
    size = ratings.nnz // 4
    assert train.rows.shape == (4, ratings.nnz - size) and test.rows.shape == (4, size)
    lin = np.asarray(ratings.rows) * ratings.shape[1] + np.asarray(ratings.cols)
    held = []
    for i in range(4):
        tr = np.asarray(train.rows[i]) * ratings.shape[1] + np.asarray(train.cols[i])
        te = np.asarray(test.rows[i]) * ratings.shape[1] + np.asarray(test.cols[i])
        assert np.all(np.diff(tr) > 0)  # row-major order kept
        assert np.intersect1d(tr, te).size == 0 and np.union1d(tr, te).size == ratings.nnz
        held.append(te)
    held = np.concatenate(held)
    assert np.unique(held).size == 4 * size and np.isin(held, lin).all()
    with pytest.raises(ValueError, match="n_splits"):
        fold_stack(ratings, 1)


def test_every_member_equals_its_own_fit_and_evaluation(ratings):
    solver = jmf.solvers.ratings_als(l2=np.array([0.05, 0.5]), solve="cholesky")
    out = grid_search(ratings, solver, [2, 3], n_splits=3, refit="separate", **KW)
    assert out.rmse.shape == (3, 2, 2) and len(out.cv) == 1 and out.cv[0].axes == ("matrix", "param", "rank")
    train, test = fold_stack(ratings, 3, key=KW["key"])
    lo, hi = float(ratings.vals.min()), float(ratings.vals.max())
    for f, p, j in [(0, 0, 0), (2, 1, 1), (1, 1, 0)]:
        tr = jmf.Sparse(train.rows[f], train.cols[f], train.vals[f], ratings.shape)
        te = (test.rows[f], test.cols[f], test.vals[f])
        l2 = float(out.cv[0].params["l2"][p])
        single = jmf.fit(tr, jmf.solvers.ratings_als(l2=l2, solve="cholesky"), rank=[2, 3][j], key=KW["key"],
                         init="normal", max_iter=4, tol=None, progress=False)
        m = jmf.metrics.rating_metrics(single.factors, te, clip=(lo, hi))
        np.testing.assert_allclose(out.rmse[f, p, j], m["rmse"], rtol=1e-6)
        np.testing.assert_allclose(out.mae[f, p, j], m["mae"], rtol=1e-6)
    t = out.table
    assert isinstance(t, pd.DataFrame) and len(t) == 4
    assert set(t.columns) >= {"rank", "l2", "rmse", "rmse_std", "mae", "split0_rmse", "split2_rmse", "rank_test"}
    b = int(np.argmin(t["rmse"]))
    assert out.best == {"rank": int(t["rank"][b]), "l2": t["l2"][b]} and t["rank_test"][b] == 1
    assert type(out.best["rank"]) is int and type(out.best["l2"]) is float  # prints as given, not np.float64(...)
    np.testing.assert_allclose(t["rmse"], out.rmse.mean(axis=0).ravel())
    # the refit is the best setting fitted on all the data
    ref = jmf.fit(ratings, jmf.solvers.ratings_als(l2=out.best["l2"], solve="cholesky"), rank=out.best["rank"],
                  key=KW["key"], init="normal", max_iter=4, tol=None, progress=False)
    np.testing.assert_allclose(out.factors.W, ref.factors.W, rtol=1e-6, atol=1e-9)
    # refit="joint": all the data is one more matrix of the same call; same scores (the folds are padded)
    joint = grid_search(ratings, solver, [2, 3], n_splits=3, **KW)
    np.testing.assert_allclose(joint.rmse, out.rmse, rtol=1e-5)
    assert joint.cv[0].result.loss.shape == (4, 2, 2) and joint.best == out.best
    np.testing.assert_allclose(joint.factors.W, ref.factors.W, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(joint.factors.col_bias, ref.factors.col_bias, rtol=1e-4, atol=1e-5)


def test_search_compiles_a_handful_of_programs_once(ratings):
    solver = jmf.solvers.ratings_als(l2=np.array([0.1, 1.0]), count_scaled=True)
    grid_search(ratings, solver, [2, 4], n_splits=3, **KW)  # programs of these shapes exist now
    other = jmf.Sparse(ratings.rows, ratings.cols, np.asarray(ratings.vals) * 0.5 + 1, ratings.shape)
    with compilations() as log:  # another grid of the same size, other data values, another seed
        out = grid_search(other, jmf.solvers.ratings_als(l2=np.array([0.2, 3.0]), count_scaled=True), [2, 4],
                          n_splits=3, max_iter=4, key=5)
    assert log.programs == 0
    assert np.all(np.isfinite(out.rmse))


def test_fresh_search_compiles_few_programs(ratings):
    small = jmf.model_selection.subset(ratings, np.arange(ratings.nnz - 7))  # shapes no other test uses
    with compilations() as log:
        grid_search(small, jmf.solvers.als(l2=np.array([0.1, 1.0, 2.0]), biases=True), [1, 3], n_splits=2,
                    **KW)
    assert log.programs <= 8  # search start/advance, member means, evaluation, refit start/advance


def test_bad_arguments_fail_before_compute(ratings):
    s = jmf.solvers.ratings_als()
    with pytest.raises(ValueError, match="ranks"):
        grid_search(ratings, s, [0, 2])
    with pytest.raises(ValueError, match="ranks"):
        grid_search(ratings, s, [])
    with pytest.raises(TypeError, match="Solver"):
        grid_search(ratings, "als", [2])
    with pytest.raises(TypeError, match="Sparse"):
        grid_search(np.ones((4, 4)), s, [2])
    with pytest.raises(ValueError, match="clip"):
        grid_search(ratings, s, [2], clip=(5, 1))
    with pytest.raises(ValueError, match="sparse"):
        grid_search(ratings, s._replace(data_kinds=("dense",)), [2])
    with pytest.raises(ValueError, match="pad_ranks"):
        grid_search(ratings, s, [2], pad_ranks="yes")


def test_unpadded_ranks_give_the_padded_search(ratings):
    solver = jmf.solvers.ratings_als(l2=np.array([0.05, 0.5]), solve="cholesky")
    padded = grid_search(ratings, solver, [2, 3], n_splits=3, pad_ranks=True, **KW)
    alone = grid_search(ratings, solver, [2, 3], n_splits=3, pad_ranks=False, **KW)
    assert len(alone.cv) == 2 and padded.cv[0].axes == ("matrix", "param", "rank")
    assert [c.axes for c in alone.cv] == [("matrix", "param")] * 2  # one rank per call: no rank axis
    assert [c.result.factors.W.shape[-1] for c in alone.cv] == [2, 3]  # no padded columns
    np.testing.assert_allclose(alone.rmse, padded.rmse, rtol=1e-5)
    np.testing.assert_allclose(alone.mae, padded.mae, rtol=1e-5)
    assert alone.best == padded.best
    pd.testing.assert_frame_equal(alone.table, padded.table, rtol=1e-5)
    np.testing.assert_allclose(alone.factors.W, padded.factors.W, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(alone.factors.col_bias, padded.factors.col_bias, rtol=1e-4, atol=1e-5)


def test_unpadded_ranks_of_a_sampler(ratings):
    """Bayesian PMF scored by its posterior mean, a call per rank (its draws depend on the width, so a padded
    search is another sample, not the same numbers)."""
    out = grid_search(ratings, jmf.solvers.bpmf(burn_in=1, n_keep=2), [1, 2], n_splits=2, max_iter=3, key=1,
                      pad_ranks=False)
    assert len(out.cv) == 2 and out.rmse.shape == (2, 1, 2) and np.all(np.isfinite(out.rmse))
    assert np.all(out.rmse < 1.5 * np.std(np.asarray(ratings.vals)))  # better than a constant guess
    pred = out.factors.predict(np.asarray(ratings.rows), np.asarray(ratings.cols))
    assert np.all(np.isfinite(np.asarray(pred)))


def test_auto_pads_small_searches_and_splits_large_ones_of_unequal_ranks():
    from jmf._src.model_selection import _unpadded_pays

    ml_small_folds = (5, 80_669)  # 5 folds of MovieLens latest-small's training entries
    assert _unpadded_pays([8, 16, 32, 64], ml_small_folds, 6, 10)  # 3x the work padded, ~1e12 FLOPs
    assert not _unpadded_pays([8, 16, 32, 64], (3, 900), 6, 10)  # too small to pay for 3 more programs
    assert not _unpadded_pays([48, 64], ml_small_folds, 6, 10)  # padding costs < 2x
    assert not _unpadded_pays([64], ml_small_folds, 6, 10)
