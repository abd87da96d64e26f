#!/usr/bin/env bash
# Crash consistency, with real SIGKILLs at seeded random moments:
#  1. `rag build` (chunks, embeddings, FAISS, kNN-LM datastore) is killed up
#     to 3 times in a row, then rerun to the end: the index must validate and
#     hold exactly what an uninterrupted build of the same corpus holds.
#  2. `rag serve` is killed while a `rag add` client streams documents: after
#     a restart the index validates (no chunk without its vector, no vector
#     without its chunk, manifest counts right) and, at the end, every
#     document of an acknowledged `rag add` call is present.
#
# Usage: crash_test.sh RAG_BINARY [SEED] [TRIALS]   (KEEP_TMP=1 keeps files)
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init crash_test

RAG="${1:?usage: crash_test.sh RAG_BINARY [SEED] [TRIALS]}"
RANDOM="${2:-7}"  # seeds bash's generator: the kill moments repeat
TRIALS="${3:-3}"
# Seconds in [lo, hi), from $RANDOM.
pause() { awk -v lo="$1" -v hi="$2" -v r="$RANDOM" 'BEGIN { printf "%.3f", lo + (hi - lo) * r / 32768 }'; }

step "corpus and tiny model"
words=(river stone bridge lantern harvest meadow copper violin orchard glacier thunder candle harbour falcon
       pepper marble saddle compass willow ember quartz tide ledger prism cobalt fern summit anvil basket whistle)
for i in $(seq 0 399); do
  text="Document $i:"
  for _ in $(seq 1 40); do text+=" ${words[RANDOM % ${#words[@]}]}"; done
  printf '{"id": "doc-%03d", "text": "%s."}\n' "$i" "$text"
done >"$TMP/corpus.jsonl"
"$RAG" --threads 1 train --corpus "$TMP/corpus.jsonl" --out "$TMP/model" --preset tiny --steps 10 --quiet \
  >"$TMP/train.log" 2>&1 || { cat "$TMP/train.log" >&2; fail "rag train failed"; }

# The same command every time, so a rerun resumes. Run directly (not in a
# function) when backgrounded, so that $! is rag itself and SIGKILL hits it.
build_args=(--threads 1 build --corpus "$TMP/corpus.jsonl" --model "$TMP/model" --quiet
            --chunk-tokens 16 --datastore --datastore-factory Flat)
build() { "$RAG" "${build_args[@]}" --out "$1"; }
# What must not depend on interruptions: the counts, and the datastore's
# token and document columns (its keys are floats from batched forwards).
summary() {
  "$RAG" stats --model "$TMP/model" --index "$1" | /usr/bin/python3 -c '
import json, sys
s = json.load(sys.stdin)
print(s["documents"], s["chunks"], s["tokens"], s["vectors"], end=" ")'
  cat "$1/datastore/values.i32" "$1/datastore/docs.i32" | md5sum | cut -c1-12
}

step "reference build"
# Timed twice: the whole command, and the window in which OUT.partial exists
# (start-up, reading and tokenizing come before it; exit after its rename).
start=$(date +%s.%N)
build "$TMP/ref" >"$TMP/ref.log" 2>&1 &
pid=$!
begun=""
renamed=""
while kill -0 "$pid" 2>/dev/null; do
  if [ -z "$begun" ] && [ -d "$TMP/ref.partial" ]; then begun=$(date +%s.%N); fi
  if [ -z "$renamed" ] && [ -d "$TMP/ref" ]; then renamed=$(date +%s.%N); fi
  sleep 0.005
done
wait "$pid" || { cat "$TMP/ref.log" >&2; fail "reference build failed"; }
ref_seconds=$(echo "$(date +%s.%N) - $start" | bc)
if [ -z "$begun" ] || [ -z "$renamed" ]; then fail "the reference build's $TMP/ref.partial was not seen before its rename"; fi
window_seconds=$(echo "$renamed - $begun" | bc)
ref="$(summary "$TMP/ref")"
step "reference: $ref (documents chunks tokens vectors, datastore checksum), ${ref_seconds}s, OUT.partial for ${window_seconds}s"

