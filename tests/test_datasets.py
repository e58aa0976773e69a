"""Datasets: MovieLens formats written in tmp dirs, id re-indexing, safe extraction, synthetic ratings."""

import hashlib
import os
import zipfile

import jax
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import jmf
from jmf.datasets import (
    ARCHIVES,
    extract_zip,
    index_ratings,
    movielens,
    movielens_path,
    ratings_from_scipy,
    read_ratings,
    synthetic_ratings,
)

from .conftest import movielens_small_path

TRIPLES = [(1, 10, 4.0, 100), (1, 30, 3.5, 101), (7, 10, 5.0, 102), (3, 20, 1.0, 103), (7, 20, 2.5, 104)]


def _write(folder, variant):
    os.makedirs(folder, exist_ok=True)
    if variant == "100k":
        text = "".join(f"{u}\t{i}\t{int(r) if r == int(r) else r}\t{t}\n" for u, i, r, t in TRIPLES)
        name = "u.data"
    elif variant == "1m":
        text = "".join(f"{u}::{i}::{r:g}::{t}\n" for u, i, r, t in TRIPLES)
        name = "ratings.dat"
    else:
        text = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in TRIPLES)
        name = "ratings.csv"
    path = os.path.join(folder, name)
    with open(path, "w") as fh:
        fh.write(text)
    return path


def _check(r):
    assert r.data.shape == (3, 3)
    np.testing.assert_array_equal(r.users, [1, 3, 7])
    np.testing.assert_array_equal(r.items, [10, 20, 30])
    dense = np.full((3, 3), np.nan)
    for u, i, v, _ in TRIPLES:
        dense[np.searchsorted([1, 3, 7], u), np.searchsorted([10, 20, 30], i)] = v
    got = np.full((3, 3), np.nan)
    got[np.asarray(r.data.rows), np.asarray(r.data.cols)] = np.asarray(r.data.vals)
    np.testing.assert_array_equal(got, dense)


@pytest.mark.parametrize("variant", ["100k", "1m", "latest-small", "25m", "20m"])
def test_movielens_official_layouts(tmp_path, variant):
    sub = ARCHIVES[variant][1]
    _write(str(tmp_path / sub), variant)
    _check(movielens(variant, path=str(tmp_path)))  # parent folder
    _check(movielens(variant, path=str(tmp_path / sub)))  # the folder itself
    df = movielens(variant, path=str(tmp_path), as_frame=True)
    assert list(df.columns) == ["user", "item", "rating", "timestamp"]
    assert len(df) == len(TRIPLES)


def test_movielens_cache_env_offline(tmp_path, monkeypatch):
    _write(str(tmp_path / "ml-100k"), "100k")
    monkeypatch.setenv("JMF_DATA", str(tmp_path))
    _check(movielens("ml-100k"))
    with pytest.raises(FileNotFoundError, match="download_if_missing=False"):
        movielens("1m", download_if_missing=False)


def test_movielens_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown MovieLens variant"):
        movielens("3m", path=str(tmp_path))
    with pytest.raises(TypeError, match="variant"):
        movielens(100)
    with pytest.raises(FileNotFoundError, match="no MovieLens"):
        movielens("100k", path=str(tmp_path))


def test_cached_archive_is_verified_and_extracted(tmp_path, monkeypatch):
    """A cached zip whose digest matches a caller-given sha256 is extracted without the network."""
    src = tmp_path / "src"
    _write(str(src / "ml-100k"), "100k")
    home = tmp_path / "home"
    home.mkdir()
    zpath = home / "ml-100k.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(src / "ml-100k" / "u.data", "ml-100k/u.data")
    digest = hashlib.sha256(zpath.read_bytes()).hexdigest()

    def no_network(*a, **k):
        raise AssertionError("must not download")

    import sys

    monkeypatch.setattr(sys.modules["jmf._src.datasets.movielens"], "download", no_network)
    path = movielens_path("100k", cache=str(home), sha256=digest)
    assert path.endswith(os.path.join("ml-100k", "u.data"))
    _check(movielens("100k", cache=str(home)))


def test_download_rejects_wrong_digest(tmp_path):
    from jmf.datasets import download

    src = tmp_path / "payload.bin"
    src.write_bytes(b"hello")
    with pytest.raises(ValueError, match="SHA-256"):
        download(src.as_uri(), str(tmp_path / "out.bin"), sha256="0" * 64)
    assert not (tmp_path / "out.bin").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]
    good = hashlib.sha256(b"hello").hexdigest()
    download(src.as_uri(), str(tmp_path / "out.bin"), sha256=good, size=5)
    assert (tmp_path / "out.bin").read_bytes() == b"hello"


