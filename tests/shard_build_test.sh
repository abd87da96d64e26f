#!/usr/bin/env bash
# Sharded index builds (`rag build --shard`, issue 22) with the real binary,
# a tiny model and 200 short documents, Flat indexes:
#  1. shards 0/2 and 1/2 hold disjoint documents whose union is the corpus,
#     and each document sits where an independent XXH3-64(id, seed 0) mod 2
#     (Debian's python3-xxhash) puts it;
#  2. a shard build SIGKILLed mid-embedding (its .partial directory there at
#     the kill) resumes, says so, and equals the uninterrupted shard
#     (manifest checksums of every file, counts, documents);
#  3. `--shard auto` from the launchers' variables: `mpirun --oversubscribe
#     -n 2` (Debian's openmpi-bin) builds both shards at once, equal to the
#     i/2 builds; a Slurm array's and a Kubernetes Indexed Job's variables,
#     set by hand, pick the same shards;
#  4. bad specs fail with a clear message, a non-zero exit and nothing
#     written: 2/2, auto without launcher variables, auto/3 under a launcher
#     of 2, auto with JOB_COMPLETION_INDEX only, a shard that holds no document.
#
# Usage: shard_build_test.sh RAG_BINARY   (KEEP_TMP=1 keeps files)
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init shard_build_test

RAG="${1:-${RAG:-}}"
[ -n "$RAG" ] || { echo "usage: shard_build_test.sh RAG_BINARY" >&2; exit 2; }

[ -x "$RAG" ] || fail "rag binary '$RAG' is not executable"
"$RAG" build --help | grep -q -- --shard || fail "'$RAG build' has no --shard option"
"$PY" -c 'import xxhash; xxhash.xxh3_64_intdigest(b"")' ||
  fail "$PY cannot import xxhash (scripts/setup.sh installs python3-xxhash)"
command -v mpirun >/dev/null || fail "no mpirun (scripts/setup.sh installs openmpi-bin)"

# Every command runs without the launcher variables of whatever runs the
# tests (a CI job inside a Slurm array must not pick the shard); each case
# sets the ones it means.
clean_env=(env -u OMPI_COMM_WORLD_RANK -u OMPI_COMM_WORLD_SIZE -u PMI_RANK -u PMI_SIZE -u SLURM_ARRAY_TASK_ID
           -u SLURM_ARRAY_TASK_MIN -u SLURM_ARRAY_TASK_COUNT -u JOB_COMPLETION_INDEX)

step "corpus (200 documents, some ids non-ASCII) and tiny model"
"$PY" - "$TMP/corpus.jsonl" <<'EOF'
import json, sys
words = ("river stone bridge lantern harvest meadow copper violin orchard glacier thunder candle harbour falcon "
         "pepper marble saddle compass willow ember quartz tide ledger prism cobalt fern summit anvil basket").split()
state = 2024
def pick():
    global state
    state = (state * 1103515245 + 12345) % (1 << 31)
    return words[(state >> 8) % len(words)]
with open(sys.argv[1], "w", encoding="utf-8") as f:
    for i in range(200):
        # The hash is of the id's UTF-8 bytes: a few ids that are not ASCII.
        doc_id = f"doc-{i:03d}" if i % 50 else f"dokument {i} café-文書"
        text = f"Document {i}: " + " ".join(pick() for _ in range(60)) + "."
        f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
EOF
"${clean_env[@]}" "$RAG" --threads 1 train --corpus "$TMP/corpus.jsonl" --out "$TMP/model" --preset tiny --steps 5 \
  --quiet >"$TMP/train.log" 2>&1 || { cat "$TMP/train.log" >&2; fail "rag train failed"; }

# The same arguments for every build; small embedding batches so that the
# embedding stage has many steps to be killed between.
build_args=(--threads 1 build --corpus "$TMP/corpus.jsonl" --model "$TMP/model" --quiet --chunk-tokens 16
            --continuation-tokens 16 --index-factory Flat --batch-size 4)

# doc_ids INDEX: the sorted document ids of an index, one a line, from every
# chunk a `rag query` over the whole (exact, Flat) index returns.
doc_ids() {
  "${clean_env[@]}" "$RAG" --threads 1 query --model "$TMP/model" --index "$1" --text "river stone bridge" -k 4096 \
    --json | "$PY" -c '
import json, sys
n = json.load(sys.stdin)["neighbours"]
assert 0 < len(n) < 4096, len(n)
for d in sorted({x["doc_id"] for x in n}): print(d)'
}

# same_shard WHAT A B: the two indexes are the same shard: shard id and
# count, counts, the checksum of every file and the documents (A's listed
# in A.ids).
same_shard() {
  "$PY" - "$2/manifest.json" "$3/manifest.json" <<'EOF' || fail "$1: the manifests differ (above)"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
def key(m):
    return (m["shard_id"], m.get("shard_count", 1), m["corpus"]["documents"], m["corpus"]["tokens"],
            m["chunking"]["chunks"], m["faiss"]["vectors"], sorted(m["checksums"].items()))
if key(a) != key(b):
    print("  %s\n  %s" % (key(a), key(b)), file=sys.stderr)
    sys.exit(1)
EOF
  [ "$(cat "$2.ids")" = "$(doc_ids "$3")" ] || fail "$1: the documents differ"
}

