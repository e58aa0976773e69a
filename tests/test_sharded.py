"""ONE matrix with its factors sharded over 4 simulated CPU devices (and over 2 processes): jmf.fit(..., mesh=).

Every sharded fit is compared with the single-device fit of the same data, solver, key and stopping rule:
the same iterations, statuses and loss history, and predictions equal to float64 rounding.
"""

import json
import math
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import jmf
from jmf._src.run.loop import iteration_schedule, run_config
from jmf._src.sharded.accounting import device_bytes, fit_memory, measure, project, sent_bytes
from jmf._src.sharded.program import _advance_program, _start_program, make_ctx
from jmf._src.sharded.solvers import make_impl

# float64: sharded fits must equal one-device fits to 1e-8..1e-9 (loss histories, iteration counts), the
# memory model counts 8-byte floats, and the two-process workers run in float64.
pytestmark = pytest.mark.x64

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
M, N, K = 30, 22, 3  # not multiples of 4: the last blocks carry padding


@pytest.fixture(scope="module")
def mesh():
    assert len(jax.devices()) == 4
    return jmf.sharding.model_mesh()


def _entries(seed=0, m=M, n=N, density=0.3, positive=False):
    rng = np.random.default_rng(seed)
    U, V = rng.standard_normal((m, K)), rng.standard_normal((K, n))
    mask = rng.random((m, n)) < density
    mask[4] = False  # an empty row and column: they start and stay at zero
    mask[:, 7] = False
    r, c = np.nonzero(mask)
    vals = (U @ V)[r, c] + 0.1 * rng.standard_normal(len(r))
    if positive:
        vals = np.abs(vals) + 0.1
    return jmf.Sparse(r, c, vals, (m, n))


def _assert_split(res, m, n, k, biases=False):
    """W's rows and H's columns are split over the 4 devices, one block each, not replicated."""
    mb, nb = math.ceil(m / 4), math.ceil(n / 4)
    W, H = res.factors.W, res.factors.H
    assert W.sharding.spec == P("model") and H.sharding.spec == P(None, "model")
    assert not W.sharding.is_fully_replicated and not H.sharding.is_fully_replicated
    assert W.shape == (4 * mb, k) and H.shape == (k, 4 * nb)
    assert len({s.device for s in W.addressable_shards}) == 4
    assert [s.data.shape for s in W.addressable_shards] == [(mb, k)] * 4
    assert [s.data.shape for s in H.addressable_shards] == [(k, nb)] * 4
    assert not np.any(np.asarray(W)[m:]) and not np.any(np.asarray(H)[:, n:])  # padding stays zero
    if biases:
        assert [s.data.shape for s in res.factors.row_bias.addressable_shards] == [(mb,)] * 4
        assert [s.data.shape for s in res.factors.col_bias.addressable_shards] == [(nb,)] * 4


def _assert_same(one, sh, data, shape, rtol=1e-8):
    assert int(sh.n_iter) == int(one.n_iter) and sh.status_name == one.status_name
    np.testing.assert_allclose(sh.loss_history, one.loss_history, rtol=1e-9, equal_nan=True)
    f = jmf.sharding.gather_factors(sh.factors, shape)
    assert f.W.shape == (shape[0], one.factors.W.shape[1]) and f.H.shape == (one.factors.W.shape[1], shape[1])
    if isinstance(data, jmf.Sparse):
        r, c = np.asarray(data.rows), np.asarray(data.cols)
        p1, p2 = np.asarray(one.factors.predict(r, c)), f.predict(r, c)
    else:
        p1, p2 = np.asarray(one.factors.predict()), f.predict()
    assert np.max(np.abs(p1 - p2)) <= rtol * np.max(np.abs(p1))
    np.testing.assert_allclose(f.W, one.factors.W, rtol=1e-6, atol=1e-9)


