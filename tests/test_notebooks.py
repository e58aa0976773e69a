"""The committed notebooks are what notebooks/build.py generates, and they execute without error."""

import importlib.util
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")


def _builder():
    spec = importlib.util.spec_from_file_location("jmf_notebook_build", os.path.join(NB_DIR, "build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BUILD = _builder()


@pytest.mark.parametrize("name", list(BUILD.NOTEBOOKS))
def test_committed_notebook_matches_build_script(name):
    committed = nbformat.read(os.path.join(NB_DIR, name), as_version=4)
    fresh = BUILD.build(BUILD.NOTEBOOKS[name]())
    assert [c.source for c in committed.cells] == [c.source for c in fresh.cells], (
        f"{name} is out of date: run python notebooks/build.py {name[:2]}")
    code = [c for c in committed.cells if c.cell_type == "code"]
    executed = all(c.outputs for c in code[:1]) and all(c.execution_count for c in code)
    assert executed, f"{name} committed without outputs"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILD.NOTEBOOKS))
def test_notebook_executes(name, tmp_path):
    nb = nbformat.read(os.path.join(NB_DIR, name), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + env_path if env_path else "")
    try:
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", record_timing=False,
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()  # raises CellExecutionError with the cell and traceback on any failure
    finally:
        if env_path:
            os.environ["PYTHONPATH"] = env_path
        else:
            os.environ.pop("PYTHONPATH", None)
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 1, "the notebook should show at least one figure"
