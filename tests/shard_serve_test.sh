#!/usr/bin/env bash
# Sharded serving answers exactly like one index (issue 22), end to end with
# `rag` on loopback: a random GPT-2-layout model, a 40-document corpus with
# duplicated documents (exact ties in distance), one trained index
# (`rag build --train-only`, IVF, with a kNN-LM datastore), the single index
# and N = 1, 2, 4 shards built on it (`--trained T --shard i/N`), and a RETRO
# model fitted on the single index. For each N, N shard servers and a front
# (`rag serve --shards ...`) must give
#   - the same `rag query --json` neighbours as the single index's server
#     (doc id, offset, text, continuation, distance), also with
#     --exclude-doc and for k at a tie;
#   - the same per-token kNN-LM log-probs (`rag score --mode knnlm`);
#   - the same greedy RETRO generation (`rag generate --mode retro`);
# and at N = 2:
#   - `rag add` through the front lands on the shard that owns the id (XXH3-64
#     of the id mod N, computed here with python3-xxhash) and is then found;
#   - a shard killed -> the front's query fails UNAVAILABLE naming it;
#   - a front over mismatched shards (shard 0 of 2 with shard 1 of 4, or a
#     shard twice) refuses to start, naming the shard and the field.
#
# Usage: shard_serve_test.sh RAG_BINARY REPO_SOURCE_DIR GPT2_VOCAB_DIR
# (KEEP_TMP=1 keeps the working directory.)
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init shard_serve_test

RAG="${1:?usage: shard_serve_test.sh RAG_BINARY REPO_SOURCE_DIR GPT2_VOCAB_DIR}"
SRC="${2:?}"
VOCAB="${3:?}"
MAKE="$SRC/tests/hf/make_hf_checkpoint.py"

[ -x "$RAG" ] || fail "rag binary '$RAG' is not executable"
"$PY" -c 'import numpy, xxhash' || fail "$PY needs numpy and xxhash (scripts/setup.sh installs python3-numpy, python3-xxhash)"

PIDS=()
stop_all() {
  for p in "${PIDS[@]:-}"; do
    if [ -n "$p" ]; then kill -KILL "$p" 2>/dev/null || true; fi
  done
  for p in "${PIDS[@]:-}"; do
    if [ -n "$p" ]; then wait "$p" 2>/dev/null || true; fi
  done
  PIDS=()
}

# Starts `rag serve ARGS...` on a free port; sets PORT and appends its pid.
serve() {
  local name="$1"; shift
  rm -f "$TMP/$name.port"
  "$RAG" serve --listen 127.0.0.1:0 --port-file "$TMP/$name.port" "$@" > "$TMP/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 600); do [ -s "$TMP/$name.port" ] && break; sleep 0.1; done
  [ -s "$TMP/$name.port" ] || { cat "$TMP/$name.log" >&2; fail "rag serve ($name) did not start"; }
  PORT="$(cat "$TMP/$name.port")"
}

step "corpus: 40 documents, 4 of them duplicated under other ids (exact ties)"
"$PY" - "$TMP/corpus.jsonl" <<'EOF'
import json, sys
words = ("river stone bridge lantern harvest meadow copper violin orchard glacier thunder candle "
         "harbour falcon pepper marble saddle compass willow ember quartz tide ledger prism").split()
state = 4242
def pick(seq):
    global state
    state = (state * 1103515245 + 12345) % (1 << 31)
    return seq[(state >> 8) % len(seq)]
docs = []
for i in range(36):
    text = " ".join(f"The {pick(words)} of the {pick(words)} is near the {pick(words)}." for _ in range(8))
    docs.append({"id": f"doc{i:02d}", "text": text})
for i in range(4):  # same text, other ids: every chunk tied with its twin
    docs.append({"id": f"twin{i}", "text": docs[i]["text"]})
with open(sys.argv[1], "w") as f:
    for d in docs:
        f.write(json.dumps(d) + "\n")
EOF

"$PY" "$MAKE" --arch gpt2 --out "$TMP/gpt2" --gpt2-vocab "$VOCAB" --seed 31 --layers 2 --width 64 --heads 4 \
  --context 128 --dtype float32 > /dev/null || fail "make_hf_checkpoint.py gpt2"
M="$TMP/gpt2"
# --batch-size 1: one chunk per forward pass, so a chunk's vector is the
# same in every build (LibTorch's CPU kernels round a row differently in
# batches of other shapes, and a shard's batches are not the whole index's).
CHUNKING=(--chunk-tokens 16 --continuation-tokens 16 --batch-size 1)

step "train once (--train-only, IVF4,Flat, datastore IVF4,Flat)"
"$RAG" build --train-only --corpus "$TMP/corpus.jsonl" --model "$M" --out "$TMP/trained" "${CHUNKING[@]}" \
  --index-factory IVF4,Flat --datastore --datastore-factory IVF4,Flat --quiet > /dev/null 2> "$TMP/train.log" ||
  { cat "$TMP/train.log" >&2; fail "rag build --train-only"; }