SPARSE = {
    "als-biases-count-scaled-exact": (lambda: jmf.solvers.als(0.3, biases=True, count_scaled=True), False, "auto"),
    "ratings-als-cg": (lambda: jmf.solvers.ratings_als(0.2), False, "all_to_all"),
    "implicit-als": (lambda: jmf.solvers.implicit_als(l2=0.5), True, "all_to_all"),
    "implicit-als-unobserved-weight": (lambda: jmf.solvers.implicit_als(l2=0.5, unobserved_weight=0.3), True,
                                       "all_to_all"),
    "hals": (lambda: jmf.solvers.hals(l2=0.1), True, "auto"),
    "adam-ratings-loss": (lambda: jmf.solvers.adam(0.02, loss=jmf.losses.ratings_loss(0.1, count_scaled=True),
                                                   biases=True), False, "all_to_all"),
}


@pytest.mark.parametrize("name", sorted(SPARSE))
def test_sparse_fit_equals_one_device(mesh, name):
    make, positive, exchange = SPARSE[name]
    solver = make()
    data = _entries(positive=positive)
    sharded = jmf.sharding.shard_sparse(data, mesh, exchange=exchange)
    if exchange != "auto":
        assert sharded.h_exchange.mode == sharded.w_exchange.mode == exchange
    kw = dict(key=3, max_iter=12, check_every=4, tol=1e-7, progress=False)
    one = jmf.fit(data, solver, K, **kw)
    sh = jmf.fit(sharded, solver, K, mesh=mesh, **kw)
    _assert_split(sh, M, N, K, biases=solver.biases)
    _assert_same(one, sh, data, (M, N))
    assert sh.state is None


@pytest.mark.parametrize("rank", [K, 16], ids=["straight-line-draws", "wide-loop-draws"])
def test_bpmf_chain_equals_one_device_and_keeps_its_samples(mesh, rank):
    """The sharded Gibbs chain is the single-device one: same losses, last sample and posterior mean.

    Rank 16 (17 numbers per row) draws its rows with the loop kernels, never LAPACK's (4 CPU devices).
    """
    data = _entries()
    solver = jmf.solvers.bpmf(burn_in=3, n_keep=4)
    kw = dict(key=5, max_iter=8, check_every=2, tol=None, init="normal", progress=False)
    one = jmf.fit(data, solver, rank, **kw)
    sh = jmf.fit(jmf.sharding.shard_sparse(data, mesh, exchange="all_to_all"), solver, rank, mesh=mesh, **kw)
    _assert_split(sh, M, N, rank, biases=True)
    _assert_same(one, sh, data, (M, N), rtol=1e-7)
    assert int(sh.state.kept) == 5 and sh.state.W_buf.sharding.spec == P(None, "model")
    r, c = np.asarray(data.rows), np.asarray(data.cols)
    mean = jmf.sharding.gather_factors(jmf.solvers.posterior_mean(sh), (M, N))
    want = np.asarray(jmf.solvers.posterior_mean(one).predict(r, c))
    np.testing.assert_allclose(mean.predict(r, c), want, rtol=1e-7, atol=1e-9)
    assert mean.W.shape == (M, 4 * rank)  # the 4 kept samples side by side


@pytest.mark.parametrize("exchange", ["all_to_all", "all_gather"])
def test_svdpp_equals_one_device_and_keeps_p_and_y(mesh, exchange):
    """Sharded SVD++: the objective (which reads P and Y from the state), factors, P and Y of one device."""
    data = _entries()
    solver = jmf.solvers.svdpp(optax.adam(0.05), l2=0.5, implicit_l2=1.0, elementwise=True)
    kw = dict(key=3, max_iter=12, check_every=4, tol=1e-9, init="normal", progress=False)
    one = jmf.fit(data, solver, K, **kw)
    sh = jmf.fit(jmf.sharding.shard_sparse(data, mesh, exchange=exchange), solver, K, mesh=mesh, **kw)
    _assert_split(sh, M, N, K, biases=True)
    _assert_same(one, sh, data, (M, N))
    assert sh.state.Y.sharding.spec == P("model")
    for name, size in (("P", M), ("Y", N), ("norm", M)):
        np.testing.assert_allclose(np.asarray(getattr(sh.state, name))[:size], getattr(one.state, name), rtol=1e-7,
                                   atol=1e-12)
    with pytest.raises(ValueError, match="elementwise=True"):
        jmf.fit(data, jmf.solvers.svdpp(optax.adam(0.05)), K, mesh=mesh, progress=False)


