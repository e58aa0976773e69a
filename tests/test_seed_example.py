"""The seed example: 4x2 matrix, rank 2, Adam 0.01, 5000 steps, one compiled call."""

import importlib.util
import os

import jax
import numpy as np

HERE = os.path.dirname(__file__)


def _load():
    path = os.path.join(HERE, "..", "experiments", "seed_example.py")
    spec = importlib.util.spec_from_file_location("seed_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_seed_example_converges(capsys, tmp_path):
    mod = _load()
    res = mod.main(["--out", str(tmp_path)])
    out = capsys.readouterr().out
    # the loss is printed every 500 iterations
    assert out.count("iteration") == 11 and "iteration  5000" in out
    assert res.factors.W.dtype == np.float32
    assert float(res.loss) < 1e-9
    WH = np.asarray(res.factors.W) @ np.asarray(res.factors.H)
    np.testing.assert_allclose(WH, mod.A, atol=1e-4)
    assert int(res.n_iter) == 5000
    assert (tmp_path / "seed_example.json").exists()


def test_seed_example_is_one_compiled_call():
    mod = _load()
    mod.run(seed=1)  # compile
    with jax.log_compiles(True):
        import logging

        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logger = logging.getLogger("jax")
        logger.addHandler(handler)
        try:
            mod.run(seed=2)
        finally:
            logger.removeHandler(handler)
    compiles = [r for r in records if "Compiling" in r.getMessage()]
    assert compiles == []
