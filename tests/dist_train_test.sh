#!/usr/bin/env bash
# `rag train --dist` (issue 23) with the real binary on loopback, tiny
# model, 100 steps, dropout 0 (per-step losses and weights at 1e-5 are
# tests/dist_train_test.cc's; here the summaries `--json` prints):
#  1. one process, then two processes started by hand with RANK/WORLD_SIZE/
#     MASTER_ADDR/MASTER_PORT: the same final training and validation loss
#     (1e-4 relative);
#  2. `mpirun --oversubscribe --allow-run-as-root -n 2 rag train --dist`
#     (Debian's openmpi-bin; OMPI_COMM_WORLD_RANK/SIZE) gives the same run;
#  3. rank 1 SIGKILLed mid-run: rank 0 exits non-zero with an error within
#     the collective timeout (no hang); a resume of both ranks from rank 0's
#     last checkpoint ends bit-equal to the uninterrupted 2-rank run (final
#     training loss and validation loss, a function of the final weights);
#  4. errors: --batch-size not divisible by WORLD_SIZE, MASTER_PORT unset,
#     an unreachable master (its address:port named), a resume with another
#     number of processes.
#
# Usage: dist_train_test.sh RAG_BINARY   (KEEP_TMP=1 keeps files)
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init dist_train_test

RAG="${1:-${RAG:-}}"
[ -n "$RAG" ] || { echo "usage: dist_train_test.sh RAG_BINARY" >&2; exit 2; }

[ -x "$RAG" ] || fail "rag binary '$RAG' is not executable"
"$RAG" train --help | grep -q -- --dist || fail "'$RAG train' has no --dist option"
command -v mpirun >/dev/null || fail "no mpirun (scripts/setup.sh installs openmpi-bin)"

PIDS=()

# No launcher variables from whatever runs the tests leak in. OpenBLAS is
# held to one thread: it sizes its pool from the CPUs a process may use, and
# mpirun binds each rank to a core, so pools would differ between launchers
# and with them the rounding of every matrix product.
clean_env=(env -u RANK -u WORLD_SIZE -u MASTER_ADDR -u MASTER_PORT -u OMPI_COMM_WORLD_RANK -u OMPI_COMM_WORLD_SIZE
           -u SLURM_PROCID -u SLURM_NTASKS OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1)

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

step "corpus (120 documents) and dropout-0 config"
"$PY" - "$TMP/corpus.jsonl" <<'EOF'
import json, sys
words = ("river stone bridge lantern harvest meadow copper violin orchard glacier thunder candle harbour falcon "
         "pepper marble saddle compass willow ember quartz tide ledger prism cobalt fern summit anvil basket").split()
state = 7
def pick():
    global state
    state = (state * 1103515245 + 12345) % (1 << 31)
    return words[(state >> 8) % len(words)]
with open(sys.argv[1], "w") as f:
    for i in range(120):
        f.write(json.dumps({"id": f"doc-{i:03d}", "text": " ".join(pick() for _ in range(80)) + "."}) + "\n")
EOF
echo '{"dropout": 0.0, "context": 32}' >"$TMP/config.json"

# The same arguments for every run; a checkpoint every 10 steps so that a
# kill mid-run leaves one to resume from.
base_args=(--threads 1 train --corpus "$TMP/corpus.jsonl" --preset tiny --config "$TMP/config.json" --steps 100
           --seq-len 32 --vocab-size 300 --checkpoint-every 10 --eval-every 0 --quiet --json)
train_args=("${base_args[@]}" --batch-size 8)
rank_args=("${train_args[@]}")  # what two_ranks runs

# same A.json B.json LABEL TOLERANCE: steps, final_train_loss and
# validation_loss within TOLERANCE (relative; 0 = bit-equal).
same() {
  "$PY" - "$@" <<'EOF'
import json, sys
a, b, label, tol = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
ja, jb = json.load(open(a)), json.load(open(b))
for key in ("steps", "final_train_loss", "validation_loss"):
    x, y = ja[key], jb[key]
    if abs(x - y) > tol * abs(x):
        sys.exit(f"{label}: {key} {x!r} vs {y!r} (tolerance {tol})")
print(f"{label}: steps {ja['steps']}, train loss {ja['final_train_loss']:.6f}, validation {ja['validation_loss']:.6f}")
EOF
}

# two_ranks OUT LOGPREFIX EXTRA...: ranks 0 and 1 started by hand, in the
# background, with a collective timeout of $DIST_TIMEOUT s (60 unless set).
two_ranks() {
  local out="$1" log="$2" port
  shift 2
  port="$(free_port)"
  PIDS=()
  for r in 0 1; do
    "${clean_env[@]}" RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT="$port" \
      "$RAG" "${rank_args[@]}" --out "$out" --dist --dist-timeout "${DIST_TIMEOUT:-60}" "$@" >"$log.$r.json" 2>"$log.$r.log" &
    PIDS+=($!)
  done
}
wait_ranks() {  # wait_ranks LABEL LOGPREFIX: both must succeed
  for i in 0 1; do
    wait "${PIDS[$i]}" || { cat "$2.0.log" "$2.1.log" >&2; fail "$1: rank $i failed"; }
  done
  PIDS=()
}

