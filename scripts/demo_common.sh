# Shared by scripts/demo.sh and scripts/demo_quick.sh (sourced): paths,
# set-up and build, section headers, a server on a free loopback port.
# shellcheck shell=bash
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${RAG_DATA_DIR:-$here/data}"
# shellcheck disable=SC2034  # used by the demos
corpus="$data/brown/brown.jsonl"
rag="${RAG_BUILD_DIR:-$here/build}/services/rag"

# Packages, corpus and the `rag` binary (only it: no tests or benches).
demo_setup() {
  "$here/scripts/setup.sh"
  RAG_BUILD_TARGET=rag "$here/scripts/build.sh"
}

section() { printf '\n== %s ==\n' "$*"; }

# demo_serve MODEL INDEX: starts `rag serve` on 127.0.0.1 at a free port,
# stopped on exit; sets server (HOST:PORT) and server_pid. Its port file and
# log go to a temporary directory made here, removed on exit.
workdir=""
server_pid=""
demo_cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null; fi
  if [ -n "$workdir" ]; then rm -rf "$workdir"; fi
}
demo_serve() {
  if [ -z "$workdir" ]; then
    workdir="$(mktemp -d)"
    trap demo_cleanup EXIT
  fi
  "$rag" serve --model "$1" --index "$2" --listen 127.0.0.1:0 --port-file "$workdir/port" 2>"$workdir/serve.log" &
  server_pid=$!
  for _ in $(seq 1 120); do [ -s "$workdir/port" ] && break; sleep 0.5; done
  [ -s "$workdir/port" ] || { cat "$workdir/serve.log"; echo "demo: the server did not start" >&2; exit 1; }
  server="127.0.0.1:$(cat "$workdir/port")"
  echo "rag serve is listening on $server"
}

# demo_stop_server: SIGTERM, then waits for the drain.
demo_stop_server() {
  kill -TERM "$server_pid" && wait "$server_pid"
  server_pid=""
  echo "server stopped cleanly"
}