step "the single index and N = 1, 2, 4 shards on the trained index"
"$RAG" build --corpus "$TMP/corpus.jsonl" --model "$M" --trained "$TMP/trained" --out "$TMP/single" \
  "${CHUNKING[@]}" --datastore --quiet > /dev/null 2> "$TMP/single.log" || { cat "$TMP/single.log" >&2; fail "build single"; }
for n in 1 2 4; do
  for ((i = 0; i < n; i++)); do
    "$RAG" build --corpus "$TMP/corpus.jsonl" --model "$M" --trained "$TMP/trained" --shard "$i/$n" \
      --out "$TMP/s$n.$i" "${CHUNKING[@]}" --datastore --quiet > /dev/null 2> "$TMP/s$n.$i.log" ||
      { cat "$TMP/s$n.$i.log" >&2; fail "build shard $i/$n"; }
  done
done
"$PY" - "$TMP" <<'EOF' || fail "the shards do not partition the corpus as XXH3-64(id) mod N"
import json, sys, xxhash
tmp = sys.argv[1]
single = json.load(open(f"{tmp}/single/manifest.json"))
for n in (1, 2, 4):
    docs = 0
    for i in range(n):
        m = json.load(open(f"{tmp}/s{n}.{i}/manifest.json"))
        assert m["shard_id"] == i and m.get("shard_count", 1) == n, (n, i, m["shard_id"])
        assert m["faiss"]["trained_index_hash"] == single["faiss"]["trained_index_hash"] != "", (n, i)
        docs += m["corpus"]["documents"]
    assert docs == single["corpus"]["documents"] == 40, (n, docs)
want = [0, 0, 0, 0]
for line in open(f"{tmp}/corpus.jsonl"):
    want[xxhash.xxh3_64_intdigest(json.loads(line)["id"].encode()) % 4] += 1
got = [json.load(open(f"{tmp}/s4.{i}/manifest.json"))["corpus"]["documents"] for i in range(4)]
assert got == want, (got, want)
print(f"  4 shards hold {got} documents (independent XXH3 count: {want})", file=sys.stderr)
EOF

step "a RETRO model fitted on the single index (decoder frozen, 10 steps)"
echo '{"chunk_size": 16, "neighbour_tokens": 32, "encoder_layers": 1}' > "$TMP/retro.json"
"$RAG" train --arch retro --init "$M" --index "$TMP/single" --out "$TMP/retro" --config "$TMP/retro.json" \
  --preset tiny --steps 10 --batch-size 4 --lr 3e-3 --eval-every 0 --checkpoint-every 0 --quiet > /dev/null \
  2> "$TMP/retro.log" || { cat "$TMP/retro.log" >&2; fail "rag train --arch retro"; }
R="$TMP/retro"

# What each server answers, into $TMP/answers.<label>/.
QUERIES=("The copper of the violin is near the harbour." "The river of the stone is near the bridge."
         "$(head -1 "$TMP/corpus.jsonl" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["text"][:120])')")
SCORE_TEXT="$(sed -n 5p "$TMP/corpus.jsonl" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["text"])')"
answers() {
  local label="$1" addr="$2" out="$TMP/answers.$1"
  mkdir -p "$out"
  local q=0
  for text in "${QUERIES[@]}"; do
    for k in 1 3 8; do
      "$RAG" query --server "$addr" --text "$text" -k "$k" --json > "$out/q$q.k$k.json" ||
        fail "$label: query $q k $k"
    done
    "$RAG" query --server "$addr" --text "$text" -k 6 --exclude-doc doc00 --exclude-doc twin1 --json \
      > "$out/q$q.excl.json" || fail "$label: query $q --exclude-doc"
    q=$((q + 1))
  done
  "$RAG" score --server "$addr" --mode knnlm --text "$SCORE_TEXT" --json > "$out/knnlm.json" ||
    fail "$label: score --mode knnlm"
  "$RAG" generate --server "$addr" --mode retro --prompt "${QUERIES[0]}" --max-tokens 24 --temperature 0 --json \
    > "$out/retro.json" || fail "$label: generate --mode retro"
}

# Neighbours compared on what names a chunk in any index; chunk ids differ
# (a front's carry the shard in the high bits).
same_answers() {
  "$PY" - "$TMP/answers.$1" "$TMP/answers.$2" <<'EOF'
import json, os, sys
a, b = sys.argv[1], sys.argv[2]
ties = 0
for name in sorted(os.listdir(a)):
    x, y = json.load(open(os.path.join(a, name))), json.load(open(os.path.join(b, name)))
    if name.startswith("q"):
        key = lambda n: (n["doc_id"], n["offset"], n["text"], n["continuation"], n["distance"])
        nx, ny = [key(n) for n in x["neighbours"]], [key(n) for n in y["neighbours"]]
        assert nx == ny, f"{name}:\n  {nx}\n  {ny}"
        assert len(nx) > 0, name
        d = [n[4] for n in nx]
        ties += sum(1 for i in range(1, len(d)) if d[i] == d[i - 1])
    elif name == "knnlm.json":
        lx = [t["logprob"] for t in x["token_logprobs"]]
        ly = [t["logprob"] for t in y["token_logprobs"]]
        assert len(lx) > 20 and lx == ly, f"knnlm log-probs differ: max {max(abs(p - q) for p, q in zip(lx, ly))}"
    else:
        assert x["text"] == y["text"] and x["tokens"] == y["tokens"] == 24, (x["text"], y["text"])
print(f"  identical: {len(os.listdir(a))} answers ({ties} tied neighbour pairs among them)", file=sys.stderr)
assert ties > 0, "no tied distances: the duplicated documents did not make ties"
EOF
}