@pytest.mark.parametrize("bad, exc, match", [("", ValueError, "sha256 is empty"),
                                              ("abc", ValueError, "64 hex characters"),
                                              (True, TypeError, "sha256 must be")])
def test_empty_digest_is_an_error_not_no_check(tmp_path, monkeypatch, bad, exc, match):
    """sha256="" used to skip the verification silently; only None means "no checksum"."""
    import sys

    from jmf.datasets import download

    def no_network(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(sys.modules["jmf._src.datasets.movielens"], "download", no_network)
    if bad is not True:  # movielens_path's True means "the pinned digest"
        with pytest.raises(exc, match=match):
            movielens_path("100k", cache=str(tmp_path), sha256=bad)
    src = tmp_path / "payload.bin"
    src.write_bytes(b"hello")
    with pytest.raises(exc, match=match):
        download(src.as_uri(), str(tmp_path / "out.bin"), sha256=bad)
    assert not (tmp_path / "out.bin").exists()


def _zip_with(tmp_path, text):
    z = tmp_path / f"a{len(text)}.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ml-100k/u.data", text)
    return z


def test_extract_never_replaces_user_data(tmp_path):
    dest = tmp_path / "home"
    (dest / "ml-100k").mkdir(parents=True)
    (dest / "ml-100k" / "my-notes.txt").write_text("mine")  # a folder jmf did not write
    with pytest.raises(FileExistsError, match="not extracted by jmf"):
        extract_zip(str(_zip_with(tmp_path, "1\t1\t5\t0\n")), str(dest))  # used to delete the folder
    assert (dest / "ml-100k" / "my-notes.txt").read_text() == "mine"
    assert sorted(os.listdir(dest)) == ["ml-100k"]  # no temporary folder left


def test_extract_replaces_its_own_previous_extraction(tmp_path):
    dest = tmp_path / "home"
    extract_zip(str(_zip_with(tmp_path, "1\t1\t5\t0\n")), str(dest))
    assert (dest / "ml-100k" / ".jmf-extracted").exists()
    extract_zip(str(_zip_with(tmp_path, "1\t1\t5\t0\n2\t2\t4\t0\n")), str(dest))
    assert (dest / "ml-100k" / "u.data").read_text().count("\n") == 2
    assert sorted(os.listdir(dest)) == ["ml-100k"]


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_extract_refuses_path_traversal(tmp_path, member):
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ok/file.txt", "fine")
        zf.writestr(member, "evil")
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match="unsafe|escapes"):
        extract_zip(str(z), str(dest))
    assert not (tmp_path / "evil.txt").exists()
    assert not (dest / "ok").exists()  # nothing extracted at all


def test_extract_refuses_symlinks(tmp_path):
    z = tmp_path / "link.zip"
    info = zipfile.ZipInfo("data/link")
    info.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match="symbolic link"):
        extract_zip(str(z), str(tmp_path / "dest"))


@pytest.mark.parametrize("fname,content", [
    ("u1.base", "1\t10\t4\t100\n1\t30\t3.5\t101\n7\t10\t5\t102\n3\t20\t1\t103\n7\t20\t2.5\t104\n"),
    ("r.dat", "1::10::4::100\n1::30::3.5::101\n7::10::5::102\n3::20::1::103\n7::20::2.5::104\n"),
    ("r.csv", "userId,movieId,rating,timestamp\n1,10,4,100\n1,30,3.5,101\n7,10,5,102\n3,20,1,103\n7,20,2.5,104\n"),
    ("r.txt", "1 10 4\n1 30 3.5\n7 10 5\n3 20 1\n7 20 2.5\n"),
    ("r2.csv", "1,10,4\n1,30,3.5\n7,10,5\n3,20,1\n7,20,2.5\n"),
    ("r3.dat", "1::10::4\n1::30::3.5\n7::10::5\n3::20::1\n7::20::2.5\n"),
])
def test_read_ratings_sniffs_formats(tmp_path, fname, content):
    p = tmp_path / fname
    p.write_text(content)
    df = read_ratings(str(p))
    assert list(df.columns[:3]) == ["user", "item", "rating"]
    _check(index_ratings(df))


def test_read_ratings_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_ratings(str(tmp_path / "nope.csv"))
    p = tmp_path / "two.csv"
    p.write_text("1,2\n3,4\n")
    with pytest.raises(ValueError, match="at least 3 fields"):
        read_ratings(str(p))
    with pytest.raises(ValueError, match="format must be"):
        read_ratings(str(p), format="xlsx")


