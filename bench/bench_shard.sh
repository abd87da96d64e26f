#!/usr/bin/env bash
# Sharded build and serving costs (issue 22), on one 2-core machine:
#   - build: one trained index (`rag build --train-only`, timed on its own),
#     then, alternated over ROUNDS rounds, the arms
#       single-1t  the whole corpus added by one process on one core;
#       single-2t  the same with both cores (what a user runs today);
#       N2-side    2 shards side by side, one core each (taskset, 1 thread);
#       N4-serial  4 shards one after another, one core each;
#     speed-up = single-2t wall / N2-side wall, efficiency per shard =
#     single-1t time / (N x that shard's time) (goal >= 0.9), imbalance =
#     largest shard / mean shard (chunks and seconds);
#   - bytes per chunk on disk (each index directory) and in RAM (resident
#     memory of each server once its index is loaded and searched);
#   - serving: bench_front against the single index's server, with 2 shard
#     servers and the front (goal: front p50 <= 1.2x single).
# Raw output: OUT/bench_shard.json (+ OUT/front.json from bench_front).
#
# Usage: bench/bench_shard.sh BUILD_DIR OUT_DIR
# Environment: DOCS (first DOCS documents of data/brown/brown.jsonl; 100),
# ROUNDS (2), MODEL (a model directory; default: the `small` preset trained
# for 2 steps on the corpus: timings do not depend on the weights' values),
# QUERIES (200), FRONT_ROUNDS (3), EMBED_BATCH (`rag build --batch-size`, 64:
# the default; 1 makes the single index and the shards bit-identical, see
# the README's "More than one machine").
set -euo pipefail
BUILD="${1:?usage: bench_shard.sh BUILD_DIR OUT_DIR}"
OUT="${2:?usage: bench_shard.sh BUILD_DIR OUT_DIR}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAG="$BUILD/services/rag"
FRONT="$BUILD/bench/bench_front"
DOCS="${DOCS:-100}"
ROUNDS="${ROUNDS:-2}"
QUERIES="${QUERIES:-200}"
EMBED_BATCH="${EMBED_BATCH:-64}"
FRONT_ROUNDS="${FRONT_ROUNDS:-3}"
PY=/usr/bin/python3
mkdir -p "$OUT"
W="$OUT/work"
rm -rf "$W"
mkdir -p "$W"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi; done; }
trap cleanup EXIT
say() { echo "bench_shard: $*" >&2; }
now() { date +%s.%N; }
# One core, one thread: LibTorch's and OpenBLAS's own pools held to 1.
on_core() { local c="$1"; shift; OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 taskset -c "$c" "$RAG" --threads 1 "$@"; }

head -n "$DOCS" "$HERE/data/brown/brown.jsonl" > "$W/corpus.jsonl"
MODEL="${MODEL:-}"
if [ -z "$MODEL" ]; then
  MODEL="$W/model"
  say "model: the small preset, 2 steps on the corpus"
  "$RAG" train --corpus "$W/corpus.jsonl" --out "$MODEL" --preset small --steps 2 --quiet
fi

say "train once: rag build --train-only"
t0=$(now)
"$RAG" build --corpus "$W/corpus.jsonl" --model "$MODEL" --out "$W/trained" --train-only --quiet
train_s=$(echo "$(now) - $t0" | bc)

TIMES="$W/times.jsonl"
: > "$TIMES"
record() { echo "{\"round\": $1, \"arm\": \"$2\", \"part\": \"$3\", \"seconds\": $4}" >> "$TIMES"; }
build_args=(build --corpus "$W/corpus.jsonl" --model "$MODEL" --trained "$W/trained" --quiet --overwrite
            --batch-size "$EMBED_BATCH")