step "1. one process, then two started by hand"
"${clean_env[@]}" "$RAG" "${train_args[@]}" --out "$TMP/single" >"$TMP/single.json" 2>"$TMP/single.log" ||
  { cat "$TMP/single.log" >&2; fail "single-process training failed"; }
two_ranks "$TMP/two" "$TMP/two"
wait_ranks "2 processes" "$TMP/two"
grep -q "rank 1/2" "$TMP/two.1.log" || fail "rank 1 did not report joining as rank 1/2"
[ ! -s "$TMP/two.1.json" ] || fail "rank 1 printed a summary (rank 0 reports)"
same "$TMP/single.json" "$TMP/two.0.json" "N=1 vs N=2" 1e-4
"${clean_env[@]}" "$RAG" --threads 1 info --model "$TMP/two" >/dev/null || fail "the 2-process model does not open"

step "2. mpirun -n 2"
port="$(free_port)"
"${clean_env[@]}" MASTER_ADDR=127.0.0.1 MASTER_PORT="$port" timeout 300 \
  mpirun --oversubscribe --allow-run-as-root -n 2 -x MASTER_ADDR -x MASTER_PORT -x OPENBLAS_NUM_THREADS \
  -x OMP_NUM_THREADS \
  "$RAG" "${train_args[@]}" --out "$TMP/mpi" --dist --dist-timeout 60 >"$TMP/mpi.json" 2>"$TMP/mpi.log" ||
  { cat "$TMP/mpi.log" >&2; fail "mpirun -n 2 rag train --dist failed"; }
same "$TMP/two.0.json" "$TMP/mpi.json" "hand-started vs mpirun" 0

step "3. rank 1 killed mid-run, then a resume"
DIST_TIMEOUT=30 two_ranks "$TMP/killed" "$TMP/killed"
for _ in $(seq 1 600); do
  [ -f "$TMP/killed/checkpoint.pt" ] && break
  kill -0 "${PIDS[0]}" 2>/dev/null || break
  sleep 0.05
done
[ -f "$TMP/killed/checkpoint.pt" ] || { cat "$TMP/killed.0.log" >&2; fail "no checkpoint appeared"; }
kill -0 "${PIDS[1]}" 2>/dev/null || fail "rank 1 finished before the kill: make the run longer"
kill -KILL "${PIDS[1]}"
wait "${PIDS[1]}" 2>/dev/null || true
started=$SECONDS
if wait "${PIDS[0]}"; then fail "rank 0 succeeded although rank 1 was killed"; fi
PIDS=()
((SECONDS - started < 60)) || fail "rank 0 took $((SECONDS - started)) s to notice the dead rank"
grep -q "distributed .* failed" "$TMP/killed.0.log" ||
  { cat "$TMP/killed.0.log" >&2; fail "rank 0's error does not say a collective failed"; }
two_ranks "$TMP/killed" "$TMP/resumed" --resume
wait_ranks "the resume" "$TMP/resumed"
grep -q "resuming at step [1-9]" "$TMP/resumed.0.log" || fail "the resume did not start from a checkpoint"
same "$TMP/two.0.json" "$TMP/resumed.0.json" "uninterrupted vs killed+resumed" 0

step "4. mismatches give their errors"
expect_error() {  # expect_error LOG PATTERN LABEL
  grep -q -- "$2" "$1" || { cat "$1" >&2; fail "$3: no '$2' in the error"; }
}
rank_args=("${base_args[@]}" --batch-size 7)
two_ranks "$TMP/odd" "$TMP/odd"
rank_args=("${train_args[@]}")
for i in 0 1; do
  if wait "${PIDS[$i]}"; then fail "--batch-size 7 over 2 ranks succeeded"; fi
done
PIDS=()
expect_error "$TMP/odd.1.log" "not divisible by the 2 ranks" "batch 7 over 2 ranks"
if "${clean_env[@]}" RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 "$RAG" "${train_args[@]}" --out "$TMP/x" --dist \
    >/dev/null 2>"$TMP/noport.log"; then fail "--dist without MASTER_PORT succeeded"; fi
expect_error "$TMP/noport.log" "MASTER_PORT is not set" "no MASTER_PORT"
port="$(free_port)"
if "${clean_env[@]}" RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT="$port" timeout 60 "$RAG" "${train_args[@]}" \
    --out "$TMP/y" --dist --dist-timeout 2 >/dev/null 2>"$TMP/unreachable.log"; then
  fail "a rank without a master succeeded"
fi
expect_error "$TMP/unreachable.log" "127.0.0.1:$port" "unreachable master"
if "${clean_env[@]}" "$RAG" "${train_args[@]}" --out "$TMP/two" --resume >/dev/null 2>"$TMP/otherworld.log"; then
  fail "a single-process resume of a 2-process checkpoint succeeded"
fi
expect_error "$TMP/otherworld.log" "run of 2 process" "resume with another N"

step "PASS"
