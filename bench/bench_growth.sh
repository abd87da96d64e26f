#!/usr/bin/env bash
# How cost grows with the corpus (issue 23), on one machine:
#   pipeline   for the nested corpora of scripts/prepare_growth_corpora.sh
#              (Brown; + the State of the Union addresses; + Austen's novels
#              and the Jargon File), one `rag build --datastore` each: wall
#              seconds and peak RSS of the build, bytes on disk of the chunk
#              index and of the kNN-LM datastore, resident memory of a
#              `rag serve` holding them (after a search and a kNN-LM score,
#              minus a server with the model and no index), and in-process
#              search latency (bench_search, nq = 1, the engine's default
#              nprobe, the same for every corpus);
#   synthetic  FAISS only (bench_faiss_growth), 10^5 to 10^7 vectors.
# Sizes alternate order every round. Raw output: OUT/growth.json;
# bench/growth_report.py turns it into the tables and plots of
# docs/results.md.
#
# Usage: bench/bench_growth.sh BUILD_DIR OUT_DIR
# Environment: PRESET (model preset, tiny: timings do not depend on the
# weights' values, so the model is trained for 2 steps on Brown), MODEL (a
# model directory instead), ROUNDS (pipeline rounds, 1), SYN_ROUNDS (2),
# SIZES (synthetic sizes, "100000 300000 1000000 3000000 10000000"),
# SYN_DIM (64), QUERIES (200), PARTS ("pipeline synthetic"), CORPORA (the
# pipeline's corpora, "brown brown_sotu brown_sotu_books").
set -euo pipefail
BUILD="${1:?usage: bench_growth.sh BUILD_DIR OUT_DIR}"
OUT="${2:?usage: bench_growth.sh BUILD_DIR OUT_DIR}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAG="$BUILD/services/rag"
SEARCH="$BUILD/bench/bench_search"
FAISS_GROWTH="$BUILD/bench/bench_faiss_growth"
PRESET="${PRESET:-tiny}"
ROUNDS="${ROUNDS:-1}"
SYN_ROUNDS="${SYN_ROUNDS:-2}"
SIZES="${SIZES:-100000 300000 1000000 3000000 10000000}"
SYN_DIM="${SYN_DIM:-64}"
QUERIES="${QUERIES:-200}"
PARTS="${PARTS:-pipeline synthetic}"
PY=/usr/bin/python3
DATA="${RAG_DATA_DIR:-$HERE/data}"
mkdir -p "$OUT"
W="$OUT/work"
rm -rf "$W"
mkdir -p "$W"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi; done; }
trap cleanup EXIT
say() { echo "bench_growth: $*" >&2; }
now() { date +%s.%N; }
rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$1/status"; }
PIPELINE="$W/pipeline.jsonl"
SYNTHETIC="$W/synthetic.jsonl"
: > "$PIPELINE"
: > "$SYNTHETIC"

