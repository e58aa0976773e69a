"""Metrics, splits and recommendation against straightforward NumPy references."""

import jax
import numpy as np
import pytest

import jmf
from jmf.cf import predict, recommend
from jmf.metrics import mae, ranking_metrics, rating_metrics, rmse
from jmf.model_selection import kfold, leave_k_out, train_test_split


def _random_sparse(rng, m=40, n=30, density=0.3):
    mask = rng.random((m, n)) < density
    mask[np.arange(m), rng.integers(0, n, m)] = True
    r, c = np.nonzero(mask)
    v = rng.integers(1, 11, r.size) / 2.0
    return jmf.Sparse(r, c, v, (m, n))


def _factors(rng, m, n, k=3, biases=True):
    f = jmf.Factors(rng.standard_normal((m, k)), rng.standard_normal((k, n)))
    if biases:
        f = f._replace(row_bias=rng.standard_normal(m), col_bias=rng.standard_normal(n), offset=np.float64(3.0))
    return jax.tree_util.tree_map(np.asarray, f)


def test_rmse_mae_reference(rng):
    t, p, w = rng.standard_normal(50), rng.standard_normal(50), rng.random(50)
    assert rmse(t, p) == pytest.approx(np.sqrt(np.mean((t - p) ** 2)))
    assert mae(t, p) == pytest.approx(np.mean(np.abs(t - p)))
    assert rmse(t, p, w) == pytest.approx(np.sqrt(np.sum(w * (t - p) ** 2) / w.sum()))
    with pytest.raises(ValueError, match="same shape"):
        rmse(t, p[:3])
    with pytest.raises(ValueError, match="empty"):
        mae([], [])


@pytest.mark.x64  # against a float64 NumPy reference to 1e-12
def test_predict_unknown_fallback(rng):
    f = _factors(rng, 5, 4)
    rows = np.array([0, -1, 2, -1, 4])
    cols = np.array([1, 2, -1, -1, 3])
    got = np.asarray(predict(f, rows, cols))
    full = f.offset + f.row_bias[:, None] + f.col_bias[None, :] + f.W @ f.H
    ref = [full[0, 1], f.offset + f.col_bias[2], f.offset + f.row_bias[2], f.offset, full[4, 3]]
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(predict(f, rows, cols, clip=(1.0, 5.0))), np.clip(ref, 1, 5))
    m = rating_metrics(f, (rows, cols, np.full(5, 3.0)))
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((np.array(ref) - 3) ** 2)))
    with pytest.raises(ValueError, match="same length"):
        predict(f, rows, cols[:2])


def _ref_ranking(f, test, train, k, threshold=None):
    m, n = test.shape
    S = f.W @ f.H + (0 if f.col_bias is None else f.col_bias[None, :])
    Tr = np.zeros((m, n), bool)
    if train is not None:
        Tr[np.asarray(train.rows), np.asarray(train.cols)] = True
    Rel = np.zeros((m, n), bool)
    keep = np.ones(test.nnz, bool) if threshold is None else np.asarray(test.vals) >= threshold
    Rel[np.asarray(test.rows)[keep], np.asarray(test.cols)[keep]] = True
    P, R, N, AP, RR, AUC = [], [], [], [], [], []
    for u in range(m):
        nrel = Rel[u].sum()
        if nrel == 0:
            continue
        s = np.where(Tr[u], -np.inf, S[u])
        top = np.argsort(-s, kind="stable")[:k]
        hit = Rel[u, top]
        P.append(hit.sum() / k)
        R.append(hit.sum() / nrel)
        dcg = np.sum(hit / np.log2(np.arange(k) + 2))
        idcg = np.sum(1 / np.log2(np.arange(min(k, nrel)) + 2))
        N.append(dcg / idcg)
        AP.append(sum(hit[r] * hit[: r + 1].sum() / (r + 1) for r in range(k)) / min(k, nrel))
        RR.append(1.0 / (np.argmax(hit) + 1) if hit.any() else 0.0)
        pos = np.nonzero(Rel[u])[0]
        negs = np.nonzero(~Rel[u] & ~Tr[u])[0]
        AUC.append(np.mean([[s[i] > s[j] for j in negs] for i in pos]) if negs.size else 1.0)
    return np.mean(P), np.mean(R), np.mean(N), len(P), np.mean(AP), np.mean(RR), np.mean(AUC)


