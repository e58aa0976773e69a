# Two commands do all the set-up themselves on a fresh machine (Python >= 3.10):
#   make demo   -- the main job: compare solvers on built-in data, print the table, save figures
#   make test   -- the full test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jmf-installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e ".[test,experiments]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) experiments/compare_solvers.py

# Two workers (one per core); --dist loadfile keeps each test file in one
# process so its compiled functions are reused by its tests.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) .pytest_cache
