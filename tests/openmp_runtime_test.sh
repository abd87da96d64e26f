#!/usr/bin/env bash
# How `rag` runs its threads under each Debian OpenBLAS build
# (lm/runtime.h): over the OpenMP build it starts itself again with
# OMP_WAIT_POLICY=passive unless the user chose a wait (idle OpenMP threads
# that spin slow every other process on the machine); over the pthreads
# build it never does. Each case reads the live server's own environment
# (/proc/PID/environ: the restart keeps the PID) and its start-up line, and
# a loaded server (8 clients) answers without error.
# Usage: openmp_runtime_test.sh RAG_BINARY RAG_LOAD_BINARY
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init openmp_runtime_test
RAG="${1:?usage: openmp_runtime_test.sh RAG_BINARY RAG_LOAD_BINARY}"
LOAD="${2:?usage: openmp_runtime_test.sh RAG_BINARY RAG_LOAD_BINARY}"
LIBDIR=/usr/lib/x86_64-linux-gnu

tiny_model_and_index "$RAG" 77 keeps

# serve NAME BUILD ENV...: starts `rag serve` on BUILD's OpenBLAS with only
# ENV's OpenMP settings; sets SERVER_PID (which lib.sh kills on failure) and ADDR.
serve() {
  local name="$1" build="$2"
  shift 2
  [ -e "$LIBDIR/openblas-$build/libblas.so.3" ] || fail "libopenblas0-$build is not installed (scripts/setup.sh)"
  rm -f "$TMP/port.$name"
  env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u OMP_NUM_THREADS LD_LIBRARY_PATH="$LIBDIR/openblas-$build" "$@" \
    "$RAG" serve --model "$TMP/model" --index "$TMP/index" --listen 127.0.0.1:0 --port-file "$TMP/port.$name" \
    >"$TMP/serve.$name.log" 2>&1 &
  SERVER_PID=$!
  ADDR="127.0.0.1:$(wait_for_port "$SERVER_PID" "$TMP/port.$name" "$TMP/serve.$name.log" "rag serve ($name)")"
}

# The server's OMP_WAIT_POLICY ("" when unset), from its own environment.
policy_of() { tr '\0' '\n' <"/proc/$1/environ" | sed -n 's/^OMP_WAIT_POLICY=//p'; }

stop() {
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" || { cat "$TMP/serve.$1.log" >&2; fail "rag serve ($1) exited non-zero after SIGTERM"; }
  SERVER_PID=""
}

step "OpenMP build, no wait chosen: rag restarts itself passive"
serve openmp openmp
[ "$(policy_of "$SERVER_PID")" = passive ] || fail "the OpenMP server runs with OMP_WAIT_POLICY='$(policy_of "$SERVER_PID")'"
grep -q "over the openmp OpenBLAS, OMP_WAIT_POLICY passive" "$TMP/serve.openmp.log" ||
  { cat "$TMP/serve.openmp.log" >&2; fail "no start-up line naming the build and the wait"; }
"$LOAD" --server "$ADDR" --clients 8 --seconds 3 --corpus "$TMP/corpus.jsonl" --mode lm --json "$TMP/load.json" \
  >"$TMP/load.out" 2>&1 || { cat "$TMP/load.out" >&2; fail "rag_load reported errors"; }
grep -q '"errors": 0' "$TMP/load.json" || fail "load.json does not say 0 errors"
stop openmp

step "OpenMP build, the user's wait is kept"
serve active openmp OMP_WAIT_POLICY=active
[ "$(policy_of "$SERVER_PID")" = active ] || fail "OMP_WAIT_POLICY=active became '$(policy_of "$SERVER_PID")'"
stop active
serve spin openmp GOMP_SPINCOUNT=1000
[ -z "$(policy_of "$SERVER_PID")" ] || fail "GOMP_SPINCOUNT was set, yet rag set OMP_WAIT_POLICY"
stop spin

step "pthreads build: no restart"
serve pthread pthread
[ -z "$(policy_of "$SERVER_PID")" ] || fail "the pthreads server set OMP_WAIT_POLICY='$(policy_of "$SERVER_PID")'"
grep -q "over the pthread OpenBLAS, OMP_WAIT_POLICY unset" "$TMP/serve.pthread.log" ||
  { cat "$TMP/serve.pthread.log" >&2; fail "no start-up line naming the pthreads build"; }
stop pthread
step "PASS"