@pytest.mark.parametrize("threshold,batch", [(None, 7), (4.0, 512)])
def test_ranking_metrics_reference(rng, threshold, batch):
    data = _random_sparse(rng)
    train, test = train_test_split(data, 0.3, key=1)
    f = _factors(rng, *data.shape)
    got = ranking_metrics(f, test, k=5, train=train, threshold=threshold, batch_size=batch)
    p, r, n, nu, ap, rr, auc = _ref_ranking(f, test, train, 5, threshold)
    assert got["n_users"] == nu
    assert got["precision"] == pytest.approx(p)
    assert got["recall"] == pytest.approx(r)
    assert got["ndcg"] == pytest.approx(n)
    assert got["map"] == pytest.approx(ap)
    assert got["mrr"] == pytest.approx(rr)
    assert got["auc"] == pytest.approx(auc)
    assert jmf.metrics.map_at_k(f, test, 5, train, threshold) == pytest.approx(ap)
    assert jmf.metrics.mrr_at_k(f, test, 5, train, threshold) == pytest.approx(rr)
    assert jmf.metrics.auc(f, test, train, threshold) == pytest.approx(auc)


def test_ranking_perfect_model_has_ndcg_one(rng):
    m, n = 12, 20
    rel = rng.random((m, n)) < 0.2
    rel[np.arange(m), np.arange(m)] = True
    r, c = np.nonzero(rel)
    test = jmf.Sparse(r, c, np.ones(r.size), (m, n))
    f = jmf.Factors(rel.astype(np.float64), np.eye(n))  # score = relevance
    out = ranking_metrics(f, test, k=3, per_user=True)
    assert out["ndcg"] == pytest.approx(1.0)
    assert out["map"] == out["mrr"] == out["auc"] == pytest.approx(1.0)
    assert out["auc_per_user"].shape == out["users"].shape
    worst = ranking_metrics(jmf.Factors(-rel.astype(np.float64), np.eye(n)), test, k=3)
    assert worst["auc"] == pytest.approx(0.0) and worst["mrr"] == worst["map"] == 0.0
    assert out["recall"] == pytest.approx(np.mean(np.minimum(3, rel.sum(1)) / rel.sum(1)))


def test_ranking_bad_input(rng):
    data = _random_sparse(rng)
    f = _factors(rng, *data.shape)
    with pytest.raises(ValueError, match="k must be"):
        ranking_metrics(f, data, k=0)
    with pytest.raises(ValueError, match="shape"):
        ranking_metrics(_factors(rng, 3, 3), data)
    with pytest.raises(ValueError, match="relevant"):
        ranking_metrics(f, data, threshold=100.0)


@pytest.mark.x64  # scores against a float64 NumPy reference to 1e-7
def test_recommend_excludes_seen_and_matches_reference(rng):
    data = _random_sparse(rng)
    f = _factors(rng, *data.shape)
    users = np.array([3, 0, -1, 3, 39])
    items, scores = recommend(f, users, n=4, seen=data, batch_size=2)
    S = f.W @ f.H + f.col_bias[None, :]
    D = np.zeros(data.shape, bool)
    D[np.asarray(data.rows), np.asarray(data.cols)] = True
    for row, u in enumerate(users):
        s = f.col_bias.copy() if u < 0 else np.where(D[u], -np.inf, S[u])
        ref = np.argsort(-s, kind="stable")[:4]
        np.testing.assert_array_equal(np.asarray(items[row]), ref)
        np.testing.assert_allclose(np.asarray(scores[row]), s[ref])
    items2, _ = recommend(f, np.array([3]), n=4, exclude_seen=False)
    np.testing.assert_array_equal(np.asarray(items2[0]), np.argsort(-S[3], kind="stable")[:4])
    with pytest.raises(ValueError, match="seen"):
        recommend(f, users, n=4)
    with pytest.raises(ValueError, match="users must be in"):
        recommend(f, np.array([99]), n=2, exclude_seen=False)
    with pytest.raises(ValueError, match="n must be"):
        recommend(f, users, n=0, seen=data)


