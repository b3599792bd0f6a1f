#!/usr/bin/env bash
# LeNet on Fashion-MNIST with several workers (DESIGN §5-6), the two layouts of the distributed
# benchmark, each to its final test accuracy (worker 0 tests the whole 10,000-image test set):
#   1. `-workers 4`: four local worker processes, each hosting one of four server shards;
#   2. two workers x two server shards over TCP loopback, started one by one from a machine file
#      (what two machines would run, here both on 127.0.0.1).
# Both use update_rule AVERAGE at BSP (slack 0): N workers at batch 64 train like one at 64 N.
# Needs data/fashion-mnist/{train,test}_lmdb (tools/train_lenet.sh makes them).
#   ITERS4=3000 ITERS2=4000 tools/train_lenet_distributed.sh      (iterations of each run)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-logs/distributed}
mkdir -p "$OUT"
solver() {  # solver() NAME ITERS: a copy of the LeNet solver with its own iterations and prefix
  sed -e "s/^max_iter: .*/max_iter: $2/" -e "s/^snapshot: .*/snapshot: 0/" \
      -e "s#^snapshot_prefix: .*#snapshot_prefix: \"$OUT/$1\"#" \
      solvers/lenet_solver.prototxt > "$OUT/$1_solver.prototxt"
  echo "$OUT/$1_solver.prototxt"
}
accuracy() { grep "Test net output #0: accuracy" "$1" | tail -1 | sed 's/.*accuracy = //'; }

S4=$(solver lenet_4workers "${ITERS4:-3000}")
start=$(date +%s)
python -m geeps_net train -solver "$S4" -workers 4 -update_rule AVERAGE 2> "$OUT/4workers.log"
echo "4 workers (-workers 4): test accuracy $(accuracy "$OUT/4workers.log") after ${ITERS4:-3000}" \
     "iterations in $(( $(date +%s) - start )) s"

S2=$(solver lenet_2x2 "${ITERS2:-4000}")
printf '127.0.0.1\n127.0.0.1\n' > "$OUT/hosts"
start=$(date +%s)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))}
for i in 1 0; do
  python -m geeps_net train -solver "$S2" -machinefile "$OUT/hosts" -worker_id $i \
      -num_servers 2 -update_rule AVERAGE 2> "$OUT/2x2_worker$i.log" &
done
wait
echo "2 workers x 2 servers (-machinefile): test accuracy $(accuracy "$OUT/2x2_worker0.log")" \
     "after ${ITERS2:-4000} iterations in $(( $(date +%s) - start )) s"
