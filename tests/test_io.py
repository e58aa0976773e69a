"""Saving/loading factors and results without pickle, atomically; reading input matrices."""

import os

import jax
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

import jmf
from jmf.io import atomic_write, load_factors, load_matrix, load_result, save_factors, save_result


def _factors(rng, biases=False):
    W, H = rng.standard_normal((5, 2)), rng.standard_normal((2, 4))
    if biases:
        return jmf.Factors(W, H, rng.standard_normal(5), rng.standard_normal(4), np.float64(3.5))
    return jmf.Factors(W, H)


@pytest.mark.parametrize("biases", [False, True])
def test_factors_roundtrip(tmp_path, rng, biases):
    f = _factors(rng, biases)
    path = save_factors(tmp_path / "model", f, metadata={"solver": "als", "rank": 2})
    assert path.endswith("model.npz") and os.path.exists(path)
    g, meta = load_factors(path, with_metadata=True)
    assert meta == {"solver": "als", "rank": 2}
    path = save_factors(tmp_path / "ids", f, arrays={"user_ids": np.array(["ann", "bob", "cy", "di", "ed"]),
                                                     "item_ids": np.arange(4) * 10})
    _, meta = load_factors(path, with_metadata=True)
    assert list(meta["arrays"]["user_ids"]) == ["ann", "bob", "cy", "di", "ed"]
    assert list(meta["arrays"]["item_ids"]) == [0, 10, 20, 30]
    for name in ("W", "H", "row_bias", "col_bias", "offset"):
        a, b = getattr(f, name), getattr(g, name)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(np.asarray(a), b)
    # Readable by numpy with pickle disabled: no object arrays inside.
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)


def test_result_roundtrip(tmp_path, rng):
    A = rng.standard_normal((6, 5))
    res = jmf.fit(A, jmf.solvers.adam(0.05), rank=2, key=jax.random.key(0), max_iter=50, progress=False)
    path = save_result(tmp_path / "res.npz", res, metadata={"note": "x"})
    back = load_result(path)
    np.testing.assert_allclose(back.loss, np.asarray(res.loss))
    np.testing.assert_allclose(back.loss_history, np.asarray(res.loss_history))
    assert int(back.n_iter) == int(res.n_iter) and int(back.status) == int(res.status)
    assert back.status_name == res.status_name
    np.testing.assert_allclose(back.factors.W, np.asarray(res.factors.W))

    many = jmf.fit_many(A, jmf.solvers.adam(0.05), ranks=[1, 2], n_restarts=3, key=jax.random.key(0),
                        max_iter=20, progress=False)
    back = load_result(save_result(tmp_path / "many.npz", many))
    assert back.axes == ("rank", "restart") and list(back.ranks) == [1, 2]
    np.testing.assert_allclose(back.loss, np.asarray(many.loss))


def test_failed_write_keeps_existing_file(tmp_path, rng):
    path = save_factors(tmp_path / "keep.npz", _factors(rng))
    before = open(path, "rb").read()

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with atomic_write(path) as fh:
            fh.write(b"partial garbage")
            raise Boom
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.npz"]  # no temp file left behind
    # Unsaveable content (object array) fails before the target is touched.
    bad = jmf.Factors(np.array([[object()]], dtype=object), np.ones((1, 1)))
    with pytest.raises(TypeError, match="pickle"):
        save_factors(path, bad)
    assert open(path, "rb").read() == before
    with pytest.raises(FileExistsError):
        save_factors(path, _factors(rng), overwrite=False)
    assert open(path, "rb").read() == before


def test_pickled_file_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, W=np.array([{"a": 1}], dtype=object), H=np.ones((1, 1)))
    with pytest.raises(ValueError, match="pickle"):
        load_factors(path)


