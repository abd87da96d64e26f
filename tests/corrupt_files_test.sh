#!/usr/bin/env bash
# Damaged files give a clear error, never a crash or a silently wrong answer:
# every file of a built index (chunk store included) and of a trained model
# is, in a fresh copy each time, truncated to half, emptied, or has one byte
# flipped (middle and last); then `rag validate` (index) or `rag score`
# (model) must exit 1 with a message, not die from a signal and not pass.
#
# Usage: corrupt_files_test.sh RAG_BINARY   (KEEP_TMP=1 keeps files)
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init corrupt_files_test
RAG="${1:?usage: corrupt_files_test.sh RAG_BINARY}"

for i in $(seq 0 39); do
  printf '{"id": "doc-%02d", "text": "Document %d: the river %d runs under the stone bridge, and the falcon crosses the harbour at dawn."}\n' \
    "$i" "$i" "$((i * 13))"
done >"$TMP/corpus.jsonl"
"$RAG" --threads 1 train --corpus "$TMP/corpus.jsonl" --out "$TMP/model" --preset tiny --steps 5 --quiet \
  >"$TMP/train.log" 2>&1 || { cat "$TMP/train.log" >&2; fail "rag train failed"; }
"$RAG" --threads 1 build --corpus "$TMP/corpus.jsonl" --model "$TMP/model" --out "$TMP/index" --quiet \
  --chunk-tokens 16 --datastore --datastore-factory Flat >"$TMP/build.log" 2>&1 ||
  { cat "$TMP/build.log" >&2; fail "rag build failed"; }
"$RAG" validate "$TMP/index" >/dev/null 2>&1 || fail "the undamaged index does not validate"

# damage FILE KIND
damage() {
  local f="$1" size
  size=$(stat -c %s "$f")
  case "$2" in
    half) truncate -s $((size / 2)) "$f" ;;
    empty) : >"$f" ;;
    flip-middle | flip-last)
      [ "$size" -gt 0 ] || return 1
      local at=$((size / 2))
      [ "$2" = flip-last ] && at=$((size - 1))
      local byte
      byte=$(od -An -tu1 -j "$at" -N1 "$f" | tr -d ' ')
      # shellcheck disable=SC2059  # the format is the flipped byte's octal escape
      printf "$(printf '\\%03o' $((byte ^ 0x5a)))" | dd of="$f" bs=1 seek="$at" conv=notrunc status=none ;;
  esac
}

# expect_error WHAT CMD...: exit status 1 (not a signal, not 0) and a message.
expect_error() {
  local what="$1"
  shift
  local rc=0
  "$@" >"$TMP/out" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    cat "$TMP/out" >&2
    fail "$what: not detected"
  fi
  [ "$rc" -lt 128 ] || { cat "$TMP/out" >&2; fail "$what: died from signal $((rc - 128))"; }
  grep -qiE "error|mismatch|invalid|corrupt|truncated|not |no " "$TMP/out" || { cat "$TMP/out" >&2; fail "$what: no message"; }
}

checked=0
# RocksDB's info log, lock, identity and options-history files (it opens with
# our options, not the stored ones) and its write-ahead log (empty
# once flushed) are not part of the data.
files=$(cd "$TMP/index" && find . -type f ! -name LOG ! -name 'LOG.old*' ! -name LOCK ! -name '*.log' ! -name IDENTITY ! -name 'OPTIONS-*' | sort)
for f in $files; do
  for kind in half empty flip-middle flip-last; do
    rm -rf "$TMP/damaged"
    cp -r "$TMP/index" "$TMP/damaged"
    damage "$TMP/damaged/$f" "$kind" || continue
    expect_error "index file $f ($kind)" "$RAG" validate "$TMP/damaged"
    checked=$((checked + 1))
  done
done
nfiles=$(echo "$files" | wc -w)
# Every file, every kind: a damage that was silently skipped would shrink this.
[ "$checked" -eq $((4 * nfiles)) ] || fail "index: $checked damaged copies tried, not 4 x $nfiles files"
for want in ./manifest.json ./datastore/keys.f16 ./datastore/values.i32 ./datastore/docs.i32 ./datastore/keys.faiss; do
  echo "$files" | grep -qxF "$want" || fail "index: $want is not among the damaged files ($files)"
done
echo "$files" | grep -q '\.sst$' || fail "index: no RocksDB table file among the damaged files"
step "index: $checked damaged copies ($nfiles files x 4) refused by rag validate"

checked=0
# The files a model is loaded from (corrupt checkpoints are trainer_test's);
# model_info.json carries the content hash and its own checksum.
model_files=(config.json model.pt tokenizer.json model_info.json)
for f in "${model_files[@]}"; do
  for kind in half empty flip-middle flip-last; do
    rm -rf "$TMP/damaged-model"
    cp -r "$TMP/model" "$TMP/damaged-model"
    damage "$TMP/damaged-model/$f" "$kind" || continue
    expect_error "model file $f ($kind)" "$RAG" --threads 1 score --model "$TMP/damaged-model" --text "the river"
    checked=$((checked + 1))
  done
done
[ "$checked" -eq $((4 * ${#model_files[@]})) ] || fail "model: $checked damaged copies tried, not 4 x ${#model_files[@]} files"
step "model: $checked damaged copies refused by rag score"
step "PASS"