@pytest.mark.parametrize("solver", [jmf.solvers.als(0.1), jmf.solvers.hals(l1=0.05)], ids=["als", "hals"])
def test_dense_fit_equals_one_device(mesh, solver):
    rng = np.random.default_rng(1)
    A = np.abs(rng.standard_normal((M, K)) @ rng.standard_normal((K, N))) + 0.01 * rng.random((M, N))
    kw = dict(key=0, max_iter=12, check_every=4, tol=1e-7, progress=False)
    one = jmf.fit(A, solver, K, **kw)
    sh = jmf.fit(A, solver, K, mesh=mesh, **kw)  # the array is split by rows here (shard_dense)
    _assert_split(sh, M, N, K)
    _assert_same(one, sh, jmf.Dense(A), (M, N))


def test_start_from_factors_and_callback(mesh):
    data = _entries(seed=2)
    solver = jmf.solvers.ratings_als(0.2)
    start = jmf.init.normal(jax.random.key(5), data, K)
    start = jmf.Factors(np.asarray(start.W), np.asarray(start.H))
    seen = []

    def callback(info):
        seen.append(info.iteration)
        return info.iteration >= 6  # stop early

    one = jmf.fit(data, solver, init=start, max_iter=20, check_every=3, tol=None, progress=False, callback=callback)
    sh = jmf.fit(data, solver, init=start, max_iter=20, check_every=3, tol=None, progress=False, callback=callback,
                 mesh=mesh)
    assert sh.status_name == one.status_name == "STOPPED" and int(sh.n_iter) == int(one.n_iter)
    _assert_same(one, sh, data, (M, N))


def test_layout_tables_hold_the_needed_rows(mesh):
    """Simulate the exchange in NumPy: every entry's slot in the fetched table is its column of H / row of W."""
    data = _entries(seed=4, density=0.15)
    r, c = np.asarray(data.rows), np.asarray(data.cols)
    rng = np.random.default_rng(0)
    for exchange in ("all_to_all", "all_gather"):
        s = jmf.sharding.shard_sparse(data, mesh, exchange=exchange)
        mb, nb = s.blocks
        for seg, bound in ((s.r_seg, s.max_counts[0]), (s.c_seg, s.max_counts[1])):  # the engine's chunk bound
            counts = [np.bincount(x) for x in np.asarray(seg)]
            assert max(c.max() for c in counts) <= bound  # every segment fits, padding included
        Ht = rng.standard_normal((4 * nb, 2))  # padded H^T, device o owns rows [o nb, (o + 1) nb)
        W = rng.standard_normal((4 * mb, 2))
        for side, (X, blk, send, ex, seg, slot, w) in enumerate([
                (Ht, nb, s.h_send, s.h_exchange, s.r_seg, s.r_slot, s.r_w),
                (W, mb, s.w_send, s.w_exchange, s.c_seg, s.c_slot, s.c_w)]):
            send, seg, slot, w = (np.asarray(x) for x in (send, seg, slot, w))
            got = set()
            for d in range(4):
                if ex.mode == "all_to_all":  # table[o T + t] = X[o blk + send[o, d, t]]
                    table = np.concatenate([X[o * blk + send[o, d]] for o in range(4)])
                else:
                    table = X
                live = w[d] > 0
                own = seg[d][live] + d * (mb if side == 0 else nb)
                fetched = table[slot[d][live]]
                other = [np.flatnonzero(np.all(np.isclose(X, v), axis=1))[0] for v in fetched]
                got |= set(zip(own, other)) if side == 0 else set(zip(other, own))
            assert got == set(zip(r, c))


@pytest.mark.parametrize("solver, rank", [(jmf.solvers.als(0.3, biases=True), K), (jmf.solvers.bpmf(), 16)],
                         ids=["exact-als", "bpmf-wide"])