def test_index_ratings_string_ids_and_encode():
    df = pd.DataFrame({"who": ["bob", "alice", "bob", "carol"], "what": ["x", "y", "y", "x"], "stars": [1, 2, 3, 4]})
    r = index_ratings(df, user="who", item="what", rating="stars")
    assert r.data.shape == (3, 2)
    np.testing.assert_array_equal(r.users, ["alice", "bob", "carol"])
    test = pd.DataFrame({"who": ["bob", "dave"], "what": ["y", "x"], "stars": [5.0, 1.0]})
    rows, cols, vals = r.encode(test, user="who", item="what", rating="stars")
    np.testing.assert_array_equal(rows, [1, -1])
    np.testing.assert_array_equal(cols, [1, 0])
    sub = r.to_sparse(test, user="who", item="what", rating="stars")
    assert sub.nnz == 1 and sub.shape == (3, 2)
    with pytest.raises(ValueError, match="unknown"):
        r.to_sparse(test, user="who", item="what", rating="stars", drop_unknown=False)


def test_index_ratings_bad_input():
    with pytest.raises(ValueError, match="empty"):
        index_ratings(pd.DataFrame({"user": [], "item": [], "rating": []}))
    with pytest.raises(ValueError, match="not in the DataFrame"):
        index_ratings(pd.DataFrame({"user": [1], "item": [2], "rating": [3.0]}), user="uid")
    with pytest.raises(TypeError, match="numeric"):
        index_ratings(pd.DataFrame({"user": [1], "item": [2], "rating": ["good"]}))
    with pytest.raises(ValueError, match="duplicate"):
        index_ratings(pd.DataFrame({"user": [1, 1], "item": [2, 2], "rating": [3.0, 4.0]}))
    with pytest.raises(ValueError, match="missing"):
        index_ratings(pd.DataFrame({"user": [1.0, np.nan], "item": [2, 3], "rating": [3.0, 4.0]}))
    with pytest.raises(TypeError, match="DataFrame"):
        index_ratings(np.zeros((3, 3)))


def test_ratings_from_scipy_and_sparse_from_pandas():
    M = sp.random(20, 15, density=0.2, random_state=0, format="csr")
    r = ratings_from_scipy(M)
    np.testing.assert_allclose(r.data.to_scipy().toarray(), M.toarray(), rtol=1e-6)
    df = pd.DataFrame({"user": [5, 9], "item": [0, 4], "rating": [1.0, 2.0]})
    r2 = index_ratings(df)
    assert jmf.Sparse.from_pandas(pd.DataFrame({"u": np.asarray(r2.data.rows), "i": np.asarray(r2.data.cols),
                                                "v": np.asarray(r2.data.vals)})).shape == (2, 2)


def test_synthetic_ratings_properties():
    s = synthetic_ratings(jax.random.key(3), n_users=300, n_items=200, n_ratings=6000, rank=4)
    d = s.data
    assert d.shape == (300, 200) and d.nnz == 6000
    v = np.asarray(d.vals)
    assert v.min() >= 1 and v.max() <= 5
    np.testing.assert_allclose(np.round(v * 2) / 2, v)  # half stars
    rows, cols = np.asarray(d.rows), np.asarray(d.cols)
    assert np.unique(rows.astype(np.int64) * 200 + cols).size == 6000  # no repeats
    ucount = np.bincount(rows, minlength=300)
    assert ucount.min() >= 1 and np.bincount(cols, minlength=200).min() >= 1
    assert ucount.max() > 8 * np.median(ucount)  # heavy tail
    # ratings follow the truth: correlation of the noiseless truth with the ratings is high
    t = s.truth
    pred = t.offset + t.row_bias[rows] + t.col_bias[cols] + np.einsum("pk,kp->p", t.W[rows], t.H[:, cols])
    assert np.corrcoef(pred, v)[0, 1] > 0.7
    # same key -> same data; other key -> different
    s2 = synthetic_ratings(jax.random.key(3), n_users=300, n_items=200, n_ratings=6000, rank=4)
    np.testing.assert_array_equal(np.asarray(s2.data.vals), v)
    s3 = synthetic_ratings(jax.random.key(4), n_users=300, n_items=200, n_ratings=6000, rank=4)
    assert not np.array_equal(np.asarray(s3.data.rows), rows)


def test_synthetic_bad_input():
    with pytest.raises(ValueError, match="n_ratings"):
        synthetic_ratings(0, n_users=10, n_items=10, n_ratings=5)
    with pytest.raises(ValueError, match="half"):
        synthetic_ratings(0, n_users=10, n_items=10, n_ratings=60)
    with pytest.raises(ValueError, match="n_users"):
        synthetic_ratings(0, n_users=0)
    with pytest.raises(TypeError, match="key"):
        synthetic_ratings("seed")


def test_real_movielens_small():
    path = movielens_small_path()
    r = movielens("latest-small", path=path)
    assert r.data.shape == (610, 9724) and r.data.nnz == 100836