step "single index server"
serve single --model "$R" --index "$TMP/single" --read-only
answers single "127.0.0.1:$PORT"
stop_all

for n in 1 2 4; do
  step "N = $n: $n shard servers and a front"
  addrs=""
  for ((i = 0; i < n; i++)); do
    serve "s$n.$i" --model "$R" --index "$TMP/s$n.$i"
    addrs="${addrs:+$addrs,}127.0.0.1:$PORT"
    eval "SHARD_PORT_$i=$PORT"
  done
  serve "front$n" --model "$R" --shards "$addrs"
  FRONT="127.0.0.1:$PORT"
  answers "front$n" "$FRONT"
  same_answers single "front$n" || fail "N = $n: the front's answers differ from the single index's"
  if [ "$n" = 2 ]; then
    step "N = 2: rag add through the front lands on the owning shard"
    echo '{"id": "added-by-front", "text": "The saffron of the zeppelin is near the aqueduct. The zeppelin hums."}' \
      > "$TMP/add.jsonl"
    owner="$("$PY" -c 'import xxhash; print(xxhash.xxh3_64_intdigest(b"added-by-front") % 2)')"
    "$RAG" add --server "$FRONT" --corpus "$TMP/add.jsonl" --json --quiet > "$TMP/add.json" || fail "rag add via the front"
    "$PY" - "$TMP/add.json" <<'EOF' || fail "the front's add reply"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["documents_added"] == 1 and j["documents"] == 41, j
EOF
    for i in 0 1; do
      eval "p=\$SHARD_PORT_$i"
      "$RAG" stats --server "127.0.0.1:$p" > "$TMP/stats$i.json" || fail "stats of shard $i"
    done
    "$PY" - "$TMP/stats0.json" "$TMP/stats1.json" "$owner" <<'EOF' ||
import json, sys
owner = int(sys.argv[3])
stats = [json.load(open(sys.argv[1 + i])) for i in (0, 1)]
for i, s in enumerate(stats):
    assert s["documents_added"] == (1 if i == owner else 0), (i, owner, s)
assert sum(s["documents"] for s in stats) == 41, stats
print(f"  the document landed on shard {owner} only", file=sys.stderr)
EOF
      fail "the added document is not on its owning shard"
    "$RAG" query --server "$FRONT" --text "The saffron of the zeppelin is near the aqueduct." -k 1 --json \
      > "$TMP/found.json" || fail "query after add"
    grep -Eq '"doc_id": ?"added-by-front"' "$TMP/found.json" || fail "the added document is not found: $(cat "$TMP/found.json")"

    step "N = 2: a shard killed -> UNAVAILABLE naming it"
    victim=$((1 - owner))
    kill -KILL "${PIDS[$victim]}"; wait "${PIDS[$victim]}" 2>/dev/null || true
    port_var="SHARD_PORT_$victim"
    vp="${!port_var}"
    if "$RAG" query --server "$FRONT" --text "${QUERIES[0]}" -k 3 --json > "$TMP/down.json" 2> "$TMP/down.err"; then
      fail "a query with shard $victim down succeeded: $(cat "$TMP/down.json")"
    fi
    grep -q "shard $victim (127.0.0.1:$vp)" "$TMP/down.err" || fail "the error does not name the shard: $(cat "$TMP/down.err")"
    grep -qi "unavailable" "$TMP/down.err" || fail "the error is not UNAVAILABLE: $(cat "$TMP/down.err")"
  fi
  stop_all
done

step "mismatched shards: the front refuses to start"
serve m0 --model "$R" --index "$TMP/s2.0" --read-only
A0="127.0.0.1:$PORT"
serve m1 --model "$R" --index "$TMP/s4.1" --read-only
A1="127.0.0.1:$PORT"
if "$RAG" serve --model "$R" --shards "$A0,$A1" --listen 127.0.0.1:0 > "$TMP/bad.log" 2>&1; then
  fail "a front over shard 0/2 and 1/4 started"
fi
grep -q "is one of 4 shards, but 2 addresses were given" "$TMP/bad.log" || fail "no clear refusal: $(cat "$TMP/bad.log")"
if "$RAG" serve --model "$R" --shards "$A0,$A0" --listen 127.0.0.1:0 > "$TMP/twice.log" 2>&1; then
  fail "a front over the same shard twice started"
fi
grep -q "shard 0 is served twice" "$TMP/twice.log" || fail "no clear refusal: $(cat "$TMP/twice.log")"
stop_all
echo "shard_serve_test: ok (N = 1, 2, 4 shards behind a front answer as the single index: neighbours, kNN-LM, RETRO; adds routed; a dead shard named; mismatches refused)"
