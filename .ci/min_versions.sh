#!/usr/bin/env bash
# Lowest-versions stage: build the wheel, install it into a fresh venv with every dependency at the
# floor pyproject.toml declares (.ci/min_requirements.py), and run a smoke subset of the tests
# against the INSTALLED package: the tests are copied to a temporary folder, away from the source tree.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip wheel -q --no-deps -w "$WORK/dist" "$ROOT"
WHEEL=$(ls "$WORK"/dist/jmf-*.whl)
EXTRAS=(sklearn plot experiments)
"$PY" "$ROOT/.ci/min_requirements.py" "${EXTRAS[@]}" > "$WORK/requirements-min.txt"
echo "lowest versions:"; sed -n '2,$p' "$WORK/requirements-min.txt" | sed 's/^/  /'
"$PY" -m pip install -q -c "$WORK/requirements-min.txt" "$WHEEL[sklearn,plot,experiments]" \
    "pytest>=8.1" "pytest-timeout>=2.3" "pytest-xdist>=3.5" "hypothesis>=6.100"
"$PY" -m pip check
"$PY" -m pip list --format=freeze 2>/dev/null | grep -iE '^(jax|jaxlib|optax|chex|numpy|scipy|pandas|tqdm|platformdirs|filelock|scikit-learn|matplotlib|pillow)==' | tr '\n' ' '; echo

mkdir "$WORK/run"
cp -r "$ROOT/tests" "$WORK/run/tests"
cd "$WORK/run"
# The installed jmf, not the source tree:
"$PY" -c "import jmf, sys; print('jmf', jmf.__version__, 'from', jmf.__file__); sys.exit('$WORK/venv' not in jmf.__file__)"
"$PY" -c "import importlib.resources as r; assert r.files('jmf').joinpath('py.typed').is_file(), 'py.typed missing'"

SMOKE=(
  tests/test_compress.py tests/test_io.py tests/test_datasets.py tests/test_plotting.py tests/test_composability.py
  "tests/test_execution.py::test_device_split_equals_one_device"          # mesh / jax.shard_map
  "tests/test_execution.py::test_lanes_layout_equals_vmapped_layout"
  "tests/test_nmf.py::test_matches_sklearn"                               # hals, mu
  "tests/test_nmf.py::test_masked_hals_matches_numpy"
  "tests/test_cf.py::test_ratings_als_recovers_synthetic_truth"           # ratings_als
  "tests/test_cf.py::test_ratings_loss_grad_matches_autodiff"
  "tests/test_implicit.py::test_implicit_als_matches_dense_reference"     # implicit_als
  "tests/test_fit.py::test_adam_reaches_svd_optimum"                      # optax
  "tests/test_fit.py::test_fit_many_restarts_equals_loop_of_fit"
  "tests/test_fit.py::test_sparse_equals_masked_dense"
  "tests/test_fit.py::test_tol_rule_is_sklearn_convention"
  "tests/test_cli.py::test_fit_csv_mtx_and_ratings"                       # pandas: ratings files
  "tests/test_sklearn.py::test_nmf_n_init_is_one_batched_fit_keeping_the_best"   # scikit-learn validate_data
  "tests/test_sklearn.py::test_truncated_svd_matches_sklearn"
  "tests/test_sklearn.py::test_ratings_regressor_equals_jmf_and_falls_back_to_biases"
  "tests/test_compilation.py::test_a_warm_process_finds_the_executors_programs_without_tracing_them"  # JAX internals
)
"$PY" -m pytest -q -p no:cacheprovider --rootdir "$WORK/run" -o addopts="-ra" -o timeout=300 --disable-warnings \
    -n 2 --dist loadfile "${SMOKE[@]}"
# The docstring examples of the installed package.
"$PY" -m pytest -q -p no:cacheprovider --rootdir "$WORK/run" -o addopts="-ra" --doctest-modules --pyargs jmf