step "shards 0/2 and 1/2"
start=$SECONDS
for i in 0 1; do
  "${clean_env[@]}" "$RAG" "${build_args[@]}" --shard "$i/2" --out "$TMP/s$i" >"$TMP/s$i.log" 2>&1 ||
    { cat "$TMP/s$i.log" >&2; fail "rag build --shard $i/2 failed"; }
  "$RAG" validate "$TMP/s$i" >"$TMP/validate-s$i.log" 2>&1 ||
    { cat "$TMP/validate-s$i.log" >&2; fail "shard $i/2 does not validate"; }
  doc_ids "$TMP/s$i" >"$TMP/s$i.ids"
done
step "built in $((SECONDS - start)) s: $(wc -l <"$TMP/s0.ids") + $(wc -l <"$TMP/s1.ids") documents"

"$PY" - "$TMP/corpus.jsonl" "$TMP/s0.ids" "$TMP/s1.ids" "$TMP/s0/manifest.json" "$TMP/s1/manifest.json" <<'EOF' ||
import json, sys, xxhash
corpus = [json.loads(l)["id"] for l in open(sys.argv[1], encoding="utf-8")]
shards = [set(open(p, encoding="utf-8").read().splitlines()) for p in sys.argv[2:4]]
manifests = [json.load(open(p)) for p in sys.argv[4:6]]
for i, m in enumerate(manifests):
    assert (m["shard_id"], m.get("shard_count")) == (i, 2), f"manifest of shard {i}: {m['shard_id']} of {m.get('shard_count')}"
    assert m["corpus"]["documents"] == len(shards[i]), (i, m["corpus"]["documents"], len(shards[i]))
assert shards[0] and shards[1], "a shard is empty"
assert not shards[0] & shards[1], f"in both shards: {sorted(shards[0] & shards[1])[:5]}"
assert shards[0] | shards[1] == set(corpus), f"missing: {sorted(set(corpus) - shards[0] - shards[1])[:5]}"
# The documented rule, computed independently: XXH3-64 of the UTF-8 id, seed 0, mod N.
for doc_id in corpus:
    want = xxhash.xxh3_64_intdigest(doc_id.encode("utf-8")) % 2
    assert doc_id in shards[want], f"{doc_id!r}: XXH3-64 mod 2 = {want}, but it is in shard {1 - want}"
print(f"  {len(shards[0])} + {len(shards[1])} = {len(corpus)} documents, each where XXH3-64(id) mod 2 puts it",
      file=sys.stderr)
EOF
  fail "the shards do not split the corpus by XXH3-64(id) mod 2 (above)"

step "shard 1/2 SIGKILLed mid-embedding, then resumed"
out="$TMP/killed"
"${clean_env[@]}" "$RAG" "${build_args[@]}" --shard 1/2 --out "$out" >"$TMP/killed.log" 2>&1 &
BUILD_PID=$!
# Kill once the first embedding batch is on disk: stage 1 (the chunk store)
# is done and the embedding under way, so the rerun has work to resume.
killed_partial=""
for _ in $(seq 1 3000); do
  if [ -s "$out.partial/embeddings.f32" ]; then
    kill -KILL "$BUILD_PID"
    [ -d "$out.partial" ] && killed_partial=1
    break
  fi
  kill -0 "$BUILD_PID" 2>/dev/null || break
  sleep 0.01
done
rc=0
wait "$BUILD_PID" || rc=$?
[ -n "$killed_partial" ] || { cat "$TMP/killed.log" >&2; fail "the kill did not land mid-build (exit $rc): nothing was tested"; }
[ "$rc" -eq 137 ] || fail "the killed build exited $rc, not 137 (SIGKILL)"
[ ! -e "$out" ] || fail "a killed build left $out (only $out.partial may exist)"
dim=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["model"]["dim"])' "$TMP/s1/manifest.json")
step "killed with $(($(stat -c %s "$out.partial/embeddings.f32") / (4 * dim))) of $("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["chunking"]["chunks"])' "$TMP/s1/manifest.json") chunk embeddings on disk"
"${clean_env[@]}" "$RAG" "${build_args[@]}" --shard 1/2 --out "$out" >"$TMP/resumed.log" 2>&1 ||
  { cat "$TMP/resumed.log" >&2; fail "the rerun after the kill failed"; }
grep -q "resuming the partial build" "$TMP/resumed.log" || { cat "$TMP/resumed.log" >&2; fail "the rerun did not resume"; }
grep -qE "resuming embedding at chunk [1-9]" "$TMP/resumed.log" ||
  { cat "$TMP/resumed.log" >&2; fail "the rerun did not resume the embedding where the kill left it"; }
[ ! -e "$out.partial" ] || fail "the resumed build left $out.partial"
"$RAG" validate "$out" >/dev/null 2>&1 || fail "the resumed shard does not validate"
same_shard "killed and resumed 1/2" "$TMP/s1" "$out"
step "resumed ($(grep -oE 'resuming embedding at chunk [0-9]+' "$TMP/resumed.log")), equal to the uninterrupted 1/2"