def test_no_lapack_custom_call_with_several_cpu_devices(mesh, solver, rank):
    """Exact ALS and wide Gibbs draws on 4 CPU devices of one process avoid jaxlib's LAPACK kernels (deadlock)."""
    sharded = jmf.sharding.shard_sparse(_entries(), mesh)
    impl, ctx = make_impl(solver, "sparse"), make_ctx(sharded)
    assert impl.uses_spd and not ctx.lapack
    cfg = run_config(4, 2, rank, True)
    carry = _start_program(impl, ctx, cfg, "random", mesh, sharded, jax.random.key(0), None)
    text = _advance_program.lower(impl, ctx, cfg, mesh, sharded, carry, np.int32(4), np.float64(-1),
                                  iteration_schedule(4, 2)).as_text()
    calls = set(re.findall(r"custom_call\s*@([\w.\-]+)", text)) - {"Sharding", "SPMDFullToShardShape",
                                                                      "SPMDShardToFullShape"}
    assert not calls, calls


def test_traffic_formula_matches_compiled_collectives(mesh):
    data = _entries(density=0.15)
    for exchange in ("all_to_all", "all_gather"):
        sharded = jmf.sharding.shard_sparse(data, mesh, exchange=exchange)
        solvers = (jmf.solvers.ratings_als(0.2),) + ((  # the others fetch the same way: one exchange is enough
            jmf.solvers.implicit_als(), jmf.solvers.bpmf(), jmf.solvers.svdpp(optax.adam(0.01), elementwise=True))
            if exchange == "all_to_all" else ())
        for solver in solvers:
            rep = measure(sharded, solver, K)
            assert rep["step_by_kind"] == rep["step_formula_by_kind"], (exchange, solver.name)
            q = K + 1 if solver.biases else K
            ex_h, ex_w = sharded.h_exchange, sharded.w_exchange
            fetched = sum((ex.per_pair if exchange == "all_to_all" else ex.block) for ex in (ex_h, ex_w))
            expect = 3 * fetched * q * 8  # (P - 1) rows of q float64 per exchanged row slot, P = 4
            if solver.name == "svdpp":  # and N^T G, Y: k numbers per row slot each way
                expect += 3 * fetched * K * 8
            fetch_sent = sum(sent_bytes(c, 4) for c in rep["step"] if c.kind in ("all-to-all", "all-gather"))
            assert fetch_sent == expect
    dense = jmf.sharding.shard_dense(np.random.default_rng(0).random((M, N)), mesh)
    rep = measure(dense, jmf.solvers.hals(), K)
    assert sorted(rep["step"]) == sorted(rep["step_formula"])


def test_memory_per_device_is_a_quarter(mesh):
    """Factors per device <= 1.1 x total / P (measured on the result's shards), entries about 1/P each."""
    rng = np.random.default_rng(0)
    m, n, k = 400, 240, 8
    mask = rng.random((m, n)) < 0.05
    r, c = np.nonzero(mask)
    data = jmf.Sparse(r, c, rng.random(len(r)), (m, n))
    res = jmf.fit(data, jmf.solvers.ratings_als(0.1), k, key=0, max_iter=2, progress=False, mesh=mesh)
    per_device = device_bytes(res.factors)
    total = ((m + n) * (k + 1) + 1) * 8  # W, H, biases and the offset, float64, unsharded
    assert len(per_device) == 4
    assert max(per_device.values()) <= 1.1 * total / 4
    sharded = jmf.sharding.shard_sparse(data, mesh)
    entries = device_bytes(sharded)
    # the model of docs/scaling.md (uniformly spread entries) against what was built and measured
    model = project(len(r), m, n, k, 4, itemsize=8)
    lists = 4 * 4 * (sharded.h_exchange.per_pair + sharded.w_exchange.per_pair)
    assert abs(max(entries.values()) - lists - model["entries"]) <= 0.1 * model["entries"]
    assert abs(sharded.h_exchange.per_pair - model["T_h"]) <= 0.1 * model["T_h"]
    assert abs(sharded.w_exchange.per_pair - model["T_w"]) <= 0.1 * model["T_w"]
    assert abs(max(per_device.values()) - model["factors"]) <= 0.01 * model["factors"]
    mem = fit_memory(sharded, jmf.solvers.ratings_als(0.1), k)  # the compiled check loop, per device
    assert mem["peak"] >= 2 * max(per_device.values()) + max(entries.values())  # iterate + kept, the entries