def test_load_matrix_formats(tmp_path, rng):
    A = rng.standard_normal((4, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", A)
    np.savez(tmp_path / "a.npz", A=A)
    np.savetxt(tmp_path / "a.csv", A, delimiter=",")
    scipy.io.mmwrite(str(tmp_path / "a.mtx"), sp.coo_matrix(A))
    for name in ("a.npy", "a.npz", "a.csv"):
        data, info = load_matrix(tmp_path / name)
        assert isinstance(data, jmf.Dense) and info["shape"] == (4, 3)
        np.testing.assert_allclose(np.asarray(data.A), A, rtol=1e-6)
    data, info = load_matrix(tmp_path / "a.mtx")
    assert isinstance(data, jmf.Sparse) and data.nnz == 12
    np.testing.assert_allclose(data.to_scipy().toarray(), A, rtol=1e-6)

    # Missing entries in a CSV become weight-0 entries.
    (tmp_path / "m.csv").write_text("1,2,\n3,nan,4\n")
    data, info = load_matrix(tmp_path / "m.csv")
    assert info["missing"] == 2
    np.testing.assert_array_equal(np.asarray(data.weights), [[1, 1, 0], [1, 0, 1]])


def test_load_ratings(tmp_path):
    (tmp_path / "r.csv").write_text("userId,movieId,rating,timestamp\n10,7,4.0,1\n10,9,3.5,2\n42,7,1.0,3\n")
    data, info = load_matrix(tmp_path / "r.csv")
    assert isinstance(data, jmf.Sparse) and data.shape == (2, 2) and data.nnz == 3
    assert list(info["user_ids"]) == [10, 42] and list(info["item_ids"]) == [7, 9]
    np.testing.assert_allclose(data.to_scipy().toarray(), [[4.0, 3.5], [1.0, 0.0]])
    (tmp_path / "u.data").write_text("1\t5\t3\t0\n2\t5\t4\t0\n2\t6\t5\t0\n")
    data, info = load_matrix(tmp_path / "u.data")
    assert info["kind"] == "ratings" and data.shape == (2, 2)


def test_load_matrix_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_matrix(tmp_path / "nope.npy")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="unknown file type"):
        load_matrix(tmp_path / "x.json")
    np.save(tmp_path / "v.npy", np.ones(3))
    with pytest.raises(ValueError, match="2-D"):
        load_matrix(tmp_path / "v.npy")
    (tmp_path / "h.csv").write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(ValueError, match="not a rectangular numeric table"):
        load_matrix(tmp_path / "h.csv")
    (tmp_path / "empty.npy").write_bytes(b"")  # was a raw EOFError
    with pytest.raises(ValueError, match="empty.npy.*not a readable .npy file"):
        load_matrix(tmp_path / "empty.npy")
    np.save(tmp_path / "big.npy", np.array([[1e300, 1.0]]))  # was "contains 1 inf values"
    with pytest.raises(ValueError, match="beyond float32's range"):
        load_matrix(tmp_path / "big.npy")


def test_dense_csv_header_is_skipped(tmp_path):
    (tmp_path / "h.csv").write_text("# a comment\nalpha,beta,gamma\n1,2,3\n4,,6\n")  # was refused
    data, info = load_matrix(tmp_path / "h.csv")
    assert info["shape"] == (2, 3) and info["header"] == ["alpha", "beta", "gamma"] and info["missing"] == 1
    np.testing.assert_array_equal(np.asarray(data.A), [[1, 2, 3], [4, 0, 6]])


def test_duplicate_ratings_are_counted(tmp_path):
    (tmp_path / "r.csv").write_text("user,item,rating\n1,1,4\n1,1,5\n2,1,3\n1,1,2\n")
    data, info = load_matrix(tmp_path / "r.csv")
    assert info["duplicates"] == 2 and data.nnz == 2
    np.testing.assert_allclose(data.to_scipy().toarray(), [[2.0], [3.0]])  # the last one is kept


def _corrupt(tmp_path, rng, how):
    path = save_factors(tmp_path / "m.npz", _factors(rng, biases=True))
    raw = bytearray(open(path, "rb").read())
    if how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "empty":
        raw = b""
    else:  # a flipped byte inside W's data: zip's CRC catches it
        raw[120] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    return path


@pytest.mark.parametrize("how", ["truncated", "tampered", "empty"])
def test_corrupt_npz_is_a_clear_value_error(tmp_path, rng, how):
    path = _corrupt(tmp_path, rng, how)  # raised BadZipFile / EOFError
    for load in (load_factors, load_result, load_matrix):
        with pytest.raises(ValueError, match=r"m\.npz.*not a readable \.npz archive"):
            load(path)


@pytest.mark.parametrize("arrays, match", [
    (dict(W=np.ones((5, 2)), H=np.ones((3, 4))), r"W \(5, 2\) and H \(3, 4\) do not form"),
    (dict(W=np.ones(5), H=np.ones((2, 4))), "do not form"),
    (dict(W=np.ones((5, 2)), H=np.ones((2, 4)), row_bias=np.ones(4)), r"row_bias has shape \(4,\); expected \(5,\)"),
    (dict(W=np.ones((5, 2)), H=np.ones((2, 4)), col_bias=np.ones((4, 1))), "col_bias"),
    (dict(W=np.ones((5, 2)), H=np.ones((2, 4)), offset=np.ones(2)), "offset"),
    (dict(W=np.array([["a", "b"]]), H=np.ones((2, 4))), "expected numbers"),
])
def test_loaded_factor_shapes_are_checked(tmp_path, arrays, match):
    np.savez(tmp_path / "f.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_factors(tmp_path / "f.npz")


def test_load_finds_the_npz_suffix_save_added(tmp_path, rng):
    save_factors(tmp_path / "x", _factors(rng))  # writes x.npz
    assert load_factors(tmp_path / "x").W.shape == (5, 2)  # was "no such file"
    save_result(tmp_path / "r", jmf.fit(np.eye(3), jmf.solvers.svd(), rank=1, key=0, progress=False))
    assert load_result(tmp_path / "r").factors.W.shape == (3, 1)


def test_saved_files_follow_the_umask(tmp_path, rng):
    old = os.umask(0o022)
    try:
        path = save_factors(tmp_path / "u.npz", _factors(rng))
        assert os.stat(path).st_mode & 0o777 == 0o644  # was 0o600 (mkstemp)
        os.umask(0o077)
        path = save_factors(tmp_path / "v.npz", _factors(rng))
        assert os.stat(path).st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_stale_temp_files_of_a_killed_save_are_removed(tmp_path, rng):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    stale = tmp_path / f".m.npz.tmp-{pid}-0123abcd"
    live = tmp_path / f".m.npz.tmp-{os.getppid()}-0123abcd"  # a live process: maybe still writing
    other = tmp_path / f".other.npz.tmp-{pid}-0123abcd"  # another target's
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    save_factors(tmp_path / "m.npz", _factors(rng))
    assert not stale.exists() and live.exists() and other.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["m.npz", live.name, other.name])

