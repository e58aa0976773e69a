"""Data containers: construction, validation, pytree behaviour."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import jmf
from jmf._src.sklearn._validation import _enable_x64


def test_dense_basic_and_pytree():
    A = np.arange(6.0).reshape(2, 3)
    d = jmf.Dense(A)
    assert d.shape == (2, 3) and d.batch_shape == () and d.weights is None
    assert d.dtype == jnp.float32  # float64 input with x64 off (the suite's default) is stored as float32
    leaves, tree = jax.tree_util.tree_flatten(d)
    assert len(leaves) == 1
    d2 = jax.tree_util.tree_unflatten(tree, leaves)
    np.testing.assert_array_equal(d2.A, A)
    # passes through jit unchanged
    out = jax.jit(lambda x: x.A.sum())(d)
    assert float(out) == 15.0


def test_x64_marker_and_fixture_give_float64_arrays_and_compilations(request):
    """tests/conftest.py's opt-in: float64 inside, float32 again outside, and jit caches keep them apart."""
    double = jax.jit(lambda x: 2 * x)
    assert double(np.ones(2)).dtype == jnp.float32
    request.getfixturevalue("x64")  # the fixture turns x64 on for the rest of the test
    d = jmf.Dense(np.arange(6.0).reshape(2, 3))
    assert d.dtype == jnp.float64 and double(np.ones(2)).dtype == jnp.float64
    res = jmf.fit(d, jmf.solvers.als(), rank=1, key=0, max_iter=2, progress=False)
    assert res.factors.W.dtype == jnp.float64 and res.loss.dtype == jnp.float64


@pytest.mark.x64
def test_x64_marker_gives_float64():
    assert jmf.Dense(np.ones((2, 2))).dtype == jnp.float64 and jnp.ones(2).dtype == jnp.float64
    assert jax.jit(lambda x: 2 * x)(np.ones(2)).dtype == jnp.float64


def test_dense_integer_input_becomes_float():
    d = jmf.Dense(np.array([[1, 2], [3, 4]]))
    assert jnp.issubdtype(d.dtype, jnp.floating)


def test_dense_float32_kept():
    d = jmf.Dense(np.ones((3, 2), np.float32))
    assert d.dtype == jnp.float32


def test_dense_stack_is_vmappable():
    A = np.random.default_rng(0).random((5, 4, 3))
    d = jmf.Dense(A)
    assert d.batch_shape == (5,) and d.shape == (4, 3)
    sums = jax.vmap(lambda x: x.A.sum())(d)
    np.testing.assert_allclose(sums, A.sum(axis=(1, 2)), rtol=1e-6)  # float32 sums of 12 entries
    np.testing.assert_array_equal(d[2].A, A[2].astype(np.float32))  # stored as float32


def test_from_nan_marks_missing():
    A = np.array([[1.0, np.nan], [3.0, 4.0]])
    d = jmf.Dense.from_nan(A)
    np.testing.assert_array_equal(d.weights, [[1, 0], [1, 1]])
    assert float(d.A[0, 1]) == 0.0
    assert float(d.n_observed()) == 3.0
    np.testing.assert_allclose(float(d.mean()), 8 / 3)


@pytest.mark.parametrize(
    "A, match",
    [
        (np.ones(3), "2-D"),
        (np.ones((2, 2, 2, 2)), "2-D"),
        (np.ones((0, 3)), "empty"),
        (np.array([[1.0, np.nan]]), "NaN"),
        (np.array([[1.0, np.inf]]), "inf"),
    ],
)
def test_dense_value_errors(A, match):
    with pytest.raises(ValueError, match=match):
        jmf.Dense(A)


def test_dense_type_errors():
    with pytest.raises(TypeError, match="numeric"):
        jmf.Dense(np.array([["a", "b"]]))
    with pytest.raises(TypeError, match="complex"):
        jmf.Dense(np.ones((2, 2), complex))
    with pytest.raises(TypeError, match="Sparse.from_scipy"):
        jmf.Dense(sp.eye(3).tocsr())