step "mpirun --oversubscribe -n 2 rag build --shard auto"
mpirun_args=(--oversubscribe --bind-to none -n 2)
# Open MPI refuses root without this; CI containers often run as root.
[ "$(id -u)" -ne 0 ] || mpirun_args+=(--allow-run-as-root)
start=$SECONDS
# Each rank writes its own --out, named from the rank mpirun gives it.
# shellcheck disable=SC2016  # expanded by each rank's sh, not here
MPI_OUT="$TMP/mpi" "${clean_env[@]}" mpirun "${mpirun_args[@]}" \
  sh -c 'exec "$0" "$@" --shard auto --out "$MPI_OUT-$OMPI_COMM_WORLD_RANK"' "$RAG" "${build_args[@]}" \
  >"$TMP/mpirun.log" 2>&1 || { cat "$TMP/mpirun.log" >&2; fail "mpirun -n 2 rag build --shard auto failed"; }
for i in 0 1; do
  grep -q "shard $i/2 keeps" "$TMP/mpirun.log" || { cat "$TMP/mpirun.log" >&2; fail "no rank built shard $i/2"; }
  same_shard "mpirun rank $i" "$TMP/s$i" "$TMP/mpi-$i"
done
step "both ranks in $((SECONDS - start)) s, equal to the 0/2 and 1/2 builds"

step "--shard auto from a Slurm array's and a Kubernetes Indexed Job's variables"
# sbatch --array=4-5: the second task is shard 1 of 2.
"${clean_env[@]}" SLURM_ARRAY_TASK_ID=5 SLURM_ARRAY_TASK_MIN=4 SLURM_ARRAY_TASK_COUNT=2 \
  "$RAG" "${build_args[@]}" --shard auto --out "$TMP/slurm" >"$TMP/slurm.log" 2>&1 ||
  { cat "$TMP/slurm.log" >&2; fail "--shard auto under a Slurm array failed"; }
same_shard "Slurm array task 5 of 4-5" "$TMP/s1" "$TMP/slurm"
# completionMode: Indexed, completions: 2: the index is in the environment, the count is not.
"${clean_env[@]}" JOB_COMPLETION_INDEX=0 "$RAG" "${build_args[@]}" --shard auto/2 --out "$TMP/k8s" \
  >"$TMP/k8s.log" 2>&1 || { cat "$TMP/k8s.log" >&2; fail "--shard auto/2 under an Indexed Job failed"; }
same_shard "Indexed Job completion 0 of 2" "$TMP/s0" "$TMP/k8s"

# refused WHAT MESSAGE_REGEX [VAR=VALUE...] -- BUILD_ARGS...: exit 1 (not 0,
# not a signal), the message, and no output directory.
refused() {
  local what="$1" pattern="$2" rc=0
  shift 2
  local vars=()
  while [ "$1" != "--" ]; do vars+=("$1"); shift; done
  shift
  rm -rf "$TMP/bad" "$TMP/bad.partial"
  "${clean_env[@]}" "${vars[@]}" "$RAG" "${build_args[@]}" "$@" --out "$TMP/bad" >"$TMP/bad.log" 2>&1 || rc=$?
  [ "$rc" -ne 0 ] || { cat "$TMP/bad.log" >&2; fail "$what: accepted"; }
  [ "$rc" -lt 128 ] || { cat "$TMP/bad.log" >&2; fail "$what: died from signal $((rc - 128))"; }
  grep -qE "$pattern" "$TMP/bad.log" || { cat "$TMP/bad.log" >&2; fail "$what: the message does not match /$pattern/"; }
  if [ -e "$TMP/bad" ] || [ -e "$TMP/bad.partial" ]; then fail "$what: wrote an index directory"; fi
  step "refused, exit $rc: $what: $(grep -m1 'error' "$TMP/bad.log")"
}
refused "--shard 2/2" "shard 2 is outside 0\.\.1" -- --shard 2/2
refused "--shard auto without a launcher" "no launcher rank in the environment" -- --shard auto
refused "--shard auto/3 under mpirun -n 2" "gives 2 shards, not 3" \
  OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2 -- --shard auto/3
refused "--shard auto in an Indexed Job (no count)" "JOB_COMPLETION_INDEX gives no shard count; use --shard auto/N" \
  JOB_COMPLETION_INDEX=1 -- --shard auto
# A shard the hash leaves empty (200 documents over 1000 shards): the first
# shard number no id maps to, found with the independent hash.
empty="$("$PY" - "$TMP/corpus.jsonl" <<'EOF'
import json, sys, xxhash
used = {xxhash.xxh3_64_intdigest(json.loads(l)["id"].encode("utf-8")) % 1000 for l in open(sys.argv[1], encoding="utf-8")}
print(min(set(range(1000)) - used))
EOF
)"
refused "--shard $empty/1000, which holds no document" "shard $empty/1000 holds none of the corpus's 200 documents" \
  -- --shard "$empty/1000"
step "PASS"
