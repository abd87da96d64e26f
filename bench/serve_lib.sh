# shellcheck shell=bash
# For the benches that run every arm over one `rag serve` (bench_modes.sh,
# bench_memorization_modes.sh): source it, then
#   bench_init NAME            makes $TMP and the EXIT trap that stops the server
#   bench_serve RAG MODEL INDEX  starts `rag serve` on a free loopback port,
#                              waits until it answers: $SERVER_PID, $ADDR, $MODES
#                              (the modes it serves, from `rag info`)
PY=/usr/bin/python3
SERVER_PID=""

bench_cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}

bench_init() {
  TMP="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
  trap bench_cleanup EXIT
}

bench_serve() {
  local rag="$1" model="$2" index="$3"
  "$rag" serve --model "$model" --index "$index" --listen 127.0.0.1:0 --port-file "$TMP/port" >"$TMP/serve.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 1200); do
    [ -s "$TMP/port" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$TMP/serve.log" >&2; exit 1; }
    sleep 0.5
  done
  ADDR="127.0.0.1:$(tr -d '[:space:]' <"$TMP/port")"
  # shellcheck disable=SC2034  # read by the scripts that source this
  mapfile -t MODES < <("$rag" info --server "$ADDR" --json | "$PY" -c 'import json,sys; print("\n".join(json.load(sys.stdin)["modes"]))')
}