def test_save_and_load_shards(mesh, tmp_path):
    data = _entries(seed=6)
    res = jmf.fit(data, jmf.solvers.ratings_als(0.2), K, key=0, max_iter=4, progress=False, mesh=mesh)
    index = jmf.sharding.save_sharded(tmp_path / "model", res.factors, shape=(M, N), metadata={"note": "x"})
    meta = json.load(open(index))
    assert meta["shape"] == [M, N] and len(meta["shards"]) == 4
    assert meta["shards"][3]["rows"] == [24, 30] and meta["shards"][3]["cols"] == [18, 22]
    f, md = jmf.sharding.load_sharded(tmp_path / "model", with_metadata=True)
    g = jmf.sharding.gather_factors(res.factors, (M, N))
    assert md == {"note": "x"}
    for name in ("W", "H", "row_bias", "col_bias", "offset"):
        np.testing.assert_array_equal(getattr(f, name), getattr(g, name))
    with np.load(tmp_path / "model" / "shard-00001.npz", allow_pickle=False) as z:
        assert z["W"].shape == (8, K)


def test_errors(mesh):
    data = _entries()
    with pytest.raises(ValueError, match="no sharded version"):
        jmf.fit(data, jmf.solvers.mu(), K, mesh=mesh, progress=False)
    with pytest.raises(ValueError, match="sparse"):  # the sampler takes observed ratings only
        jmf.fit(np.ones((8, 8)), jmf.solvers.bpmf(), 2, mesh=mesh, progress=False)
    with pytest.raises(ValueError, match="init must be one of"):
        jmf.fit(data, jmf.solvers.als(0.1), K, init="svd", mesh=mesh, progress=False)
    with pytest.raises(ValueError, match="full-batch"):
        jmf.fit(data, jmf.solvers.adam(0.1, batch_size=10), K, mesh=mesh, progress=False)
    with pytest.raises(ValueError, match="dense data supports ALS without biases"):
        jmf.fit(np.ones((8, 8)), jmf.solvers.als(0.1, biases=True), 2, mesh=mesh, progress=False)
    with pytest.raises(ValueError, match="ONE matrix"):
        jmf.fit(jmf.Dense(np.ones((2, 8, 8))), jmf.solvers.als(0.1), 2, mesh=mesh, progress=False)
    with pytest.raises(ValueError, match="another mesh"):
        other = jmf.sharding.model_mesh(jax.devices()[:2])
        jmf.fit(jmf.sharding.shard_sparse(data, other), jmf.solvers.als(0.1), K, mesh=mesh, progress=False)
    with pytest.raises(ValueError, match="nonnegative"):
        jmf.fit(data, jmf.solvers.hals(), K, mesh=mesh, progress=False)
    with pytest.raises(ValueError, match="exchange"):
        jmf.sharding.shard_sparse(data, mesh, exchange="ring")


# -- two processes: the example of docs/multihost.md ----------------------------------------------------------


def _doc_example() -> str:
    text = open(os.path.join(ROOT, "docs", "multihost.md"), encoding="utf-8").read()
    marker = "<!-- tests/test_sharded.py runs this example -->"
    assert marker in text
    block = text[text.index(marker):]
    return block[block.index("```python") + len("```python"):block.index("```", block.index("```python") + 3)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(script, out, *extra) -> list:
    """Run ``script PORT PID out *extra`` as processes 0 and 1 (2 CPU devices each); their outputs."""
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(pid), str(out), *extra], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for pid in (0, 1)]
    logs = []
    for p in procs:
        try:
            log, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        logs.append(log.decode(errors="replace"))
        assert p.returncode == 0, logs[-1][-3000:]
    return logs


