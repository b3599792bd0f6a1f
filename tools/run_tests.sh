#!/usr/bin/env bash
# Install geeps-net with its test extras into .venv, run the default test suite (all but `slow`) on
# both cores, then ruff. Usage: bash tools/run_tests.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v dot >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  apt-get update -qq >/dev/null && apt-get install -y -qq graphviz >/dev/null  # draw_net renders PNG/SVG
fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e ".[dev,hdf5,image,leveldb,plot]"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1  # one BLAS thread per test process
set +e
python -m pytest -q -n 2 "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "no tests were collected: treating as a failure" >&2
  exit 1
fi
[ "$status" -eq 0 ] || exit "$status"
ruff check .
ruff format --check .