# A kill between creating OUT.partial and recording the build's arguments
# there leaves an empty directory: the next build must start afresh, not
# refuse it as "a partial build from other arguments".
mkdir "$TMP/never.partial"
build "$TMP/never" >"$TMP/never.log" 2>&1 || { cat "$TMP/never.log" >&2; fail "a build over an empty partial directory failed"; }
grep -q "never started" "$TMP/never.log" || fail "the empty partial directory was not noticed"
[ "$(summary "$TMP/never")" = "$ref" ] || fail "the build over an empty partial directory differs from the reference"
step "an empty partial directory (killed before the arguments were recorded) is started afresh"

# A kill lands mid-build when the build has begun (OUT.partial exists) and
# not finished (no OUT). The first kill of a trial comes once OUT.partial
# exists, within half the time the reference's OUT.partial existed; later
# ones anywhere up to the reference's whole time.
mid_build_kills=0
late_total=0
for trial in $(seq 1 "$TRIALS"); do
  out="$TMP/build-$trial"
  kills=$((1 + RANDOM % 3))
  first_max=$(echo "0.5 * $window_seconds" | bc -l)
  late=0
  k=1
  while [ "$k" -le "$kills" ]; do
    "$RAG" "${build_args[@]}" --out "$out" >>"$TMP/build-$trial.log" 2>&1 &
    pid=$!
    if [ "$k" = 1 ]; then
      # Once the build has begun: start-up alone can outlast a short pause.
      for _ in $(seq 1 300); do [ -d "$out.partial" ] && break; sleep 0.01; done
      sleep "$(pause 0 "$first_max")"
    else
      sleep "$(pause 0.2 "$(echo "$ref_seconds + 1" | bc)")"
    fi
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ -d "$out" ]; then  # it finished before the kill
      # A first kill that late means this build outran the reference's
      # (whose time, measured while other tests shared the cores, sets the
      # pauses): start the trial over with half the pause, at most 3 times,
      # so that every trial does kill a build in progress.
      if [ "$k" = 1 ] && [ "$late" -lt 3 ]; then
        late=$((late + 1))
        late_total=$((late_total + 1))
        rm -rf "$out"
        first_max=$(echo "$first_max / 2" | bc -l)
        continue
      fi
      break
    fi
    [ -d "$out.partial" ] && mid_build_kills=$((mid_build_kills + 1))
    k=$((k + 1))
  done
  if [ ! -d "$out" ]; then
    build "$out" >>"$TMP/build-$trial.log" 2>&1 ||
      { tail -20 "$TMP/build-$trial.log" >&2; fail "trial $trial: the build after $kills kills failed"; }
  fi
  "$RAG" validate "$out" >"$TMP/validate-$trial.log" 2>&1 || { cat "$TMP/validate-$trial.log" >&2; fail "trial $trial: rag validate failed"; }
  got="$(summary "$out")"
  [ "$got" = "$ref" ] || fail "trial $trial: after $kills kills the index holds '$got', not '$ref'"
  step "build trial $trial: up to $kills kills, resumed, validates, equals the reference"
done
# A run whose kills all came too early or too late would have tested
# nothing: require one mid-build kill a trial, and at least one resume from
# real progress (embedded chunks or stored datastore keys).
[ "$mid_build_kills" -ge "$TRIALS" ] ||
  fail "only $mid_build_kills kills landed mid-build in $TRIALS trials (the reference's OUT.partial existed for ${window_seconds}s)"
resumed=$(cat "$TMP"/build-*.log | grep -cE "resuming embedding at chunk [1-9]|datastore: resuming at key [1-9]" || true)
[ "$resumed" -ge 1 ] || fail "no rerun resumed from embedded chunks or stored keys: every kill came before any progress"
step "$mid_build_kills kills landed mid-build ($late_total first kills came after the build and were retried sooner); $resumed reruns resumed from saved progress"