serve() {  # serve NAME ARGS...: starts `rag serve`, sets SERVED_PID
  "$RAG" serve --listen 127.0.0.1:0 --port-file "$W/$1.port" "${@:2}" > "$W/$1.log" 2>&1 &
  SERVED_PID=$!
  PIDS+=("$SERVED_PID")
  for _ in $(seq 1 1200); do [ -s "$W/$1.port" ] && return 0; sleep 0.1; done
  cat "$W/$1.log" >&2; say "rag serve ($1) did not start"; exit 1
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }
# in_round_order ROUND ITEMS...: the items as given in odd rounds, reversed in even ones.
in_round_order() {
  local r="$1" i
  shift
  local items=("$@") out=()
  for ((i = 0; i < ${#items[@]}; i++)); do
    if [ $((r % 2)) = 1 ]; then out+=("${items[i]}"); else out+=("${items[${#items[@]} - 1 - i]}"); fi
  done
  echo "${out[*]}"
}

pipeline_one() {  # pipeline_one ROUND CORPUS_NAME
  local r="$1" name="$2" corpus="$DATA/growth/$2.jsonl" idx="$W/idx-$2" t wall peak_kb p50 port rss_served
  say "round $r: rag build --datastore on $name"
  rm -rf "$idx"
  t=$(now)
  /usr/bin/time -f "%M" -o "$W/peak.txt" "$RAG" build --corpus "$corpus" --model "$MODEL" --out "$idx" \
    --datastore --quiet > /dev/null
  wall=$(echo "$(now) - $t" | bc)
  peak_kb=$(tail -n 1 "$W/peak.txt")
  p50=$("$SEARCH" --model "$MODEL" --index "$idx" --corpus "$corpus" --queries "$QUERIES" |
        awk '$1 == "1" && $2 == "in-process" {print $3}')
  serve "$name" --model "$MODEL" --index "$idx"
  port=$(cat "$W/$name.port")
  # Touch every structure a server loads lazily: the chunk index and store
  # (a query) and the datastore (a kNN-LM score).
  "$RAG" query --server "127.0.0.1:$port" --text "The jury said the election was conducted" > /dev/null
  "$RAG" score --server "127.0.0.1:$port" --mode knnlm \
    --text "The committee said that the election was conducted well and fairly." > /dev/null
  rss_served=$(rss "$SERVED_PID")
  stop "$SERVED_PID"
  "$PY" - "$idx" "$name" "$r" "$wall" "$peak_kb" "$p50" "$rss_served" "$corpus" >> "$PIPELINE" <<'EOF'
import json, os, sys
idx, name, r, wall, peak_kb, p50, rss, corpus = sys.argv[1:]
m = json.load(open(os.path.join(idx, "manifest.json")))
def tree_bytes(d):
    return sum(os.path.getsize(os.path.join(root, n)) for root, _, ns in os.walk(d) for n in ns)
ds = os.path.join(idx, "datastore")
ds_manifest = m.get("datastore", {})
print(json.dumps({
    "corpus": name, "round": int(r), "corpus_bytes": os.path.getsize(corpus),
    "documents": m["corpus"]["documents"], "tokens": m["corpus"]["tokens"], "chunks": m["chunking"]["chunks"],
    "datastore_keys": ds_manifest.get("keys"), "index_factory": m["faiss"]["index_factory"],
    "datastore_factory": ds_manifest.get("index_factory"),
    "build_seconds": float(wall), "build_peak_rss_bytes": int(peak_kb) * 1024,
    "index_dir_bytes": tree_bytes(idx), "datastore_bytes": tree_bytes(ds) if os.path.isdir(ds) else 0,
    "search_p50_ms": float(p50), "served_rss_bytes": int(rss)}))
EOF
}

if [[ " $PARTS " == *" pipeline "* ]]; then
  bash "$HERE/scripts/prepare_growth_corpora.sh"
  MODEL="${MODEL:-}"
  if [ -z "$MODEL" ]; then
    MODEL="$W/model"
    say "model: the $PRESET preset, 2 steps on Brown"
    "$RAG" train --corpus "$DATA/growth/brown.jsonl" --out "$MODEL" --preset "$PRESET" --steps 2 --quiet
  fi
  serve bare --model "$MODEL"
  "$RAG" score --server "127.0.0.1:$(cat "$W/bare.port")" --text "The committee said that." > /dev/null
  bare_rss=$(rss "$SERVED_PID")
  stop "$SERVED_PID"
  echo "{\"corpus\": \"model-only\", \"served_rss_bytes\": $bare_rss}" >> "$PIPELINE"
  read -r -a corpora <<< "${CORPORA:-brown brown_sotu brown_sotu_books}"
  for r in $(seq 1 "$ROUNDS"); do
    read -r -a order <<< "$(in_round_order "$r" "${corpora[@]}")"
    for c in "${order[@]}"; do pipeline_one "$r" "$c"; done
  done
fi

if [[ " $PARTS " == *" synthetic "* ]]; then
  read -r -a sizes <<< "$SIZES"
  for r in $(seq 1 "$SYN_ROUNDS"); do
    read -r -a order <<< "$(in_round_order "$r" "${sizes[@]}")"
    for n in "${order[@]}"; do
      say "round $r: synthetic n = $n"
      "$FAISS_GROWTH" --n "$n" --dim "$SYN_DIM" --tmp "$W" | sed "s/^{/{\"round\": $r, /" >> "$SYNTHETIC"
    done
  done
fi

commit="$(git -C "$HERE" rev-parse HEAD 2>/dev/null || echo unknown)"
"$PY" - "$PIPELINE" "$SYNTHETIC" "$OUT/growth.json" "$PRESET" "$(nproc)" "$commit" "$ROUNDS" "$SYN_ROUNDS" <<'EOF'
import json, platform, subprocess, sys
pipeline, synthetic, out, preset, cores, commit, rounds, syn_rounds = sys.argv[1:]
rows = lambda p: [json.loads(l) for l in open(p) if l.strip()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
blas = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Version}", "libopenblas0-pthread"],
                      capture_output=True, text=True).stdout or "unknown"
json.dump({"preset": preset, "cores": int(cores), "cpu": cpu, "blas": blas, "kernel": platform.release(),
           "git_commit": commit, "rounds": int(rounds), "synthetic_rounds": int(syn_rounds),
           "pipeline": rows(pipeline), "synthetic": rows(synthetic)},
          open(out, "w"), indent=1)
EOF
say "raw output: $OUT/growth.json (tables and plots: bench/growth_report.py $OUT/growth.json)"
