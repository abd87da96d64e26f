#!/usr/bin/env bash
# Data-parallel training cost on one 2-core machine (issue 23): the same
# training run as one process on both cores (N1: --threads 2, OpenBLAS 2),
# as one process on one core (N1-1t: taskset, --threads 1, OpenBLAS 1: what
# each rank of N2 has, so N2 / (2 x N1-1t) is data parallelism's own
# efficiency, apart from how well one process uses two threads) and as two
# ranks of `rag train --dist` on one core each (N2: taskset, --threads 1,
# OpenBLAS 1), alternated over ROUNDS rounds (order rotated every round). Each run's `--json` summary (rank 0's) gives training
# tokens/s over its steps, the allreduce's milliseconds per step and the
# bytes of one step's flat gradient buffer; from those, what a multi-host run
# sends per step per rank (a ring allreduce: 2 (N-1)/N x the buffer).
# Raw output: OUT/bench_dist_train.json.
#
# Usage: bench/bench_dist_train.sh BUILD_DIR OUT_DIR
# Environment: DOCS (first DOCS Brown documents; 100), ROUNDS (3), STEPS (30),
# PRESET (small), BATCH (the preset's batch unless set).
set -euo pipefail
BUILD="${1:?usage: bench_dist_train.sh BUILD_DIR OUT_DIR}"
OUT="${2:?usage: bench_dist_train.sh BUILD_DIR OUT_DIR}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAG="$BUILD/services/rag"
DOCS="${DOCS:-100}"
ROUNDS="${ROUNDS:-3}"
STEPS="${STEPS:-30}"
PRESET="${PRESET:-small}"
PY=/usr/bin/python3
W="$OUT/work"
rm -rf "$W"
mkdir -p "$W"
say() { echo "bench_dist_train: $*" >&2; }
clean_env=(env -u RANK -u WORLD_SIZE -u MASTER_ADDR -u MASTER_PORT -u OMPI_COMM_WORLD_RANK -u OMPI_COMM_WORLD_SIZE
           -u SLURM_PROCID -u SLURM_NTASKS)
head -n "$DOCS" "$HERE/data/brown/brown.jsonl" > "$W/corpus.jsonl"
args=(train --corpus "$W/corpus.jsonl" --preset "$PRESET" --steps "$STEPS" --eval-every 0 --checkpoint-every 0
      --quiet --json)
[ -n "${BATCH:-}" ] && args+=(--batch-size "$BATCH")
# Each run trains its tokenizer too; the figures count the optimizer steps only.

: > "$W/runs.jsonl"
arm_n1() {
  rm -rf "$W/n1"
  "${clean_env[@]}" OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=2 "$RAG" --threads 2 "${args[@]}" --out "$W/n1" \
    > "$W/n1.json"
  "$PY" -c 'import json, sys; j = json.load(open(sys.argv[1])); j.update(arm="N1", round=int(sys.argv[2])); print(json.dumps(j))' \
    "$W/n1.json" "$1" >> "$W/runs.jsonl"
}
arm_n1_1t() {
  rm -rf "$W/n1-1t"
  "${clean_env[@]}" OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 taskset -c 0 "$RAG" --threads 1 "${args[@]}" \
    --out "$W/n1-1t" > "$W/n1-1t.json"
  "$PY" -c 'import json, sys; j = json.load(open(sys.argv[1])); j.update(arm="N1-1t", round=int(sys.argv[2])); print(json.dumps(j))' \
    "$W/n1-1t.json" "$1" >> "$W/runs.jsonl"
}
arm_n2() {
  local port p0 p1 r
  rm -rf "$W/n2"
  port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  for r in 0 1; do
    "${clean_env[@]}" RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT="$port" OPENBLAS_NUM_THREADS=1 \
      OMP_NUM_THREADS=1 taskset -c "$r" "$RAG" --threads 1 "${args[@]}" --out "$W/n2" --dist \
      > "$W/n2.$r.json" 2> "$W/n2.$r.log" &
    if [ "$r" = 0 ]; then p0=$!; else p1=$!; fi
  done
  wait "$p0" || { cat "$W/n2.0.log" >&2; exit 1; }
  wait "$p1" || { cat "$W/n2.1.log" >&2; exit 1; }
  "$PY" -c 'import json, sys; j = json.load(open(sys.argv[1])); j.update(arm="N2", round=int(sys.argv[2])); print(json.dumps(j))' \
    "$W/n2.0.json" "$1" >> "$W/runs.jsonl"
}
arms=(arm_n1 arm_n2 arm_n1_1t)
for r in $(seq 1 "$ROUNDS"); do
  # Rotate so each arm runs first, second and third in turn.
  k=$(((r - 1) % 3))
  order=("${arms[@]:k}" "${arms[@]:0:k}")
  for a in "${order[@]}"; do say "round $r/$ROUNDS: $a"; "$a" "$r"; done
done

"$PY" - "$W/runs.jsonl" "$OUT/bench_dist_train.json" "$DOCS" "$STEPS" "$PRESET" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def med(arm, key):
    return statistics.median(r[key] for r in runs if r["arm"] == arm)
n1, n2 = med("N1", "train_tokens_per_second"), med("N2", "train_tokens_per_second")
n1_1t = med("N1-1t", "train_tokens_per_second")
buf = max(r["allreduce_bytes_per_step"] for r in runs if r["arm"] == "N2")
res = {
    "docs": int(sys.argv[3]), "steps": int(sys.argv[4]), "preset": sys.argv[5],
    "tokens_per_second": {"N1_2threads": n1, "N1_1thread": n1_1t, "N2_1thread_each": n2},
    "speedup_N2_over_N1": n2 / n1,
    "speedup_N1_2threads_over_1thread": n1 / n1_1t,
    # Data parallelism's own efficiency: N2 against two perfect copies of a one-core run.
    "efficiency_N2_over_2x_N1_1thread": n2 / (2 * n1_1t),
    "step_ms_N1_1thread": 1e3 * med("N1-1t", "step_seconds") / med("N1-1t", "steps_timed"),
    "allreduce_ms_per_step_N2": med("N2", "allreduce_ms_per_step"),
    "step_ms_N2": 1e3 * med("N2", "step_seconds") / med("N2", "steps_timed"),
    "step_ms_N1": 1e3 * med("N1", "step_seconds") / med("N1", "steps_timed"),
    "allreduce_buffer_bytes": buf,
    # A ring allreduce sends and receives 2 (N-1)/N of the buffer per rank.
    "ring_bytes_per_step_per_rank": {str(n): 2 * (n - 1) / n * buf for n in (2, 4, 8, 16)},
    "runs": runs,
}
json.dump(res, open(sys.argv[2], "w"), indent=1)
print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))
EOF