arm_single_1t() {
  local t; t=$(now); on_core 0 "${build_args[@]}" --out "$W/single-1t" > /dev/null
  record "$1" single-1t all "$(echo "$(now) - $t" | bc)"
}
arm_single_2t() {
  local t; t=$(now); "$RAG" "${build_args[@]}" --out "$W/single" > /dev/null
  record "$1" single-2t all "$(echo "$(now) - $t" | bc)"
}
arm_n2_side() {
  local t p0 p1 e0 e1; t=$(now)
  ( s=$(now); on_core 0 "${build_args[@]}" --shard 0/2 --out "$W/n2-0" > /dev/null; echo "$(now) - $s" | bc > "$W/n2-0.s" ) & p0=$!
  ( s=$(now); on_core 1 "${build_args[@]}" --shard 1/2 --out "$W/n2-1" > /dev/null; echo "$(now) - $s" | bc > "$W/n2-1.s" ) & p1=$!
  wait "$p0"; e0=$?; wait "$p1"; e1=$?
  if [ "$e0" != 0 ] || [ "$e1" != 0 ]; then say "a shard build failed"; exit 1; fi
  record "$1" N2-side wall "$(echo "$(now) - $t" | bc)"
  record "$1" N2-side shard0 "$(cat "$W/n2-0.s")"
  record "$1" N2-side shard1 "$(cat "$W/n2-1.s")"
}
arm_n4_serial() {
  local i t
  for i in 0 1 2 3; do
    t=$(now); on_core 0 "${build_args[@]}" --shard "$i/4" --out "$W/n4-$i" > /dev/null
    record "$1" N4-serial "shard$i" "$(echo "$(now) - $t" | bc)"
  done
}

arms=(arm_single_1t arm_n2_side arm_n4_serial arm_single_2t)
for r in $(seq 1 "$ROUNDS"); do
  order=("${arms[@]}")
  if [ $((r % 2)) = 0 ]; then order=(arm_single_2t arm_n4_serial arm_n2_side arm_single_1t); fi
  for a in "${order[@]}"; do say "round $r/$ROUNDS: $a"; "$a" "$r"; done
done

# Chunks and bytes of each index (the manifest counts chunks).
SIZES="$W/sizes.jsonl"
: > "$SIZES"
for d in single n2-0 n2-1 n4-0 n4-1 n4-2 n4-3; do
  "$PY" - "$W/$d" "$d" >> "$SIZES" <<'EOF'
import json, os, sys
d, name = sys.argv[1], sys.argv[2]
m = json.load(open(os.path.join(d, "manifest.json")))
files = {}
for root, _, names in os.walk(d):
    for n in names:
        p = os.path.join(root, n)
        files[os.path.relpath(p, d)] = os.path.getsize(p)
print(json.dumps({"index": name, "chunks": m["chunking"]["chunks"], "bytes": sum(files.values()),
                  "faiss_bytes": sum(v for k, v in files.items() if k.endswith(".faiss")),
                  "embeddings_bytes": sum(v for k, v in files.items() if k.endswith(".f32"))}))
EOF
done

# Serving: the single index's server, 2 shard servers and a front.
serve() {
  local name="$1"; shift
  "$RAG" serve --listen 127.0.0.1:0 --port-file "$W/$name.port" "$@" > "$W/$name.log" 2>&1 &
  PIDS+=($!)
  eval "${name}_pid=$!"
  for _ in $(seq 1 600); do [ -s "$W/$name.port" ] && break; sleep 0.1; done
  [ -s "$W/$name.port" ] || { cat "$W/$name.log" >&2; say "rag serve ($name) did not start"; exit 1; }
}
serve single --model "$MODEL" --index "$W/single"
serve shard0 --model "$MODEL" --index "$W/n2-0"
serve shard1 --model "$MODEL" --index "$W/n2-1"
serve front --model "$MODEL" --shards "127.0.0.1:$(cat "$W/shard0.port"),127.0.0.1:$(cat "$W/shard1.port")"
say "bench_front: $QUERIES queries x $FRONT_ROUNDS rounds"
"$FRONT" --model "$MODEL" --single "127.0.0.1:$(cat "$W/single.port")" --front "127.0.0.1:$(cat "$W/front.port")" \
  --shard "127.0.0.1:$(cat "$W/shard0.port")" --shard "127.0.0.1:$(cat "$W/shard1.port")" \
  --corpus "$W/corpus.jsonl" --queries "$QUERIES" --rounds "$FRONT_ROUNDS" --json "$OUT/front.json" | tee "$W/front.txt"
rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$1/status"; }
# shellcheck disable=SC2154  # the *_pid variables are set by serve's eval
echo "{\"single\": $(rss "$single_pid"), \"shard0\": $(rss "$shard0_pid"), \"shard1\": $(rss "$shard1_pid"), \"front\": $(rss "$front_pid")}" > "$W/rss.json"
# A server with the model and no index: the fixed cost to subtract.
serve bare --model "$MODEL"
# shellcheck disable=SC2154
bare_rss=$(rss "$bare_pid")

"$PY" - "$W" "$OUT/bench_shard.json" "$train_s" "$bare_rss" "$DOCS" "$ROUNDS" "$EMBED_BATCH" <<'EOF'
import json, statistics, sys
w, out, train_s, bare_rss, docs, rounds = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
times = [json.loads(l) for l in open(f"{w}/times.jsonl")]
sizes = {s["index"]: s for s in (json.loads(l) for l in open(f"{w}/sizes.jsonl"))}
rss = json.load(open(f"{w}/rss.json"))
front = json.load(open(f"{w}/../front.json"))
def t(arm, part):
    return statistics.median(x["seconds"] for x in times if x["arm"] == arm and x["part"] == part)
single_1t, single_2t = t("single-1t", "all"), t("single-2t", "all")
n2 = [t("N2-side", f"shard{i}") for i in range(2)]
n4 = [t("N4-serial", f"shard{i}") for i in range(4)]
def summary(n, shard_s, names):
    chunks = [sizes[x]["chunks"] for x in names]
    return {"shard_seconds": shard_s, "shard_chunks": chunks,
            "efficiency_per_shard": [single_1t / (n * s) for s in shard_s],
            "sum_shard_seconds_over_single_1t": sum(shard_s) / single_1t,
            "imbalance_chunks": max(chunks) / statistics.mean(chunks),
            "imbalance_seconds": max(shard_s) / statistics.mean(shard_s)}
res = {
    "docs": docs, "rounds": rounds, "embed_batch": int(sys.argv[7]), "train_only_seconds": train_s,
    "median_seconds": {"single_1t": single_1t, "single_2t": single_2t, "N2_side_wall": t("N2-side", "wall")},
    "speedup_N2_side_over_single_2t": single_2t / t("N2-side", "wall"),
    "speedup_N2_side_over_single_1t": single_1t / t("N2-side", "wall"),
    "N2": summary(2, n2, ["n2-0", "n2-1"]),
    "N4": summary(4, n4, [f"n4-{i}" for i in range(4)]),
    "N4_projected_wall_on_4_cores": max(n4),
    "bytes_per_chunk_on_disk": {k: v["bytes"] / v["chunks"] for k, v in sizes.items()},
    "faiss_bytes_per_chunk": {k: v["faiss_bytes"] / v["chunks"] for k, v in sizes.items()},
    "rss_bytes": dict(rss, model_only=bare_rss),
    "rss_above_model_only_per_chunk": {k: (rss[k] - bare_rss) / sizes[{"single": "single", "shard0": "n2-0", "shard1": "n2-1"}[k]]["chunks"]
                                       for k in ("single", "shard0", "shard1")},
    "front_p50_ratio": front["p50_ratio_front_over_single"],
    "front_p50_ms": {k: v["p50_ms"] for k, v in front["arms"].items()},
    "front_answers_not_bit_identical": [front["answers_differing"], front["answers_compared"]],
    "front_answers_other_neighbours": [front["answers_other_neighbours"], front["answers_compared"]],
    "raw_times": times, "sizes": list(sizes.values()),
}
json.dump(res, open(out, "w"), indent=1)
print(json.dumps({k: v for k, v in res.items() if k not in ("raw_times", "sizes")}, indent=1))
EOF