def test_train_test_split(rng):
    data = _random_sparse(rng)
    tr, te = train_test_split(data, 0.25, key=jax.random.key(0))
    assert tr.nnz + te.nnz == data.nnz and te.nnz == round(0.25 * data.nnz)
    lin = lambda s: set((np.asarray(s.rows).astype(np.int64) * 100 + np.asarray(s.cols)).tolist())
    assert lin(tr) | lin(te) == lin(data) and not (lin(tr) & lin(te))
    assert np.all(np.diff(np.asarray(tr.rows).astype(np.int64) * 100 + np.asarray(tr.cols)) > 0)  # sorted
    tr2, te2 = train_test_split(data, 0.25, key=0)
    np.testing.assert_array_equal(np.asarray(te.rows), np.asarray(te2.rows))
    _, te3 = train_test_split(data, 0.25, key=5)
    assert lin(te3) != lin(te)
    with pytest.raises(ValueError, match="test_size"):
        train_test_split(data, 1.5)
    with pytest.raises(TypeError, match="Sparse"):
        train_test_split(np.zeros((3, 3)))


def test_leave_k_out(rng):
    data = _random_sparse(rng)
    tr, te = leave_k_out(data, k=2, key=3, min_train=1)
    counts = np.bincount(np.asarray(data.rows), minlength=data.shape[0])
    tcounts = np.bincount(np.asarray(te.rows), minlength=data.shape[0])
    np.testing.assert_array_equal(tcounts, np.where(counts >= 3, 2, 0))
    assert tr.nnz + te.nnz == data.nnz
    with pytest.raises(ValueError, match="k must"):
        leave_k_out(data, k=0)


def test_kfold_partitions(rng):
    data = _random_sparse(rng)
    seen = np.zeros(data.nnz, int)
    lin_all = np.asarray(data.rows).astype(np.int64) * 100 + np.asarray(data.cols)
    for tr, te in kfold(data, 4, key=2):
        lin_te = np.asarray(te.rows).astype(np.int64) * 100 + np.asarray(te.cols)
        seen[np.searchsorted(lin_all, lin_te)] += 1
        assert tr.nnz + te.nnz == data.nnz
    np.testing.assert_array_equal(seen, 1)
    with pytest.raises(ValueError, match="n_splits"):
        list(kfold(data, 1))


def test_auc_counts_ties_as_one_half_like_scikit_learn(rng):
    """Scores on three levels tie a lot: each user's AUC is scikit-learn's roc_auc_score over its candidates."""
    from sklearn.metrics import roc_auc_score

    data = _random_sparse(rng, m=25, n=40)
    train, test = train_test_split(data, 0.4, key=2)
    m, n = data.shape
    f = jmf.Factors(np.round(rng.standard_normal((m, 1))), np.ones((1, n)), None,
                    np.round(rng.standard_normal(n)).clip(-1, 1), np.float64(0.0))
    got = ranking_metrics(f, test, k=3, train=train, batch_size=4, per_user=True)
    S = np.asarray(f.W @ f.H + f.col_bias[None, :])
    seen = np.zeros((m, n), bool)
    seen[np.asarray(train.rows), np.asarray(train.cols)] = True
    rel = np.zeros((m, n), bool)
    rel[np.asarray(test.rows), np.asarray(test.cols)] = True
    want = [roc_auc_score(rel[u, ~seen[u]], S[u, ~seen[u]]) for u in got["users"]]
    assert len(set(np.round(S[0], 6))) <= 3  # ties by construction
    np.testing.assert_allclose(got["auc_per_user"], want, rtol=1e-6)
    flat = ranking_metrics(jmf.Factors(np.zeros((m, 2)), np.zeros((2, n))), test, k=3, train=train)
    assert flat["auc"] == pytest.approx(0.5)  # every score equal
