# Two commands do all the set-up themselves on a fresh machine (Python >= 3.10):
#   make demo   -- the main job: compare solvers on built-in data, print the table, save figures
#   make test   -- the full test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jmf-installed
DOCS_STAMP := $(VENV)/.jmf-docs-installed

.PHONY: demo test docs bench install clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e ".[test,experiments]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) experiments/compare_solvers.py

# Lint first (ruff: pyflakes, pycodestyle, import order; the import-layer contract is a test).
# Two workers (one per core); worksteal hands each worker a contiguous half of
# the tests, so a test file's compiled functions are mostly reused within one
# process.  (Worker crashes inside XLA:CPU's JIT linker, once or twice per run
# until 2026-12-01, were a worker running out of the kernel's memory regions,
# vm.max_map_count, with ~4,000 programs loaded: tests/conftest.py and
# jmf.fit_many now free the compiled programs before that.)
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2 --dist worksteal

# The documentation site in site/ (mkdocs-material + mkdocstrings): the API pages must match the
# public modules' __all__ (docs/gen_api.py), and any warning fails the build.
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -c requirements.lock -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) docs/gen_api.py --check
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache site
