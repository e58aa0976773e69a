"""The documentation site's sources, checked without building it (make docs builds it).

* every public name (the ``__all__`` of each public module) is on its API page;
* the API pages are what docs/gen_api.py generates, and every public module has one;
* the navigation lists existing pages, every user-guide page and every notebook;
* the JAX composability guide's example runs and means what it says.
"""

import importlib
import importlib.util
import os
import re
import types

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def _gen_api():
    spec = importlib.util.spec_from_file_location("jmf_docs_gen_api", os.path.join(DOCS, "gen_api.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = _gen_api()
PUBLIC = [m for m, _, _ in GEN.MODULES]


def _page(module):
    name = "jmf.md" if module == "jmf" else f"{GEN.page_name(module)}.md"
    with open(os.path.join(DOCS, "api", name), encoding="utf-8") as fh:
        return fh.read()


def test_every_public_module_has_a_page():
    found = {"jmf"}
    for entry in os.listdir(os.path.join(ROOT, "jmf")):
        name, ext = os.path.splitext(entry)
        if entry.startswith("_") or name == "cli":  # cli: the `jmf` command (docs/guide/cli.md)
            continue
        if ext == ".py" or os.path.exists(os.path.join(ROOT, "jmf", entry, "__init__.py")):
            found.add(f"jmf.{name}")
    assert found == set(PUBLIC), "add new public modules to MODULES in docs/gen_api.py"


@pytest.mark.parametrize("module", PUBLIC)
def test_every_public_name_is_on_the_api_page(module):
    mod = importlib.import_module(module)
    page = _page(module)
    directives = set(re.findall(r"^::: ([\w.]+)\s*$", page, re.M))
    assert module in directives  # the module docstring heads the page
    missing = []
    for name in mod.__all__:
        obj = getattr(mod, name)
        if isinstance(obj, types.ModuleType):  # a submodule: linked to its own page
            if f"[`{module}.{name}`]({name}.md)" not in page:
                missing.append(name)
        elif f"{module}.{name}" not in directives:
            missing.append(name)
    assert not missing, f"{module}: {missing} not on docs/api; run python docs/gen_api.py"


def test_api_pages_are_up_to_date():
    def current(rel):
        path = os.path.join(DOCS, rel)
        return open(path, encoding="utf-8").read() if os.path.exists(path) else None

    stale = [rel for rel, text in GEN.pages().items() if current(rel) != text]
    assert not stale, f"{stale} out of date: run python docs/gen_api.py"


def _nav_pages():
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as fh:
        text = fh.read()
    nav = text[text.index("\nnav:"):text.index("\nplugins:")]
    return re.findall(r"([\w./-]+\.(?:md|ipynb))\s*$", nav, re.M)


def test_navigation_lists_existing_pages_guide_and_notebooks():
    pages = _nav_pages()
    for page in pages:
        assert os.path.exists(os.path.join(DOCS, page)), page
    guide = sorted(f"guide/{f}" for f in os.listdir(os.path.join(DOCS, "guide")) if f.endswith(".md"))
    assert sorted(p for p in pages if p.startswith("guide/")) == guide
    notebooks = sorted(f"notebooks/{f}" for f in os.listdir(os.path.join(ROOT, "notebooks")) if f.endswith(".ipynb"))
    assert sorted(p for p in pages if p.startswith("notebooks/")) == notebooks
    api = sorted(f"api/{f}" for f in os.listdir(os.path.join(DOCS, "api")))
    assert sorted(p for p in pages if p.startswith("api/")) == api


def test_readme_links_the_site():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    assert "make docs" in readme
    for page in ("docs/index.md", "docs/api/index.md", "docs/gallery/index.md", "docs/guide/jax.md"):
        assert f"({page})" in readme, page


def _guide_example(name):
    with open(os.path.join(DOCS, "guide", name), encoding="utf-8") as fh:
        blocks = re.findall(r"```python\n(.*?)```", fh.read(), re.S)
    return blocks


def test_jax_composability_example_runs():
    import jax

    import jmf

    code = _guide_example("jax.md")[0]
    scope: dict = {}
    exec(compile(code, "docs/guide/jax.md", "exec"), scope)
    losses, curves, A = np.asarray(scope["losses"]), np.asarray(scope["curves"]), scope["A"]
    assert losses.shape == (50,) and np.all(np.diff(losses) <= 1e-6)  # ALS never increases the loss
    assert curves.shape == (8, 50)
    # "the same loss as jmf.fit(..., key=0, tol=None)": the driver runs the same steps from the same start.
    ref = jmf.fit(A, scope["solver"], rank=5, key=jax.random.key(0), max_iter=50, tol=None, progress=False)
    assert float(ref.loss) == pytest.approx(float(losses[-1]), rel=1e-4)