@pytest.mark.timeout(300)
def test_two_processes_doc_example(tmp_path):
    script = tmp_path / "sharded_two_process.py"
    script.write_text(_doc_example())
    out = tmp_path / "model"
    logs = _two_processes(script, out)
    assert "W on [(75, 8), (75, 8)] here" in logs[0]
    index = json.load(open(out / "index.json"))
    assert [s["process"] for s in index["shards"]] == [0, 0, 1, 1]  # 4 devices, 2 per process
    assert [s["rows"] for s in index["shards"]] == [[0, 75], [75, 150], [150, 225], [225, 300]]
    # equal to the single-device fit of the whole table
    table = jmf.datasets.synthetic_ratings(0, n_users=300, n_items=200, n_ratings=6000).data
    one = jmf.fit(table, jmf.solvers.ratings_als(l2=0.1), rank=8, key=0, max_iter=20, progress=False)
    f, meta = jmf.sharding.load_sharded(out, with_metadata=True)
    r, c = np.asarray(table.rows), np.asarray(table.cols)
    p1, p2 = np.asarray(one.factors.predict(r, c)), f.predict(r, c)
    # float32 over 20 sweeps: the two fits sum the same entries in different orders, and the single-device
    # fit itself moves ~1e-2 (relative, max over entries) between float32 and float64; the float64 tests
    # above check equality to 1e-8.
    assert np.max(np.abs(p1 - p2)) <= 3e-2 * np.max(np.abs(p1))
    np.testing.assert_allclose(meta["loss"], float(one.loss), rtol=1e-3)


@pytest.mark.timeout(300)
def test_two_processes_dense(tmp_path):
    """Each process passes only its rows of A; HALS over 2 processes equals the single-device fit."""
    _two_processes(os.path.join(ROOT, "tests", "sharded_worker.py"), tmp_path / "out.npz")
    A = np.random.default_rng(7).random((30, 22))  # as in the worker
    one = jmf.fit(A, jmf.solvers.hals(), 3, key=0, max_iter=20, tol=1e-6, progress=False)
    with np.load(tmp_path / "out.npz") as z:
        assert z["rows"].tolist() == [0, 16] and z["local_shapes"].tolist() == [[8, 3], [8, 3]]
        assert int(z["n_iter"]) == int(one.n_iter)
        np.testing.assert_allclose(float(z["loss"]), float(one.loss), rtol=1e-10)
        np.testing.assert_allclose(z["W"] @ z["H"], np.asarray(one.factors.W @ one.factors.H), rtol=1e-9, atol=1e-12)


@pytest.mark.timeout(300)
def test_two_processes_sparse(tmp_path):
    """Each process passes only its users' ratings (hashed); float64 fits over 2 processes equal one device."""
    _two_processes(os.path.join(ROOT, "tests", "sharded_worker.py"), tmp_path / "out", "sparse")
    table = jmf.datasets.synthetic_ratings(0, n_users=300, n_items=200, n_ratings=6000).data  # as in the worker
    r, c = np.asarray(table.rows), np.asarray(table.cols)
    data = jmf.Sparse(r, c, np.asarray(table.vals, np.float64), table.shape)
    outs = [np.load(tmp_path / f"out.{pid}.npz") for pid in (0, 1)]
    assert outs[0]["nnz_local"] + outs[1]["nnz_local"] == data.nnz and min(o["nnz_local"] for o in outs) > 0
    for name, solver in (("ratings_als", jmf.solvers.ratings_als(l2=0.1)),
                         ("implicit_als", jmf.solvers.implicit_als())):
        one = jmf.fit(data, solver, 8, key=0, max_iter=20, tol=None, progress=False)
        p1 = np.asarray(one.factors.predict(r, c))
        for o in outs:  # both processes gathered the same factors; each held 2 of the 4 blocks
            assert o[name + "_W_shards"].tolist() == [[75, 8], [75, 8]]
            assert o[name + "_H_shards"].tolist() == [[8, 50], [8, 50]]
            assert np.max(np.abs(o[name] - p1)) <= 1e-6 * np.max(np.abs(p1)), name  # 2e-8 measured
            np.testing.assert_allclose(float(o[name + "_loss"]), float(one.loss), rtol=1e-8)
