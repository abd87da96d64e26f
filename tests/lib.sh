# Shared by the shell tests: messages, a working directory removed on exit,
# background processes killed on exit, waiting for a server's port file.
# A test sources it and names itself:
#   # shellcheck source=tests/lib.sh
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   lib_init my_test
# then has fail, step, $TMP, $PY, and cleans up on exit whatever it started
# under $SERVER_PID, $BUILD_PID or in the $PIDS array.
# (KEEP_TMP=1 keeps the working directory, with every output, for inspection.)
# shellcheck shell=bash

# Debian's interpreter: the python3 on PATH may not see Debian's python3-*
# packages (docs platform-notes, trap 8).
export PY=/usr/bin/python3
LIB_TEST_NAME="shell test"
SERVER_PID=""
BUILD_PID=""
PIDS=()

fail() {
  echo "$LIB_TEST_NAME: FAIL: $*" >&2
  exit 1
}
step() { echo "$LIB_TEST_NAME: $*" >&2; }

lib_cleanup() {
  local p
  for p in "$SERVER_PID" "$BUILD_PID" "${PIDS[@]}"; do
    if [ -n "$p" ]; then kill -KILL "$p" 2>/dev/null || true; fi
  done
  for p in "$SERVER_PID" "$BUILD_PID" "${PIDS[@]}"; do
    if [ -n "$p" ]; then wait "$p" 2>/dev/null || true; fi
  done
  if [ -n "${KEEP_TMP:-}" ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}

# lib_init NAME: the name messages carry; makes $TMP and sets the EXIT trap.
lib_init() {
  LIB_TEST_NAME="$1"
  TMP="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
  trap lib_cleanup EXIT
}

# run_logged LOG WHAT COMMAND...: runs COMMAND with its output in LOG; when
# it fails, prints LOG and fails with "WHAT failed".
run_logged() {
  local log="$1" what="$2"
  shift 2
  "$@" >"$log" 2>&1 || { cat "$log" >&2; fail "$what failed"; }
}

# wait_for_port PID PORT_FILE LOG WHAT: waits up to 60 s for the server PID
# to write PORT_FILE and prints the port; fails with LOG when the server
# exits first or writes nothing.
wait_for_port() {
  local pid="$1" file="$2" log="$3" what="$4"
  for _ in $(seq 1 600); do
    [ -s "$file" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; fail "$what exited before writing its port file"; }
    sleep 0.1
  done
  [ -s "$file" ] || { cat "$log" >&2; fail "$what wrote no port file within 60 s"; }
  tr -d '[:space:]' <"$file"
}

# tiny_model_and_index RAG SEED VERB [BUILD_OPTIONS...]: writes
# $TMP/corpus.jsonl (30 documents "doc-00".."doc-29" of four sentences "The W
# VERB the W near the W.", the words drawn from 24 by a fixed LCG started at
# SEED, so every run has the same corpus), trains a tiny model on it for 30
# steps ($TMP/model) and builds its index ($TMP/index) with BUILD_OPTIONS.
tiny_model_and_index() {
  local rag="$1" seed="$2" verb="$3"
  shift 3
  "$PY" - "$TMP/corpus.jsonl" "$seed" "$verb" <<'PYEOF'
import json, sys
words = ("river stone bridge lantern harvest meadow copper violin orchard glacier thunder candle "
         "harbour falcon pepper marble saddle compass willow ember quartz tide ledger prism").split()
path, state, verb = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def pick():
    global state
    state = (state * 1103515245 + 12345) % (1 << 31)
    return words[(state >> 8) % len(words)]
with open(path, "w") as f:
    for i in range(30):
        text = " ".join("The %s %s the %s near the %s." % (pick(), verb, pick(), pick()) for _ in range(4))
        f.write(json.dumps({"id": "doc-%02d" % i, "text": text}) + "\n")
PYEOF
  run_logged "$TMP/train.log" "rag train" \
    "$rag" --threads 1 train --corpus "$TMP/corpus.jsonl" --out "$TMP/model" --preset tiny --steps 30 --quiet
  run_logged "$TMP/build.log" "rag build" \
    "$rag" --threads 1 build --corpus "$TMP/corpus.jsonl" --model "$TMP/model" --out "$TMP/index" --quiet "$@"
}