step "kills of rag serve during AddDocuments"
cp -r "$TMP/ref" "$TMP/live"
# start_server WHAT: rag serve on the live index; sets SERVER_PID and addr.
start_server() {
  rm -f "$TMP/port"
  "$RAG" --threads 1 serve --model "$TMP/model" --index "$TMP/live" --listen 127.0.0.1:0 --port-file "$TMP/port" \
    >>"$TMP/serve.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 600); do [ -s "$TMP/port" ] && break; sleep 0.1; done
  [ -s "$TMP/port" ] || { tail "$TMP/serve.log" >&2; fail "$1: no port"; }
  addr="127.0.0.1:$(tr -d '[:space:]' <"$TMP/port")"
}
batch=0
acked="$TMP/acked.txt"
: >"$acked"
for trial in $(seq 1 "$TRIALS"); do
  start_server "serve trial $trial"
  # A client adds 30-document batches one after another until the server dies.
  (
    while true; do
      batch=$((batch + 1))
      f="$TMP/batch-$trial-$batch.jsonl"
      for d in $(seq 1 30); do
        printf '{"id": "t%d-b%d-d%d", "text": "Added %d %d %d: the %s %s the %s near the %s."}\n' "$trial" "$batch" "$d" \
          "$trial" "$batch" "$d" "${words[RANDOM % 30]}" "${words[RANDOM % 30]}" "${words[RANDOM % 30]}" "${words[RANDOM % 30]}"
      done >"$f"
      "$RAG" add --server "$addr" --corpus "$f" --quiet --connect-timeout 2 >/dev/null 2>&1 || exit 0
      echo "$f" >>"$acked"
    done
  ) &
  client=$!
  # Kill at a random moment after this trial's first acknowledged batch (a
  # slow machine must not turn the test into one with nothing to check).
  before=$(wc -l <"$acked")
  for _ in $(seq 1 600); do [ "$(wc -l <"$acked")" -gt "$before" ] && break; sleep 0.1; done
  sleep "$(pause 0 2)"
  kill -KILL "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  wait "$client" 2>/dev/null || true
  # Restart (opening recovers: stored chunks the vector index lacks are
  # indexed, the manifest catches up), stop cleanly, then validate.
  start_server "serve trial $trial, restart after the kill"
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" || { tail "$TMP/serve.log" >&2; fail "serve trial $trial: the restarted server did not stop cleanly"; }
  SERVER_PID=""
  "$RAG" validate "$TMP/live" >"$TMP/validate-live.log" 2>&1 ||
    { cat "$TMP/validate-live.log" >&2; fail "serve trial $trial: the index does not validate after kill + restart"; }
  step "serve trial $trial: killed, restarted, validates; $(wc -l <"$acked") acknowledged batches so far"
done

# Every acknowledged document is present: re-adding them all is all skips.
xargs cat <"$acked" >"$TMP/all-acked.jsonl"
n_acked=$(wc -l <"$TMP/all-acked.jsonl")
[ "$n_acked" -gt 0 ] || fail "no batch was acknowledged: the kills came too early to test anything"
"$RAG" --threads 1 add --model "$TMP/model" --index "$TMP/live" --corpus "$TMP/all-acked.jsonl" --skip-existing \
  --json --quiet >"$TMP/readd.json" 2>"$TMP/readd.log" || { cat "$TMP/readd.log" >&2; fail "re-adding failed"; }
/usr/bin/python3 - "$TMP/readd.json" "$n_acked" <<'PY' || fail "an acknowledged document is missing (above)"
import json, sys
r = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
if r.get("documents_skipped", 0) != n or r.get("documents_added", 0) != 0:
    print("re-adding %d acknowledged documents: %s" % (n, r), file=sys.stderr)
    sys.exit(1)
PY
"$RAG" validate "$TMP/live" >/dev/null 2>&1 || fail "the index does not validate at the end"
step "PASS: $n_acked acknowledged documents all present"
