#!/usr/bin/env bash
# The main job on a fresh machine: install geeps-net into .venv, fetch Fashion-MNIST from Debian's
# dataset-fashion-mnist when missing, convert it to LMDB, and train LeNet through the parameter server.
# Extra arguments go to `geeps-net train` (e.g. -max_iter is set in the solver; -gpu 0 on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
RAW=/usr/share/datasets/fashion-mnist
if [ ! -f "$RAW/train-images-idx3-ubyte.gz" ]; then
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e .
mkdir -p data/fashion-mnist snapshots
for split in train:train t10k:test; do
  src=${split%%:*} dst=data/fashion-mnist/${split##*:}_lmdb
  [ -d "$dst" ] || geeps-net convert_mnist "$RAW/$src-images-idx3-ubyte.gz" "$RAW/$src-labels-idx1-ubyte.gz" "$dst"
done
geeps-net train -solver solvers/lenet_solver.prototxt "$@"