def test_dense_weight_errors():
    A = np.ones((2, 2))
    with pytest.raises(ValueError, match="shape"):
        jmf.Dense(A, weights=np.ones((2, 3)))
    with pytest.raises(ValueError, match="nonnegative"):
        jmf.Dense(A, weights=-np.ones((2, 2)))
    with pytest.raises(ValueError, match="all zero"):
        jmf.Dense(A, weights=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        jmf.Dense(A, weights=np.array([[1.0, np.nan], [1, 1]]))
    with pytest.raises(ValueError, match="inf"):
        jmf.Dense.from_nan(np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match="entirely NaN"):
        jmf.Dense.from_nan(np.full((2, 2), np.nan))


def test_dense_nan_allowed_at_zero_weight():
    A = np.array([[1.0, np.nan], [2.0, 3.0]])
    d = jmf.Dense(A, weights=np.array([[1.0, 0.0], [1.0, 1.0]]))
    assert np.isfinite(np.asarray(d.A)).all()
    with pytest.raises(ValueError, match="observed entries"):
        jmf.Dense(A, weights=np.ones((2, 2)))


def test_sparse_from_triplets_sorted_and_typed():
    s = jmf.Sparse.from_triplets([2, 0, 1], [1, 2, 0], [3.0, 1.0, 2.0])
    assert s.shape == (3, 3) and s.nnz == 3
    np.testing.assert_array_equal(s.rows, [0, 1, 2])
    np.testing.assert_array_equal(s.cols, [2, 0, 1])
    np.testing.assert_array_equal(s.vals, [1.0, 2.0, 3.0])
    assert s.rows.dtype == jnp.int32
    leaves, tree = jax.tree_util.tree_flatten(s)
    s2 = jax.tree_util.tree_unflatten(tree, leaves)
    assert s2.shape == (3, 3)


def test_sparse_duplicates_policies():
    r, c, v = [0, 0, 1], [1, 1, 0], [1.0, 3.0, 5.0]
    with pytest.raises(ValueError, match=r"duplicate coordinates: \(0, 1\)"):
        jmf.Sparse(r, c, v, (2, 2))
    s = jmf.Sparse(r, c, v, (2, 2), duplicates="sum")
    np.testing.assert_array_equal(s.vals, [4.0, 5.0])
    s = jmf.Sparse(r, c, v, (2, 2), duplicates="mean")
    np.testing.assert_array_equal(s.vals, [2.0, 5.0])
    s = jmf.Sparse(r, c, v, (2, 2), duplicates="last")
    np.testing.assert_array_equal(s.vals, [3.0, 5.0])
    with pytest.raises(ValueError, match="duplicates must be"):
        jmf.Sparse(r, c, v, (2, 2), duplicates="max")


@pytest.mark.parametrize(
    "rows, cols, vals, shape, exc, match",
    [
        ([0, 5], [0, 1], [1.0, 2.0], (3, 3), ValueError, "rows index 5 is out of range"),
        ([0, 1], [0, 3], [1.0, 2.0], (3, 3), ValueError, "cols index 3 is out of range"),
        ([0, -1], [0, 1], [1.0, 2.0], (3, 3), ValueError, "negative"),
        ([0, 1], [0, 1], [1.0, np.nan], (3, 3), ValueError, "NaN"),
        ([0, 1], [0, 1], [1.0], (3, 3), ValueError, "same length"),
        ([], [], [], (3, 3), ValueError, "no observed entries"),
        ([0.5], [0], [1.0], (3, 3), TypeError, "integers"),
        (["a"], [0], [1.0], (3, 3), TypeError, "integers"),
        ([0], [0], ["x"], (3, 3), TypeError, "numeric"),
        ([0], [0], [1.0], (0, 3), ValueError, "positive"),
        ([0], [0], [1.0], (3,), ValueError, "pair"),
        ([0], [0], [1.0], (3.7, 3.2), TypeError, "pair \\(m, n\\) of ints"),  # was truncated to (3, 3)
        ([0], [0], [1.0], ("3", 3), TypeError, "of ints"),
        ([[0]], [[0]], [[1.0]], (3, 3), ValueError, "1-D"),
    ],
)
def test_sparse_errors(rows, cols, vals, shape, exc, match):
    with pytest.raises(exc, match=match):
        jmf.Sparse(rows, cols, vals, shape)


def test_sparse_weight_errors():
    with pytest.raises(ValueError, match="weights must have shape"):
        jmf.Sparse([0], [0], [1.0], (1, 1), weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="nonnegative"):
        jmf.Sparse([0], [0], [1.0], (1, 1), weights=[-1.0])


def test_sparse_from_scipy_keeps_explicit_zeros_and_sums_duplicates():
    M = sp.coo_matrix(([1.0, 0.0, 2.0, 3.0], ([0, 1, 2, 2], [0, 1, 2, 2])), shape=(3, 4))
    s = jmf.Sparse.from_scipy(M)
    assert s.shape == (3, 4) and s.nnz == 3
    np.testing.assert_array_equal(s.vals, [1.0, 0.0, 5.0])
    np.testing.assert_array_equal(s.to_scipy().toarray(), M.toarray())
    with pytest.raises(TypeError, match="scipy.sparse"):
        jmf.Sparse.from_scipy(np.eye(2))


def test_sparse_from_dense_and_pandas():
    pd = pytest.importorskip("pandas")
    A = np.array([[1.0, np.nan], [np.nan, 4.0]])
    s = jmf.Sparse.from_dense(A)
    np.testing.assert_array_equal(s.rows, [0, 1])
    np.testing.assert_array_equal(s.vals, [1.0, 4.0])
    s = jmf.Sparse.from_dense(np.array([[1.0, 2.0], [3.0, 4.0]]), mask=[[1, 0], [0, 1]])
    np.testing.assert_array_equal(s.vals, [1.0, 4.0])
    with pytest.raises(ValueError, match="mask must have the shape"):
        jmf.Sparse.from_dense(np.ones((2, 2)), mask=np.ones((3, 2)))
    df = pd.DataFrame({"user": [0, 1, 1], "item": [2, 0, 1], "rating": [5.0, 3.0, 4.0]})
    s = jmf.Sparse.from_pandas(df, shape=(2, 3))
    assert s.shape == (2, 3) and s.nnz == 3
    np.testing.assert_array_equal(s.to_scipy().toarray(), [[0, 0, 5], [3, 4, 0]])
    with pytest.raises(ValueError, match="not in the DataFrame"):
        jmf.Sparse.from_pandas(df, row="missing", col="item", value="rating")


def test_stack_sparse_pads_with_zero_weight():
    a = jmf.Sparse([0, 1], [0, 1], [1.0, 2.0], (2, 2))
    b = jmf.Sparse([0], [1], [3.0], (2, 2))
    s = jmf.stack([a, b])
    assert s.batch_shape == (2,) and s.vals.shape == (2, 2)
    np.testing.assert_array_equal(s.weights, [[1, 1], [1, 0]])
    np.testing.assert_array_equal(jax.vmap(lambda x: x.n_observed())(s), [2.0, 1.0])
    with pytest.raises(ValueError, match="same shape"):
        jmf.stack([a, jmf.Sparse([0], [0], [1.0], (3, 2))])
    with pytest.raises(TypeError, match="Dense and Sparse"):
        jmf.stack([a, jmf.Dense(np.ones((2, 2)))])


def test_stack_dense_mixed_weights():
    a = jmf.Dense(np.ones((2, 2)))
    b = jmf.Dense.from_nan(np.array([[1.0, np.nan], [1.0, 1.0]]))
    s = jmf.stack([a, b])
    assert s.A.shape == (2, 2, 2)
    np.testing.assert_array_equal(s.weights[0], np.ones((2, 2)))
    np.testing.assert_array_equal(s.weights[1], [[1, 0], [1, 1]])


def test_as_data():
    assert isinstance(jmf.as_data(np.ones((2, 2))), jmf.Dense)
    assert isinstance(jmf.as_data(sp.eye(3).tocsr()), jmf.Sparse)
    with pytest.raises(TypeError, match="None"):
        jmf.as_data(None)


def test_factors_predict_dense_and_entries():
    rng = np.random.default_rng(1)
    W, H = rng.standard_normal((4, 2)), rng.standard_normal((2, 3))
    b, c = rng.standard_normal(4), rng.standard_normal(3)
    f = jmf.Factors(jnp.asarray(W), jnp.asarray(H), jnp.asarray(b), jnp.asarray(c), jnp.asarray(0.5))
    full = W @ H + b[:, None] + c[None, :] + 0.5
    # float32 leaves: the float64 reference to float32 rounding (entries of order 1)
    np.testing.assert_allclose(f.predict(), full, rtol=1e-6, atol=1e-6)
    rows, cols = np.array([0, 3, 2]), np.array([2, 0, 1])
    np.testing.assert_allclose(f.predict(rows, cols), full[rows, cols], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="both rows and cols"):
        f.predict(rows=rows)
    # NumPy leaves: the same prediction, computed on the host in float64 even without x64 (metrics)
    host = jmf.Factors(W, H, b, c, np.float64(0.5))
    with _enable_x64(False):
        dense, entries = host.predict(), host.predict(rows, cols)
    assert isinstance(dense, np.ndarray) and dense.dtype == np.float64 and entries.dtype == np.float64
    np.testing.assert_allclose(dense, full, rtol=1e-15)
    np.testing.assert_allclose(entries, full[rows, cols], rtol=1e-15)
    # unknown rows / columns drop their terms: the variant behind jmf.cf.predict (-1 = unknown id)
    from jmf._src.factors import predict_entries

    known_r, known_c = np.array([True, False, True]), np.array([True, True, False])
    got = predict_entries(host, rows, cols, known_r, known_c)
    np.testing.assert_allclose(got, [full[0, 2], 0.5 + c[0], 0.5 + b[2]], rtol=1e-15)
    np.testing.assert_allclose(np.asarray(jmf.cf.predict(f, np.array([0, -1, 2]), np.array([2, 0, -1]))), got,
                               rtol=1e-6, atol=1e-6)  # f has float32 leaves


def test_sparse_padding_is_weight_zero_entries_at_the_origin():
    from jmf._src.data import pad_entries

    a = jmf.Sparse([0, 2], [1, 0], [1.0, 2.0], (3, 2))
    b = jmf.Sparse([1], [1], [5.0], (3, 2))
    batch = jmf.stack([a, b])
    np.testing.assert_array_equal(np.asarray(batch.rows[1]), [1, 2])  # in the last row: rows stay sorted
    np.testing.assert_array_equal(np.asarray(batch.weights[1]), [1, 0])
    r, c, v, w = pad_entries(b.rows, b.cols, b.vals, b.effective_weights(), 4)
    np.testing.assert_array_equal(np.asarray(r), [1, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(w), [1, 0, 0, 0])


# -- dtypes and scales that fail quietly in compiled code ----------------------------------


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
def test_half_precision_is_refused(dtype):
    A = np.ones((3, 2), dtype)
    # float16 was accepted and crashed inside jaxlib after compiling; bfloat16 was "not numeric".
    for build in (lambda: jmf.Dense(A), lambda: jmf.Sparse([0, 1], [0, 1], A[:2, 0], (3, 2)),
                  lambda: jmf.fit(A, jmf.solvers.als(), rank=1, key=0)):
        with pytest.raises(TypeError, match="float16/bfloat16 are not supported: use float32 or float64"):
            build()


@pytest.mark.x64  # float64 data has the range that float32 lacks
@pytest.mark.parametrize("scale, match", [(1e20, "too large for float32: squared errors overflow"),
                                          (1e-20, "too small for float32: squared errors underflow")])
def test_float32_data_whose_squares_overflow_or_underflow_is_refused(scale, match):
    A = (np.random.default_rng(0).standard_normal((6, 5)) * scale).astype(np.float32)
    r, c = np.nonzero(np.ones_like(A))
    for build in (lambda: jmf.Dense(A), lambda: jmf.Sparse(r, c, A[r, c], A.shape),
                  lambda: jmf.fit(A, jmf.solvers.svd(), rank=2, key=0, progress=False)):  # fails before compute
        with pytest.raises(ValueError, match=match) as info:
            build()
        assert "rescale the data" in str(info.value) and "jax_enable_x64" in str(info.value)
    jmf.Dense((A / scale).astype(np.float32))  # ordinary scales pass
    jmf.Dense(A.astype(np.float64))  # float64 has the range
    # Only observed entries count (a huge value behind weight 0 is never fitted), and exact zeros are ignored.
    B = np.ones((3, 3), np.float32)
    B[0, 0] = 1e30
    jmf.Dense(B, weights=(B < 10).astype(np.float32))
    jmf.Dense(np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="float64"):
        jmf.Dense(np.full((2, 2), 1e160))


def test_float64_input_without_x64(monkeypatch):
    from jmf._src.data import checks

    monkeypatch.setattr(checks, "_warned_x64", False)
    A = np.random.default_rng(0).standard_normal((4, 3))
    with _enable_x64(False):
        with pytest.warns(UserWarning, match=r'jax.config.update\("jax_enable_x64", True\)'):
            assert jmf.Dense(A).dtype == np.float32
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per process
            jmf.Sparse([0], [0], A[0, :1], (4, 3))
        A[0, 0] = 1e300
        with pytest.raises(ValueError, match="beyond float32's range") as info:  # was "contains 1 inf"
            jmf.Dense(A)
        assert "inf" not in str(info.value)
